package history

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// LastAvailablePerInstance returns, for every instance with an available image, the run of its
// most recently finished one (across policies), ordered by instance id. It answers "last good
// image per instance" of docs/audit.md's audit cookbook.
func (s *Store) LastAvailablePerInstance(ctx context.Context) ([]Run, error) {
	// The plain form is SELECT DISTINCT ON (instance_id) ... ORDER BY instance_id, finished_at DESC;
	// it reads every available run. This walks image_runs_available_idx instead, one probe per
	// instance (a "skip scan"), so its cost follows the number of instances, not of runs.
	runs, err := s.queryRuns(ctx, `
WITH RECURSIVE newest (inst, run_id) AS (
	(SELECT instance_id, id FROM image_runs WHERE status = 'available'
	 ORDER BY instance_id, finished_at DESC, id DESC LIMIT 1)
	UNION ALL
	SELECT next.instance_id, next.id FROM newest, LATERAL (
		SELECT r.instance_id, r.id FROM image_runs r
		WHERE r.status = 'available' AND r.instance_id > newest.inst
		ORDER BY r.instance_id, r.finished_at DESC, r.id DESC LIMIT 1) next
)
SELECT `+runColumns+` FROM newest JOIN image_runs ON image_runs.id = newest.run_id
ORDER BY instance_id`)
	if err != nil {
		return nil, fmt.Errorf("last available image per instance: %w", err)
	}
	return runs, nil
}

// FailuresSince returns the runs that failed at or after since, most recent first, with their
// error codes ("failures in the last 24 h").
func (s *Store) FailuresSince(ctx context.Context, since time.Time) ([]Run, error) {
	runs, err := s.queryRuns(ctx, `SELECT `+runColumns+` FROM image_runs
WHERE status = 'failed' AND finished_at >= $1 ORDER BY finished_at DESC, id DESC`, since)
	if err != nil {
		return nil, fmt.Errorf("failures since %s: %w", since.UTC().Format(time.RFC3339), err)
	}
	return runs, nil
}

// RunCountsSince counts runs per policy and status whose slot is at or after since (the daemon's
// imager_runs_last_24h metric). It uses image_runs_scheduled_idx.
func (s *Store) RunCountsSince(ctx context.Context, since time.Time) ([]RunCount, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT policy, status, count(*) FROM image_runs
		WHERE scheduled_at >= $1 GROUP BY policy, status ORDER BY policy, status`, since)
	if err != nil {
		return nil, s.translate(fmt.Errorf("count runs: %w", err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (RunCount, error) {
		var c RunCount
		err := r.Scan(&c.Policy, &c.Status, &c.Count)
		return c, err
	})
	if err != nil {
		return nil, s.translate(fmt.Errorf("count runs: %w", err))
	}
	return out, nil
}

// RunCount is the number of runs of one policy in one status.
type RunCount struct {
	Policy string
	Status Status
	Count  int64
}
