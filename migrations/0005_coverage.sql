-- 0005_coverage: "is every instance covered by a recent, usable image, and if not, why?" in plain
-- SQL (README "Audit cookbook", coverage). The policies table says what is supposed to happen;
-- coverage_state and coverage_days keep the answers per (policy, instance) and per day, in step
-- with image_runs through the triggers below, so the views read one row per answer instead of
-- the whole history (BENCHMARKS.md: 1,000,000 runs over 10,000 instances).

CREATE TABLE policies (
    name             text        PRIMARY KEY,
    schedule         text        NOT NULL,
    timezone         text        NOT NULL,
    interval_seconds bigint      NOT NULL,
    enabled          boolean     NOT NULL,
    source_file      text        NOT NULL,
    source_line      integer     NOT NULL,
    loaded_at        timestamptz NOT NULL,
    removed_at       timestamptz,
    CONSTRAINT policies_interval_check CHECK (interval_seconds > 0)
);

COMMENT ON TABLE policies IS
    'One row per policy the daemon loaded, replaced at every load and reload. A policy no longer loaded keeps its row with removed_at set.';
COMMENT ON COLUMN policies.name IS 'Policy name (image_runs.policy).';
COMMENT ON COLUMN policies.schedule IS 'Schedule as written in the policy file (cron, descriptor or @every).';
COMMENT ON COLUMN policies.timezone IS 'IANA time zone the schedule fires in (CRON_TZ= of the schedule, else timezone:, else UTC); daily_coverage days are in it.';
COMMENT ON COLUMN policies.interval_seconds IS 'Seconds between the two most recent slots at load time; coverage.overdue allows 1.5 times this.';
COMMENT ON COLUMN policies.enabled IS 'false: the policy is loaded but does not fire (enabled: false); its instances are never overdue.';
COMMENT ON COLUMN policies.source_file IS 'Policy file the policy was defined in.';
COMMENT ON COLUMN policies.source_line IS 'Line of the policy in source_file.';
COMMENT ON COLUMN policies.loaded_at IS 'When the daemon last loaded the policy (its last successful load or reload).';
COMMENT ON COLUMN policies.removed_at IS 'When a load no longer had the policy; NULL while it is loaded. Its runs stay in image_runs.';

-- Newest available run of one (policy, instance): coverage's last available image.
CREATE INDEX image_runs_policy_available_idx
    ON image_runs (policy, instance_id, scheduled_at DESC, id DESC) WHERE status = 'available';

-- Per (policy, instance): its first and last slot and its last available image. Kept by triggers;
-- read it through the coverage view.
CREATE TABLE coverage_state (
    policy                    text        NOT NULL,
    instance_id               text        NOT NULL,
    first_slot                timestamptz NOT NULL,
    last_slot                 timestamptz NOT NULL,
    last_run_id               bigint      NOT NULL,
    last_status               text        NOT NULL,
    last_error_code           text,
    last_available_run_id     bigint,
    last_available_image_id   text,
    last_available_image_name text,
    last_available_slot       timestamptz,
    last_available_at         timestamptz,
    PRIMARY KEY (policy, instance_id)
);

COMMENT ON TABLE coverage_state IS
    'Per (policy, instance) with runs: first and last slot and the last available image, kept in step with image_runs by triggers. Read the coverage view.';
COMMENT ON COLUMN coverage_state.policy IS 'image_runs.policy of the pair.';
COMMENT ON COLUMN coverage_state.instance_id IS 'image_runs.instance_id of the pair.';
COMMENT ON COLUMN coverage_state.first_slot IS 'Oldest slot of the pair in image_runs.';
COMMENT ON COLUMN coverage_state.last_slot IS 'Newest slot of the pair in image_runs.';
COMMENT ON COLUMN coverage_state.last_run_id IS 'image_runs.id of the newest slot.';
COMMENT ON COLUMN coverage_state.last_status IS 'image_runs.status of the newest slot.';
COMMENT ON COLUMN coverage_state.last_error_code IS 'image_runs.error_code of the newest slot.';
COMMENT ON COLUMN coverage_state.last_available_run_id IS 'image_runs.id of the newest available slot; NULL when none.';
COMMENT ON COLUMN coverage_state.last_available_image_id IS 'Image id of the newest available slot.';
COMMENT ON COLUMN coverage_state.last_available_image_name IS 'Image name of the newest available slot.';
COMMENT ON COLUMN coverage_state.last_available_slot IS 'Slot of the newest available run.';
COMMENT ON COLUMN coverage_state.last_available_at IS 'When that image became available (image_runs.finished_at).';

-- Per day (in the policy's time zone), policy and instance: the best status of that day's slots.
CREATE TABLE coverage_days (
    policy      text    NOT NULL,
    instance_id text    NOT NULL,
    day         date    NOT NULL,
    status      text    NOT NULL,
    run_id      bigint  NOT NULL,
    image_id    text,
    error_code  text,
    runs        integer NOT NULL,
    PRIMARY KEY (policy, day, instance_id)
);

COMMENT ON TABLE coverage_days IS
    'Per (policy, instance, day) with runs: the best run of the day, kept in step with image_runs by triggers. Read the daily_coverage view.';

COMMENT ON COLUMN coverage_days.policy IS 'image_runs.policy of the day''s runs.';
COMMENT ON COLUMN coverage_days.instance_id IS 'image_runs.instance_id of the day''s runs.';
COMMENT ON COLUMN coverage_days.day IS 'Calendar day of the slots in policies.timezone (UTC for a policy without a row).';
COMMENT ON COLUMN coverage_days.status IS 'Best status of the day''s slots: available > requested > pending > failed > missed > skipped.';
COMMENT ON COLUMN coverage_days.run_id IS 'image_runs.id of the best run (the newest slot among equals).';
COMMENT ON COLUMN coverage_days.image_id IS 'image_runs.image_id of the best run.';
COMMENT ON COLUMN coverage_days.error_code IS 'image_runs.error_code of the best run.';
COMMENT ON COLUMN coverage_days.runs IS 'Number of slots of the pair on that day.';

CREATE INDEX coverage_days_instance_idx ON coverage_days (instance_id, day);

-- available > requested > pending > failed > missed > skipped.
CREATE FUNCTION coverage_status_rank(status text) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status WHEN 'available' THEN 1 WHEN 'requested' THEN 2 WHEN 'pending' THEN 3
        WHEN 'failed' THEN 4 WHEN 'missed' THEN 5 WHEN 'skipped' THEN 6 ELSE 7 END;
$$;

COMMENT ON FUNCTION coverage_status_rank(text) IS
    'Rank of a run status for daily_coverage, best first: available, requested, pending, failed, missed, skipped.';

-- The time zone of a policy's days: its policies row, else UTC.
CREATE FUNCTION coverage_timezone(pol text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT timezone FROM policies WHERE name = pol), 'UTC');
$$;

COMMENT ON FUNCTION coverage_timezone(text) IS 'Time zone of the days of a policy in daily_coverage (policies.timezone, else UTC).';

-- The writers of one (policy, instance) take turns, so each recomputation sees what the one
-- before it committed (as for latest_images in 0003).
CREATE FUNCTION coverage_lock(pol text, inst text) RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(1668247154, hashtext(pol || '/' || inst)); -- 1668247154: 'cove'
$$;

COMMENT ON FUNCTION coverage_lock(text, text) IS 'Serialises the coverage writers of one (policy, instance) (transaction-scoped advisory lock).';

-- Recomputes the coverage_state row of one (policy, instance) from image_runs: three index probes.
CREATE FUNCTION coverage_refresh(pol text, inst text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    last image_runs%ROWTYPE;
    avail image_runs%ROWTYPE;
    first_at timestamptz;
BEGIN
    SELECT * INTO last FROM image_runs WHERE policy = pol AND instance_id = inst
    ORDER BY scheduled_at DESC LIMIT 1;
    IF NOT FOUND THEN
        DELETE FROM coverage_state WHERE policy = pol AND instance_id = inst;
        RETURN;
    END IF;
    SELECT scheduled_at INTO first_at FROM image_runs WHERE policy = pol AND instance_id = inst
    ORDER BY scheduled_at LIMIT 1;
    SELECT * INTO avail FROM image_runs WHERE policy = pol AND instance_id = inst AND status = 'available'
    ORDER BY scheduled_at DESC, id DESC LIMIT 1;
    INSERT INTO coverage_state AS c (policy, instance_id, first_slot, last_slot, last_run_id, last_status,
        last_error_code, last_available_run_id, last_available_image_id, last_available_image_name,
        last_available_slot, last_available_at)
    VALUES (pol, inst, first_at, last.scheduled_at, last.id, last.status, last.error_code,
        avail.id, avail.image_id, avail.image_name, avail.scheduled_at, avail.finished_at)
    ON CONFLICT (policy, instance_id) DO UPDATE
    SET first_slot = EXCLUDED.first_slot, last_slot = EXCLUDED.last_slot, last_run_id = EXCLUDED.last_run_id,
        last_status = EXCLUDED.last_status, last_error_code = EXCLUDED.last_error_code,
        last_available_run_id = EXCLUDED.last_available_run_id,
        last_available_image_id = EXCLUDED.last_available_image_id,
        last_available_image_name = EXCLUDED.last_available_image_name,
        last_available_slot = EXCLUDED.last_available_slot, last_available_at = EXCLUDED.last_available_at;
END
$$;

COMMENT ON FUNCTION coverage_refresh(text, text) IS 'Recomputes the coverage_state row of one (policy, instance) from image_runs.';

-- Recomputes the coverage_days row of the day (in the policy's time zone) that holds slot.
CREATE FUNCTION coverage_day_refresh(pol text, inst text, slot timestamptz) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    tz text := coverage_timezone(pol);
    d date := (slot AT TIME ZONE tz)::date;
    best image_runs%ROWTYPE;
    n integer;
BEGIN
    SELECT count(*) INTO n FROM image_runs WHERE policy = pol AND instance_id = inst
        AND scheduled_at >= (d::timestamp AT TIME ZONE tz) AND scheduled_at < ((d + 1)::timestamp AT TIME ZONE tz);
    IF n = 0 THEN
        DELETE FROM coverage_days WHERE policy = pol AND instance_id = inst AND day = d;
        RETURN;
    END IF;
    SELECT * INTO best FROM image_runs WHERE policy = pol AND instance_id = inst
        AND scheduled_at >= (d::timestamp AT TIME ZONE tz) AND scheduled_at < ((d + 1)::timestamp AT TIME ZONE tz)
    ORDER BY coverage_status_rank(status), scheduled_at DESC LIMIT 1;
    INSERT INTO coverage_days AS c (policy, instance_id, day, status, run_id, image_id, error_code, runs)
    VALUES (pol, inst, d, best.status, best.id, best.image_id, best.error_code, n)
    ON CONFLICT (policy, day, instance_id) DO UPDATE
    SET status = EXCLUDED.status, run_id = EXCLUDED.run_id, image_id = EXCLUDED.image_id,
        error_code = EXCLUDED.error_code, runs = EXCLUDED.runs;
END
$$;

COMMENT ON FUNCTION coverage_day_refresh(text, text, timestamptz) IS 'Recomputes the coverage_days row of one (policy, instance) for the day that holds a slot.';

CREATE FUNCTION coverage_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM coverage_lock(OLD.policy, OLD.instance_id);
        PERFORM coverage_refresh(OLD.policy, OLD.instance_id);
        PERFORM coverage_day_refresh(OLD.policy, OLD.instance_id, OLD.scheduled_at);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.policy <> OLD.policy OR NEW.instance_id <> OLD.instance_id
            OR NEW.scheduled_at <> OLD.scheduled_at) THEN
        PERFORM coverage_lock(NEW.policy, NEW.instance_id);
        PERFORM coverage_refresh(NEW.policy, NEW.instance_id);
        PERFORM coverage_day_refresh(NEW.policy, NEW.instance_id, NEW.scheduled_at);
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION coverage_sync() IS 'Keeps coverage_state and coverage_days in step with image_runs (row trigger).';

-- The attempts counter, updated_at and request ids change no answer: those updates do not fire.
CREATE TRIGGER coverage_insert AFTER INSERT ON image_runs
    FOR EACH ROW EXECUTE FUNCTION coverage_sync();
CREATE TRIGGER coverage_update
    AFTER UPDATE OF status, policy, instance_id, scheduled_at, finished_at, image_name, image_id, error_code ON image_runs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.policy IS DISTINCT FROM NEW.policy
        OR OLD.instance_id IS DISTINCT FROM NEW.instance_id OR OLD.scheduled_at IS DISTINCT FROM NEW.scheduled_at
        OR OLD.finished_at IS DISTINCT FROM NEW.finished_at OR OLD.image_name IS DISTINCT FROM NEW.image_name
        OR OLD.image_id IS DISTINCT FROM NEW.image_id OR OLD.error_code IS DISTINCT FROM NEW.error_code)
    EXECUTE FUNCTION coverage_sync();
CREATE TRIGGER coverage_delete AFTER DELETE ON image_runs
    FOR EACH ROW EXECUTE FUNCTION coverage_sync();

CREATE FUNCTION coverage_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM coverage_state;
    DELETE FROM coverage_days;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION coverage_truncate() IS 'Empties coverage_state and coverage_days when image_runs is truncated.';

CREATE TRIGGER coverage_truncate AFTER TRUNCATE ON image_runs
    FOR EACH STATEMENT EXECUTE FUNCTION coverage_truncate();

-- Recomputes the days of one policy (all policies when pol is NULL) from image_runs: after its
-- time zone changed (history.PoliciesSync calls it), or after a bulk load with triggers off.
CREATE FUNCTION coverage_days_rebuild(pol text) RETURNS void LANGUAGE sql AS $$
    DELETE FROM coverage_days WHERE pol IS NULL OR policy = pol;
    INSERT INTO coverage_days (policy, instance_id, day, status, run_id, image_id, error_code, runs)
    SELECT DISTINCT ON (r.policy, r.instance_id, d.day) r.policy, r.instance_id, d.day, r.status, r.id,
        r.image_id, r.error_code, count(*) OVER (PARTITION BY r.policy, r.instance_id, d.day)
    FROM image_runs r
    LEFT JOIN policies p ON p.name = r.policy
    CROSS JOIN LATERAL (SELECT (r.scheduled_at AT TIME ZONE COALESCE(p.timezone, 'UTC'))::date AS day) d
    WHERE pol IS NULL OR r.policy = pol
    ORDER BY r.policy, r.instance_id, d.day, coverage_status_rank(r.status), r.scheduled_at DESC;
$$;

COMMENT ON FUNCTION coverage_days_rebuild(text) IS 'Recomputes coverage_days of one policy (NULL: all) from image_runs.';

-- Recomputes coverage_state and coverage_days from image_runs (after a bulk load with triggers off).
CREATE FUNCTION coverage_rebuild() RETURNS void LANGUAGE sql AS $$
    DELETE FROM coverage_state;
    INSERT INTO coverage_state (policy, instance_id, first_slot, last_slot, last_run_id, last_status,
        last_error_code, last_available_run_id, last_available_image_id, last_available_image_name,
        last_available_slot, last_available_at)
    SELECT l.policy, l.instance_id, l.first_slot, l.scheduled_at, l.id, l.status, l.error_code,
        a.id, a.image_id, a.image_name, a.scheduled_at, a.finished_at
    FROM (SELECT DISTINCT ON (policy, instance_id) policy, instance_id, scheduled_at, id, status, error_code,
              min(scheduled_at) OVER (PARTITION BY policy, instance_id) AS first_slot
          FROM image_runs ORDER BY policy, instance_id, scheduled_at DESC) l
    LEFT JOIN (SELECT DISTINCT ON (policy, instance_id) policy, instance_id, id, image_id, image_name, scheduled_at, finished_at
               FROM image_runs WHERE status = 'available'
               ORDER BY policy, instance_id, scheduled_at DESC, id DESC) a
        ON a.policy = l.policy AND a.instance_id = l.instance_id;
    SELECT coverage_days_rebuild(NULL);
$$;

COMMENT ON FUNCTION coverage_rebuild() IS 'Recomputes coverage_state and coverage_days from image_runs (after a bulk load with triggers off).';

SELECT coverage_rebuild();

-- The views operators read. A (policy, instance) whose newest slot is more than two intervals
-- older than its policy's newest slot is no longer targeted (an instance dropped from the list,
-- or no longer matching the selector): coverage leaves it out.
CREATE VIEW coverage AS
SELECT c.policy, c.instance_id, c.last_slot, c.last_status, c.last_error_code,
    c.last_available_image_id, c.last_available_image_name, c.last_available_slot,
    now() - c.last_available_at AS last_available_age,
    (p.enabled AND COALESCE(c.last_available_at, c.first_slot)
        < now() - make_interval(secs => p.interval_seconds * 1.5)) AS overdue
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
    'true when no image became available within 1.5 x policies.interval_seconds (for an instance never imaged: since its first slot); false for a disabled policy.';

CREATE VIEW rpo_breaches AS
SELECT * FROM coverage WHERE overdue;

COMMENT ON VIEW rpo_breaches IS 'The overdue rows of coverage: instances without an image within 1.5 intervals of their policy.';

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

-- Column comments that 0004_leadership left out (the schema is documented column by column).
COMMENT ON COLUMN leader_lease.name IS 'Lease name; the leader holds the row ''leader''.';
COMMENT ON COLUMN replicas.daemon_id IS 'Identity of the process (host/pid/start).';
COMMENT ON COLUMN replicas.host IS 'Host name of the process.';
COMMENT ON COLUMN replicas.pid IS 'Process id on its host.';
COMMENT ON COLUMN replicas.version IS 'imager version of the process.';
COMMENT ON COLUMN replicas.started_at IS 'When the process started (database clock).';
COMMENT ON COLUMN policy_slots.policy IS 'Policy name.';
COMMENT ON COLUMN policy_slots.updated_at IS 'When the row last changed (database clock).';
COMMENT ON COLUMN fire_requests.id IS 'Request id.';
COMMENT ON COLUMN fire_requests.policy IS 'Policy to fire.';
COMMENT ON COLUMN fire_requests.requested_by IS 'daemon_id of the imager once that asked.';
COMMENT ON COLUMN fire_requests.requested_at IS 'When it was asked (database clock).';
COMMENT ON COLUMN fire_requests.taken_by IS 'daemon_id of the leader that took it.';
COMMENT ON COLUMN fire_requests.taken_term IS 'Leader term under which it was taken.';
COMMENT ON COLUMN fire_requests.finished_at IS 'When its runs were written (or it failed).';
COMMENT ON COLUMN fire_requests.error_message IS 'Why it failed, when it did.';
