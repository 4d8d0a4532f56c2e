-- Writes a batch of events and fans each out to its deliveries, in one statement so the count
-- answered at publish and the rows inserted come from the same snapshot of subscriptions. The
-- subscriptions are found through subscription_routes' primary key, by the batch's event
-- types and the wildcard `*`: the cost follows the subscriptions that match, not all of them.
-- $1 ids, $2 event types, $3 payloads, $4 idempotency keys (null = none), $5 request hashes,
-- $6 idempotency scope, $7 traceparents (one per event), $8 slack enabled, $9 slack event types.
-- A row whose (scope, key) already exists is skipped; the caller reads the winner. Rows come
-- back in insertion order; the caller matches them to the request by id.
with input as (
  select *
  from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $7::text[])
    with ordinality as t(id, event_type, payload, idempotency_key, request_hash, traceparent, position)
),
-- The routes of the batch's event types and of the wildcard `*`, read by key, one index probe
-- per type. Routes exist for enabled subscriptions only, so the subscriptions table is not
-- read at all, and the statement is cheap enough that Postgres keeps one generic plan instead
-- of planning every execution. The probe is a lateral subquery kept apart (`offset 0`) so that
-- the generic plan cannot read the whole table instead: with `= any` over a few hundred or
-- thousand routes, Postgres costed a sequential scan cheaper and ran it at every publish
-- (0.7 ms for 1,000 routes, against 0.1 ms by key).
routed as materialized (
  select types.event_type, r.subscription_id
  from (select distinct unnest($2::text[] || '*'::text)) as types(event_type)
  cross join lateral (
    select r.subscription_id
    from subscription_routes r
    where r.event_type = types.event_type
    offset 0
  ) r
),
-- a subscription naming the type and `*` gets one delivery
targets as (
  select distinct types.event_type, r.subscription_id
  from (select distinct event_type from input) types
  join routed r on r.event_type in (types.event_type, '*')
),
counted as (
  select
    i.*,
    coalesce(per_type.subscriptions, 0)
    + case when $8::boolean and i.event_type = any($9::text[]) then 1 else 0 end as deliveries
  from input i
  left join (select event_type, count(*) as subscriptions from targets group by event_type) per_type
    on per_type.event_type = i.event_type
),
-- An idempotency key is claimed in its own table (the events table is partitioned by time, so
-- it cannot hold a unique key of its own); an event is written when it has no key or won its
-- key. Keys go in one canonical order (the scope is the same for every row): two requests
-- holding the same keys in another order then wait for each other instead of deadlocking.
claimed as (
  insert into idempotency_keys (scope, key, event_id)
  select $6::text, idempotency_key, id
  from counted
  where idempotency_key is not null
  order by idempotency_key, position
  on conflict (scope, key) do nothing
  returning event_id
),
inserted as (
  insert into outbox_events
    (id, event_type, payload, idempotency_key, idempotency_scope, request_hash,
     deliveries_created, traceparent, created_at)
  select id, event_type, payload, idempotency_key,
         case when idempotency_key is null then null else $6::text end,
         -- the id's own time, so a time window over ids and over created_at agree
         request_hash, deliveries, traceparent, ih_uuid_time(id)
  from counted
  where idempotency_key is null or id in (select event_id from claimed)
  order by position
  returning id, event_type, created_at, deliveries_created
),
fanned_out as (
  insert into deliveries
    (id, event_id, target, subscription_id, lane, status, attempts, next_attempt_at, created_at,
     updated_at)
  select ih_uuid_v7(), e.id, 'webhook', t.subscription_id, t.subscription_id, 'pending', 0, now(),
         now(), now()
  from inserted e
  join targets t on t.event_type = e.event_type
  union all
  select ih_uuid_v7(), e.id, 'slack', null, '00000000-0000-0000-0000-000000000000', 'pending',
         0, now(), now(), now()
  from inserted e
  where $8::boolean and e.event_type = any($9::text[])
  returning lane
),
-- one row, so the final select runs it once
woken as (
  select ih_wake_lanes(array_agg(lane), array_agg(now())) as woken
  from (select distinct lane from fanned_out) lanes
)
select id, event_type, created_at, deliveries_created
from inserted, woken
