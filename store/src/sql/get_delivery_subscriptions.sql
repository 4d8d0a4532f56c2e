-- The subscriptions of a leased batch, as they are now: the worker sends to the subscription
-- as it is at send time. A previous secret is returned only while its grace period lasts.
select id, url, secret,
       case when previous_secret_expires_at > now() then previous_secret end as previous_secret,
       headers, enabled, deleted_at is not null as deleted
from subscriptions
where id = any($1::uuid[])
