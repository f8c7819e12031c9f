package history

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// RestoreSummary is one policy's row of the status page's restore column: its instances in
// restore_coverage, across the policy's restore tests.
type RestoreSummary struct {
	Policy    string
	Instances int        // rows of restore_coverage (test, instance) of the policy
	Passed    int        // rows with a passed test
	Overdue   int        // rows restore_coverage calls overdue
	OldestAt  *time.Time // the oldest of the rows' newest passes; nil when none passed
}

// RestoreCoverageSummary reads restore_coverage grouped by policy, for the given policies only.
func (s *Store) RestoreCoverageSummary(ctx context.Context, policies []string) ([]RestoreSummary, error) {
	if len(policies) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT policy, count(*), count(last_passed_id), count(*) FILTER (WHERE overdue),
	min(last_passed_at)
FROM restore_coverage WHERE policy = ANY($1) GROUP BY policy ORDER BY policy`, policies)
	if err != nil {
		return nil, fmt.Errorf("read restore_coverage: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RestoreSummary, error) {
		var r RestoreSummary
		err := row.Scan(&r.Policy, &r.Instances, &r.Passed, &r.Overdue, &r.OldestAt)
		r.OldestAt = utcPtr(r.OldestAt)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("read restore_coverage: %w", s.translate(err))
	}
	return out, nil
}
