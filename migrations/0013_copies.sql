-- 0013_copies: copies of each available image in other regions (a policy's copy_to, SyncImages),
-- their deletions by the copies' own retention, and the account every call is made with.
-- internal/copies makes and tracks the copies; internal/history/copies.go writes these rows and
-- their notification events in the transaction of each change (docs/design.md).

-- The account of a run's and of a deletion's calls (the policy file's accounts:). Rows written
-- before accounts existed were made with the one default account.
ALTER TABLE image_runs ADD COLUMN account text NOT NULL DEFAULT 'default';
COMMENT ON COLUMN image_runs.account IS
    'Account (accounts: in the policy file) whose credentials made the CreateImage call; ''default'' without an accounts: block.';
ALTER TABLE image_deletions ADD COLUMN account text NOT NULL DEFAULT 'default';
COMMENT ON COLUMN image_deletions.account IS
    'Account (accounts: in the policy file) whose credentials make the DeleteImages call; ''default'' without an accounts: block.';

-- One row per (run, destination region): written before the SyncImages call that starts the copy,
-- so a crash between the call and its answer is found (the copy is then looked up by exact name in
-- its destination before SyncImages is called again: an image is copied at most once per region).
CREATE TABLE image_copies (
    id              bigserial   PRIMARY KEY,
    run_id          bigint      NOT NULL REFERENCES image_runs (id) ON DELETE CASCADE,
    account         text        NOT NULL,
    policy          text        NOT NULL,
    instance_id     text        NOT NULL,
    slot            timestamptz NOT NULL,
    source_region   text        NOT NULL,
    source_image_id text        NOT NULL,
    region          text        NOT NULL,
    image_name      text        NOT NULL,
    image_id        text,
    status          text        NOT NULL DEFAULT 'requested',
    request_id      text,
    error_code      text,
    error_message   text,
    attempts        integer     NOT NULL DEFAULT 0,
    retry_at        timestamptz,
    requested_at    timestamptz NOT NULL,
    available_at    timestamptz,
    finished_at     timestamptz,
    deleted_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT image_copies_region_key UNIQUE (run_id, region),
    CONSTRAINT image_copies_status_check CHECK (status IN ('requested', 'syncing', 'available', 'failed')),
    CONSTRAINT image_copies_finished_check CHECK ((finished_at IS NULL) = (status IN ('requested', 'syncing'))),
    CONSTRAINT image_copies_available_check CHECK ((available_at IS NULL) = (status <> 'available')),
    CONSTRAINT image_copies_retry_check CHECK (retry_at IS NULL OR status = 'requested'),
    CONSTRAINT image_copies_region_check CHECK (region <> source_region),
    CONSTRAINT image_copies_attempts_check CHECK (attempts >= 0)
);

COMMENT ON TABLE image_copies IS
    'One row per (run, destination region) of a policy''s copy_to: the copy of the run''s image made there by SyncImages, written before the call.';
COMMENT ON COLUMN image_copies.id IS 'Copy id; image_deletions.copy_id refers to it.';
COMMENT ON COLUMN image_copies.run_id IS 'Run whose image is copied (image_runs.id); the copy row goes when the run is pruned.';
COMMENT ON COLUMN image_copies.account IS 'Account whose credentials make the copy''s calls (image_runs.account of the run).';
COMMENT ON COLUMN image_copies.policy IS 'Policy of the run (image_runs.policy), whose copy_to asked for the copy.';
COMMENT ON COLUMN image_copies.instance_id IS 'Instance of the run (image_runs.instance_id).';
COMMENT ON COLUMN image_copies.slot IS 'Slot of the run (image_runs.scheduled_at): the age max_age measures and the order keep_last counts in.';
COMMENT ON COLUMN image_copies.source_region IS 'Region of the source image (image_runs.region), where SyncImages is sent.';
COMMENT ON COLUMN image_copies.source_image_id IS 'Source image copied (image_runs.image_id).';
COMMENT ON COLUMN image_copies.region IS 'Destination region of the copy; never the source region.';
COMMENT ON COLUMN image_copies.image_name IS 'Name of the copy: the source image''s name, which imager sends as SyncImages'' ImageName.';
COMMENT ON COLUMN image_copies.image_id IS
    'Id of the copy in its destination region, once known: from the SyncImages answer, or found there by exact name.';
COMMENT ON COLUMN image_copies.status IS
    'requested: SyncImages is being or was called, outcome not known yet; syncing: the copy exists (SYNCING); '
    'available: the copy is NORMAL; failed: terminal, see error_code.';
COMMENT ON COLUMN image_copies.request_id IS 'RequestId of the SyncImages call that started the copy.';
COMMENT ON COLUMN image_copies.error_code IS
    'API error code of the last failed call for the copy (or imager''s own: Timeout, CREATEFAILED, ImageNotFound); for a failed copy, the code that ended it.';
COMMENT ON COLUMN image_copies.error_message IS 'Error message that goes with error_code.';
COMMENT ON COLUMN image_copies.attempts IS 'SyncImages calls made that included this region.';
COMMENT ON COLUMN image_copies.retry_at IS
    'Set while requested after a call the API refused (busy source, throttled, transient error): no copy was made and imager calls again at this time. '
    'NULL while requested means the outcome of the last call is not known: the copy is first looked up by name.';
COMMENT ON COLUMN image_copies.requested_at IS 'When imager first decided to copy (before the first SyncImages call); image.timeout counts from it.';
COMMENT ON COLUMN image_copies.available_at IS 'When the copy was seen NORMAL; NULL unless available.';
COMMENT ON COLUMN image_copies.finished_at IS 'When the copy became available or failed; NULL exactly while requested or syncing.';
COMMENT ON COLUMN image_copies.deleted_at IS
    'When the copy''s retention deleted it (its image_deletions row is deleted); NULL while it exists. Deleting a source image never deletes its copies.';
COMMENT ON COLUMN image_copies.updated_at IS 'When the row last changed (database clock).';

-- Copies still to answer or to follow (crash resolution and tracking), oldest first.
CREATE INDEX image_copies_open_idx ON image_copies (requested_at, id) WHERE status IN ('requested', 'syncing');
-- The copies of one (policy, instance) in one region, newest slot first: which runs are due for a
-- copy, the copies' retention, the copy_recovered rule and the copy_coverage view.
CREATE INDEX image_copies_pair_idx ON image_copies (policy, instance_id, region, slot DESC, id DESC);

-- A deletion of a copy is an image_deletions row like a deletion of a source image (recorded
-- before and after the DeleteImages call, with its attempts), naming the copy.
ALTER TABLE image_deletions ADD COLUMN copy_id bigint REFERENCES image_copies (id) ON DELETE SET NULL;
COMMENT ON COLUMN image_deletions.copy_id IS
    'Copy deleted (image_copies.id) when the image is a copy in another region (region is then the copy''s); NULL for a source image, or once the copy''s row was pruned.';
CREATE INDEX image_deletions_copy_idx ON image_deletions (copy_id) WHERE copy_id IS NOT NULL;

-- The copies' events join the outbox.
ALTER TABLE notifications DROP CONSTRAINT notifications_event_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_check CHECK (event IN ('failed', 'missed', 'recovered',
    'rpo_breach', 'fire_started', 'fire_succeeded', 'fire_failed', 'copy_failed', 'copy_recovered'));
COMMENT ON COLUMN notifications.event IS
    'failed, missed (a run ended so), recovered (available after a failed or missed run, or after being overdue), '
    'rpo_breach (an instance entered rpo_breaches), fire_started, fire_succeeded, fire_failed (a fire of the policy, for its ping), '
    'copy_failed (a copy in another region failed), copy_recovered (a copy available in a region after a failed copy there); '
    'the copy events name the region in detail.';
