-- 0010_notify_insert_guard: the insert statement trigger of 0008/0009 leaves at once when the
-- statement wrote no missed or failed row. Nearly every insert is a fire's pending slots, and on a
-- fresh connection (the pool closes idle ones, so a nightly fire meets fresh ones) planning the
-- trigger's grouping queries added about 7 ms before a fire's first call.

CREATE OR REPLACE FUNCTION notifications_missed_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    g record;
    first_run image_runs;
BEGIN
    -- Most inserts are a fire's pending slots: leave before planning the queries below.
    PERFORM 1 FROM new_rows WHERE status IN ('missed', 'failed') LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
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
