-- Routing by event type, as on Postgres (see the Postgres file beside this one).
create table subscription_routes (
  event_type       text not null,
  subscription_id  blob not null references subscriptions (id),
  primary key (event_type, subscription_id)
) without rowid;
create index subscription_routes_subscription_idx on subscription_routes (subscription_id);

insert into subscription_routes (event_type, subscription_id)
select distinct types.value, s.id
from subscriptions s, json_each(s.event_types) as types
where s.enabled and s.deleted_at is null;
