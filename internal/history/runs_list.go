package history

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// RunFilter selects runs for imager history. Empty fields select everything.
type RunFilter struct {
	Since    time.Time // slots at or after
	Policy   string
	Instance string
	Status   Status
	Account  string // image_runs.account
	Limit    int    // <= 0: all
}

// RunListed is a run with the number of CreateImage calls made for it (image_runs.attempts
// counts every API call, DescribeImages included).
type RunListed struct {
	Run
	Account             string // image_runs.account
	CreateImageAttempts int
	Term                *int64
	UpdatedAt           time.Time
}

// runFilterWhere is RunFilter's condition over $1..$5: since, policy, instance, status, account.
const runFilterWhere = `scheduled_at >= $1 AND ($2 = '' OR policy = $2) AND ($3 = '' OR instance_id = $3)
	AND ($4 = '' OR status = $4) AND ($5 = '' OR account = $5)`

// RunsList lists the runs f selects, newest slot first.
func (s *Store) RunsList(ctx context.Context, f RunFilter) ([]RunListed, error) {
	// The columns are listed here rather than through runColumns, so the listing reads account
	// whatever scanRun reads.
	rows, err := s.pool.Query(ctx, `SELECT id, policy, instance_id, region, scheduled_at, started_at, finished_at, status,
	image_name, COALESCE(image_id, ''), image_size_gib, COALESCE(request_id, ''),
	COALESCE(error_code, ''), COALESCE(error_message, ''), attempts, daemon_id, account,
	(SELECT count(*) FROM image_attempts a WHERE a.run_id = image_runs.id AND a.action = 'CreateImage'),
	term, updated_at
FROM image_runs
WHERE `+runFilterWhere+`
ORDER BY scheduled_at DESC, id DESC LIMIT $6`, f.Since, f.Policy, f.Instance, string(f.Status), f.Account, limitArg(f.Limit))
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RunListed, error) {
		var r RunListed
		var status string
		err := row.Scan(&r.ID, &r.Policy, &r.InstanceID, &r.Region, &r.ScheduledAt, &r.StartedAt, &r.FinishedAt,
			&status, &r.ImageName, &r.ImageID, &r.ImageSizeGiB, &r.RequestID, &r.ErrorCode, &r.ErrorMessage,
			&r.Attempts, &r.DaemonID, &r.Account, &r.CreateImageAttempts, &r.Term, &r.UpdatedAt)
		r.Status = Status(status)
		r.ScheduledAt, r.StartedAt, r.UpdatedAt = r.ScheduledAt.UTC(), r.StartedAt.UTC(), r.UpdatedAt.UTC()
		r.FinishedAt = utcPtr(r.FinishedAt)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", s.translate(err))
	}
	return out, nil
}

// RunStatusCounts counts the runs f selects per status (f.Limit is ignored).
func (s *Store) RunStatusCounts(ctx context.Context, f RunFilter) (map[Status]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT status, count(*) FROM image_runs
WHERE `+runFilterWhere+`
GROUP BY status`, f.Since, f.Policy, f.Instance, string(f.Status), f.Account)
	if err != nil {
		return nil, fmt.Errorf("count runs: %w", s.translate(err))
	}
	out := map[Status]int64{}
	var st string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&st, &n}, func() error {
		out[Status(st)] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count runs: %w", s.translate(err))
	}
	return out, nil
}
