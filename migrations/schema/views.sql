-- The views operators read, in their one current definition. history.Migrate re-applies this file
-- after the numbered migrations, on every migrate, in one transaction: edit a view here (never in a
-- migration), and a migration that changes a table a view reads needs nothing else (the views are
-- dropped before the migrations run and created again after them). docs/audit.md explains each.

-- One row per (loaded policy, targeted instance). A pair whose newest slot is more than two
-- intervals older than its policy's newest slot is no longer targeted (an instance dropped from
-- the list, or no longer matching the selector): coverage leaves it out. Overdue compares with
-- policies.overdue_seconds, which imager sets when it loads the policy.
CREATE VIEW coverage AS
SELECT c.policy, c.instance_id, c.last_slot, c.last_status, c.last_error_code,
    c.last_available_image_id, c.last_available_image_name, c.last_available_slot,
    now() - c.last_available_at AS last_available_age,
    (p.enabled AND COALESCE(c.last_available_at, c.first_slot)
        < now() - make_interval(secs => p.overdue_seconds)) AS overdue
FROM (SELECT s.*, max(s.last_slot) OVER (PARTITION BY s.policy) AS policy_last_slot FROM coverage_state s) c
JOIN policies p ON p.name = c.policy AND p.removed_at IS NULL
WHERE c.last_slot >= c.policy_last_slot - make_interval(secs => p.interval_seconds * 2);

COMMENT ON VIEW coverage IS
    'One row per (loaded policy, targeted instance): its last slot and how it ended, its last available image, and whether it is overdue.';
COMMENT ON COLUMN coverage.policy IS 'Policy name (policies.name).';
COMMENT ON COLUMN coverage.instance_id IS 'Instance the policy images.';
COMMENT ON COLUMN coverage.last_slot IS 'Newest slot of the pair.';
COMMENT ON COLUMN coverage.last_status IS 'Status of the newest slot (image_runs.status).';
COMMENT ON COLUMN coverage.last_error_code IS 'Error code of the newest slot, if it failed.';
COMMENT ON COLUMN coverage.last_available_image_id IS 'Image id of the newest available slot; NULL when the instance was never imaged by this policy.';
COMMENT ON COLUMN coverage.last_available_image_name IS 'Image name of the newest available slot.';
COMMENT ON COLUMN coverage.last_available_slot IS 'Slot of the newest available image.';
COMMENT ON COLUMN coverage.last_available_age IS 'How long ago that image became available (now() - image_runs.finished_at).';
COMMENT ON COLUMN coverage.overdue IS
    'true when no image became available within policies.overdue_seconds (for an instance never imaged: since its first slot); false for a disabled policy.';

CREATE VIEW rpo_breaches AS
SELECT * FROM coverage WHERE overdue;

COMMENT ON VIEW rpo_breaches IS 'The overdue rows of coverage: instances without an image within their policy''s overdue_seconds.';

CREATE VIEW daily_coverage AS
SELECT day, policy, instance_id, status, image_id, error_code, runs, run_id
FROM coverage_days;

COMMENT ON VIEW daily_coverage IS
    'Per day (in the policy''s time zone), policy and instance with runs: the best status of that day''s slots (available > requested > pending > failed > missed > skipped).';
COMMENT ON COLUMN daily_coverage.day IS 'Calendar day in policies.timezone (UTC for a policy never loaded).';
COMMENT ON COLUMN daily_coverage.status IS 'Best status of the day''s slots: available > requested > pending > failed > missed > skipped.';
COMMENT ON COLUMN daily_coverage.image_id IS 'Image id of the best run, when it has one.';
COMMENT ON COLUMN daily_coverage.error_code IS 'Error code of the best run, when it failed.';
COMMENT ON COLUMN daily_coverage.runs IS 'Number of slots of the pair on that day.';
COMMENT ON COLUMN daily_coverage.run_id IS 'image_runs.id of the best run.';

-- One row per (loaded policy, targeted instance, destination region) with copies: the newest copy
-- available there and whether the region is overdue, by the coverage view's rule (the copy's
-- availability against policies.overdue_seconds; for a region never reached, since its first copy
-- was requested). Only pairs the coverage view lists (still targeted) appear.
CREATE VIEW copy_coverage AS
SELECT c.policy, c.instance_id, c.region,
    a.image_id AS last_available_image_id, a.slot AS last_available_slot,
    now() - a.available_at AS last_available_age,
    (p.enabled AND COALESCE(a.available_at, c.first_requested_at)
        < now() - make_interval(secs => p.overdue_seconds)) AS overdue
FROM (SELECT policy, instance_id, region, min(requested_at) AS first_requested_at
      FROM image_copies GROUP BY policy, instance_id, region) c
JOIN policies p ON p.name = c.policy AND p.removed_at IS NULL
JOIN coverage cv ON cv.policy = c.policy AND cv.instance_id = c.instance_id
LEFT JOIN LATERAL (SELECT cp.image_id, cp.slot, cp.available_at FROM image_copies cp
    WHERE cp.policy = c.policy AND cp.instance_id = c.instance_id AND cp.region = c.region AND cp.status = 'available'
    ORDER BY cp.slot DESC, cp.id DESC LIMIT 1) a ON true;

COMMENT ON VIEW copy_coverage IS
    'One row per (loaded policy, targeted instance, copy_to region) with copies: its newest available copy, and whether the region is overdue.';
COMMENT ON COLUMN copy_coverage.policy IS 'Policy name (policies.name).';
COMMENT ON COLUMN copy_coverage.instance_id IS 'Instance the policy images.';
COMMENT ON COLUMN copy_coverage.region IS 'Destination region of the copies (image_copies.region).';
COMMENT ON COLUMN copy_coverage.last_available_image_id IS 'Id, in the region, of the copy of the newest slot that became available; NULL when none did.';
COMMENT ON COLUMN copy_coverage.last_available_slot IS 'Slot of that copy''s run.';
COMMENT ON COLUMN copy_coverage.last_available_age IS 'How long ago that copy became available (now() - image_copies.available_at).';
COMMENT ON COLUMN copy_coverage.overdue IS
    'true when no copy became available in the region within policies.overdue_seconds (for a region never reached: since its first copy was requested); false for a disabled policy.';

-- One row per (loaded restore test, instance its policy targets): the newest passed test of the
-- instance's image, and whether the instance is overdue for one (restore_test_configs.overdue_seconds
-- since the newest pass, or since the test was loaded when none passed).
CREATE VIEW restore_coverage AS
SELECT t.name AS restore_test, cv.policy, cv.instance_id,
    l.id AS last_passed_id, l.image_id AS last_passed_image_id, l.region AS last_passed_region,
    l.checked_at AS last_passed_at, now() - l.checked_at AS last_passed_age,
    (COALESCE(l.checked_at, t.loaded_at) < now() - make_interval(secs => t.overdue_seconds)) AS overdue
FROM restore_test_configs t
JOIN coverage cv ON cv.policy = t.policy
LEFT JOIN LATERAL (SELECT r.id, r.image_id, r.region, r.checked_at FROM restore_tests r
    WHERE r.test = t.name AND r.instance_id = cv.instance_id AND r.checked_at IS NOT NULL AND r.status = 'passed'
    ORDER BY r.checked_at DESC LIMIT 1) l ON true
WHERE t.removed_at IS NULL;

COMMENT ON VIEW restore_coverage IS
    'One row per (loaded restore test, instance its policy targets): the newest passed restore test of the instance''s image, and whether it is overdue.';
COMMENT ON COLUMN restore_coverage.restore_test IS 'Restore test name (restore_test_configs.name).';
COMMENT ON COLUMN restore_coverage.policy IS 'Policy whose images the test restores.';
COMMENT ON COLUMN restore_coverage.instance_id IS 'Instance the policy images.';
COMMENT ON COLUMN restore_coverage.last_passed_id IS 'restore_tests.id of the newest passed test of the instance; NULL when none passed.';
COMMENT ON COLUMN restore_coverage.last_passed_image_id IS 'Image that test launched from.';
COMMENT ON COLUMN restore_coverage.last_passed_region IS 'Region that test launched in.';
COMMENT ON COLUMN restore_coverage.last_passed_at IS 'When that test passed (restore_tests.checked_at).';
COMMENT ON COLUMN restore_coverage.last_passed_age IS 'How long ago that test passed.';
COMMENT ON COLUMN restore_coverage.overdue IS
    'true when no test of the instance passed within restore_test_configs.overdue_seconds (since the test was loaded when none passed).';
