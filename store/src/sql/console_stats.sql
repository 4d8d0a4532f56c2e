-- The console's overview, apart from the recent outcomes (the workers' minutes, store::charts): the due queue
-- (counted up to 100,000, as for the metrics), the age of its oldest row, and the dead letters
-- not yet replayed, counted up to 10,000: each is an entry of a partial index in every day's
-- partition, so an exact count would grow with the history. Without parameters, Postgres
-- plans this once per connection instead of once per call over every partition.
select
  (select count(*) from (select 1 from deliveries
                          where status in ('pending', 'leased')
                            and next_attempt_at <= now()
                          limit 100000) due) as due,
  (select extract(epoch from now() - min(next_attempt_at))::float8 from deliveries
    where status in ('pending', 'leased')
      and next_attempt_at <= now()) as oldest_due_age_seconds,
  (select count(*) from (select 1 from dead_letters
                          where replayed_at is null
                          limit 10000) unreplayed) as dead_letters
