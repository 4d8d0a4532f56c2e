-- Hands leased rows back without an attempt being counted (shutdown, a Slack channel's
-- pacing): pending again, each due after its own delay, their lanes due by then. Fenced by
-- the lease token.
with released as (
  update deliveries d
  set status = 'pending',
      attempts = greatest(d.attempts - 1, 0),
      next_attempt_at = now() + make_interval(secs => c.due_in_seconds),
      lease_token = null,
      leased_by = null,
      updated_at = now()
  from unnest($1::uuid[], $2::uuid[], $3::float8[]) as c(id, token, due_in_seconds)
  where d.id = c.id
    and d.lease_token = c.token
    and d.status = 'leased'
  returning d.id, d.lane, d.next_attempt_at
),
woken as (
  select ih_wake_lanes(array_agg(lane), array_agg(next_attempt_at)) as woken
  from released
)
select id
from released, woken
