-- Applies a flush of outcomes in one statement, fenced by the lease token: a row whose lease
-- was lost (expired and taken by another worker) does not match and nothing is written for
-- it. The attempt rows, dead letters and subscription changes (stats, endpoint health,
-- disable on 410) all select from the rows that matched. Inputs are sorted by id so
-- concurrent flushes take row locks in the same order.
--
-- Endpoint health ($19 failures within $20 seconds open the circuit; probes $21 seconds
-- apart, doubling up to $22; disabled after failing for $23 seconds): see README, "Endpoint
-- health". A flush with a success for a subscription makes it healthy.
with input as (
  select *
  from unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::text[], $6::boolean[],
              $7::integer[], $8::timestamptz[], $9::integer[], $10::integer[], $11::text[],
              $12::text[], $13::text[], $14::text[], $15::boolean[], $17::text[],
              $18::boolean[])
    as c(id, token, status, delay_seconds, last_error, has_attempt,
         attempt_number, started_at, duration_ms, response_status, response_body,
         attempt_error, attempt_outcome, dead_reason, disable_subscription, external_id,
         probe)
),
-- A retry stays in the live table, pending again; a finished delivery (delivered, dead,
-- cancelled) leaves it here and is written to the history below, so the live table holds only
-- live work. A failed probe gives its attempt back: an open circuit costs no delivery its
-- attempts.
retried as (
  update deliveries d
  set status = 'pending',
      attempts = d.attempts - case when c.probe then 1 else 0 end,
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
         bool_or(c.disable_subscription) as disable,
         bool_or(c.probe and c.status <> 'delivered') as probe_failed
  from done
  join input c on c.id = done.id
  where done.subscription_id is not null
    and c.has_attempt
  group by done.subscription_id
),
-- the subscription as it was: to tell a closing circuit, and whether it has failed for too
-- long without a success
prior as (
  select x.*, s.circuit_opened_at,
         not x.succeeded and s.enabled
           and s.failing_since <= now() - make_interval(secs => $23) as failing_too_long
  from subscriptions s
  join subscription_changes x on x.id = s.id
),
-- Each expression reads the row's columns as they are when its lock is taken, so two flushes
-- for one subscription add up.
subscription_updates as (
  update subscriptions s
  set last_success_at = case when x.succeeded then now() else s.last_success_at end,
      last_failure_at = case when x.failures > 0 then now() else s.last_failure_at end,
      consecutive_failures = case when x.succeeded then 0 else s.consecutive_failures + x.failures end,
      failing_since = case when x.succeeded then null else coalesce(s.failing_since, now()) end,
      failure_window_started_at =
        case when x.succeeded then null
             when s.failure_window_started_at > now() - make_interval(secs => $20)
             then s.failure_window_started_at
             else now() end,
      failure_window_count =
        case when x.succeeded then 0
             when s.failure_window_started_at > now() - make_interval(secs => $20)
             then s.failure_window_count + x.failures
             else x.failures end,
      circuit_opened_at =
        case when x.succeeded then null
             when s.circuit_opened_at is not null then s.circuit_opened_at
             when x.failures + case when s.failure_window_started_at
                                          > now() - make_interval(secs => $20)
                                     then s.failure_window_count else 0 end >= $19
             then now() end,
      circuit_probes =
        case when x.succeeded or s.circuit_opened_at is null then 0
             else s.circuit_probes + x.probe_failed::integer end,
      enabled = case when x.disable or x.failing_too_long then false else s.enabled end,
      disabled_reason = case when x.disable then 'endpoint_gone'
                             when x.failing_too_long then 'endpoint_failing'
                             else s.disabled_reason end,
      updated_at = case when x.disable or x.failing_too_long then now() else s.updated_at end
  from prior x
  where s.id = x.id
  returning s.id, s.enabled, s.disabled_reason, s.circuit_opened_at, s.circuit_probes,
            x.probe_failed
),
-- a disabled subscription is routed no more events
disabled_routes as (
  delete from subscription_routes r
  using subscription_updates u
  where r.subscription_id = u.id and not u.enabled
),
-- The lanes held or released: a subscription disabled for failing too long is held until it
-- is enabled again (its pending rows stay); a circuit that opened, or whose probe failed, is
-- held until its next probe; a circuit that closed is released.
gates as (
  select u.id,
         case when not u.enabled and u.disabled_reason = 'endpoint_failing'
              then 'infinity'::timestamptz
              when u.circuit_opened_at is not null
                   and (p.circuit_opened_at is null or u.probe_failed)
              then now() + make_interval(
                secs => least($21 * power(2, least(u.circuit_probes, 30)), $22))
              when u.circuit_opened_at is null and p.circuit_opened_at is not null
              then now()
         end as until
  from subscription_updates u
  join prior p on p.id = u.id
),
-- A retry's lane is due again by the retry's time; the lanes' holds follow. One select, so
-- the two functions' updates run one after the other.
lanes_written as (
  select ih_wake_lanes((select array_agg(lane) from retried),
                       (select array_agg(next_attempt_at) from retried)),
         ih_gate_lanes((select array_agg(id) from gates where until is not null),
                       (select array_agg(until) from gates where until is not null))
)
-- publish → delivered lag, from the event id's time (its created_at) to the database's now:
-- no join, which would open every day partition of the events at every flush
select done.id,
       case when c.status = 'delivered'
            then extract(epoch from now() - ih_uuid_time(done.event_id))::float8 end as lag_seconds
from done
join input c on c.id = done.id
cross join lanes_written
