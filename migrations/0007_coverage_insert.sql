-- 0007_coverage_insert: a new run updates coverage_state and coverage_days from the row itself.
-- 0005 recomputed both from image_runs on every insert (five queries per row). A fire writes all
-- of its slots in one transaction before its first call (README "Missed slots and outages"), and
-- on a database whose image_runs has no planner statistics yet those queries were planned for an
-- empty table and scanned it: 3,000 slots took about 2.5 s to write instead of 0.05 s. An insert
-- only ever adds a run, so the answers it changes follow from the new row and the current answer:
-- two upserts, no scan, whatever the statistics. Updates and deletes still recompute (0005).

-- Whether a run (status, slot) is a better answer for its day than the day's current best run:
-- a better status, or an equal one at a later slot (coverage_day_refresh's order).
CREATE FUNCTION coverage_day_beats(status text, slot timestamptz, best_status text, best_run_id bigint)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coverage_status_rank(status) < coverage_status_rank(best_status)
        OR (coverage_status_rank(status) = coverage_status_rank(best_status)
            AND slot > (SELECT r.scheduled_at FROM image_runs r WHERE r.id = best_run_id));
$$;

COMMENT ON FUNCTION coverage_day_beats(text, timestamptz, text, bigint) IS
    'Whether a run of this status and slot is a better answer for its day in daily_coverage than the run best_run_id of status best_status.';

-- Adds one new run to coverage_state and coverage_days. The caller holds coverage_lock of the pair.
CREATE FUNCTION coverage_add(r image_runs) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    tz text := coverage_timezone(r.policy);
    avail boolean := r.status = 'available';
BEGIN
    INSERT INTO coverage_state AS c (policy, instance_id, first_slot, last_slot, last_run_id, last_status,
        last_error_code, last_available_run_id, last_available_image_id, last_available_image_name,
        last_available_slot, last_available_at)
    VALUES (r.policy, r.instance_id, r.scheduled_at, r.scheduled_at, r.id, r.status, r.error_code,
        CASE WHEN avail THEN r.id END, CASE WHEN avail THEN r.image_id END,
        CASE WHEN avail THEN r.image_name END, CASE WHEN avail THEN r.scheduled_at END,
        CASE WHEN avail THEN r.finished_at END)
    ON CONFLICT (policy, instance_id) DO UPDATE
    SET first_slot = LEAST(c.first_slot, EXCLUDED.first_slot),
        last_slot = GREATEST(c.last_slot, EXCLUDED.last_slot),
        last_run_id = CASE WHEN EXCLUDED.last_slot > c.last_slot THEN EXCLUDED.last_run_id ELSE c.last_run_id END,
        last_status = CASE WHEN EXCLUDED.last_slot > c.last_slot THEN EXCLUDED.last_status ELSE c.last_status END,
        last_error_code = CASE WHEN EXCLUDED.last_slot > c.last_slot THEN EXCLUDED.last_error_code ELSE c.last_error_code END,
        last_available_run_id = CASE WHEN avail AND (c.last_available_run_id IS NULL
                OR (EXCLUDED.last_available_slot, EXCLUDED.last_available_run_id) > (c.last_available_slot, c.last_available_run_id))
            THEN EXCLUDED.last_available_run_id ELSE c.last_available_run_id END,
        last_available_image_id = CASE WHEN avail AND (c.last_available_run_id IS NULL
                OR (EXCLUDED.last_available_slot, EXCLUDED.last_available_run_id) > (c.last_available_slot, c.last_available_run_id))
            THEN EXCLUDED.last_available_image_id ELSE c.last_available_image_id END,
        last_available_image_name = CASE WHEN avail AND (c.last_available_run_id IS NULL
                OR (EXCLUDED.last_available_slot, EXCLUDED.last_available_run_id) > (c.last_available_slot, c.last_available_run_id))
            THEN EXCLUDED.last_available_image_name ELSE c.last_available_image_name END,
        last_available_slot = CASE WHEN avail AND (c.last_available_run_id IS NULL
                OR (EXCLUDED.last_available_slot, EXCLUDED.last_available_run_id) > (c.last_available_slot, c.last_available_run_id))
            THEN EXCLUDED.last_available_slot ELSE c.last_available_slot END,
        last_available_at = CASE WHEN avail AND (c.last_available_run_id IS NULL
                OR (EXCLUDED.last_available_slot, EXCLUDED.last_available_run_id) > (c.last_available_slot, c.last_available_run_id))
            THEN EXCLUDED.last_available_at ELSE c.last_available_at END;

    INSERT INTO coverage_days AS c (policy, instance_id, day, status, run_id, image_id, error_code, runs)
    VALUES (r.policy, r.instance_id, (r.scheduled_at AT TIME ZONE tz)::date, r.status, r.id, r.image_id,
        r.error_code, 1)
    ON CONFLICT (policy, day, instance_id) DO UPDATE
    SET runs = c.runs + 1,
        status = CASE WHEN coverage_day_beats(r.status, r.scheduled_at, c.status, c.run_id)
            THEN EXCLUDED.status ELSE c.status END,
        run_id = CASE WHEN coverage_day_beats(r.status, r.scheduled_at, c.status, c.run_id)
            THEN EXCLUDED.run_id ELSE c.run_id END,
        image_id = CASE WHEN coverage_day_beats(r.status, r.scheduled_at, c.status, c.run_id)
            THEN EXCLUDED.image_id ELSE c.image_id END,
        error_code = CASE WHEN coverage_day_beats(r.status, r.scheduled_at, c.status, c.run_id)
            THEN EXCLUDED.error_code ELSE c.error_code END;
END
$$;

COMMENT ON FUNCTION coverage_add(image_runs) IS
    'Adds a new run to coverage_state and coverage_days from the row and the current answers alone (insert trigger).';

CREATE OR REPLACE FUNCTION coverage_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM coverage_lock(NEW.policy, NEW.instance_id);
        PERFORM coverage_add(NEW);
        RETURN NULL;
    END IF;
    PERFORM coverage_lock(OLD.policy, OLD.instance_id);
    PERFORM coverage_refresh(OLD.policy, OLD.instance_id);
    PERFORM coverage_day_refresh(OLD.policy, OLD.instance_id, OLD.scheduled_at);
    IF TG_OP = 'UPDATE' AND (NEW.policy <> OLD.policy OR NEW.instance_id <> OLD.instance_id
            OR NEW.scheduled_at <> OLD.scheduled_at) THEN
        PERFORM coverage_lock(NEW.policy, NEW.instance_id);
        PERFORM coverage_refresh(NEW.policy, NEW.instance_id);
        PERFORM coverage_day_refresh(NEW.policy, NEW.instance_id, NEW.scheduled_at);
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION coverage_sync() IS
    'Keeps coverage_state and coverage_days in step with image_runs (row trigger): an insert adds to them, an update or delete recomputes.';
