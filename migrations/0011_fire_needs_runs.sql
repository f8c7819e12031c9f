-- 0011_fire_needs_runs: a fire (its notification_fires row, its fire_started event and the ping's
-- /start) begins when the scheduler writes the slot's runs and moves policy_slots to it, not
-- whenever policy_slots moves. The scheduler also moves policy_slots to mark a slot passed without
-- firing it: a policy seen for the first time starts from its latest slot before now, and a walk
-- of missed slots that finds no targets. Until this migration such a mark began a fire that never
-- ended: a /start ping for a fire that did not happen, and no verdict after it. A fire that has
-- no runs (no targets, or targets that could not be resolved) is begun and ended at once by
-- notification_fire_without_runs, which the scheduler calls (history.Store.FireWithoutRuns).

-- Records the fire of pol at s and its fire_started event, once.
CREATE FUNCTION notification_fire_begin(pol text, s timestamptz) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    f notification_fires%ROWTYPE;
    nid bigint;
BEGIN
    INSERT INTO notification_fires (policy, slot) VALUES (pol, s) ON CONFLICT (policy, slot) DO NOTHING;
    SELECT * INTO f FROM notification_fires WHERE policy = pol AND slot = s FOR UPDATE;
    IF f.start_notification_id IS NULL THEN
        INSERT INTO notifications (event, policy, slot, at) VALUES ('fire_started', pol, s, now())
        RETURNING id INTO nid;
        UPDATE notification_fires SET start_notification_id = nid WHERE policy = pol AND slot = s;
    END IF;
END
$$;

COMMENT ON FUNCTION notification_fire_begin(text, timestamptz) IS
    'Records a fire in notification_fires and its fire_started event, once per (policy, slot).';

-- The policy_slots trigger: a fire begins when policy_slots moves to a slot that has runs (the
-- claim writes them in the same transaction, before it moves policy_slots).
CREATE OR REPLACE FUNCTION notifications_fire_start() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.last_slot <= OLD.last_slot THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM image_runs WHERE policy = NEW.policy AND scheduled_at = NEW.last_slot LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL; -- a mark, not a fire: no run was written for this slot
    END IF;
    PERFORM notification_fire_begin(NEW.policy, NEW.last_slot);
    PERFORM notification_fire_check(NEW.policy, NEW.last_slot, now());
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION notifications_fire_start() IS
    'Begins a fire when policy_slots moves to a new slot that has runs (row trigger); a slot without runs is a mark.';

-- A fire that wrote no run: begun and ended at once. With code NULL it had no targets and ends
-- fire_succeeded (nothing to image); with a code (TargetsUnresolved: its targets could not be
-- resolved and it had none to fall back on) it ends fire_failed with that code and message.
CREATE FUNCTION notification_fire_without_runs(pol text, s timestamptz, code text, message text, at timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    nid bigint;
BEGIN
    PERFORM notification_fire_begin(pol, s);
    UPDATE notification_fires SET expected_runs = 0 WHERE policy = pol AND slot = s AND outcome IS NULL;
    IF NOT FOUND THEN
        RETURN; -- ended before
    END IF;
    IF code IS NULL THEN
        PERFORM notification_fire_check(pol, s, at);
        RETURN;
    END IF;
    INSERT INTO notifications (event, policy, slot, status, error_code, error_message, at, detail)
    VALUES ('fire_failed', pol, s, 'failed', code, message, at,
        jsonb_build_object('runs', 0, 'available', 0, 'unfinished', 0, 'failed', 0, 'missed', 0,
            'skipped', 0, 'expected_runs', 0))
    RETURNING id INTO nid;
    UPDATE notification_fires SET outcome = 'fail', ended_at = at, end_notification_id = nid
    WHERE policy = pol AND slot = s;
END
$$;

COMMENT ON FUNCTION notification_fire_without_runs(text, timestamptz, text, text, timestamptz) IS
    'Begins and ends a fire that wrote no run: fire_succeeded when code is NULL (no targets), else fire_failed with code and message.';

-- The fires the earlier trigger began for marks: open, with no run, and never to end. Their
-- fire_started events stay (they were sent); the fires themselves are not waiting for anything.
DELETE FROM notification_fires f
WHERE f.outcome IS NULL
  AND NOT EXISTS (SELECT 1 FROM image_runs r WHERE r.policy = f.policy AND r.scheduled_at = f.slot);
