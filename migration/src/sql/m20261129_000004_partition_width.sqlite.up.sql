-- SQLite has no partitions: its retention deletes rows in batches, whatever the width.
select 1;
