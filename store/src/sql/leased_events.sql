-- The events of a leased batch. The bounds $2..$3 (the smallest and largest id of $1) are
-- parameters known when the statement starts, so Postgres prunes the day partitions outside
-- them before opening any: a join in the lease itself would open every partition at every
-- lease.
select id, event_type, payload, created_at, traceparent
from outbox_events
where id = any($1::uuid[])
  and id >= $2::uuid
  and id <= $3::uuid
