-- SQLite has no partitions.
select 1;
