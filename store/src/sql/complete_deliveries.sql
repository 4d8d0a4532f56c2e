-- Applies a flush of outcomes in one statement, fenced by the lease token: a row whose lease
-- was lost (expired and taken by another worker) does not match and nothing is written for
-- it. The attempt rows, dead letters and subscription changes (stats, disable on 410) all
-- select from the rows that matched. Inputs are sorted by id so concurrent flushes take
-- row locks in the same order.
with input as (
  select *
  from unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::text[], $6::boolean[],
              $7::integer[], $8::timestamptz[], $9::integer[], $10::integer[], $11::text[],
              $12::text[], $13::text[], $14::text[], $15::boolean[], $17::text[])
    as c(id, token, status, delay_seconds, last_error, has_attempt,
         attempt_number, started_at, duration_ms, response_status, response_body,
         attempt_error, attempt_outcome, dead_reason, disable_subscription, external_id)
),
-- A retry stays in the live table, pending again; a finished delivery (delivered, dead,
-- cancelled) leaves it here and is written to the history below, so the live table holds only
-- live work.
retried as (
  update deliveries d
  set status = 'pending',
      next_attempt_at = now() + make_interval(secs => c.delay_seconds),
      lease_token = null,
      leased_by = null,
      last_error = c.last_error,
      updated_at = now()
  from input c
  where d.id = c.id
    and d.lease_token = c.token
    and d.status = 'leased'
    and c.status = 'pending'
  returning d.id, d.event_id, d.subscription_id, d.target, d.lane, d.next_attempt_at
),
-- a retry's lane is due again by the retry's time
woken as (
  select ih_wake_lanes(array_agg(lane), array_agg(next_attempt_at)) as woken
  from retried
),
finished as (
  delete from deliveries d
  using input c
  where d.id = c.id
    and d.lease_token = c.token
    and d.status = 'leased'
    and c.status <> 'pending'
  returning d.id, d.event_id, d.subscription_id, d.target, d.attempts, d.created_at
),
history as (
  insert into delivery_history
    (id, event_id, target, subscription_id, status, attempts, last_error, created_at, updated_at)
  select f.id, f.event_id, f.target, f.subscription_id, c.status, f.attempts, c.last_error,
         f.created_at, now()
  from finished f
  join input c on c.id = f.id
),
done as (
  select id, event_id, subscription_id, target from retried
  union all
  select id, event_id, subscription_id, target from finished
),
attempts as (
  insert into delivery_attempts
    (id, delivery_id, event_id, attempt_number, started_at, duration_ms, response_status,
     response_body, error, worker_id, external_id, outcome)
  select ih_uuid_v7(), done.id, done.event_id, c.attempt_number, c.started_at, c.duration_ms,
         c.response_status, c.response_body, c.attempt_error, $16::text, c.external_id,
         c.attempt_outcome
  from done
  join input c on c.id = done.id
  where c.has_attempt
),
dead as (
  insert into dead_letters (id, delivery_id, event_id, subscription_id, target, reason, created_at)
  select ih_uuid_v7(), done.id, done.event_id, done.subscription_id, done.target, c.dead_reason, now()
  from done
  join input c on c.id = done.id
  where c.status = 'dead'
),
subscription_changes as (
  select done.subscription_id as id,
         bool_or(c.status = 'delivered') as succeeded,
         count(*) filter (where c.status <> 'delivered') as failures,
         bool_or(c.disable_subscription) as disable
  from done
  join input c on c.id = done.id
  where done.subscription_id is not null
    and c.has_attempt
  group by done.subscription_id
),
subscription_updates as (
  update subscriptions s
  set last_success_at = case when x.succeeded then now() else s.last_success_at end,
      last_failure_at = case when x.failures > 0 then now() else s.last_failure_at end,
      consecutive_failures = case when x.succeeded then 0 else s.consecutive_failures + x.failures end,
      enabled = case when x.disable then false else s.enabled end,
      disabled_reason = case when x.disable then 'endpoint_gone' else s.disabled_reason end,
      updated_at = case when x.disable then now() else s.updated_at end
  from subscription_changes x
  where s.id = x.id
),
-- a disabled subscription is routed no more events
disabled_routes as (
  delete from subscription_routes r
  using subscription_changes x
  where r.subscription_id = x.id and x.disable
)
-- publish → delivered lag, from the event id's time (its created_at) to the database's now:
-- no join, which would open every day partition of the events at every flush
select done.id,
       case when c.status = 'delivered'
            then extract(epoch from now() - ih_uuid_time(done.event_id))::float8 end as lag_seconds
from done
join input c on c.id = done.id
cross join woken
