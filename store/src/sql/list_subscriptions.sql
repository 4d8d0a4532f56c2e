-- Oldest first, cursor = last id of the previous page.
select id, url, event_types, enabled, description, headers, disabled_reason,
       previous_secret_expires_at, last_success_at, last_failure_at, consecutive_failures,
       created_at, updated_at
from subscriptions
where deleted_at is null
  and ($1::uuid is null or id > $1)
  and ($2::boolean is null or enabled = $2)
order by id
limit $3
