-- The first statement of a lease: up to $1 lanes with due work that no other worker is leasing
-- from, least recently leased first (a round over the lanes with due work), each locked until
-- the lease commits, so two workers never count one lane's room at once. $2 is the configured
-- in-flight limit for a subscription without its own, and for the Slack lane. A lane whose
-- subscription's circuit is open is probing: one row in flight at most (see
-- complete_deliveries.sql, which holds the lane until the next probe's time).
--
-- may_settle: the lane has had nothing due for a second, and this lease holds its exclusive
-- advisory lock, so no statement waking the lane is running (see ih_wake_lanes) and the next
-- statement, which reads with a snapshot taken after this one, may mark the lane empty or due
-- later. Otherwise the lane stays due: a lane with steady traffic is never marked empty, so
-- its publishes neither write it nor wait for this lock. The lock is taken outside the
-- locking subquery, so only on lanes this lease keeps.
with picked as materialized (
  select l.id, l.last_leased_at, l.empty_since
  from lanes l
  where l.next_due_at <= now()
    and l.next_allowed_at <= now()
  order by l.last_leased_at
  limit $1
  for no key update skip locked
)
select picked.id,
       case when s.circuit_opened_at is not null then 1
            else coalesce(s.max_in_flight, $2::integer) end as max_in_flight,
       s.rate_limit_per_second,
       case when picked.empty_since <= now() - interval '1 second'
            then pg_try_advisory_xact_lock(1818324581, ih_lane_key(picked.id))
            else false end as may_settle,
       s.circuit_opened_at is not null as probing
from picked
left join subscriptions s on s.id = picked.id
order by picked.last_leased_at
