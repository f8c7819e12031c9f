-- 0008_missed_digest: the missed runs of one policy written in one transaction make one missed
-- event (README "Notifications"). The walk over passed slots (README "Missed slots and outages")
-- records up to 100 slots of a policy for every target in one transaction; 0006 wrote an event per
-- run, so a day's outage of a quarter-hourly policy over 50 instances sent 4,800 webhooks. Now it
-- sends one, which says how many runs were missed, from which slot to which, and on which instances
-- (the first 100).
-- A single missed run keeps its per-run payload and gains the same fields (count 1).

ALTER TABLE notifications ADD COLUMN xact xid8;

COMMENT ON COLUMN notifications.xact IS
    'For a missed event: the transaction that wrote it; the other missed runs of its policy written by that transaction join it. NULL otherwise.';

CREATE INDEX notifications_missed_xact_idx ON notifications (policy, xact)
    WHERE xact IS NOT NULL AND dispatched_at IS NULL;

-- How many distinct instances a missed event lists by id.
CREATE FUNCTION notification_missed_ids_max() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 100 $$;

COMMENT ON FUNCTION notification_missed_ids_max() IS
    'The most instance ids a missed event lists in instance_ids; instance_ids_truncated says when it left some out.';

-- Adds missed runs of policy pol to the missed event of pol written by this transaction, or
-- writes that event. The runs: n of them, slots first_slot..last_slot, on the instances new_ids
-- (distinct, in the order they were written, at most notification_missed_ids_max()) and more when
-- more_ids; one_run is the run when n is 1 and NULL otherwise. O(1) per call, so a walk that
-- writes thousands of missed rows in one statement costs one call per policy.
CREATE FUNCTION notification_missed_add(pol text, n bigint, first_slot timestamptz, last_slot timestamptz,
    new_ids jsonb, more_ids boolean, one_run image_runs, code text, message text, at timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    ev notifications%ROWTYPE;
    ids jsonb;
    inst text;
    truncated boolean;
    d jsonb;
    one_instance text;
BEGIN
    one_instance := CASE WHEN jsonb_array_length(new_ids) = 1 AND NOT more_ids THEN new_ids ->> 0 END;
    SELECT * INTO ev FROM notifications
    WHERE policy = pol AND xact = pg_current_xact_id() AND dispatched_at IS NULL AND event = 'missed'
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO notifications (event, policy, instance_id, run_id, slot, status, error_code, error_message,
            image_id, image_name, at, xact, detail)
        VALUES ('missed', pol, one_instance, CASE WHEN n = 1 THEN (one_run).id END, last_slot, 'missed', code,
            message, NULL, NULL, at, pg_current_xact_id(),
            jsonb_build_object('count', n, 'first_slot', notification_time(first_slot),
                'last_slot', notification_time(last_slot), 'instance_ids', new_ids,
                'instance_ids_truncated', more_ids));
        RETURN;
    END IF;
    ids := ev.detail -> 'instance_ids';
    truncated := (ev.detail ->> 'instance_ids_truncated')::boolean OR more_ids;
    FOR inst IN SELECT jsonb_array_elements_text(new_ids) LOOP
        IF NOT ids ? inst THEN
            IF jsonb_array_length(ids) < notification_missed_ids_max() THEN
                ids := ids || to_jsonb(inst);
            ELSE
                truncated := true;
            END IF;
        END IF;
    END LOOP;
    d := jsonb_build_object(
        'count', (ev.detail ->> 'count')::bigint + n,
        'first_slot', notification_time(LEAST((ev.detail ->> 'first_slot')::timestamptz, first_slot)),
        'last_slot', notification_time(GREATEST((ev.detail ->> 'last_slot')::timestamptz, last_slot)),
        'instance_ids', ids,
        'instance_ids_truncated', truncated);
    -- Several runs: the per-run fields that no longer name one thing are null; slot is the latest.
    ev.instance_id := CASE WHEN ev.instance_id = one_instance THEN ev.instance_id END;
    ev.slot := GREATEST(ev.slot, last_slot);
    UPDATE notifications SET
        detail = ev.detail || d,
        instance_id = ev.instance_id,
        run_id = NULL,
        slot = ev.slot,
        payload = payload || d || jsonb_build_object('instance_id', ev.instance_id, 'run_id', NULL,
            'slot', notification_time(ev.slot))
    WHERE id = ev.id;
END
$$;

COMMENT ON FUNCTION notification_missed_add(text, bigint, timestamptz, timestamptz, jsonb, boolean, image_runs, text, text, timestamptz) IS
    'Writes the missed event of a policy for this transaction, or adds runs to the one it already has.';

-- Missed rows inserted by one statement (a walk writes all of a policy's in one): one call of
-- notification_missed_add per policy.
CREATE FUNCTION notifications_missed_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    g record;
    first_run image_runs;
BEGIN
    FOR g IN
        WITH m AS (SELECT * FROM new_rows WHERE status = 'missed'),
        inst AS (SELECT policy, instance_id, min(id) AS first_id FROM m GROUP BY policy, instance_id),
        ranked AS (SELECT policy, instance_id, row_number() OVER (PARTITION BY policy ORDER BY first_id) AS k FROM inst)
        SELECT m.policy, count(*) AS n, min(m.scheduled_at) AS first_slot, max(m.scheduled_at) AS last_slot,
            (SELECT jsonb_agg(rk.instance_id ORDER BY rk.k) FROM ranked rk
                WHERE rk.policy = m.policy AND rk.k <= notification_missed_ids_max()) AS ids,
            (SELECT count(*) FROM inst i WHERE i.policy = m.policy) > notification_missed_ids_max() AS more,
            min(m.id) AS first_id,
            COALESCE(max(m.finished_at), now()) AS at
        FROM m GROUP BY m.policy ORDER BY min(m.id)
    LOOP
        SELECT * INTO first_run FROM new_rows WHERE id = g.first_id;
        PERFORM notification_missed_add(g.policy, g.n, g.first_slot, g.last_slot, g.ids, g.more,
            CASE WHEN g.n = 1 THEN first_run END, first_run.error_code, first_run.error_message, g.at);
    END LOOP;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION notifications_missed_insert() IS
    'Writes the missed events of the missed rows one INSERT statement wrote: one per policy (statement trigger).';

CREATE TRIGGER notifications_missed_insert AFTER INSERT ON image_runs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifications_missed_insert();

CREATE OR REPLACE FUNCTION notifications_run_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz := COALESCE(NEW.finished_at, now());
    prev_status text;
    recovered boolean := false;
    reason text;
    interval_s bigint;
    since timestamptz;
BEGIN
    IF NEW.status = 'missed' THEN
        -- Inserted missed rows are written up per statement (notifications_missed_insert).
        IF TG_OP = 'UPDATE' THEN
            PERFORM notification_missed_add(NEW.policy, 1, NEW.scheduled_at, NEW.scheduled_at,
                jsonb_build_array(NEW.instance_id), false, NEW, NEW.error_code, NEW.error_message, at);
        END IF;
    ELSIF NEW.status = 'failed' THEN
        INSERT INTO notifications (event, policy, instance_id, run_id, slot, status, error_code, error_message,
            image_id, image_name, at)
        VALUES (NEW.status, NEW.policy, NEW.instance_id, NEW.id, NEW.scheduled_at, NEW.status, NEW.error_code,
            NEW.error_message, NEW.image_id, NEW.image_name, at);
    ELSIF NEW.status = 'available' THEN
        SELECT status INTO prev_status FROM image_runs
        WHERE policy = NEW.policy AND instance_id = NEW.instance_id AND scheduled_at < NEW.scheduled_at
        ORDER BY scheduled_at DESC LIMIT 1;
        IF prev_status IN ('failed', 'missed') THEN
            recovered := true;
            reason := 'previous_run_' || prev_status;
        END IF;
        UPDATE notification_breaches SET closed_at = at, closed_by = 'recovered'
        WHERE policy = NEW.policy AND instance_id = NEW.instance_id AND closed_at IS NULL;
        IF FOUND AND NOT recovered THEN
            recovered := true;
            reason := 'rpo_breach';
        END IF;
        IF NOT recovered THEN
            -- Overdue as the coverage view says: no image within 1.5 intervals (since the first
            -- slot for an instance never imaged).
            SELECT interval_seconds INTO interval_s FROM policies WHERE name = NEW.policy AND enabled;
            IF interval_s IS NOT NULL THEN
                SELECT finished_at INTO since FROM image_runs
                WHERE policy = NEW.policy AND instance_id = NEW.instance_id AND status = 'available'
                    AND id <> NEW.id AND scheduled_at <= NEW.scheduled_at
                ORDER BY scheduled_at DESC, id DESC LIMIT 1;
                IF since IS NULL THEN
                    SELECT min(scheduled_at) INTO since FROM image_runs
                    WHERE policy = NEW.policy AND instance_id = NEW.instance_id;
                END IF;
                IF since < at - make_interval(secs => interval_s * 1.5) THEN
                    recovered := true;
                    reason := 'overdue';
                END IF;
            END IF;
        END IF;
        IF recovered THEN
            INSERT INTO notifications (event, policy, instance_id, run_id, slot, status, error_code, error_message,
                image_id, image_name, at, detail)
            VALUES ('recovered', NEW.policy, NEW.instance_id, NEW.id, NEW.scheduled_at, NEW.status, NULL, NULL,
                NEW.image_id, NEW.image_name, at,
                jsonb_build_object('recovered_from', reason, 'previous_status', prev_status));
        END IF;
    END IF;
    IF NEW.status NOT IN ('pending', 'requested') THEN
        PERFORM notification_fire_check(NEW.policy, NEW.scheduled_at, at);
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION notifications_run_outcome() IS
    'Writes failed, missed (updates; inserts: notifications_missed_insert) and recovered events and ends fires, in the transaction of the run''s status change (row trigger).';
