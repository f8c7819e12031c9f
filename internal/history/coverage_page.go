package history

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// DailyCoverageOf reads daily_coverage for some instances of one policy, days from..to inclusive,
// by instance then day: one page of the status page's grid, so a policy of 10,000 instances reads
// only the rows it shows (coverage_days_instance_idx).
func (s *Store) DailyCoverageOf(ctx context.Context, policy string, instances []string, from, to time.Time) ([]DailyCoverage, error) {
	if len(instances) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT day, policy, instance_id, status, COALESCE(image_id, ''),
	COALESCE(error_code, ''), runs, run_id
FROM daily_coverage WHERE policy = $1 AND instance_id = ANY($2) AND day BETWEEN $3::date AND $4::date
ORDER BY instance_id, day`, policy, instances, from.Format(time.DateOnly), to.Format(time.DateOnly))
	if err != nil {
		return nil, fmt.Errorf("read daily_coverage of %s: %w", policy, s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DailyCoverage, error) {
		var d DailyCoverage
		var st string
		err := row.Scan(&d.Day, &d.Policy, &d.InstanceID, &st, &d.ImageID, &d.ErrorCode, &d.Runs, &d.RunID)
		d.Status = Status(st)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("read daily_coverage of %s: %w", policy, s.translate(err))
	}
	return out, nil
}

// CoveragePage is one page of a policy's coverage rows, ordered for the status page.
type CoveragePage struct {
	Rows      []Coverage
	Instances int // coverage rows of the policy in all
	Overdue   int // of which overdue
}

// CoveragePageOf reads limit coverage rows of one policy from offset, those that need attention
// first: overdue, then by how the last slot ended (failed, missed, pending or requested, skipped,
// available), then by instance id. Ordering and paging happen in PostgreSQL, so a policy of 10,000
// instances sends only the page.
func (s *Store) CoveragePageOf(ctx context.Context, policy string, offset, limit int) (CoveragePage, error) {
	rows, err := s.pool.Query(ctx, `SELECT policy, instance_id, last_slot, last_status, COALESCE(last_error_code, ''),
	COALESCE(last_available_image_id, ''), COALESCE(last_available_image_name, ''), last_available_slot,
	now() - last_available_age, overdue, count(*) OVER (), count(*) FILTER (WHERE overdue) OVER ()
FROM coverage WHERE policy = $1
ORDER BY overdue DESC, CASE last_status WHEN 'failed' THEN 0 WHEN 'missed' THEN 1 WHEN 'pending' THEN 2
	WHEN 'requested' THEN 2 WHEN 'skipped' THEN 3 ELSE 4 END, instance_id
OFFSET $2 LIMIT $3`, policy, offset, limit)
	if err != nil {
		return CoveragePage{}, fmt.Errorf("read coverage of %s: %w", policy, s.translate(err))
	}
	var page CoveragePage
	page.Rows, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Coverage, error) {
		var c Coverage
		var st string
		err := row.Scan(&c.Policy, &c.InstanceID, &c.LastSlot, &st, &c.LastErrorCode, &c.LastAvailableImageID,
			&c.LastAvailableImageName, &c.LastAvailableSlot, &c.LastAvailableAt, &c.Overdue, &page.Instances, &page.Overdue)
		c.LastStatus = Status(st)
		c.LastSlot = c.LastSlot.UTC()
		c.LastAvailableSlot = utcPtr(c.LastAvailableSlot)
		c.LastAvailableAt = utcPtr(c.LastAvailableAt)
		return c, err
	})
	if err != nil {
		return CoveragePage{}, fmt.Errorf("read coverage of %s: %w", policy, s.translate(err))
	}
	return page, nil
}

// LastFireOf returns a policy's newest slot and how its runs of that slot stand, counted by
// status; a zero slot when the policy has no runs. It reads coverage_state (one row per
// instance), not image_runs, so it costs the same at any history length.
func (s *Store) LastFireOf(ctx context.Context, policy string) (time.Time, map[Status]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT last_slot, last_status, count(*) FROM coverage_state
WHERE policy = $1 AND last_slot = (SELECT max(last_slot) FROM coverage_state WHERE policy = $1)
GROUP BY last_slot, last_status`, policy)
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("read last fire of %s: %w", policy, s.translate(err))
	}
	var slot time.Time
	counts := map[Status]int64{}
	var st string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&slot, &st, &n}, func() error {
		counts[Status(st)] = n
		return nil
	})
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("read last fire of %s: %w", policy, s.translate(err))
	}
	return slot.UTC(), counts, nil
}
