-- One page of stored secrets for `ih-migrate reencrypt`, in id order so a run can stop and a
-- new one start again from the beginning at no cost (rows already under the current key are
-- skipped). Soft-deleted subscriptions keep their rows, so their secrets are included.
select id, secret, previous_secret
from subscriptions
where $1::uuid is null or id > $1
order by id
limit $2
