-- Applies a flush of outcomes in one statement, fenced by the lease token: a row whose lease
-- was lost (expired and taken by another worker) does not match and nothing is written for
-- it. The attempt rows, dead letters and subscription changes (stats, disable on 410) all
-- select from the rows actually updated. Inputs are sorted by id so concurrent flushes take
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
done as (
  update deliveries d
  set status = c.status,
      next_attempt_at = case when c.status = 'pending'
                             then now() + make_interval(secs => c.delay_seconds)
                             else now() end,
      lease_token = null,
      leased_by = null,
      last_error = c.last_error,
      updated_at = now()
  from input c
  where d.id = c.id
    and d.lease_token = c.token
    and d.status = 'leased'
  returning d.id, d.event_id, d.subscription_id, d.target
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
-- publish → delivered lag, from database timestamps only (no worker clock involved)
select done.id,
       case when c.status = 'delivered'
            then extract(epoch from now() - e.created_at)::float8 end as lag_seconds
from done
join input c on c.id = done.id
join outbox_events e on e.id = done.event_id
