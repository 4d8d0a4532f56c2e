-- Newest first, cursor = last id of the previous page.
select id, delivery_id, event_id, subscription_id, target, reason, created_at, replayed_at,
       replay_delivery_id
from dead_letters
where ($1::uuid is null or subscription_id = $1)
  and ($2::boolean is null or (replayed_at is not null) = $2)
  and ($3::uuid is null or id < $3)
order by id desc
limit $4
