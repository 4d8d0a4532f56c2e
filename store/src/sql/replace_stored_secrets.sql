-- Compare-and-set: when the secrets changed since they were read (a rotation meanwhile), the
-- row is left alone; it was written under the current key anyway.
update subscriptions
set secret = $2,
    previous_secret = $3
where id = $1
  and secret = $4
  and previous_secret is not distinct from $5
