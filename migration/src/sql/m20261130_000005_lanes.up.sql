-- Lanes: the lease's unit of fairness and of limits. A lane is a subscription (same id), and
-- every Slack delivery shares one lane (the nil uuid). A lane records when it has due work
-- (`next_due_at`, the earliest pending row's time; null when it has none) and when it was last
-- leased from, so the lease goes round the lanes with due work, a few rows each, instead of
-- reading the queue in time order where one subscription's backlog would come first.
--
-- In-flight rows are counted, not kept in a counter: `deliveries_leased_idx` holds only the
-- leased rows, so the count per lane reads at most its limit of entries and nothing drifts
-- when a worker dies.
create table lanes (
  id               uuid        primary key,
  next_due_at      timestamptz,
  last_leased_at   timestamptz not null default '-infinity',
  -- the rate limit's clock: the lane is not leased from before it
  next_allowed_at  timestamptz not null default '-infinity',
  -- since when the lane has had nothing due: a lane is marked empty only after a second of
  -- it, so a lane with steady traffic stays due and its publishes never write it
  empty_since      timestamptz
) with (fillfactor = 50);
create index lanes_due_idx on lanes (last_leased_at) where next_due_at is not null;
-- lanes with due work held back by their rate limit's clock, earliest first: when to lease next
create index lanes_allowed_idx on lanes (next_allowed_at) where next_due_at is not null;

insert into lanes (id) values ('00000000-0000-0000-0000-000000000000');
insert into lanes (id) select id from subscriptions;

-- the fleet-wide limits of a subscription; null takes the configured default
alter table subscriptions add column max_in_flight integer;
alter table subscriptions add column rate_limit_per_second double precision;

-- Endpoint health. failing_since: the first failure since the last success (null: healthy).
-- The failures of the current window (failure_window_*) open the circuit when they reach the
-- configured count within the configured time; circuit_opened_at says it is open, and
-- circuit_probes how many probes failed since, which sets the next probe's delay. While open,
-- the lane's next_allowed_at holds the next probe's time; a subscription disabled for failing
-- too long has its lane held at 'infinity' until it is enabled again.
alter table subscriptions add column failing_since timestamptz;
alter table subscriptions add column failure_window_started_at timestamptz;
alter table subscriptions add column failure_window_count integer not null default 0;
alter table subscriptions add column circuit_opened_at timestamptz;
alter table subscriptions add column circuit_probes integer not null default 0;

alter table deliveries add column lane uuid not null default '00000000-0000-0000-0000-000000000000';
alter table deliveries alter column lane drop default;
update deliveries set lane = subscription_id where subscription_id is not null;

-- A lane's due rows in the lease's order, and its leased rows (in flight, or a dead worker's
-- waiting out their lease). The status values stay literals in every statement that reads
-- them, so the planner matches these partial indexes.
drop index deliveries_due_idx;
create index deliveries_pending_idx on deliveries (lane, next_attempt_at, id)
  where status = 'pending';
create index deliveries_leased_idx on deliveries (lane, next_attempt_at)
  where status = 'leased';

-- A lane's advisory lock key (the class is the first key): the uuid's last 32 bits, random in a
-- v7 id. Two lanes sharing a key only make a lease keep one of them due a little longer.
create function ih_lane_key(lane uuid) returns integer
language sql immutable parallel safe
as $$ select ('x' || right(lane::text, 8))::bit(32)::integer $$;

-- Marks lanes due by the given times: every statement that makes a row pending (publish,
-- retry, hand-back, replay, a dead worker's lease rescued) calls it for the rows' lanes.
--
-- Why the locks: a lease that finds a lane empty clears its next_due_at, from a snapshot that
-- cannot see rows whose transaction has not committed. A publish that saw the lane still due
-- (and so wrote nothing) would leave its rows in a lane marked empty. So this function holds a
-- shared advisory lock on each lane until its transaction ends, taken before it reads the
-- lane; a lease clears a lane only under the exclusive lock (pg_try_advisory_xact_lock, taken
-- by one statement and followed by a second that reads with a new snapshot). Either the lease
-- gets the lock first, and this function waits for it to commit and then sees the cleared
-- lane (its update runs with a snapshot taken after the lock: plpgsql statements of a
-- volatile function each take their own), or this function holds it first and the lease
-- leaves the lane due. Writers never wait for one another (shared locks), and a lane already
-- due is not written at all, so a busy lane's row is not rewritten per event.
create function ih_wake_lanes(woken uuid[], due_at timestamptz[]) returns void
language plpgsql volatile
as $$
begin
  if coalesce(cardinality(woken), 0) = 0 then
    return;
  end if;
  perform pg_advisory_xact_lock_shared(1818324581, ih_lane_key(lane))
  from (select distinct unnest(woken) as lane) wakes;
  update lanes l
  set next_due_at = w.due
  from (select t.lane, min(t.at) as due
        from unnest(woken, due_at) as t(lane, at)
        group by t.lane) w
  where l.id = w.lane
    and (l.next_due_at is null or l.next_due_at > w.due);
end
$$;

-- Holds or releases lanes: each lane given gets its next_allowed_at (a null leaves it). Called
-- by the completion statement in the same select as ih_wake_lanes, so the two writes to a lane
-- are two statements, one after the other, never two updates of one row in one statement.
create function ih_gate_lanes(gated uuid[], until timestamptz[]) returns void
language plpgsql volatile
as $$
begin
  if coalesce(cardinality(gated), 0) = 0 then
    return;
  end if;
  update lanes l
  set next_allowed_at = g.until
  from unnest(gated, until) as g(lane, until)
  where l.id = g.lane
    and g.until is not null;
end
$$;

update lanes l
set next_due_at = (select min(d.next_attempt_at) from deliveries d
                   where d.lane = l.id and d.status = 'pending');
