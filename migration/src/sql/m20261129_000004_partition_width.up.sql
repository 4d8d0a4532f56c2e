-- Partitions as wide as the retention needs.
--
-- A day partition can only leave whole, so a retention shorter than a few days kept up to a
-- day more than asked. The partitions are now a day, an hour, a minute or 10 seconds wide, as
-- the workers' retention chooses; the other processes keep the width they find. A partition wider than the
-- chosen width is replaced by narrower ones when it holds no row yet (the day made ahead by
-- the migration, on a new database), so a short retention takes effect at once.
--
-- History partitions are only appended to and then dropped whole: inserts alone no longer
-- start an autovacuum of them (it would rewrite pages that are about to be dropped, during
-- the load that filled them). Updates and deletes still do, and so does the freeze vacuum.

-- Every partition of the history tables with its key range, oldest first. The four tables have
-- the same partitions, each named `<table>_<suffix>`.
create function ih_partitions() returns table (suffix text, low uuid, high uuid)
language sql stable
as $$
  select substr(c.relname, length('outbox_events_') + 1),
         (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([0-9a-f-]+)''\)'))[1]::uuid,
         (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([0-9a-f-]+)''\)'))[1]::uuid
  from pg_inherits i
  join pg_class c on c.oid = i.inhrelid
  where i.inhparent = 'outbox_events'::regclass
  order by 2
$$;

-- Creates the partitions of [low, high) in the four history tables; named after the start,
-- `pYYYYMMDD` for a whole UTC day, else `pYYYYMMDD_HH24MI`, with the seconds when they are
-- not zero. Each is made as a table of its own, then attached: `create table ... partition
-- of` would hold a lock on the parent that stops every publish until the transaction ends,
-- where attaching an empty table takes one that inserts pass.
create function ih_create_partition(low timestamptz, high timestamptz) returns integer
language plpgsql
as $$
declare
  parent text;
  suffix text;
begin
  if high - low = interval '1 day' and low = date_trunc('day', low at time zone 'UTC') at time zone 'UTC' then
    suffix := 'p' || to_char(low at time zone 'UTC', 'YYYYMMDD');
  else
    suffix := 'p' || to_char(low at time zone 'UTC', 'YYYYMMDD_HH24MI')
              || case when extract(second from low) = 0 then ''
                      else to_char(low at time zone 'UTC', 'SS') end;
  end if;
  foreach parent in array array['outbox_events', 'delivery_history', 'delivery_attempts', 'dead_letters'] loop
    execute format('create table %I (like %I including all)
                    with (autovacuum_vacuum_insert_threshold = -1)',
                   parent || '_' || suffix, parent);
    execute format('alter table %I attach partition %I for values from (%L) to (%L)',
                   parent, parent || '_' || suffix, ih_uuid_floor(low), ih_uuid_floor(high));
  end loop;
  return 4;
end
$$;

-- Creates the day partitions from first_day to last_day that no partition covers any part of
-- (for rows written with past ids: the migrations, and tests); returns how many tables.
create or replace function ih_create_day_partitions(first_day date, last_day date) returns integer
language plpgsql
as $$
declare
  day date;
  day_low timestamptz;
  day_high timestamptz;
  created integer := 0;
begin
  perform pg_advisory_xact_lock(4849504152544954); -- "IHPARTIT"
  for day in select generate_series(first_day, last_day, interval '1 day')::date loop
    day_low := day::timestamp at time zone 'UTC';
    day_high := (day + 1)::timestamp at time zone 'UTC';
    if not exists (select 1 from ih_partitions() p
                   where p.low < ih_uuid_floor(day_high) and p.high > ih_uuid_floor(day_low)) then
      created := created + ih_create_partition(day_low, day_high);
    end if;
  end loop;
  return created;
end
$$;

-- The width of partitions asked for: `width_seconds` (10, 60, 3600 or 86400), or when it is
-- null the width of the partition holding `at_time`, else of the newest; a day when there is
-- none or it is none of those.
create function ih_partition_width(width_seconds bigint, at_time timestamptz) returns bigint
language sql stable
as $$
  select case when w in (10, 60, 3600, 86400) then w else 86400 end
  from (select coalesce(width_seconds,
                        (select extract(epoch from ih_uuid_time(high) - ih_uuid_time(low))::bigint
                         from ih_partitions()
                         order by (low <= ih_uuid_floor(at_time) and high > ih_uuid_floor(at_time)) desc,
                                  low desc
                         limit 1)) as w) chosen
$$;

-- How far ahead partitions of a width are kept: a week of days, two days of hours, an hour of
-- minutes, 10 minutes of 10 seconds.
create function ih_partition_horizon(width bigint) returns interval
language sql immutable
as $$
  select case width when 86400 then interval '7 days'
                    when 3600 then interval '2 days'
                    when 60 then interval '1 hour'
                    else interval '10 minutes' end
$$;

-- The start of the slice of `width` seconds holding `at_time`, on a grid from the Unix epoch
-- (so a day is a UTC day).
create function ih_slice_start(at_time timestamptz, width bigint) returns timestamptz
language sql immutable
as $$
  select to_timestamp(floor(extract(epoch from at_time) / width) * width)
$$;

-- Drops each partition wider than `width_seconds` that reaches past the slice of `at_time` and
-- starts before the horizon, if it holds no row in any table (a day made ahead, when the
-- retention asks for narrower partitions); `ih_create_partitions` then fills the gap. Returns
-- how many tables it dropped. Apart from the creation, so the parent tables' locks the drop
-- takes last milliseconds; a partition busy for more than 100 ms is left for the next call
-- (every publish waits behind the drop while it waits for its locks).
create function ih_replace_wide_partitions(width_seconds bigint, at_time timestamptz) returns integer
language plpgsql
as $$
declare
  width bigint := ih_partition_width(width_seconds, at_time);
  current_start timestamptz;
  p record;
  tables text;
  busy boolean;
  dropped integer := 0;
begin
  perform pg_advisory_xact_lock(4849504152544954); -- "IHPARTIT"
  current_start := ih_slice_start(at_time, width);
  perform set_config('lock_timeout', '100ms', true);
  for p in select * from ih_partitions() q
           where q.high > ih_uuid_floor(current_start)
             and q.low < ih_uuid_floor(at_time + ih_partition_horizon(width))
             and ih_uuid_time(q.high) - ih_uuid_time(q.low) > make_interval(secs => width) loop
    tables := format('outbox_events_%1$s, delivery_history_%1$s, delivery_attempts_%1$s, dead_letters_%1$s',
                     p.suffix);
    begin
      execute 'lock table ' || tables || ' in access exclusive mode';
      execute format('select exists (select 1 from outbox_events_%1$s)
                          or exists (select 1 from delivery_history_%1$s)
                          or exists (select 1 from delivery_attempts_%1$s)
                          or exists (select 1 from dead_letters_%1$s)', p.suffix)
        into busy;
      if not busy then
        execute 'drop table ' || tables;
        dropped := dropped + 4;
      end if;
    exception when lock_not_available then
      null;
    end;
  end loop;
  return dropped;
end
$$;

-- Keeps partitions of the width `ih_partition_width` gives from `at_time` to its horizon:
-- every gap from the end of the last partition before the current slice up to the horizon is
-- filled, with one partition for whatever lies before the slice preceding the current one,
-- and slices on the width's grid from there. Returns how many tables it created. Callers serialise
-- on an advisory lock.
create function ih_create_partitions(width_seconds bigint, at_time timestamptz) returns integer
language plpgsql
as $$
declare
  width bigint := ih_partition_width(width_seconds, at_time);
  current_start timestamptz;
  horizon timestamptz;
  fill_start timestamptz;
  -- the partitions there are, read once (`ih_partitions` deparses every bound), oldest first
  lows timestamptz[];
  highs timestamptz[];
  i integer := 1;
  t timestamptz;
  slice_end timestamptz;
  created integer := 0;
begin
  perform pg_advisory_xact_lock(4849504152544954); -- "IHPARTIT"
  current_start := ih_slice_start(at_time, width);
  horizon := at_time + ih_partition_horizon(width);
  fill_start := current_start - make_interval(secs => width);
  select coalesce(array_agg(ih_uuid_time(q.low) order by q.low), '{}'),
         coalesce(array_agg(ih_uuid_time(q.high) order by q.low), '{}')
    into lows, highs
  from ih_partitions() q;
  -- one slice before the current one is made on the grid; before that, one partition reaches
  -- back to the end of the last one there is (a replaced day leaves that gap)
  select coalesce(max(h), fill_start) into t from unnest(highs) h where h <= fill_start;
  while t < horizon loop
    while i <= cardinality(highs) and highs[i] <= t loop
      i := i + 1;
    end loop;
    if i <= cardinality(lows) and lows[i] <= t then
      t := highs[i];
      continue;
    end if;
    if t < fill_start then
      slice_end := fill_start;
    else
      slice_end := ih_slice_start(t, width) + make_interval(secs => width);
    end if;
    if i <= cardinality(lows) and lows[i] < slice_end then
      slice_end := lows[i];
    end if;
    created := created + ih_create_partition(t, slice_end);
    t := slice_end;
  end loop;
  return created;
end
$$;

-- The partitions there are stop vacuuming after inserts alone too.
do $$
declare
  p record;
  parent text;
begin
  for p in select suffix from ih_partitions() loop
    foreach parent in array array['outbox_events', 'delivery_history', 'delivery_attempts', 'dead_letters'] loop
      execute format('alter table %I set (autovacuum_vacuum_insert_threshold = -1)', parent || '_' || p.suffix);
    end loop;
  end loop;
end
$$;
