-- Newest first; the cursor is the last id of the previous page (uuid v7 ids sort by time).
-- Relies on the primary key for order; the filters are applied while walking it.
select id, event_type, created_at, deliveries_created
from outbox_events
where ($1::text is null or event_type = $1)
  and ($2::timestamptz is null or created_at >= $2)
  and ($3::timestamptz is null or created_at < $3)
  and ($4::uuid is null or id < $4)
order by id desc
limit $5
