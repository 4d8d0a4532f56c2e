-- Uses delivery_attempts_event_idx; the join shows each attempt's target.
select a.id, a.delivery_id, a.event_id, d.target, a.attempt_number, a.started_at, a.duration_ms,
       a.response_status, a.response_body, a.error, a.worker_id, a.external_id, a.outcome
from delivery_attempts a
left join deliveries d on d.id = a.delivery_id
where a.event_id = $1
order by a.started_at, a.attempt_number, a.id
