-- The events already stored under these idempotency keys (the winners of earlier or racing
-- publishes), with the hash that tells a retry from a conflicting reuse of a key.
select id, event_type, created_at, deliveries_created, idempotency_key, request_hash
from outbox_events
where idempotency_scope = $1
  and idempotency_key = any($2::text[])
