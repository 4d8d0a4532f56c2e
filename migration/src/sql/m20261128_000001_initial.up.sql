-- Initial schema: subscriptions, the outbox (events + deliveries), attempts and dead letters.
-- Status values are checked literals; the lease statement repeats them as literals so the
-- planner can match the partial index `deliveries_due_idx`.

-- UUID v7 for rows created inside set-based statements (fan-out, replay). The API creates event
-- ids in Rust; both produce time-ordered ids so the primary keys stay index-local.
create function ih_uuid_v7() returns uuid
language sql volatile parallel safe
as $$
  -- 48-bit unix milliseconds, then the random bytes of a v4 uuid with the version nibble
  -- turned from 4 (0100) into 7 (0111) by setting bits 52 and 53; the variant bits are kept.
  select encode(
    set_bit(
      set_bit(
        overlay(uuid_send(gen_random_uuid())
                placing substring(int8send((extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
                from 1 for 6),
        52, 1),
      53, 1),
    'hex')::uuid
$$;

create table subscriptions (
  id                          uuid        primary key,
  url                         text        not null,
  secret                      text        not null,
  previous_secret             text,
  previous_secret_expires_at  timestamptz,
  event_types                 jsonb       not null,
  enabled                     boolean     not null default true,
  description                 text,
  headers                     jsonb       not null default '{}'::jsonb,
  disabled_reason             text,
  last_success_at             timestamptz,
  last_failure_at             timestamptz,
  consecutive_failures        integer     not null default 0,
  created_at                  timestamptz not null default now(),
  updated_at                  timestamptz not null default now(),
  deleted_at                  timestamptz
);

create table outbox_events (
  id                  uuid        primary key,
  event_type          text        not null,
  -- the exact JSON text received, so the delivered bytes never depend on a re-serialisation
  payload             text        not null,
  idempotency_key     text,
  -- the publishing credential's name; a key is unique within its scope only
  idempotency_scope   text,
  request_hash        text        not null,
  deliveries_created  integer     not null,
  traceparent         text,
  created_at          timestamptz not null default now(),
  constraint outbox_events_idempotency_key unique (idempotency_scope, idempotency_key)
);

create table deliveries (
  id               uuid        primary key,
  event_id         uuid        not null references outbox_events (id) on delete cascade,
  target           text        not null check (target in ('webhook', 'slack')),
  subscription_id  uuid        references subscriptions (id),
  status           text        not null default 'pending'
                   check (status in ('pending', 'leased', 'delivered', 'dead', 'cancelled')),
  attempts         integer     not null default 0,
  -- the next try while pending, the lease expiry while leased
  next_attempt_at  timestamptz not null default now(),
  lease_token      uuid,
  leased_by        text,
  last_error       text,
  created_at       timestamptz not null default now(),
  updated_at       timestamptz not null default now()
) with (
  -- no update of this table is HOT (status is in the partial index predicate), so every lease
  -- and completion leaves a dead tuple: vacuum early and often
  autovacuum_vacuum_scale_factor = 0.01,
  autovacuum_vacuum_insert_scale_factor = 0.01,
  autovacuum_analyze_scale_factor = 0.02,
  autovacuum_vacuum_cost_delay = 1
);

-- The lease index: due pending rows and expired leases, in the lease statement's order.
create index deliveries_due_idx on deliveries (next_attempt_at, id)
  where status in ('pending', 'leased');
create index deliveries_event_idx on deliveries (event_id);
-- The admin listing of failed work.
create index deliveries_dead_idx on deliveries (id) where status = 'dead';

create table delivery_attempts (
  id               uuid        primary key,
  delivery_id      uuid        not null,
  event_id         uuid        not null,
  attempt_number   integer     not null,
  started_at       timestamptz not null,
  duration_ms      integer     not null,
  response_status  integer,
  response_body    text,
  error            text,
  -- the worker that made the attempt, for operators tracing a replica
  worker_id        text,
  -- the receiving system's id for what was created (Slack's message ts)
  external_id      text,
  outcome          text        not null
                   check (outcome in ('delivered', 'retry_scheduled', 'dead_lettered'))
);
create index delivery_attempts_event_idx on delivery_attempts (event_id, delivery_id);

create table dead_letters (
  id                  uuid        primary key,
  delivery_id         uuid        not null,
  event_id            uuid        not null,
  subscription_id     uuid,
  target              text        not null check (target in ('webhook', 'slack')),
  reason              text        not null,
  created_at          timestamptz not null default now(),
  replayed_at         timestamptz,
  replay_delivery_id  uuid
);
create index dead_letters_unreplayed_idx on dead_letters (subscription_id, created_at)
  where replayed_at is null;
