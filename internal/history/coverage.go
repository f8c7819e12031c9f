package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Coverage is one row of the coverage view: a (loaded policy, targeted instance) pair.
type Coverage struct {
	Policy                 string
	InstanceID             string
	LastSlot               time.Time
	LastStatus             Status
	LastErrorCode          string
	LastAvailableImageID   string
	LastAvailableImageName string
	LastAvailableSlot      *time.Time
	LastAvailableAt        *time.Time // when that image became available (now() - last_available_age)
	Overdue                bool
}

// CoverageList reads the coverage view, by policy then instance. policy or instanceID "" means
// any; overdueOnly reads rpo_breaches instead.
func (s *Store) CoverageList(ctx context.Context, policy, instanceID string, overdueOnly bool) ([]Coverage, error) {
	view := "coverage"
	if overdueOnly {
		view = "rpo_breaches"
	}
	rows, err := s.pool.Query(ctx, `SELECT policy, instance_id, last_slot, last_status, COALESCE(last_error_code, ''),
	COALESCE(last_available_image_id, ''), COALESCE(last_available_image_name, ''), last_available_slot,
	now() - last_available_age, overdue
FROM `+view+` WHERE ($1 = '' OR policy = $1) AND ($2 = '' OR instance_id = $2)
ORDER BY policy, instance_id`, policy, instanceID)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", view, s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Coverage, error) {
		var c Coverage
		var st string
		err := row.Scan(&c.Policy, &c.InstanceID, &c.LastSlot, &st, &c.LastErrorCode, &c.LastAvailableImageID,
			&c.LastAvailableImageName, &c.LastAvailableSlot, &c.LastAvailableAt, &c.Overdue)
		c.LastStatus = Status(st)
		c.LastSlot = c.LastSlot.UTC()
		c.LastAvailableSlot = utcPtr(c.LastAvailableSlot)
		c.LastAvailableAt = utcPtr(c.LastAvailableAt)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", view, s.translate(err))
	}
	return out, nil
}

// PolicyCount is a count of something per policy.
type PolicyCount struct {
	Policy string
	Count  int64
}

// RPOBreachCounts counts the rows of rpo_breaches per loaded policy, with 0 for a loaded policy
// without breaches (the imager_rpo_breaches metric), by policy name.
func (s *Store) RPOBreachCounts(ctx context.Context) ([]PolicyCount, error) {
	rows, err := s.pool.Query(ctx, `SELECT p.name, count(b.instance_id)
FROM policies p LEFT JOIN rpo_breaches b ON b.policy = p.name
WHERE p.removed_at IS NULL GROUP BY p.name ORDER BY p.name`)
	if err != nil {
		return nil, fmt.Errorf("count rpo breaches: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (PolicyCount, error) {
		var c PolicyCount
		err := row.Scan(&c.Policy, &c.Count)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("count rpo breaches: %w", s.translate(err))
	}
	return out, nil
}

// DailyCoverage is one row of the daily_coverage view.
type DailyCoverage struct {
	Day        time.Time // midnight UTC of the calendar day (the day is in the policy's time zone)
	Policy     string
	InstanceID string
	Status     Status
	ImageID    string
	ErrorCode  string
	Runs       int
	RunID      int64
}

// DailyCoverageList reads daily_coverage for one policy (or all with ""), days from..to
// inclusive, by policy, instance then day.
func (s *Store) DailyCoverageList(ctx context.Context, policy string, from, to time.Time) ([]DailyCoverage, error) {
	rows, err := s.pool.Query(ctx, `SELECT day, policy, instance_id, status, COALESCE(image_id, ''),
	COALESCE(error_code, ''), runs, run_id
FROM daily_coverage WHERE ($1 = '' OR policy = $1) AND day BETWEEN $2::date AND $3::date
ORDER BY policy, instance_id, day`, policy, from.Format(time.DateOnly), to.Format(time.DateOnly))
	if err != nil {
		return nil, fmt.Errorf("read daily_coverage: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DailyCoverage, error) {
		var d DailyCoverage
		var st string
		err := row.Scan(&d.Day, &d.Policy, &d.InstanceID, &st, &d.ImageID, &d.ErrorCode, &d.Runs, &d.RunID)
		d.Status = Status(st)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("read daily_coverage: %w", s.translate(err))
	}
	return out, nil
}

// ImageLatest returns the run of the newest available image of an instance whose slot is at or
// before before, across policies, leaving out images imager has deleted (image_deletions status
// deleted). No such image is ErrNotFound.
func (s *Store) ImageLatest(ctx context.Context, instanceID string, before time.Time) (Run, error) {
	r, err := scanRun(s.pool.QueryRow(ctx, `SELECT `+runColumns+` FROM image_runs
WHERE instance_id = $1 AND status = 'available' AND scheduled_at <= $2 AND image_id IS NOT NULL
	AND NOT EXISTS (SELECT 1 FROM image_deletions d WHERE d.image_id = image_runs.image_id AND d.status = 'deleted')
ORDER BY scheduled_at DESC, id DESC LIMIT 1`, instanceID, before))
	if errors.Is(err, pgx.ErrNoRows) {
		return Run{}, fmt.Errorf("no available image of %s at or before %s: %w", instanceID,
			before.UTC().Format(time.RFC3339), ErrNotFound)
	}
	if err != nil {
		return Run{}, fmt.Errorf("latest image of %s: %w", instanceID, s.translate(err))
	}
	return r, nil
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
