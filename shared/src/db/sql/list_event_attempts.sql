-- Uses delivery_attempts_event_idx.
select id, delivery_id, event_id, attempt_number, started_at, duration_ms, response_status,
       response_body, error, worker_id, outcome
from delivery_attempts
where event_id = $1
order by started_at, attempt_number, id
