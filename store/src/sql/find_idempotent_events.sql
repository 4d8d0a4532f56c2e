-- The events already stored under these idempotency keys (the winners of earlier or racing
-- publishes), with the hash that tells a retry from a conflicting reuse of a key.
select e.id, e.event_type, e.created_at, e.deliveries_created, k.key as idempotency_key,
       e.request_hash
from idempotency_keys k
join outbox_events e on e.id = k.event_id
where k.scope = $1
  and k.key = any($2::text[])
