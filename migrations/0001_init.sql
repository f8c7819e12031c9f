-- 0001_init: imager's history (README "History (PostgreSQL)"). A public contract: operators audit these
-- tables with plain SQL. Columns are added in later migrations, never renamed or dropped silently.

CREATE TABLE image_runs (
    id             bigserial   PRIMARY KEY,
    policy         text        NOT NULL,
    instance_id    text        NOT NULL,
    region         text        NOT NULL,
    scheduled_at   timestamptz NOT NULL,
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz,
    status         text        NOT NULL,
    image_name     text        NOT NULL,
    image_id       text,
    image_size_gib bigint,
    request_id     text,
    error_code     text,
    error_message  text,
    attempts       integer     NOT NULL DEFAULT 0,
    daemon_id      text        NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT image_runs_slot_key UNIQUE (policy, instance_id, scheduled_at),
    CONSTRAINT image_runs_status_check
        CHECK (status IN ('pending', 'requested', 'available', 'failed', 'missed', 'skipped')),
    CONSTRAINT image_runs_finished_check
        CHECK ((finished_at IS NULL) = (status IN ('pending', 'requested'))),
    CONSTRAINT image_runs_attempts_check CHECK (attempts >= 0),
    CONSTRAINT image_runs_size_check CHECK (image_size_gib >= 0)
);

COMMENT ON TABLE image_runs IS
    'One row per (policy, instance, slot): claimed before CreateImage is called, so a slot is imaged at most once.';
COMMENT ON COLUMN image_runs.id IS 'Run id; image_attempts.run_id and image_deletions.run_id refer to it.';
COMMENT ON COLUMN image_runs.policy IS 'Name of the policy that fired the slot.';
COMMENT ON COLUMN image_runs.instance_id IS 'CVM instance imaged (ins-xxxxxxxx).';
COMMENT ON COLUMN image_runs.region IS 'Region the CreateImage call went to (e.g. ap-guangzhou).';
COMMENT ON COLUMN image_runs.scheduled_at IS 'Nominal slot time: the cron fire time, or the second of an imager once.';
COMMENT ON COLUMN image_runs.started_at IS 'When the daemon claimed the slot.';
COMMENT ON COLUMN image_runs.finished_at IS 'When the run reached a terminal status; NULL exactly while pending or requested.';
COMMENT ON COLUMN image_runs.status IS
    'pending: claimed, not yet accepted by the API; requested: CreateImage accepted, image CREATING; '
    'available: image NORMAL; failed: terminal, see error_code; missed: slot not run (daemon down, shut down before sending); '
    'skipped: a rule decided not to run, error_message says why.';
COMMENT ON COLUMN image_runs.image_name IS 'Image name sent (the last one, when InvalidImageName.Duplicate made imager choose another).';
COMMENT ON COLUMN image_runs.image_id IS 'Image id (img-xxxxxxxx) once known: from the CreateImage response or found by exact name.';
COMMENT ON COLUMN image_runs.image_size_gib IS 'Image size in GiB once the image is NORMAL.';
COMMENT ON COLUMN image_runs.request_id IS 'RequestId of the accepted CreateImage call.';
COMMENT ON COLUMN image_runs.error_code IS 'API error code (or imager''s own, e.g. Timeout, CREATEFAILED) that ended the run.';
COMMENT ON COLUMN image_runs.error_message IS 'Error message that ended the run, or why the slot was skipped or missed.';
COMMENT ON COLUMN image_runs.attempts IS 'Number of API calls recorded for this run in image_attempts.';
COMMENT ON COLUMN image_runs.daemon_id IS 'Identity of the imager process that claimed the slot.';
COMMENT ON COLUMN image_runs.updated_at IS 'When the row last changed (database clock).';

CREATE TABLE image_deletions (
    id            bigserial   PRIMARY KEY,
    image_id      text        NOT NULL,
    image_name    text        NOT NULL,
    policy        text        NOT NULL,
    instance_id   text        NOT NULL,
    region        text        NOT NULL,
    run_id        bigint      REFERENCES image_runs (id) ON DELETE SET NULL,
    reason        text        NOT NULL,
    requested_at  timestamptz NOT NULL,
    finished_at   timestamptz,
    status        text        NOT NULL DEFAULT 'pending',
    request_id    text,
    error_code    text,
    error_message text,
    attempts      integer     NOT NULL DEFAULT 0,
    CONSTRAINT image_deletions_image_key UNIQUE (image_id),
    CONSTRAINT image_deletions_status_check CHECK (status IN ('pending', 'deleted', 'failed')),
    CONSTRAINT image_deletions_finished_check CHECK ((finished_at IS NULL) = (status = 'pending')),
    CONSTRAINT image_deletions_attempts_check CHECK (attempts >= 0)
);

COMMENT ON TABLE image_deletions IS
    'One row per image imager decided to delete (retention, quota); a failed deletion is retried at the next pass.';
COMMENT ON COLUMN image_deletions.id IS 'Deletion id; image_attempts.deletion_id refers to it.';
COMMENT ON COLUMN image_deletions.image_id IS 'Image deleted (img-xxxxxxxx); one row per image.';
COMMENT ON COLUMN image_deletions.image_name IS 'Name of the image deleted.';
COMMENT ON COLUMN image_deletions.policy IS 'Policy whose retention (or quota pass) chose the image.';
COMMENT ON COLUMN image_deletions.instance_id IS 'Instance the image was made of.';
COMMENT ON COLUMN image_deletions.region IS 'Region of the image.';
COMMENT ON COLUMN image_deletions.run_id IS 'Run that made the image (image_runs.id), when known.';
COMMENT ON COLUMN image_deletions.reason IS 'Why imager deletes the image (e.g. keep_last 2 exceeded, older than max_age 30d).';
COMMENT ON COLUMN image_deletions.requested_at IS 'When imager decided to delete the image.';
COMMENT ON COLUMN image_deletions.finished_at IS 'When the last DeleteImages call for it ended; NULL exactly while pending.';
COMMENT ON COLUMN image_deletions.status IS
    'pending: decided, not yet done; deleted: DeleteImages succeeded; failed: the last call failed, retried at the next pass.';
COMMENT ON COLUMN image_deletions.request_id IS 'RequestId of the last DeleteImages call.';
COMMENT ON COLUMN image_deletions.error_code IS 'API error code of the last failed DeleteImages call.';
COMMENT ON COLUMN image_deletions.error_message IS 'Error message of the last failed DeleteImages call.';
COMMENT ON COLUMN image_deletions.attempts IS 'Number of API calls recorded for this deletion in image_attempts.';

CREATE TABLE image_attempts (
    id            bigserial   PRIMARY KEY,
    run_id        bigint      REFERENCES image_runs (id) ON DELETE CASCADE,
    deletion_id   bigint      REFERENCES image_deletions (id) ON DELETE CASCADE,
    attempt       integer     NOT NULL,
    action        text        NOT NULL,
    started_at    timestamptz NOT NULL,
    duration_ms   integer     NOT NULL DEFAULT 0,
    request_id    text,
    error_code    text,
    error_message text,
    CONSTRAINT image_attempts_attempt_check CHECK (attempt >= 1),
    CONSTRAINT image_attempts_duration_check CHECK (duration_ms >= 0)
);

COMMENT ON TABLE image_attempts IS
    'One row per API call made for a run or a deletion, retried or not, with its RequestId.';
COMMENT ON COLUMN image_attempts.id IS 'Attempt row id.';
COMMENT ON COLUMN image_attempts.run_id IS 'Run the call was made for (image_runs.id); NULL for a call made for no run.';
COMMENT ON COLUMN image_attempts.deletion_id IS 'Deletion the call was made for (image_deletions.id); NULL for a call made for no deletion.';
COMMENT ON COLUMN image_attempts.attempt IS '1-based number of the call within its run (or deletion).';
COMMENT ON COLUMN image_attempts.action IS 'API action called (CreateImage, DescribeImages, DeleteImages, ...).';
COMMENT ON COLUMN image_attempts.started_at IS 'When the call was sent.';
COMMENT ON COLUMN image_attempts.duration_ms IS 'How long the call took, in milliseconds.';
COMMENT ON COLUMN image_attempts.request_id IS 'RequestId the API returned; NULL when no response arrived (network error, timeout).';
COMMENT ON COLUMN image_attempts.error_code IS 'API error code (or imager''s classification of a network error); NULL on success.';
COMMENT ON COLUMN image_attempts.error_message IS 'Error message; NULL on success.';

-- One row per (run or deletion, attempt, action): a write replayed from the local spool after a
-- database outage finds its row already there and changes nothing.
CREATE UNIQUE INDEX image_attempts_run_key
    ON image_attempts (run_id, attempt, action) WHERE run_id IS NOT NULL;
CREATE UNIQUE INDEX image_attempts_deletion_key
    ON image_attempts (deletion_id, attempt, action) WHERE deletion_id IS NOT NULL;

-- Last available image per instance (audit cookbook, imager history): one index probe per
-- instance finds its newest available run.
CREATE INDEX image_runs_available_idx
    ON image_runs (instance_id, finished_at DESC, id DESC) WHERE status = 'available';
-- Failures in the last N hours.
CREATE INDEX image_runs_failed_idx
    ON image_runs (finished_at DESC) WHERE status = 'failed';
-- Unfinished runs: crash recovery and completion tracking, oldest first.
CREATE INDEX image_runs_unfinished_idx
    ON image_runs (scheduled_at, id) WHERE status IN ('pending', 'requested');
-- Recent runs (imager history).
CREATE INDEX image_runs_scheduled_idx
    ON image_runs (scheduled_at DESC);
-- Deletions still to do (pending, or failed and due for a retry).
CREATE INDEX image_deletions_open_idx
    ON image_deletions (requested_at, id) WHERE status <> 'deleted';

-- schema_migrations is created by imager's migration runner before this file runs.
COMMENT ON TABLE schema_migrations IS 'Migrations applied to this database, one row per migrations/NNNN_name.sql file.';
COMMENT ON COLUMN schema_migrations.version IS 'File name without .sql (e.g. 0001_init).';
COMMENT ON COLUMN schema_migrations.applied_at IS 'When the migration was applied (database clock).';
