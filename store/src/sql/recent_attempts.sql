-- The attempts of a window by outcome, for the console. $1 and $2 are the UUID v7 floors of the
-- window's start and end: attempt ids begin with their Unix milliseconds, so a window is a range
-- of each partition's primary key and the attempt log is never scanned whole. Both ends are
-- parameters so that a plan made once for any window is costed as the narrow range it is (with
-- only a start, Postgres would cost it as a third of the table and read every partition whole).
select count(*) filter (where outcome = 'delivered') as delivered,
       count(*) filter (where outcome <> 'delivered') as failed
from delivery_attempts
where id >= $1 and id < $2
