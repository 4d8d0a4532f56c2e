-- The live queue apart from the history.
--
-- `deliveries` keeps only live work (pending and leased): the completion statement moves a
-- finished delivery into `delivery_history` in the same statement, so the table the lease and
-- the completion touch, and its indexes, stay the size of the backlog.
--
-- Events, finished deliveries, attempts and dead letters are range-partitioned by day on the
-- event's UUID v7 (its first 48 bits are Unix milliseconds): every row of one event lives in
-- the partitions of the event's day, so retention removes a day with four `drop table`s and
-- nothing is vacuumed. A unique constraint on a partitioned table must hold the partition key,
-- so idempotency keys move to their own table.
--
-- No foreign key is checked on the hot path any more; the invariants that replace them:
-- an event and its deliveries are written by one statement; a day is dropped only when none of
-- its events has a live delivery or a dead letter still to be kept (checked under the lock the
-- drop takes); subscriptions are never deleted, only marked deleted.

-- The smallest UUID v7 of an instant: ids at or after it were made at or after it.
create function ih_uuid_floor(t timestamptz) returns uuid
language sql immutable parallel safe
as $$
  select (lpad(to_hex(floor(extract(epoch from t) * 1000)::bigint), 12, '0')
          || '00000000000000000000')::uuid
$$;

-- The instant a UUID v7 was made (millisecond precision).
create function ih_uuid_time(id uuid) returns timestamptz
language sql immutable parallel safe
as $$
  select to_timestamp(
    ('x' || lpad(substr(replace(id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint / 1000.0)
$$;

-- Creates the day partitions (UTC days) of the four history tables from first_day to last_day,
-- those missing; returns how many tables it created. Called by the migration, by `ih-api` at
-- start and by the workers' maintenance, which keep a week ahead. Concurrent callers serialise
-- on an advisory lock, so two never race to create the same table.
create function ih_create_day_partitions(first_day date, last_day date) returns integer
language plpgsql
as $$
declare
  day date;
  parent text;
  child text;
  created integer := 0;
begin
  perform pg_advisory_xact_lock(4849504152544954); -- "IHPARTIT"
  for day in select generate_series(first_day, last_day, interval '1 day')::date loop
    foreach parent in array array['outbox_events', 'delivery_history', 'delivery_attempts', 'dead_letters'] loop
      child := parent || '_p' || to_char(day, 'YYYYMMDD');
      if to_regclass(child) is null then
        execute format('create table %I partition of %I for values from (%L) to (%L)',
                       child, parent,
                       ih_uuid_floor(day::timestamp at time zone 'UTC'),
                       ih_uuid_floor((day + 1)::timestamp at time zone 'UTC'));
        created := created + 1;
      end if;
    end loop;
  end loop;
  return created;
end
$$;

-- Today's tables step aside; their rows are copied below. Their indexes are dropped first (the
-- copy reads them whole anyway) and their primary keys renamed, so the names are free.
alter table deliveries drop constraint deliveries_event_id_fkey;
alter table deliveries drop constraint deliveries_subscription_id_fkey;
alter table outbox_events rename to outbox_events_v1;
alter table outbox_events_v1 rename constraint outbox_events_pkey to outbox_events_v1_pkey;
alter table outbox_events_v1 drop constraint outbox_events_idempotency_key;
alter table delivery_attempts rename to delivery_attempts_v1;
alter table delivery_attempts_v1 rename constraint delivery_attempts_pkey to delivery_attempts_v1_pkey;
drop index delivery_attempts_event_idx;
alter table dead_letters rename to dead_letters_v1;
alter table dead_letters_v1 rename constraint dead_letters_pkey to dead_letters_v1_pkey;
drop index dead_letters_unreplayed_idx;
drop index deliveries_dead_idx;

create table outbox_events (
  id                  uuid        not null,
  event_type          text        not null,
  -- the exact JSON text received, so the delivered bytes never depend on a re-serialisation
  payload             text        not null,
  idempotency_key     text,
  idempotency_scope   text,
  request_hash        text        not null,
  deliveries_created  integer     not null,
  traceparent         text,
  created_at          timestamptz not null default now(),
  primary key (id)
) partition by range (id);
-- events of a type, newest first; a time window is a range of the primary key
create index outbox_events_type_idx on outbox_events (event_type, id);

-- An idempotency key is unique within its scope (the publishing credential's name) for as
-- long as its event is kept: retention deletes the keys of the days it drops.
create table idempotency_keys (
  scope     text not null,
  key       text not null,
  event_id  uuid not null,
  primary key (scope, key)
);
create index idempotency_keys_event_idx on idempotency_keys (event_id);

create table delivery_history (
  id               uuid        not null,
  event_id         uuid        not null,
  target           text        not null check (target in ('webhook', 'slack')),
  subscription_id  uuid,
  status           text        not null check (status in ('delivered', 'dead', 'cancelled')),
  attempts         integer     not null,
  -- always null: here so that the view below reads a column of each table in every place,
  -- which SQLite needs to merge the two by index instead of sorting them whole
  lease_token      uuid,
  leased_by        text,
  last_error       text,
  created_at       timestamptz not null,
  -- when it finished
  updated_at       timestamptz not null,
  primary key (id, event_id)
) partition by range (event_id);
create index delivery_history_event_idx on delivery_history (event_id);
create index delivery_history_subscription_idx on delivery_history (subscription_id, id);
create index delivery_history_status_idx on delivery_history (status, id);

create table delivery_attempts (
  id               uuid        not null,
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
                   check (outcome in ('delivered', 'retry_scheduled', 'dead_lettered')),
  primary key (id, event_id)
) partition by range (event_id);
create index delivery_attempts_event_idx on delivery_attempts (event_id, delivery_id);

create table dead_letters (
  id                  uuid        not null,
  delivery_id         uuid        not null,
  event_id            uuid        not null,
  subscription_id     uuid,
  target              text        not null check (target in ('webhook', 'slack')),
  reason              text        not null,
  created_at          timestamptz not null default now(),
  replayed_at         timestamptz,
  replay_delivery_id  uuid,
  primary key (id, event_id)
) partition by range (event_id);
create index dead_letters_unreplayed_idx on dead_letters (subscription_id, created_at)
  where replayed_at is null;
create index dead_letters_subscription_idx on dead_letters (subscription_id, id);
-- retention's check for dead letters still to be kept, per day
create index dead_letters_event_idx on dead_letters (event_id);

-- A partition for every day that has events, and for yesterday to a week ahead.
select ih_create_day_partitions(day, day)
from (select distinct (ih_uuid_time(id) at time zone 'UTC')::date as day
      from outbox_events_v1) days;
select ih_create_day_partitions(((now() at time zone 'UTC')::date - 1),
                                ((now() at time zone 'UTC')::date + 7));

insert into outbox_events
  (id, event_type, payload, idempotency_key, idempotency_scope, request_hash,
   deliveries_created, traceparent, created_at)
select id, event_type, payload, idempotency_key, idempotency_scope, request_hash,
       deliveries_created, traceparent, created_at
from outbox_events_v1;

insert into idempotency_keys (scope, key, event_id)
select idempotency_scope, idempotency_key, id
from outbox_events_v1
where idempotency_key is not null and idempotency_scope is not null;

insert into delivery_history
  (id, event_id, target, subscription_id, status, attempts, last_error, created_at, updated_at)
select id, event_id, target, subscription_id, status, attempts, last_error, created_at, updated_at
from deliveries
where status not in ('pending', 'leased');
delete from deliveries where status not in ('pending', 'leased');
alter table deliveries drop constraint deliveries_status_check;
alter table deliveries add constraint deliveries_status_check
  check (status in ('pending', 'leased'));

insert into delivery_attempts
select * from delivery_attempts_v1;

insert into dead_letters
select * from dead_letters_v1;

drop table outbox_events_v1, delivery_attempts_v1, dead_letters_v1;

-- Every delivery, live or finished, for the admin listings: each branch is read through its
-- own indexes and the filters are applied to both.
create view all_deliveries as
select id, event_id, target, subscription_id, status, attempts, next_attempt_at, lease_token,
       leased_by, last_error, created_at, updated_at
from deliveries
union all
select id, event_id, target, subscription_id, status, attempts, updated_at, lease_token,
       leased_by, last_error, created_at, updated_at
from delivery_history;
