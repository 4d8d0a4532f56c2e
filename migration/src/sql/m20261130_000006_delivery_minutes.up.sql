-- The console's charts: each worker's delivery outcomes per minute, written by the worker
-- every few seconds from what it counted (its row of a minute replaced with the minute's
-- totals so far), and the due queue's depth sampled by the worker that samples it. The charts
-- and the overview read these rows, a few thousand for a day, never the attempt log. Rows
-- older than a day are removed as new ones are written.
create table delivery_minutes (
  minute       timestamptz not null,
  worker_id    text        not null,
  delivered    bigint      not null default 0,
  retried      bigint      not null default 0,
  dead         bigint      not null default 0,
  -- publish → delivered lag of the minute's deliveries, counted per bucket (bounds in
  -- store::charts::LAG_BOUNDS_MS)
  lag_buckets  jsonb       not null default '[]',
  due          bigint,
  primary key (minute, worker_id)
);

-- The subscriptions' health view: each worker's attempts per subscription in 5-minute
-- buckets (delivered, failed), written the same way; an hour of them gives a subscription's
-- success rate and its sparkline.
create table subscription_minutes (
  minute           timestamptz not null,
  worker_id        text        not null,
  subscription_id  uuid        not null,
  delivered        bigint      not null default 0,
  failed           bigint      not null default 0,
  primary key (minute, worker_id, subscription_id)
);
