-- 0009_failed_digest: failed runs of one slot of a policy with the same error code join one failed
-- event while it waits to be sent (README "Notifications"). Expired credentials or a policy that
-- names instances of the wrong kind fail every slot of a fire at once; 0006 wrote one event per
-- run, so a fire of 500 instances sent 500 webhooks carrying the same code. An event is sent once
-- the leader fans it out (every 5 s by default): the failures written until then are counted in
-- it, later ones start the next. Every failed event now carries count, instance_ids and
-- instance_ids_truncated, as missed events do (0008); a single failure keeps its per-run fields.

CREATE INDEX notifications_failed_open_idx ON notifications (policy, slot)
    WHERE event = 'failed' AND dispatched_at IS NULL;

-- Adds failed runs of policy pol at slot s with error code code to the unsent failed event of that
-- key, or writes that event. The runs: n of them, on the instances new_ids (distinct, in the order
-- they were written, at most notification_missed_ids_max()) and more when more_ids; one_run is the
-- run when n is 1 and NULL otherwise, message the first run's error message.
CREATE FUNCTION notification_failed_add(pol text, s timestamptz, code text, n bigint, new_ids jsonb,
    more_ids boolean, one_run image_runs, message text, at timestamptz)
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
    WHERE event = 'failed' AND policy = pol AND slot = s AND error_code IS NOT DISTINCT FROM code
        AND dispatched_at IS NULL
    ORDER BY id LIMIT 1
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO notifications (event, policy, instance_id, run_id, slot, status, error_code, error_message,
            image_id, image_name, at, detail)
        VALUES ('failed', pol, one_instance, (one_run).id, s, 'failed', code, message,
            (one_run).image_id, (one_run).image_name, at,
            jsonb_build_object('count', n, 'instance_ids', new_ids, 'instance_ids_truncated', more_ids));
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
    d := jsonb_build_object('count', (ev.detail ->> 'count')::bigint + n, 'instance_ids', ids,
        'instance_ids_truncated', truncated);
    -- Several runs: the per-run fields that no longer name one thing are null.
    ev.instance_id := CASE WHEN ev.instance_id = one_instance THEN ev.instance_id END;
    UPDATE notifications SET
        detail = ev.detail || d,
        instance_id = ev.instance_id,
        run_id = NULL,
        image_id = NULL,
        image_name = NULL,
        payload = payload || d || jsonb_build_object('instance_id', ev.instance_id, 'run_id', NULL,
            'image_id', NULL, 'image_name', NULL)
    WHERE id = ev.id;
END
$$;

COMMENT ON FUNCTION notification_failed_add(text, timestamptz, text, bigint, jsonb, boolean, image_runs, text, timestamptz) IS
    'Writes the failed event of a policy, slot and error code, or adds runs to the unsent one.';

-- Missed and failed rows inserted by one statement (a walk writes all of a policy's missed slots
-- in one; a fire writes the slots a rule failed, such as the quota gate's, in one): one call per
-- policy for missed runs, one per policy, slot and error code for failed ones.
CREATE OR REPLACE FUNCTION notifications_missed_insert() RETURNS trigger LANGUAGE plpgsql AS $$
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
    -- A slot has one row per instance, so the failed runs of a key are on distinct instances.
    FOR g IN
        WITH f AS (SELECT *, row_number() OVER (PARTITION BY policy, scheduled_at, error_code ORDER BY id) AS k
                   FROM new_rows WHERE status = 'failed')
        SELECT policy, scheduled_at, error_code, count(*) AS n,
            jsonb_agg(instance_id ORDER BY k) FILTER (WHERE k <= notification_missed_ids_max()) AS ids,
            count(*) > notification_missed_ids_max() AS more,
            min(id) AS first_id,
            COALESCE(max(finished_at), now()) AS at
        FROM f GROUP BY policy, scheduled_at, error_code ORDER BY min(id)
    LOOP
        SELECT * INTO first_run FROM new_rows WHERE id = g.first_id;
        PERFORM notification_failed_add(g.policy, g.scheduled_at, g.error_code, g.n, g.ids, g.more,
            CASE WHEN g.n = 1 THEN first_run END, first_run.error_message, g.at);
    END LOOP;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION notifications_missed_insert() IS
    'Writes the missed and failed events of the rows one INSERT statement wrote: one per policy for missed runs, one per policy, slot and error code for failed ones (statement trigger).';

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
        -- Inserted failed rows are written up per statement (notifications_missed_insert).
        IF TG_OP = 'UPDATE' THEN
            PERFORM notification_failed_add(NEW.policy, NEW.scheduled_at, NEW.error_code, 1,
                jsonb_build_array(NEW.instance_id), false, NEW, NEW.error_message, at);
        END IF;
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
    'Writes failed and missed events (of updates; of inserts: notifications_missed_insert) and recovered events and ends fires, in the transaction of the run''s status change (row trigger).';
