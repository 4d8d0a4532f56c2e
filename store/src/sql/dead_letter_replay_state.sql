select dl.replayed_at is not null as replayed,
       dl.subscription_id is not null
         and not exists (select 1 from subscriptions s
                         where s.id = dl.subscription_id and s.deleted_at is null) as subscription_deleted
from dead_letters dl
where dl.id = $1
