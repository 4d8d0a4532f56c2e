-- Routing by event type: one row per (event type, subscription) of every enabled subscription
-- that is not deleted, `*` standing for a wildcard subscription. The publish fan-out reads the rows of
-- the event's type and of `*` through the primary key, so its cost follows the subscriptions
-- that match, not all of them, and it never reads the subscriptions table. The store
-- maintains the rows with the subscription, in the same transaction (create, change of event
-- types, enabling, disabling, delete; the worker's disable on 410 Gone too).
create table subscription_routes (
  event_type       text not null,
  subscription_id  uuid not null references subscriptions (id),
  primary key (event_type, subscription_id)
);
create index subscription_routes_subscription_idx on subscription_routes (subscription_id);

insert into subscription_routes (event_type, subscription_id)
select distinct types.event_type, s.id
from subscriptions s,
     jsonb_array_elements_text(s.event_types) as types(event_type)
where s.enabled and s.deleted_at is null;
