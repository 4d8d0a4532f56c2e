select id, url, event_types, enabled, description, headers, disabled_reason,
       previous_secret_expires_at, last_success_at, last_failure_at, consecutive_failures,
       created_at, updated_at
from subscriptions
where id = $1 and deleted_at is null
