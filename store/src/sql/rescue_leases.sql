-- Rows whose lease expired (their worker died or lost the database) are pending again and due
-- at once, their lanes with them; the attempt the lost lease counted stays counted. Until then
-- they count against their lane's in-flight limit: their requests may still be on the wire.
with expired as (
  select id
  from deliveries
  where status = 'leased'
    and next_attempt_at <= now()
  for no key update skip locked
),
rescued as (
  update deliveries d
  set status = 'pending',
      lease_token = null,
      leased_by = null,
      updated_at = now()
  from expired
  where d.id = expired.id
  returning d.id, d.lane, d.next_attempt_at
),
woken as (
  select ih_wake_lanes(array_agg(lane), array_agg(next_attempt_at)) as woken
  from rescued
)
select count(*) as rescued
from rescued, woken
