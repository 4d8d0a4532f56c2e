-- Uses deliveries_event_idx.
select id, event_id, target, subscription_id, status, attempts, next_attempt_at, last_error,
       created_at, updated_at
from deliveries
where event_id = $1
order by id
