select exists (select 1 from outbox_events where id = $1)
