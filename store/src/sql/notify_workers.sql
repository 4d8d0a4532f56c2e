-- Sent after commit, in its own statement: a NOTIFY inside the insert transaction would take
-- the cluster-wide notify lock at commit and serialise every publishing transaction.
select pg_notify('ih_deliveries', '')
