-- The live queue apart from the history, as on Postgres (see the Postgres file beside this
-- one), without the partitions: SQLite's retention deletes a day's rows in short batches
-- instead of dropping tables. The tables, columns and named indexes are Postgres' ones.
--
-- The foreign keys go as on Postgres. Tables are rebuilt in an order that never drops a
-- table another still references (a drop would delete the referencing rows).

create table live_deliveries (
  id               blob        not null primary key,
  event_id         blob        not null,
  target           text        not null check (target in ('webhook', 'slack')),
  subscription_id  blob,
  status           text        not null default 'pending' check (status in ('pending', 'leased')),
  attempts         integer     not null default 0,
  -- the next try while pending, the lease expiry while leased
  next_attempt_at  text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  lease_token      blob,
  leased_by        text,
  last_error       text,
  created_at       text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at       text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
insert into live_deliveries
select id, event_id, target, subscription_id, status, attempts, next_attempt_at, lease_token,
       leased_by, last_error, created_at, updated_at
from deliveries
where status in ('pending', 'leased');

create table delivery_history (
  id               blob        not null primary key,
  event_id         blob        not null,
  target           text        not null check (target in ('webhook', 'slack')),
  subscription_id  blob,
  status           text        not null check (status in ('delivered', 'dead', 'cancelled')),
  attempts         integer     not null,
  -- always null: here so that the view below reads a column of each table in every place,
  -- which SQLite needs to merge the two by index instead of sorting them whole
  lease_token      blob,
  leased_by        text,
  last_error       text,
  created_at       text        not null,
  -- when it finished
  updated_at       text        not null
);
insert into delivery_history
  (id, event_id, target, subscription_id, status, attempts, last_error, created_at, updated_at)
select id, event_id, target, subscription_id, status, attempts, last_error, created_at, updated_at
from deliveries
where status not in ('pending', 'leased');
create index delivery_history_event_idx on delivery_history (event_id);
create index delivery_history_subscription_idx on delivery_history (subscription_id, id);
create index delivery_history_status_idx on delivery_history (status, id);

drop table deliveries;
alter table live_deliveries rename to deliveries;
create index deliveries_due_idx on deliveries (next_attempt_at, id)
  where status in ('pending', 'leased');
create index deliveries_event_idx on deliveries (event_id);

create table idempotency_keys (
  scope     text not null,
  key       text not null,
  event_id  blob not null,
  primary key (scope, key)
);
insert into idempotency_keys (scope, key, event_id)
select idempotency_scope, idempotency_key, id
from outbox_events
where idempotency_key is not null and idempotency_scope is not null;
create index idempotency_keys_event_idx on idempotency_keys (event_id);

create table events_without_key_constraint (
  id                  blob        not null primary key,
  event_type          text        not null,
  -- the exact JSON text received, so the delivered bytes never depend on a re-serialisation
  payload             text        not null,
  idempotency_key     text,
  idempotency_scope   text,
  request_hash        text        not null,
  deliveries_created  integer     not null,
  traceparent         text,
  created_at          text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
insert into events_without_key_constraint
select id, event_type, payload, idempotency_key, idempotency_scope, request_hash,
       deliveries_created, traceparent, created_at
from outbox_events;
drop table outbox_events;
alter table events_without_key_constraint rename to outbox_events;
create index outbox_events_type_idx on outbox_events (event_type, id);

create index dead_letters_subscription_idx on dead_letters (subscription_id, id);
create index dead_letters_event_idx on dead_letters (event_id);

create view all_deliveries as
select id, event_id, target, subscription_id, status, attempts, next_attempt_at, lease_token,
       leased_by, last_error, created_at, updated_at
from deliveries
union all
select id, event_id, target, subscription_id, status, attempts, updated_at, lease_token,
       leased_by, last_error, created_at, updated_at
from delivery_history;
