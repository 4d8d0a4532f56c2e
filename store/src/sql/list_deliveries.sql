-- Newest first, cursor = last id of the previous page. `status = 'dead'` is served by
-- deliveries_dead_idx; other filters walk the primary key.
select id, event_id, target, subscription_id, status, attempts, next_attempt_at, last_error,
       created_at, updated_at
from deliveries
where ($1::text is null or status = $1)
  and ($2::uuid is null or subscription_id = $2)
  and ($3::uuid is null or event_id = $3)
  and ($4::uuid is null or id < $4)
order by id desc
limit $5
