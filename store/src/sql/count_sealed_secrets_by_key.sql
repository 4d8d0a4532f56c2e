-- How many stored secrets (current and previous) each key id seals, for the worker's start-up
-- check that every key still in use is configured.
select split_part(stored.value, '.', 3) as key_id, count(*) as secrets
from subscriptions,
     lateral (values (secret), (previous_secret)) as stored(value)
where stored.value like 'enc.%'
group by 1
order by 1
