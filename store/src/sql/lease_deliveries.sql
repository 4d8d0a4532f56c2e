-- The second statement of a lease (after lease_lanes.sql, in its transaction): from each lane,
-- in the order given, its oldest due rows, as many as its room allows (its in-flight limit
-- less its leased rows, counted through deliveries_leased_idx), its rate limit allows, and
-- at most $4 each; $5 rows in all. The rows are leased to worker $6 for $7 seconds, one
-- attempt counted, and the lease commits at once: no lock is held while the requests run. The events are read by the next
-- statement (leased_events.sql): joined here, the partitioned events table would be opened
-- whole at every lease.
--
-- Every lane given is written: a lane goes to the end of the round (last_leased_at) unless it
-- gave no rows while it still has rows due (held back by its limits); next_due_at becomes its
-- earliest pending row left (null when none) where $3 says the lane may settle, or stays due
-- where it may not (see lease_lanes.sql); empty_since starts when nothing is left due.
--
-- A rate limit of r a second ($8, null for none) is a clock, next_allowed_at, that each row
-- leased moves 1/r on; the lane is not leased from while the clock is ahead of now (see
-- lease_lanes.sql). A lease may take what brings the clock to 100 ms past now, from a clock no
-- more than 100 ms behind: a lease that comes late catches up once, so the rate holds over
-- time, and never more than 200 ms of the rate goes at once. A probing lane ($9: its circuit is
-- open) that gave its probe is held for the lease's length; the probe's outcome sets the next
-- time (see complete_deliveries.sql). The statement answers, with each row, whether it is a
-- probe and the earliest time one of its lanes is due or allowed again after now: when to
-- lease next.
with lane as (
  select *
  from unnest($1::uuid[], $2::integer[], $3::boolean[], $8::float8[], $9::boolean[])
    with ordinality as t(id, max_in_flight, may_settle, rate, probing, position)
),
clock as (
  select lane.*,
         (select greatest(l.next_allowed_at, now() - interval '100 ms')
          from lanes l
          where l.id = lane.id) as start
  from lane
),
room as materialized (
  select lane.id, lane.may_settle, lane.position, lane.rate, lane.start, lane.probing,
         greatest(least(
           lane.max_in_flight
             - (select count(*) from deliveries d
                where d.lane = lane.id and d.status = 'leased'),
           case when lane.rate is null then $4::bigint
                else greatest(floor(extract(epoch from now() + interval '100 ms' - lane.start)
                                    * lane.rate), 1)::bigint end), 0) as room
  from clock lane
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
    limit least(room.room, $4::bigint)
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
  returning d.id, d.lease_token, d.attempts, d.target, d.subscription_id, d.event_id, d.lane
),
settled as (
  update lanes l
  -- the lanes of one lease keep their given order in the round
  set last_leased_at = case when took.taken > 0
                                 or rest.next_due_at is null or rest.next_due_at > now()
                            then now() + make_interval(secs => room.position / 1000000.0)
                            else l.last_leased_at end,
      next_due_at = case when room.may_settle then rest.next_due_at
                         else least(coalesce(rest.next_due_at, now()), now()) end,
      empty_since = case when rest.next_due_at <= now() or room.may_settle then null
                         when took.taken > 0 then now()
                         else coalesce(l.empty_since, now()) end,
      next_allowed_at = case when room.probing and took.taken > 0
                             then now() + make_interval(secs => $7)
                             when room.rate is null then l.next_allowed_at
                             else room.start + make_interval(secs => took.taken / room.rate) end
  from room
  -- the rows this lease took from the lane
  cross join lateral (
    select count(*) as taken
    from picked
    where picked.lane = room.id
  ) took
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
  returning l.next_due_at, l.next_allowed_at
)
select leased.id, leased.lease_token, leased.attempts, leased.target, leased.subscription_id,
       leased.event_id, room.probing as probe,
       (select min(later) from settled,
               lateral (values (settled.next_due_at), (settled.next_allowed_at)) as t(later)
        where later > now() and later < 'infinity') as lease_again_at
from leased
-- every row leased came from a lane of the room
join room on room.id = leased.lane
