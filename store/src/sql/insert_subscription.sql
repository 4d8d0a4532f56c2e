insert into subscriptions
  (id, url, secret, event_types, enabled, description, headers, created_at, updated_at)
values ($1, $2, $3, $4, $5, $6, $7, now(), now())
returning id, url, event_types, enabled, description, headers, disabled_reason,
          previous_secret_expires_at, last_success_at, last_failure_at, consecutive_failures,
          created_at, updated_at
