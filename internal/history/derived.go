package history

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// RebuildDerived recomputes, from image_runs alone, the answers imager otherwise keeps in step with
// each write (effects.go): latest_images, coverage_state and coverage_days. It is for history
// loaded in bulk without going through the store (benchmarks, an import) and for tests that hold
// the incremental writes to the same answers. It takes the tables' write locks for its transaction.
func (s *Store) RebuildDerived(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `LOCK TABLE latest_images, coverage_state, coverage_days IN EXCLUSIVE MODE`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM latest_images`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
INSERT INTO latest_images (instance_id, run_id, policy, scheduled_at, status, image_name, image_id, request_id)
SELECT DISTINCT ON (instance_id) instance_id, id, policy, scheduled_at, status, image_name, image_id, request_id
FROM image_runs WHERE status IN ('requested', 'available')
ORDER BY instance_id, scheduled_at DESC, id DESC`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM coverage_state`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
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
	ON a.policy = l.policy AND a.instance_id = l.instance_id`); err != nil {
			return err
		}
		return rebuildDays(ctx, tx, nil)
	})
	if err != nil {
		return fmt.Errorf("rebuild latest images and coverage: %w", s.translate(err))
	}
	return nil
}

// rebuildDays recomputes coverage_days of the given policies (all when nil) from image_runs: after
// a policy's time zone changed, its days are other days.
func rebuildDays(ctx context.Context, tx pgx.Tx, policies []string) error {
	all := policies == nil
	if _, err := tx.Exec(ctx, `DELETE FROM coverage_days WHERE $1 OR policy = ANY($2)`, all, policies); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `
INSERT INTO coverage_days (policy, instance_id, day, status, run_id, image_id, error_code, runs)
SELECT DISTINCT ON (r.policy, r.instance_id, d.day) r.policy, r.instance_id, d.day, r.status, r.id,
	r.image_id, r.error_code, count(*) OVER (PARTITION BY r.policy, r.instance_id, d.day)
FROM image_runs r
LEFT JOIN policies p ON p.name = r.policy
CROSS JOIN LATERAL (SELECT (r.scheduled_at AT TIME ZONE COALESCE(p.timezone, 'UTC'))::date AS day) d
WHERE $1 OR r.policy = ANY($2)
ORDER BY r.policy, r.instance_id, d.day, `+dayRankSQL("r.status")+`, r.scheduled_at DESC`, all, policies)
	return err
}
