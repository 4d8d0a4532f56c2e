-- Leases up to $1 due deliveries to worker $2 for $3 seconds and returns all a send needs.
-- Due = pending and due, or leased with an expired lease (its worker died): one partial
-- index, deliveries_due_idx (next_attempt_at, id) where status in ('pending','leased'),
-- serves both, since a leased row's next_attempt_at is its lease expiry. The status values
-- stay literals so the planner matches that index. MATERIALIZED keeps the planner from
-- re-running the LIMIT subquery per row. The lease commits at once: no lock is held while
-- the request runs. The events are read by the next statement (leased_events.sql): joined
-- here, the partitioned events table would be opened whole at every lease.
with due as materialized (
  select id
  from deliveries
  where status in ('pending', 'leased')
    and next_attempt_at <= now()
  order by next_attempt_at, id
  limit $1
  for no key update skip locked
)
update deliveries d
set status = 'leased',
    lease_token = gen_random_uuid(),
    leased_by = $2,
    next_attempt_at = now() + make_interval(secs => $3),
    attempts = d.attempts + 1,
    updated_at = now()
from due
where d.id = due.id
returning d.id, d.lease_token, d.attempts, d.target, d.subscription_id, d.event_id
