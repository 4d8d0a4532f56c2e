-- One batch of a bulk replay. Dead letters are taken oldest first and locked with SKIP LOCKED,
-- so two operators replaying at once never queue the same dead letter twice.
with picked as (
  select dl.id
  from dead_letters dl
  where dl.replayed_at is null
    and ($1::uuid is null or dl.subscription_id = $1)
    and ($2::timestamptz is null or dl.created_at >= $2)
    and ($3::timestamptz is null or dl.created_at < $3)
    and (dl.subscription_id is null
         or exists (select 1 from subscriptions s
                    where s.id = dl.subscription_id and s.deleted_at is null))
  order by dl.id
  limit $4
  for update skip locked
),
replayed as (
  update dead_letters dl
  set replayed_at = now(), replay_delivery_id = ih_uuid_v7()
  from picked
  where dl.id = picked.id
  returning dl.event_id, dl.subscription_id, dl.target, dl.replay_delivery_id
),
queued as (
  insert into deliveries
    (id, event_id, target, subscription_id, lane, status, attempts, next_attempt_at, created_at,
     updated_at)
  select replay_delivery_id, event_id, target, subscription_id,
         coalesce(subscription_id, '00000000-0000-0000-0000-000000000000'), 'pending', 0, now(),
         now(), now()
  from replayed
  returning id, lane
),
woken as (
  select ih_wake_lanes(array_agg(lane), array_agg(now())) as woken
  from (select distinct lane from queued) lanes
)
select id
from queued, woken
