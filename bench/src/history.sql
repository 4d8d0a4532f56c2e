-- Past work for the `history` scenarios: $EVENTS events spread over the 60 days before now,
-- each with one finished delivery and one attempt, 1 % dead (a dead letter each, half of them
-- replayed), to 100 disabled subscriptions (no routes: the run's own subscription is the only
-- one a new event reaches). Ids are UUID v7 of their time, so every row lands in its day.
select ih_create_day_partitions((now() at time zone 'UTC')::date - 61,
                                (now() at time zone 'UTC')::date);

insert into subscriptions (id, url, secret, event_types, enabled, disabled_reason)
select ih_uuid_v7(), 'http://127.0.0.1:9/past', 'whsec_x', '["*"]', false, 'disabled_by_operator'
from generate_series(1, 100);

create temporary table seed as
select n,
       (lpad(to_hex(ms), 12, '0') || '7' || substr(md5(n::text), 1, 19))::uuid as event_id,
       (lpad(to_hex(ms + 1), 12, '0') || '7' || substr(md5('d' || n), 1, 19))::uuid as delivery_id,
       (lpad(to_hex(ms + 2), 12, '0') || '7' || substr(md5('a' || n), 1, 19))::uuid as attempt_id,
       to_timestamp(ms / 1000.0) as at,
       (array(select id from subscriptions where not enabled order by id))[1 + n % 100]
         as subscription_id
from generate_series(1, $EVENTS) n,
     lateral (select (extract(epoch from now() - interval '60 days') * 1000)::bigint
                     + (n * (5184000000.0 / $EVENTS))::bigint as ms) t;

insert into outbox_events (id, event_type, payload, request_hash, deliveries_created, created_at)
select event_id, 'past.' || (n % 20), '{"order_id":' || n || ',"note":"a past event"}', 'h', 1, at
from seed;
insert into delivery_history
  (id, event_id, target, subscription_id, status, attempts, last_error, created_at, updated_at)
select delivery_id, event_id, 'webhook', subscription_id,
       case when n % 100 = 0 then 'dead' else 'delivered' end, 1,
       case when n % 100 = 0 then 'HTTP 500' end, at, at
from seed;
insert into delivery_attempts
  (id, delivery_id, event_id, attempt_number, started_at, duration_ms, response_status,
   response_body, outcome)
select attempt_id, delivery_id, event_id, 1, at, 3,
       case when n % 100 = 0 then 500 else 200 end, 'ok',
       case when n % 100 = 0 then 'dead_lettered' else 'delivered' end
from seed;
insert into dead_letters (id, delivery_id, event_id, subscription_id, target, reason, created_at,
                          replayed_at)
select attempt_id, delivery_id, event_id, subscription_id, 'webhook',
       'max_attempts_exceeded: http_500', at, case when n % 200 = 0 then at end
from seed where n % 100 = 0;
drop table seed;
analyze;
