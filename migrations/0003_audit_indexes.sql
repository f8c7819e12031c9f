-- 0003_audit_indexes: keep the README's audit queries fast on a long history (BENCHMARKS.md,
-- section 4: 1,000,000 runs over 10,000 instances).

-- "Last image per instance": the newest accepted or available run of every instance. Over the
-- whole history that is a DISTINCT ON through every such run (about a second at a million runs),
-- and even a skip scan costs one index probe per instance. latest_images keeps the answer, one
-- row per instance, in step with image_runs through the triggers below, so the query reads only
-- as many rows as there are instances.
CREATE TABLE latest_images (
    instance_id  text        PRIMARY KEY,
    run_id       bigint      NOT NULL,
    policy       text        NOT NULL,
    scheduled_at timestamptz NOT NULL,
    status       text        NOT NULL,
    image_name   text        NOT NULL,
    image_id     text,
    request_id   text
);

COMMENT ON TABLE latest_images IS
    'Newest accepted (requested) or available run of every instance, kept in step with image_runs by triggers: the "last image per instance" audit query.';
COMMENT ON COLUMN latest_images.instance_id IS 'CVM instance (ins-xxxxxxxx); one row per instance that has an accepted or available run.';
COMMENT ON COLUMN latest_images.run_id IS 'image_runs.id of that run: the newest by scheduled_at, then id.';
COMMENT ON COLUMN latest_images.policy IS 'image_runs.policy of the run.';
COMMENT ON COLUMN latest_images.scheduled_at IS 'image_runs.scheduled_at of the run (its slot).';
COMMENT ON COLUMN latest_images.status IS 'image_runs.status of the run: requested or available.';
COMMENT ON COLUMN latest_images.image_name IS 'image_runs.image_name of the run.';
COMMENT ON COLUMN latest_images.image_id IS 'image_runs.image_id of the run, once known.';
COMMENT ON COLUMN latest_images.request_id IS 'image_runs.request_id of the run: the accepted CreateImage call.';

-- The accepted or available runs of one instance, newest first: the triggers' fallback when an
-- instance's latest run stops counting (a requested image that ends CREATEFAILED), and the rebuild.
CREATE INDEX image_runs_accepted_idx
    ON image_runs (instance_id, scheduled_at DESC, id DESC) WHERE status IN ('requested', 'available');

-- Every change goes through one transaction-scoped advisory lock per instance, so the writers of
-- one instance take turns: each sees what the one before it committed, and the row is never stale.
CREATE FUNCTION latest_images_lock(inst text) RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(1768777063, hashtext(inst)); -- 1768777063: 'imag'
$$;

COMMENT ON FUNCTION latest_images_lock(text) IS 'Serialises the latest_images writers of one instance (transaction-scoped advisory lock).';

-- Recomputes one instance's row from image_runs: the newest accepted or available run, or none.
CREATE FUNCTION latest_images_refresh(inst text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r image_runs%ROWTYPE;
BEGIN
    PERFORM latest_images_lock(inst);
    SELECT * INTO r FROM image_runs
    WHERE instance_id = inst AND status IN ('requested', 'available')
    ORDER BY scheduled_at DESC, id DESC
    LIMIT 1;
    IF NOT FOUND THEN
        DELETE FROM latest_images WHERE instance_id = inst;
        RETURN;
    END IF;
    INSERT INTO latest_images AS l (instance_id, run_id, policy, scheduled_at, status, image_name, image_id, request_id)
    VALUES (r.instance_id, r.id, r.policy, r.scheduled_at, r.status, r.image_name, r.image_id, r.request_id)
    ON CONFLICT (instance_id) DO UPDATE
    SET run_id = EXCLUDED.run_id, policy = EXCLUDED.policy, scheduled_at = EXCLUDED.scheduled_at,
        status = EXCLUDED.status, image_name = EXCLUDED.image_name, image_id = EXCLUDED.image_id,
        request_id = EXCLUDED.request_id;
END
$$;

COMMENT ON FUNCTION latest_images_refresh(text) IS 'Recomputes the latest_images row of one instance (used by the image_runs triggers).';

CREATE FUNCTION latest_images_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A run that stops counting (failed after requested, deleted, moved to another instance or
    -- slot) may have been the latest: recompute its instance.
    IF TG_OP = 'DELETE' OR (OLD.status IN ('requested', 'available') AND (NEW.status NOT IN ('requested', 'available')
            OR NEW.instance_id <> OLD.instance_id OR NEW.scheduled_at <> OLD.scheduled_at)) THEN
        PERFORM latest_images_refresh(OLD.instance_id);
    END IF;
    -- A run that counts (the daemon's common case: CreateImage accepted, then the image
    -- available): it is the latest if it is newer than the one recorded, and refreshes the row
    -- when it is that one. Under the lock the comparison is with what the previous writer committed.
    IF TG_OP <> 'DELETE' AND NEW.status IN ('requested', 'available') THEN
        PERFORM latest_images_lock(NEW.instance_id);
        INSERT INTO latest_images AS l (instance_id, run_id, policy, scheduled_at, status, image_name, image_id, request_id)
        VALUES (NEW.instance_id, NEW.id, NEW.policy, NEW.scheduled_at, NEW.status, NEW.image_name, NEW.image_id, NEW.request_id)
        ON CONFLICT (instance_id) DO UPDATE
        SET run_id = EXCLUDED.run_id, policy = EXCLUDED.policy, scheduled_at = EXCLUDED.scheduled_at,
            status = EXCLUDED.status, image_name = EXCLUDED.image_name, image_id = EXCLUDED.image_id,
            request_id = EXCLUDED.request_id
        WHERE l.run_id = EXCLUDED.run_id OR (l.scheduled_at, l.run_id) < (EXCLUDED.scheduled_at, EXCLUDED.run_id);
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION latest_images_sync() IS 'Keeps latest_images in step with image_runs (row trigger).';

-- Only the writes that can change an answer call the function: the attempts counter, renames of
-- pending runs and pending or terminal claims do not.
CREATE TRIGGER latest_images_insert AFTER INSERT ON image_runs
    FOR EACH ROW WHEN (NEW.status IN ('requested', 'available'))
    EXECUTE FUNCTION latest_images_sync();
CREATE TRIGGER latest_images_update
    AFTER UPDATE OF status, policy, instance_id, scheduled_at, image_name, image_id, request_id ON image_runs
    FOR EACH ROW WHEN (OLD.status IN ('requested', 'available') OR NEW.status IN ('requested', 'available'))
    EXECUTE FUNCTION latest_images_sync();
CREATE TRIGGER latest_images_delete AFTER DELETE ON image_runs
    FOR EACH ROW WHEN (OLD.status IN ('requested', 'available'))
    EXECUTE FUNCTION latest_images_sync();

CREATE FUNCTION latest_images_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM latest_images;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION latest_images_truncate() IS 'Empties latest_images when image_runs is truncated.';

CREATE TRIGGER latest_images_truncate AFTER TRUNCATE ON image_runs
    FOR EACH STATEMENT EXECUTE FUNCTION latest_images_truncate();

-- Recomputes latest_images from image_runs: after loading image_runs with triggers off (a bulk
-- import under session_replication_role = replica), or to check the triggers.
CREATE FUNCTION latest_images_rebuild() RETURNS void LANGUAGE sql AS $$
    DELETE FROM latest_images;
    INSERT INTO latest_images (instance_id, run_id, policy, scheduled_at, status, image_name, image_id, request_id)
    SELECT DISTINCT ON (instance_id) instance_id, id, policy, scheduled_at, status, image_name, image_id, request_id
    FROM image_runs
    WHERE status IN ('requested', 'available')
    ORDER BY instance_id, scheduled_at DESC, id DESC;
$$;

COMMENT ON FUNCTION latest_images_rebuild() IS 'Recomputes latest_images from image_runs (after a bulk load with triggers off).';

SELECT latest_images_rebuild();

-- "Attempts of one run" picks the run with the most attempts: the highest attempt number of any
-- run, one probe here instead of sorting every run by its attempts counter (an index on
-- image_runs.attempts would make every counter update rewrite all of image_runs' indexes).
CREATE INDEX image_attempts_most_idx
    ON image_attempts (attempt DESC, run_id) WHERE run_id IS NOT NULL;

-- "Images pruned in the last 7 days": the newest finished deletions, without reading the others.
CREATE INDEX image_deletions_deleted_idx
    ON image_deletions (finished_at DESC) WHERE status = 'deleted';
