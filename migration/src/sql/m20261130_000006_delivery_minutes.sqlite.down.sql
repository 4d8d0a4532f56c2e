drop table subscription_minutes;
drop table delivery_minutes;
