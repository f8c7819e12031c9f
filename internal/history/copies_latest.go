package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// CopyLatest returns the copy in region to restore instanceID from: the newest available copy,
// not deleted, of an image whose slot is at or before before, with the run it copies.
func (s *Store) CopyLatest(ctx context.Context, instanceID, region string, before time.Time) (Run, Copy, error) {
	c, err := scanCopy(s.pool.QueryRow(ctx, `SELECT `+copyColumns+` FROM image_copies
WHERE instance_id = $1 AND region = $2 AND status = 'available' AND deleted_at IS NULL AND image_id IS NOT NULL
	AND slot <= $3
ORDER BY slot DESC, id DESC LIMIT 1`, instanceID, region, before))
	if errors.Is(err, pgx.ErrNoRows) {
		return Run{}, Copy{}, fmt.Errorf("no available copy of %s in %s at or before %s: %w", instanceID, region,
			before.UTC().Format(time.RFC3339), ErrNotFound)
	}
	if err != nil {
		return Run{}, Copy{}, fmt.Errorf("latest copy of %s in %s: %w", instanceID, region, s.translate(err))
	}
	r, err := s.RunGet(ctx, c.RunID)
	if err != nil {
		return Run{}, Copy{}, fmt.Errorf("latest copy of %s in %s: %w", instanceID, region, err)
	}
	return r, c, nil
}

// CopiesOfRuns returns the copies of the given runs, by run id, in region order.
func (s *Store) CopiesOfRuns(ctx context.Context, runIDs []int64) (map[int64][]Copy, error) {
	out := map[int64][]Copy{}
	if len(runIDs) == 0 {
		return out, nil
	}
	copies, err := queryCopies(ctx, s.pool, `SELECT `+copyColumns+` FROM image_copies
WHERE run_id = ANY($1) ORDER BY run_id, region`, runIDs)
	if err != nil {
		return nil, fmt.Errorf("copies of %d runs: %w", len(runIDs), s.translate(err))
	}
	for _, c := range copies {
		out[c.RunID] = append(out[c.RunID], c)
	}
	return out, nil
}

// CopyAvailableAt is when the newest available copy of one (policy, instance) in one region became
// available (copy_coverage).
type CopyAvailableAt struct {
	Policy, InstanceID, Region string
	At                         time.Time
}

// CopiesLastAvailable lists, per row of copy_coverage that has an available copy, when it became
// available.
func (s *Store) CopiesLastAvailable(ctx context.Context) ([]CopyAvailableAt, error) {
	rows, err := s.pool.Query(ctx, `SELECT policy, instance_id, region, now() - last_available_age FROM copy_coverage
WHERE last_available_age IS NOT NULL ORDER BY policy, instance_id, region`)
	if err != nil {
		return nil, fmt.Errorf("copies last available: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (CopyAvailableAt, error) {
		var c CopyAvailableAt
		err := row.Scan(&c.Policy, &c.InstanceID, &c.Region, &c.At)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("copies last available: %w", s.translate(err))
	}
	return out, nil
}
