-- Back to day partitions only. Partitions of another width stay as they are, rows in place.
do $$
declare
  p record;
  parent text;
begin
  for p in select suffix from ih_partitions() loop
    foreach parent in array array['outbox_events', 'delivery_history', 'delivery_attempts', 'dead_letters'] loop
      execute format('alter table %I reset (autovacuum_vacuum_insert_threshold)', parent || '_' || p.suffix);
    end loop;
  end loop;
end
$$;

drop function ih_create_partitions(bigint, timestamptz);
drop function ih_replace_wide_partitions(bigint, timestamptz);
drop function ih_partition_horizon(bigint);
drop function ih_partition_width(bigint, timestamptz);
drop function ih_slice_start(timestamptz, bigint);

create or replace function ih_create_day_partitions(first_day date, last_day date) returns integer
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

drop function ih_create_partition(timestamptz, timestamptz);
drop function ih_partitions();
