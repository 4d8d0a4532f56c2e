-- Hands leased rows back without an attempt being counted (shutdown, or a subscription at
-- its in-flight cap): pending again, due after $3 seconds. Fenced by the lease token.
update deliveries d
set status = 'pending',
    attempts = greatest(d.attempts - 1, 0),
    next_attempt_at = now() + make_interval(secs => $3),
    lease_token = null,
    leased_by = null,
    updated_at = now()
from unnest($1::uuid[], $2::uuid[]) as c(id, token)
where d.id = c.id
  and d.lease_token = c.token
  and d.status = 'leased'
returning d.id
