-- The second statement of a lease (after lease_lanes.sql, in its transaction): from each lane,
-- in the order given, its oldest due rows, as many as its room allows (its in-flight limit
-- less its leased rows, counted through deliveries_leased_idx) and at most $4 each; $5 rows
-- in all. The rows are leased to worker $6 for $7 seconds, one attempt counted, and the lease
-- commits at once: no lock is held while the requests run. The events are read by the next
-- statement (leased_events.sql): joined here, the partitioned events table would be opened
-- whole at every lease.
--
-- Every lane given is written: a lane that gave rows goes to the end of the round
-- (last_leased_at), one that gave none (at its limit) keeps its place; next_due_at becomes its
-- earliest pending row left (null when none) where $3 says the lane may settle, or stays due
-- where it may not (see lease_lanes.sql).
with lane as (
  select *
  from unnest($1::uuid[], $2::integer[], $3::boolean[])
    with ordinality as t(id, max_in_flight, may_settle, position)
),
room as materialized (
  select lane.id, lane.may_settle, lane.position,
         greatest(lane.max_in_flight
                  - (select count(*) from deliveries d
                     where d.lane = lane.id and d.status = 'leased'), 0) as room
  from lane
),
picked as materialized (
  select due.id, room.id as lane
  from room
  cross join lateral (
    select d.id
    from deliveries d
    where d.lane = room.id
      and d.status = 'pending'
      and d.next_attempt_at <= now()
    order by d.next_attempt_at, d.id
    limit least(room.room, $4)
    for no key update skip locked
  ) due
  limit $5
),
leased as (
  update deliveries d
  set status = 'leased',
      lease_token = gen_random_uuid(),
      leased_by = $6,
      next_attempt_at = now() + make_interval(secs => $7),
      attempts = d.attempts + 1,
      updated_at = now()
  -- by key: a join to the CTE is planned from the table's statistics, and a queue table's
  -- swing so much that Postgres once joined by reading the whole table (600 ms a lease)
  where d.id = any(array(select id from picked))
  returning d.id, d.lease_token, d.attempts, d.target, d.subscription_id, d.event_id
),
settled as (
  update lanes l
  -- the lanes of one lease keep their given order in the round
  set last_leased_at = case when exists (select 1 from picked where picked.lane = room.id)
                            then now() + make_interval(secs => room.position / 1000000.0)
                            else l.last_leased_at end,
      next_due_at = case when room.may_settle then rest.next_due_at
                         else least(coalesce(rest.next_due_at, now()), now()) end
  from room
  left join lateral (
    select d.next_attempt_at as next_due_at
    from deliveries d
    where d.lane = room.id
      and d.status = 'pending'
      and d.id not in (select id from picked)
    order by d.next_attempt_at, d.id
    limit 1
  ) rest on true
  where l.id = room.id
    and l.id = any($1::uuid[])
)
select id, lease_token, attempts, target, subscription_id, event_id
from leased
