drop function ih_gate_lanes(uuid[], timestamptz[]);
drop function ih_wake_lanes(uuid[], timestamptz[]);
drop function ih_lane_key(uuid);
drop index deliveries_leased_idx;
drop index deliveries_pending_idx;
create index deliveries_due_idx on deliveries (next_attempt_at, id)
  where status in ('pending', 'leased');
alter table deliveries drop column lane;
alter table subscriptions drop column circuit_probes;
alter table subscriptions drop column circuit_opened_at;
alter table subscriptions drop column failure_window_count;
alter table subscriptions drop column failure_window_started_at;
alter table subscriptions drop column failing_since;
alter table subscriptions drop column rate_limit_per_second;
alter table subscriptions drop column max_in_flight;
drop table lanes;
