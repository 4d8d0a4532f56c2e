-- The old secret keeps signing beside the new one until the grace period ends.
update subscriptions
set previous_secret = secret,
    previous_secret_expires_at = now() + make_interval(secs => $3),
    secret = $2,
    updated_at = now()
where id = $1 and deleted_at is null
returning id, url, event_types, enabled, description, headers, disabled_reason,
          previous_secret_expires_at, last_success_at, last_failure_at, consecutive_failures,
          created_at, updated_at
