-- Soft delete: queued deliveries of a deleted subscription complete `cancelled` at send time.
update subscriptions
set deleted_at = now(), enabled = false, updated_at = now()
where id = $1 and deleted_at is null
returning id
