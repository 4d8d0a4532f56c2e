-- The dry run of a bulk replay: what replay_dead_letters_batch.sql would take.
select count(*)
from dead_letters dl
where dl.replayed_at is null
  and ($1::uuid is null or dl.subscription_id = $1)
  and ($2::timestamptz is null or dl.created_at >= $2)
  and ($3::timestamptz is null or dl.created_at < $3)
  and (dl.subscription_id is null
       or exists (select 1 from subscriptions s
                  where s.id = dl.subscription_id and s.deleted_at is null))
