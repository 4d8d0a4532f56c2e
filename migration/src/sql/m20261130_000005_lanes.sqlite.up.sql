-- Lanes, as on Postgres (see the Postgres file beside this one). SQLite's single writer
-- serialises every lease, publish and completion, so no lock protocol is needed around
-- `next_due_at` here.
create table lanes (
  id               blob        not null primary key,
  next_due_at      text,
  last_leased_at   text        not null default '0000-01-01T00:00:00.000Z',
  next_allowed_at  text        not null default '0000-01-01T00:00:00.000Z',
  -- unused here: the lease marks a lane empty at once, its writes being serialised
  empty_since      text
);
create index lanes_due_idx on lanes (last_leased_at) where next_due_at is not null;
-- lanes with due work held back by their rate limit's clock, earliest first: when to lease next
create index lanes_allowed_idx on lanes (next_allowed_at) where next_due_at is not null;

insert into lanes (id) values (x'00000000000000000000000000000000');
insert into lanes (id) select id from subscriptions;

alter table subscriptions add column max_in_flight integer;
alter table subscriptions add column rate_limit_per_second real;
-- endpoint health, as on Postgres
alter table subscriptions add column failing_since text;
alter table subscriptions add column failure_window_started_at text;
alter table subscriptions add column failure_window_count integer not null default 0;
alter table subscriptions add column circuit_opened_at text;
alter table subscriptions add column circuit_probes integer not null default 0;

alter table deliveries add column lane blob not null default x'00000000000000000000000000000000';
update deliveries set lane = subscription_id where subscription_id is not null;

drop index deliveries_due_idx;
create index deliveries_pending_idx on deliveries (lane, next_attempt_at, id)
  where status = 'pending';
create index deliveries_leased_idx on deliveries (lane, next_attempt_at)
  where status = 'leased';

update lanes
set next_due_at = (select min(d.next_attempt_at) from deliveries d
                   where d.lane = lanes.id and d.status = 'pending');
