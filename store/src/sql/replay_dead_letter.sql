-- Marks one dead letter replayed and queues a fresh delivery (attempts 0) in one statement.
-- No row comes back when it is unknown, already replayed, or its subscription was deleted;
-- the caller then reads which (`store::admin::dead_letter_replay_state`).
with replayed as (
  update dead_letters dl
  set replayed_at = now(), replay_delivery_id = $2
  where dl.id = $1
    and dl.replayed_at is null
    and (dl.subscription_id is null
         or exists (select 1 from subscriptions s
                    where s.id = dl.subscription_id and s.deleted_at is null))
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
