-- When a lane with due work that its rate limit holds back is allowed again: a lease that took
-- nothing tells its worker to come back then rather than at the next poll. A lane held until
-- its subscription is enabled again ('infinity') is not waited for.
select min(next_allowed_at)
from lanes
where next_due_at <= now()
  and next_allowed_at > now()
  and next_allowed_at < 'infinity'
