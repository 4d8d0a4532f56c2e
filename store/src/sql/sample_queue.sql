-- The queue's depth and the age of its oldest due row, for metrics. Taken by one worker at a
-- time (transaction-level advisory lock; the others skip the round). Both reads walk the
-- pending and leased rows' partial indexes; the count stops at 100,000 so a huge backlog stays
-- cheap to sample.
with sampler as (
  select pg_try_advisory_xact_lock(4849515545554553) as leader
)
select sampler.leader,
       case when sampler.leader then
         (select count(*) from (select 1 from deliveries
                                 where status in ('pending', 'leased')
                                   and next_attempt_at <= now()
                                 limit 100000) due)
       end as depth,
       case when sampler.leader then
         (select extract(epoch from now() - min(next_attempt_at))::float8 from deliveries
           where status in ('pending', 'leased')
             and next_attempt_at <= now())
       end as oldest_due_age_seconds
from sampler
