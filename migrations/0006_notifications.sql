-- 0006_notifications: operators are told when a night fails (README "Notifications"). Every event
-- is written to the notifications outbox in the same transaction as the outcome it reports (by the
-- triggers below, or by the leader's RPO evaluation); the leader then fans each event out to the
-- webhooks and pings configured at that moment, one notification_deliveries row per target, and
-- delivers them with retries. A crash or a database outage can delay a notification, never lose it.

CREATE TABLE notifications (
    id            bigserial   PRIMARY KEY,
    event         text        NOT NULL,
    policy        text        NOT NULL,
    instance_id   text,
    run_id        bigint      REFERENCES image_runs (id) ON DELETE SET NULL,
    slot          timestamptz,
    status        text,
    error_code    text,
    error_message text,
    image_id      text,
    image_name    text,
    at            timestamptz NOT NULL,
    detail        jsonb       NOT NULL DEFAULT '{}',
    payload       jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz,
    CONSTRAINT notifications_event_check CHECK (event IN ('failed', 'missed', 'recovered', 'rpo_breach',
        'fire_started', 'fire_succeeded', 'fire_failed'))
);

COMMENT ON TABLE notifications IS
    'The notification outbox: one row per event, written in the transaction of the outcome it reports; notification_deliveries holds its delivery to each target.';
COMMENT ON COLUMN notifications.id IS 'Event id; the payload carries it as event_id so receivers can drop repeats.';
COMMENT ON COLUMN notifications.event IS
    'failed, missed (a run ended so), recovered (available after a failed or missed run, or after being overdue), '
    'rpo_breach (an instance entered rpo_breaches), fire_started, fire_succeeded, fire_failed (a fire of the policy, for its ping).';
COMMENT ON COLUMN notifications.policy IS 'Policy of the event.';
COMMENT ON COLUMN notifications.instance_id IS 'Instance of the event; NULL for fire events.';
COMMENT ON COLUMN notifications.run_id IS 'image_runs.id the event reports; NULL for rpo_breach and fire events.';
COMMENT ON COLUMN notifications.slot IS 'Slot of the run, or of the fire.';
COMMENT ON COLUMN notifications.status IS 'image_runs.status of the run (for rpo_breach: of the last slot).';
COMMENT ON COLUMN notifications.error_code IS 'Error code of the run (fire_failed: of its first failing run).';
COMMENT ON COLUMN notifications.error_message IS 'Error message of the run.';
COMMENT ON COLUMN notifications.image_id IS 'Image id of the run (rpo_breach: of the last available image).';
COMMENT ON COLUMN notifications.image_name IS 'Image name of the run (rpo_breach: of the last available image).';
COMMENT ON COLUMN notifications.at IS 'When the event happened: the run''s finished_at, the evaluation time of a breach, the fire''s time.';
COMMENT ON COLUMN notifications.detail IS 'Event-specific fields, merged into the payload (counts of a fire, previous_status of a recovery, ...).';
COMMENT ON COLUMN notifications.payload IS 'The JSON body every webhook receives, frozen when the event was written.';
COMMENT ON COLUMN notifications.created_at IS 'When the row was written (database clock).';
COMMENT ON COLUMN notifications.dispatched_at IS 'When the leader created its notification_deliveries rows; NULL until then.';

CREATE INDEX notifications_undispatched_idx ON notifications (id) WHERE dispatched_at IS NULL;
CREATE INDEX notifications_policy_idx ON notifications (policy, created_at DESC);

CREATE TABLE notification_deliveries (
    id                 bigserial   PRIMARY KEY,
    notification_id    bigint      NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    target             text        NOT NULL,
    target_kind        text        NOT NULL,
    target_index       integer,
    target_host        text        NOT NULL,
    status             text        NOT NULL DEFAULT 'pending',
    attempts           integer     NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL,
    next_attempt_at    timestamptz,
    last_attempt_at    timestamptz,
    last_response_code integer,
    last_error         text,
    delivered_at       timestamptz,
    CONSTRAINT notification_deliveries_target_key UNIQUE (notification_id, target),
    CONSTRAINT notification_deliveries_kind_check CHECK (target_kind IN ('webhook', 'ping')),
    CONSTRAINT notification_deliveries_status_check CHECK (status IN ('pending', 'delivered', 'failed')),
    CONSTRAINT notification_deliveries_next_check CHECK ((next_attempt_at IS NULL) = (status <> 'pending')),
    CONSTRAINT notification_deliveries_delivered_check CHECK ((delivered_at IS NULL) = (status <> 'delivered')),
    CONSTRAINT notification_deliveries_attempts_check CHECK (attempts >= 0)
);

COMMENT ON TABLE notification_deliveries IS
    'One row per (event, target): the delivery of a notification to one webhook or ping, with its attempts. URLs are never stored.';
COMMENT ON COLUMN notification_deliveries.id IS 'Delivery id.';
COMMENT ON COLUMN notification_deliveries.notification_id IS 'The event delivered (notifications.id).';
COMMENT ON COLUMN notification_deliveries.target IS
    'Stable name of the target: webhook/<first 16 hex digits of the SHA-256 of its URL>, or ping/<policy>/<same hash>.';
COMMENT ON COLUMN notification_deliveries.target_kind IS 'webhook (notify.webhooks) or ping (a policy''s notify.ping).';
COMMENT ON COLUMN notification_deliveries.target_index IS 'Position of the webhook in notify.webhooks when the delivery was created; NULL for a ping.';
COMMENT ON COLUMN notification_deliveries.target_host IS 'scheme://host of the URL (its path and query may hold a secret and are not stored).';
COMMENT ON COLUMN notification_deliveries.status IS
    'pending: to send (again) at next_attempt_at; delivered: a 2xx answer; failed: retries exhausted or the target left the configuration.';
COMMENT ON COLUMN notification_deliveries.attempts IS 'HTTP requests made so far.';
COMMENT ON COLUMN notification_deliveries.created_at IS 'When the leader fanned the event out to this target; retries stop notify''s max_elapsed after it.';
COMMENT ON COLUMN notification_deliveries.next_attempt_at IS 'When the next request is due; NULL once delivered or failed.';
COMMENT ON COLUMN notification_deliveries.last_attempt_at IS 'When the last request was sent.';
COMMENT ON COLUMN notification_deliveries.last_response_code IS 'HTTP status of the last answer; NULL when none came (timeout, refused).';
COMMENT ON COLUMN notification_deliveries.last_error IS 'Why the last request failed (HTTP status or network error, URL left out).';
COMMENT ON COLUMN notification_deliveries.delivered_at IS 'When a 2xx answer came.';

CREATE INDEX notification_deliveries_due_idx
    ON notification_deliveries (next_attempt_at, id) WHERE status = 'pending';

-- Open RPO breaches: rpo_breach is sent once when an instance enters rpo_breaches, and again only
-- after the breach closed (an image became available, or the instance left the view).
CREATE TABLE notification_breaches (
    id              bigserial   PRIMARY KEY,
    policy          text        NOT NULL,
    instance_id     text        NOT NULL,
    opened_at       timestamptz NOT NULL,
    notification_id bigint      REFERENCES notifications (id) ON DELETE SET NULL,
    closed_at       timestamptz,
    closed_by       text,
    CONSTRAINT notification_breaches_closed_check CHECK ((closed_at IS NULL) = (closed_by IS NULL)),
    CONSTRAINT notification_breaches_closed_by_check CHECK (closed_by IN ('recovered', 'resolved'))
);

COMMENT ON TABLE notification_breaches IS 'RPO breaches notified: one open row per (policy, instance) in rpo_breaches.';
COMMENT ON COLUMN notification_breaches.id IS 'Breach id.';
COMMENT ON COLUMN notification_breaches.policy IS 'Policy of the breach.';
COMMENT ON COLUMN notification_breaches.instance_id IS 'Instance of the breach.';
COMMENT ON COLUMN notification_breaches.opened_at IS 'When the evaluation first saw the instance in rpo_breaches.';
COMMENT ON COLUMN notification_breaches.notification_id IS 'The rpo_breach event written (notifications.id).';
COMMENT ON COLUMN notification_breaches.closed_at IS 'When the breach ended; NULL while open.';
COMMENT ON COLUMN notification_breaches.closed_by IS
    'recovered: an image became available (a recovered event was written); resolved: the instance left rpo_breaches otherwise (policy disabled or removed, instance no longer targeted).';

CREATE UNIQUE INDEX notification_breaches_open_key
    ON notification_breaches (policy, instance_id) WHERE closed_at IS NULL;

-- Fires of a policy, for its healthchecks-style ping: started when policy_slots moves to the
-- slot, ended once the outcome of its runs is known.
CREATE TABLE notification_fires (
    policy                text        NOT NULL,
    slot                  timestamptz NOT NULL,
    expected_runs         integer,
    started_at            timestamptz NOT NULL DEFAULT now(),
    start_notification_id bigint      REFERENCES notifications (id) ON DELETE SET NULL,
    outcome               text,
    ended_at              timestamptz,
    end_notification_id   bigint      REFERENCES notifications (id) ON DELETE SET NULL,
    PRIMARY KEY (policy, slot),
    CONSTRAINT notification_fires_outcome_check CHECK (outcome IN ('success', 'fail')),
    CONSTRAINT notification_fires_ended_check CHECK ((ended_at IS NULL) = (outcome IS NULL)),
    CONSTRAINT notification_fires_expected_check CHECK (expected_runs >= 0)
);

COMMENT ON TABLE notification_fires IS
    'One row per fire of a policy (policy_slots moved to the slot): fire_started was written at the fire, fire_succeeded or fire_failed when its outcome was known.';
COMMENT ON COLUMN notification_fires.policy IS 'Policy fired.';
COMMENT ON COLUMN notification_fires.slot IS 'Slot fired (image_runs.scheduled_at of its runs).';
COMMENT ON COLUMN notification_fires.expected_runs IS
    'Runs the scheduler meant to claim for the fire (history.Store.FireExpect); NULL when unknown: the fire then ends once its claimed runs are all terminal.';
COMMENT ON COLUMN notification_fires.started_at IS 'When the fire was recorded (database clock).';
COMMENT ON COLUMN notification_fires.start_notification_id IS 'Its fire_started event.';
COMMENT ON COLUMN notification_fires.outcome IS
    'success: every run available; fail: a run failed, was missed or skipped with an error code, or the runs ended with not all available. NULL while open.';
COMMENT ON COLUMN notification_fires.ended_at IS 'When the outcome was known (the finished_at of the run that decided it).';
COMMENT ON COLUMN notification_fires.end_notification_id IS 'Its fire_succeeded or fire_failed event.';

-- A fire's runs, for the fire's outcome (image_runs_slot_key leads with instance_id after policy).
CREATE INDEX image_runs_policy_slot_idx ON image_runs (policy, scheduled_at);

-- RFC 3339 in UTC, whole seconds, as every payload writes times.
CREATE FUNCTION notification_time(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
$$;

COMMENT ON FUNCTION notification_time(timestamptz) IS 'A time as payloads write it: RFC 3339, UTC, whole seconds.';

-- The payload is built once, from the row, so a retry sends the same bytes and SQL shows them.
CREATE FUNCTION notifications_payload() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.payload := COALESCE(NEW.detail, '{}'::jsonb) || jsonb_build_object(
        'event_id', NEW.id, 'event', NEW.event, 'policy', NEW.policy, 'instance_id', NEW.instance_id,
        'run_id', NEW.run_id, 'slot', notification_time(NEW.slot), 'status', NEW.status,
        'error_code', NEW.error_code, 'error_message', NEW.error_message, 'image_id', NEW.image_id,
        'image_name', NEW.image_name, 'at', notification_time(NEW.at));
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION notifications_payload() IS 'Fills notifications.payload from the row''s columns and detail.';

CREATE TRIGGER notifications_payload BEFORE INSERT ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_payload();

-- Decides a fire's outcome once it is known and writes its end event, at most once per fire. The
-- fire row is locked first, so the writers of the last two runs of a fire take turns and the
-- second sees what the first committed.
CREATE FUNCTION notification_fire_check(pol text, s timestamptz, at timestamptz) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    f notification_fires%ROWTYPE;
    n integer;
    n_available integer;
    n_open integer;
    n_bad integer;
    n_failed integer;
    n_missed integer;
    n_skipped integer;
    first_code text;
    first_message text;
    result text;
    nid bigint;
BEGIN
    PERFORM 1 FROM notification_fires WHERE policy = pol AND slot = s AND outcome IS NULL;
    IF NOT FOUND THEN
        RETURN; -- not a fire of the schedule (imager once), or already ended
    END IF;
    SELECT * INTO f FROM notification_fires WHERE policy = pol AND slot = s FOR UPDATE;
    IF f.outcome IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT count(*),
        count(*) FILTER (WHERE status = 'available'),
        count(*) FILTER (WHERE status IN ('pending', 'requested')),
        count(*) FILTER (WHERE status IN ('failed', 'missed') OR (status = 'skipped' AND error_code IS NOT NULL)),
        count(*) FILTER (WHERE status = 'failed'),
        count(*) FILTER (WHERE status = 'missed'),
        count(*) FILTER (WHERE status = 'skipped')
    INTO n, n_available, n_open, n_bad, n_failed, n_missed, n_skipped
    FROM image_runs WHERE policy = pol AND scheduled_at = s;
    IF n_bad > 0 THEN
        result := 'fail';
    ELSIF n > 0 AND n_open = 0 AND (f.expected_runs IS NULL OR n >= f.expected_runs) THEN
        result := CASE WHEN n_available = n THEN 'success' ELSE 'fail' END;
    ELSIF f.expected_runs = 0 THEN
        result := 'success'; -- a fire with no targets has nothing left to do
    ELSE
        RETURN;
    END IF;
    SELECT error_code, error_message INTO first_code, first_message FROM image_runs
    WHERE policy = pol AND scheduled_at = s AND (status IN ('failed', 'missed') OR (status = 'skipped' AND error_code IS NOT NULL))
    ORDER BY finished_at, id LIMIT 1;
    INSERT INTO notifications (event, policy, slot, status, error_code, error_message, at, detail)
    VALUES (CASE result WHEN 'success' THEN 'fire_succeeded' ELSE 'fire_failed' END, pol, s,
        CASE result WHEN 'success' THEN 'available' ELSE 'failed' END, first_code, first_message, at,
        jsonb_build_object('runs', n, 'available', n_available, 'unfinished', n_open, 'failed', n_failed,
            'missed', n_missed, 'skipped', n_skipped, 'expected_runs', f.expected_runs))
    RETURNING id INTO nid;
    UPDATE notification_fires SET outcome = result, ended_at = at, end_notification_id = nid
    WHERE policy = pol AND slot = s;
END
$$;

COMMENT ON FUNCTION notification_fire_check(text, timestamptz, timestamptz) IS
    'Ends an open fire when its outcome is known (a failing run, or every expected run terminal) and writes fire_succeeded or fire_failed.';

-- Records the number of runs the scheduler means to claim for a fire, then checks the fire: the
-- fire succeeds only once that many runs are available. Called by history.Store.FireExpect.
CREATE FUNCTION notification_fire_expect(pol text, s timestamptz, n integer, at timestamptz) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notification_fires (policy, slot, expected_runs) VALUES (pol, s, n)
    ON CONFLICT (policy, slot) DO UPDATE SET expected_runs = EXCLUDED.expected_runs;
    PERFORM notification_fire_check(pol, s, at);
END
$$;

COMMENT ON FUNCTION notification_fire_expect(text, timestamptz, integer, timestamptz) IS
    'Sets notification_fires.expected_runs of a fire and checks whether it has ended.';

-- A run's outcome: failed and missed events; recovered when an instance whose previous run
-- failed or was missed, or that was overdue (or in an open RPO breach), gets an available image;
-- and the end of the run's fire.
CREATE FUNCTION notifications_run_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz := COALESCE(NEW.finished_at, now());
    prev_status text;
    recovered boolean := false;
    reason text;
    interval_s bigint;
    since timestamptz;
BEGIN
    IF NEW.status IN ('failed', 'missed') THEN
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
    'Writes failed, missed and recovered events and ends fires, in the transaction of the run''s status change (row trigger).';

CREATE TRIGGER notifications_run_insert AFTER INSERT ON image_runs
    FOR EACH ROW WHEN (NEW.status NOT IN ('pending', 'requested'))
    EXECUTE FUNCTION notifications_run_outcome();
CREATE TRIGGER notifications_run_update AFTER UPDATE OF status ON image_runs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status NOT IN ('pending', 'requested'))
    EXECUTE FUNCTION notifications_run_outcome();

-- A fire: policy_slots moved to a new slot. Its runs may already have ended (a fire of skipped
-- slots is claimed at once), so the fire is checked straight away.
CREATE FUNCTION notifications_fire_start() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    f notification_fires%ROWTYPE;
    nid bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.last_slot <= OLD.last_slot THEN
        RETURN NULL;
    END IF;
    INSERT INTO notification_fires (policy, slot) VALUES (NEW.policy, NEW.last_slot)
    ON CONFLICT (policy, slot) DO NOTHING;
    SELECT * INTO f FROM notification_fires WHERE policy = NEW.policy AND slot = NEW.last_slot FOR UPDATE;
    IF f.start_notification_id IS NULL THEN
        INSERT INTO notifications (event, policy, slot, at) VALUES ('fire_started', NEW.policy, NEW.last_slot, now())
        RETURNING id INTO nid;
        UPDATE notification_fires SET start_notification_id = nid WHERE policy = NEW.policy AND slot = NEW.last_slot;
    END IF;
    PERFORM notification_fire_check(NEW.policy, NEW.last_slot, now());
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION notifications_fire_start() IS 'Records a fire and its fire_started event when policy_slots moves to a new slot (row trigger).';

CREATE TRIGGER notifications_fire_start AFTER INSERT OR UPDATE OF last_slot ON policy_slots
    FOR EACH ROW EXECUTE FUNCTION notifications_fire_start();

-- The leader's RPO evaluation: one rpo_breach event per instance entering rpo_breaches, and open
-- breaches closed when their instance left it otherwise than by recovering. Returns the number of
-- breaches opened. Evaluations take turns.
CREATE FUNCTION notification_rpo_evaluate(at timestamptz) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    b record;
    nid bigint;
    n integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(1919971183); -- 1919971183: 'rpoo'
    UPDATE notification_breaches nb SET closed_at = at, closed_by = 'resolved'
    WHERE closed_at IS NULL
        AND NOT EXISTS (SELECT 1 FROM rpo_breaches r WHERE r.policy = nb.policy AND r.instance_id = nb.instance_id);
    FOR b IN
        SELECT r.* FROM rpo_breaches r
        WHERE NOT EXISTS (SELECT 1 FROM notification_breaches nb
                          WHERE nb.policy = r.policy AND nb.instance_id = r.instance_id AND nb.closed_at IS NULL)
        ORDER BY r.policy, r.instance_id
    LOOP
        INSERT INTO notifications (event, policy, instance_id, slot, status, error_code, image_id, image_name, at, detail)
        VALUES ('rpo_breach', b.policy, b.instance_id, b.last_slot, b.last_status, b.last_error_code,
            b.last_available_image_id, b.last_available_image_name, at,
            jsonb_build_object('last_available_slot', notification_time(b.last_available_slot),
                'last_available_age_seconds', floor(extract(epoch FROM b.last_available_age))::bigint))
        RETURNING id INTO nid;
        INSERT INTO notification_breaches (policy, instance_id, opened_at, notification_id)
        VALUES (b.policy, b.instance_id, at, nid);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

COMMENT ON FUNCTION notification_rpo_evaluate(timestamptz) IS
    'Writes one rpo_breach event per instance newly in rpo_breaches and closes breaches that left it; returns how many opened.';
