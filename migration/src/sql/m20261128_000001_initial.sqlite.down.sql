drop table if exists dead_letters;
drop table if exists delivery_attempts;
drop table if exists deliveries;
drop table if exists outbox_events;
drop table if exists subscriptions;
