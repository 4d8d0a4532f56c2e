-- Initial schema on SQLite: the tables, columns, constraints and indexes of the Postgres file
-- beside it, under the same names. Types differ only where SQLite has no equivalent:
--   uuid        -> blob, the 16 bytes, which sort as Postgres sorts uuids (cursors, v7 order)
--   timestamptz -> text, UTC as 'YYYY-MM-DDTHH:MM:SS.SSSZ'; every writer uses this one
--                  fixed-width form, so comparing the text compares the instants
--   jsonb       -> text holding JSON, checked with json_valid
-- There is no ih_uuid_v7(): on SQLite every id is made in Rust before the insert.

create table subscriptions (
  id                          blob        not null primary key,
  url                         text        not null,
  secret                      text        not null,
  previous_secret             text,
  previous_secret_expires_at  text,
  event_types                 text        not null check (json_valid(event_types)),
  enabled                     boolean     not null default 1,
  description                 text,
  headers                     text        not null default '{}' check (json_valid(headers)),
  disabled_reason             text,
  last_success_at             text,
  last_failure_at             text,
  consecutive_failures        integer     not null default 0,
  created_at                  text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at                  text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  deleted_at                  text
);

create table outbox_events (
  id                  blob        not null primary key,
  event_type          text        not null,
  -- the exact JSON text received, so the delivered bytes never depend on a re-serialisation
  payload             text        not null,
  idempotency_key     text,
  -- the publishing credential's name; a key is unique within its scope only
  idempotency_scope   text,
  request_hash        text        not null,
  deliveries_created  integer     not null,
  traceparent         text,
  created_at          text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  constraint outbox_events_idempotency_key unique (idempotency_scope, idempotency_key)
);

create table deliveries (
  id               blob        not null primary key,
  event_id         blob        not null references outbox_events (id) on delete cascade,
  target           text        not null check (target in ('webhook', 'slack')),
  subscription_id  blob        references subscriptions (id),
  status           text        not null default 'pending'
                   check (status in ('pending', 'leased', 'delivered', 'dead', 'cancelled')),
  attempts         integer     not null default 0,
  -- the next try while pending, the lease expiry while leased
  next_attempt_at  text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  lease_token      blob,
  leased_by        text,
  last_error       text,
  created_at       text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at       text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- The lease index: due pending rows and expired leases, in the lease statement's order.
create index deliveries_due_idx on deliveries (next_attempt_at, id)
  where status in ('pending', 'leased');
create index deliveries_event_idx on deliveries (event_id);
-- The admin listing of failed work.
create index deliveries_dead_idx on deliveries (id) where status = 'dead';

create table delivery_attempts (
  id               blob        not null primary key,
  delivery_id      blob        not null,
  event_id         blob        not null,
  attempt_number   integer     not null,
  started_at       text        not null,
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
  id                  blob        not null primary key,
  delivery_id         blob        not null,
  event_id            blob        not null,
  subscription_id     blob,
  target              text        not null check (target in ('webhook', 'slack')),
  reason              text        not null,
  created_at          text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  replayed_at         text,
  replay_delivery_id  blob
);
create index dead_letters_unreplayed_idx on dead_letters (subscription_id, created_at)
  where replayed_at is null;
