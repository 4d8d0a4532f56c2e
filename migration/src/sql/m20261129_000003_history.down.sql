-- Back to one deliveries table and unpartitioned history, rows kept.
drop view all_deliveries;

alter table outbox_events rename to outbox_events_v2;
alter table outbox_events_v2 rename constraint outbox_events_pkey to outbox_events_v2_pkey;
alter index outbox_events_type_idx rename to outbox_events_v2_type_idx;
alter table delivery_attempts rename to delivery_attempts_v2;
alter table delivery_attempts_v2 rename constraint delivery_attempts_pkey to delivery_attempts_v2_pkey;
alter index delivery_attempts_event_idx rename to delivery_attempts_v2_event_idx;
alter table dead_letters rename to dead_letters_v2;
alter table dead_letters_v2 rename constraint dead_letters_pkey to dead_letters_v2_pkey;
alter index dead_letters_unreplayed_idx rename to dead_letters_v2_unreplayed_idx;

create table outbox_events (
  id                  uuid        primary key,
  event_type          text        not null,
  payload             text        not null,
  idempotency_key     text,
  idempotency_scope   text,
  request_hash        text        not null,
  deliveries_created  integer     not null,
  traceparent         text,
  created_at          timestamptz not null default now(),
  constraint outbox_events_idempotency_key unique (idempotency_scope, idempotency_key)
);
insert into outbox_events
select id, event_type, payload, idempotency_key, idempotency_scope, request_hash,
       deliveries_created, traceparent, created_at
from outbox_events_v2;

alter table deliveries drop constraint deliveries_status_check;
alter table deliveries add constraint deliveries_status_check
  check (status in ('pending', 'leased', 'delivered', 'dead', 'cancelled'));
insert into deliveries
  (id, event_id, target, subscription_id, status, attempts, next_attempt_at, last_error,
   created_at, updated_at)
select id, event_id, target, subscription_id, status, attempts, updated_at, last_error,
       created_at, updated_at
from delivery_history;
alter table deliveries add constraint deliveries_event_id_fkey
  foreign key (event_id) references outbox_events (id) on delete cascade;
alter table deliveries add constraint deliveries_subscription_id_fkey
  foreign key (subscription_id) references subscriptions (id);
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
  worker_id        text,
  external_id      text,
  outcome          text        not null
                   check (outcome in ('delivered', 'retry_scheduled', 'dead_lettered'))
);
insert into delivery_attempts select * from delivery_attempts_v2;
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
insert into dead_letters select * from dead_letters_v2;
create index dead_letters_unreplayed_idx on dead_letters (subscription_id, created_at)
  where replayed_at is null;

drop table outbox_events_v2, delivery_attempts_v2, dead_letters_v2, delivery_history,
           idempotency_keys;
drop function ih_create_day_partitions(date, date);
drop function ih_uuid_time(uuid);
drop function ih_uuid_floor(timestamptz);
