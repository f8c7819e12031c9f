-- 0012_rules_in_go: the rules that triggers kept (latest_images, coverage, the notification outbox
-- and the fires' verdicts) are written by imager's Go code, in the transaction that changes a run
-- (internal/history/effects.go). This file drops those triggers and functions, adds what the Go
-- code keeps instead of recounting (a fire's counts, a policy's overdue threshold), and indexes every
-- foreign key. The views are no longer defined by migrations: migrations/schema/views.sql holds
-- their one current definition and is re-applied by every migrate (docs/design.md).

DROP TRIGGER latest_images_insert ON image_runs;
DROP TRIGGER latest_images_update ON image_runs;
DROP TRIGGER latest_images_delete ON image_runs;
DROP TRIGGER latest_images_truncate ON image_runs;
DROP TRIGGER coverage_insert ON image_runs;
DROP TRIGGER coverage_update ON image_runs;
DROP TRIGGER coverage_delete ON image_runs;
DROP TRIGGER coverage_truncate ON image_runs;
DROP TRIGGER notifications_run_insert ON image_runs;
DROP TRIGGER notifications_run_update ON image_runs;
DROP TRIGGER notifications_missed_insert ON image_runs;
DROP TRIGGER notifications_fire_start ON policy_slots;
DROP TRIGGER notifications_payload ON notifications;

DROP FUNCTION latest_images_sync();
DROP FUNCTION latest_images_truncate();
DROP FUNCTION latest_images_rebuild();
DROP FUNCTION latest_images_refresh(text);
DROP FUNCTION latest_images_lock(text);
DROP FUNCTION coverage_sync();
DROP FUNCTION coverage_truncate();
DROP FUNCTION coverage_rebuild();
DROP FUNCTION coverage_days_rebuild(text);
DROP FUNCTION coverage_add(image_runs);
DROP FUNCTION coverage_day_beats(text, timestamptz, text, bigint);
DROP FUNCTION coverage_refresh(text, text);
DROP FUNCTION coverage_day_refresh(text, text, timestamptz);
DROP FUNCTION coverage_lock(text, text);
DROP FUNCTION coverage_timezone(text);
DROP FUNCTION coverage_status_rank(text);
DROP FUNCTION notifications_run_outcome();
DROP FUNCTION notifications_missed_insert();
DROP FUNCTION notifications_fire_start();
DROP FUNCTION notifications_payload();
DROP FUNCTION notification_missed_add(text, bigint, timestamptz, timestamptz, jsonb, boolean, image_runs, text, text, timestamptz);
DROP FUNCTION notification_failed_add(text, timestamptz, text, bigint, jsonb, boolean, image_runs, text, timestamptz);
DROP FUNCTION notification_fire_without_runs(text, timestamptz, text, text, timestamptz);
DROP FUNCTION notification_fire_expect(text, timestamptz, integer, timestamptz);
DROP FUNCTION notification_fire_begin(text, timestamptz);
DROP FUNCTION notification_fire_check(text, timestamptz, timestamptz);
DROP FUNCTION notification_rpo_evaluate(timestamptz);
DROP FUNCTION notification_missed_ids_max();
DROP FUNCTION notification_time(timestamptz);

-- The views move to migrations/schema/views.sql (re-created after every migrate).
DROP VIEW IF EXISTS rpo_breaches;
DROP VIEW IF EXISTS coverage;
DROP VIEW IF EXISTS daily_coverage;

-- A policy's overdue threshold, decided by imager when it loads the policy: the coverage view and
-- the recovered rule read this one column.
ALTER TABLE policies ADD COLUMN overdue_seconds bigint;
UPDATE policies SET overdue_seconds = ceil(interval_seconds * 1.5)::bigint;
ALTER TABLE policies ALTER COLUMN overdue_seconds SET NOT NULL;
ALTER TABLE policies ADD CONSTRAINT policies_overdue_check CHECK (overdue_seconds > 0);
COMMENT ON COLUMN policies.overdue_seconds IS
    'An instance of the policy is overdue when no image became available for this many seconds (1.5 x interval_seconds, set by imager at load).';

-- A fire's counts, kept as its runs are written, so its verdict never recounts the fire.
ALTER TABLE notification_fires
    ADD COLUMN runs integer NOT NULL DEFAULT 0,
    ADD COLUMN available integer NOT NULL DEFAULT 0,
    ADD COLUMN unfinished integer NOT NULL DEFAULT 0,
    ADD COLUMN failed integer NOT NULL DEFAULT 0,
    ADD COLUMN missed integer NOT NULL DEFAULT 0,
    ADD COLUMN skipped integer NOT NULL DEFAULT 0,
    ADD COLUMN errored integer NOT NULL DEFAULT 0,
    ADD COLUMN first_error_code text,
    ADD COLUMN first_error_message text;

UPDATE notification_fires f SET runs = c.runs, available = c.available, unfinished = c.unfinished,
    failed = c.failed, missed = c.missed, skipped = c.skipped, errored = c.errored,
    first_error_code = e.error_code, first_error_message = e.error_message
FROM (SELECT policy, scheduled_at, count(*) AS runs,
          count(*) FILTER (WHERE status = 'available') AS available,
          count(*) FILTER (WHERE status IN ('pending', 'requested')) AS unfinished,
          count(*) FILTER (WHERE status = 'failed') AS failed,
          count(*) FILTER (WHERE status = 'missed') AS missed,
          count(*) FILTER (WHERE status = 'skipped') AS skipped,
          count(*) FILTER (WHERE status IN ('failed', 'missed') OR (status = 'skipped' AND error_code IS NOT NULL)) AS errored
      FROM image_runs GROUP BY policy, scheduled_at) c
LEFT JOIN LATERAL (SELECT r.error_code, r.error_message FROM image_runs r
    WHERE r.policy = c.policy AND r.scheduled_at = c.scheduled_at
      AND (r.status IN ('failed', 'missed') OR (r.status = 'skipped' AND r.error_code IS NOT NULL))
    ORDER BY r.finished_at, r.id LIMIT 1) e ON true
WHERE c.policy = f.policy AND c.scheduled_at = f.slot;

COMMENT ON COLUMN notification_fires.runs IS 'Runs of the fire (image_runs of its policy and slot).';
COMMENT ON COLUMN notification_fires.available IS 'Of them, available.';
COMMENT ON COLUMN notification_fires.unfinished IS 'Of them, pending or requested.';
COMMENT ON COLUMN notification_fires.failed IS 'Of them, failed.';
COMMENT ON COLUMN notification_fires.missed IS 'Of them, missed.';
COMMENT ON COLUMN notification_fires.skipped IS 'Of them, skipped.';
COMMENT ON COLUMN notification_fires.errored IS 'Of them, failed, missed, or skipped with an error code: one is enough to fail the fire.';
COMMENT ON COLUMN notification_fires.first_error_code IS 'Error code of the first errored run: the code of fire_failed.';
COMMENT ON COLUMN notification_fires.first_error_message IS 'Error message of the first errored run.';
COMMENT ON COLUMN notification_fires.expected_runs IS
    'Runs the fire had to make: 0 for a fire without runs (no targets, or targets not resolved); NULL otherwise (the fire ends once its runs are all terminal).';

-- The transaction id of a missed event: the Go code groups a transaction's missed runs itself.
COMMENT ON COLUMN notifications.xact IS 'Unused since 0012 (missed events are grouped by the writing transaction in imager''s code); kept for older rows.';
DROP INDEX notifications_missed_xact_idx;

-- Every foreign key has an index, so deleting or pruning the referenced rows never scans.
CREATE INDEX image_deletions_run_idx ON image_deletions (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX notifications_run_idx ON notifications (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX notification_breaches_notification_idx ON notification_breaches (notification_id) WHERE notification_id IS NOT NULL;
CREATE INDEX notification_fires_start_notification_idx ON notification_fires (start_notification_id) WHERE start_notification_id IS NOT NULL;
CREATE INDEX notification_fires_end_notification_idx ON notification_fires (end_notification_id) WHERE end_notification_id IS NOT NULL;

COMMENT ON TABLE coverage_state IS
    'Per (policy, instance) with runs: first and last slot and the last available image, written by imager with each run. Read the coverage view.';
COMMENT ON TABLE coverage_days IS
    'Per (policy, instance, day) with runs: the best run of the day, written by imager with each run. Read the daily_coverage view.';
COMMENT ON TABLE notification_fires IS
    'One row per fire of a policy (a claim moved policy_slots to a slot with runs): fire_started was written at the fire, fire_succeeded or fire_failed when its counts decided it.';
