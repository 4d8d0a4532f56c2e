select id, event_type, payload, created_at, deliveries_created, idempotency_key
from outbox_events
where id = $1
