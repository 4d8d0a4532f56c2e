-- A null parameter keeps the column; $5 says whether the description is being set (it may be
-- set to null). Re-enabling clears the reason the subscription was disabled.
update subscriptions
set url             = coalesce($2, url),
    event_types     = coalesce($3, event_types),
    enabled         = coalesce($4, enabled),
    description     = case when $5::boolean then $6 else description end,
    headers         = coalesce($7, headers),
    disabled_reason = case when $4::boolean is true then null
                           when $4::boolean is false then coalesce(disabled_reason, 'disabled_by_operator')
                           else disabled_reason end,
    updated_at      = now()
where id = $1 and deleted_at is null
returning id, url, event_types, enabled, description, headers, disabled_reason,
          previous_secret_expires_at, last_success_at, last_failure_at, consecutive_failures,
          created_at, updated_at
