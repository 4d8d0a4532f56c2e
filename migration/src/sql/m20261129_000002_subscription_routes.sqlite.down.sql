drop table if exists subscription_routes;
