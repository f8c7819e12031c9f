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
