-- Back to one deliveries table, rows kept.
drop view all_deliveries;
drop index dead_letters_event_idx;
drop index dead_letters_subscription_idx;

create table events_with_key_constraint (
  id                  blob        not null primary key,
  event_type          text        not null,
  payload             text        not null,
  idempotency_key     text,
  idempotency_scope   text,
  request_hash        text        not null,
  deliveries_created  integer     not null,
  traceparent         text,
  created_at          text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  constraint outbox_events_idempotency_key unique (idempotency_scope, idempotency_key)
);
insert into events_with_key_constraint
select id, event_type, payload, idempotency_key, idempotency_scope, request_hash,
       deliveries_created, traceparent, created_at
from outbox_events;
drop table outbox_events;
alter table events_with_key_constraint rename to outbox_events;
drop table idempotency_keys;

create table all_deliveries_table (
  id               blob        not null primary key,
  event_id         blob        not null references outbox_events (id) on delete cascade,
  target           text        not null check (target in ('webhook', 'slack')),
  subscription_id  blob        references subscriptions (id),
  status           text        not null default 'pending'
                   check (status in ('pending', 'leased', 'delivered', 'dead', 'cancelled')),
  attempts         integer     not null default 0,
  next_attempt_at  text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  lease_token      blob,
  leased_by        text,
  last_error       text,
  created_at       text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at       text        not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
insert into all_deliveries_table
select id, event_id, target, subscription_id, status, attempts, next_attempt_at, lease_token,
       leased_by, last_error, created_at, updated_at
from deliveries;
insert into all_deliveries_table
  (id, event_id, target, subscription_id, status, attempts, next_attempt_at, last_error,
   created_at, updated_at)
select id, event_id, target, subscription_id, status, attempts, updated_at, last_error,
       created_at, updated_at
from delivery_history;
drop table deliveries;
drop table delivery_history;
alter table all_deliveries_table rename to deliveries;
create index deliveries_due_idx on deliveries (next_attempt_at, id)
  where status in ('pending', 'leased');
create index deliveries_event_idx on deliveries (event_id);
create index deliveries_dead_idx on deliveries (id) where status = 'dead';
