-- The console's charts, as on Postgres (see the Postgres file beside this one).
create table delivery_minutes (
  minute       text    not null,
  worker_id    text    not null,
  delivered    integer not null default 0,
  retried      integer not null default 0,
  dead         integer not null default 0,
  lag_buckets  text    not null default '[]',
  due          integer,
  primary key (minute, worker_id)
);

create table subscription_minutes (
  minute           text    not null,
  worker_id        text    not null,
  subscription_id  blob    not null,
  delivered        integer not null default 0,
  failed           integer not null default 0,
  primary key (minute, worker_id, subscription_id)
);
