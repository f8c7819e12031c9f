-- Number 0002 was skipped by an early build of imager: databases migrated before this file
-- existed went from 0001 straight to 0003. It is kept as a no-op so that the numbering has no
-- gap (the runner refuses gaps); such databases apply it late, which changes nothing.
SELECT 1;
