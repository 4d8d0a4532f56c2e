-- The console's overview: the due queue (counted up to 100,000, as for the metrics) and the
-- age of its oldest row, the attempts of the last $1 seconds by outcome, and the dead letters
-- not yet replayed. Attempt ids are UUID v7 (48-bit Unix milliseconds first), so "since"
-- is a range of the primary key and the attempt log is never scanned whole.
with first_id as (
  select (substr(ms, 1, 8) || '-' || substr(ms, 9, 4) || '-0000-0000-000000000000')::uuid as id
  from (select lpad(to_hex(((extract(epoch from now()) - $1::float8) * 1000)::bigint), 12, '0') as ms) m
),
recent as (
  select a.outcome
  from delivery_attempts a, first_id f
  where a.id >= f.id
)
select
  (select count(*) from (select 1 from deliveries
                          where status in ('pending', 'leased')
                            and next_attempt_at <= now()
                          limit 100000) due) as due,
  (select extract(epoch from now() - min(next_attempt_at))::float8 from deliveries
    where status in ('pending', 'leased')
      and next_attempt_at <= now()) as oldest_due_age_seconds,
  (select count(*) from recent where outcome = 'delivered') as delivered,
  (select count(*) from recent where outcome <> 'delivered') as failed,
  (select count(*) from dead_letters where replayed_at is null) as dead_letters
