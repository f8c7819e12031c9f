package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Reads of the copies for imager history, imager latest, the status page and the metrics
// (docs/cli.md, docs/operations.md). The writes are in copies.go.

// CopiesOfRuns returns the copies of the runs runIDs, by run id, each run's in region order: one
// query for a whole listing (imager history), not one per run.
func (s *Store) CopiesOfRuns(ctx context.Context, runIDs []int64) (map[int64][]Copy, error) {
	out := map[int64][]Copy{}
	if len(runIDs) == 0 {
		return out, nil
	}
	copies, err := queryCopies(ctx, s.pool, `SELECT `+copyColumns+` FROM image_copies
WHERE run_id = ANY($1) ORDER BY run_id, region`, runIDs)
	if err != nil {
		return nil, fmt.Errorf("list copies of %d runs: %w", len(runIDs), s.translate(err))
	}
	for _, c := range copies {
		out[c.RunID] = append(out[c.RunID], c)
	}
	return out, nil
}

// RestoreImage is an image of an instance usable in one region: the run's own image when the run
// was made there, else a copy of it (CopyID set).
type RestoreImage struct {
	RunID       int64
	CopyID      int64 // 0: the run's own image
	Account     string
	Policy      string
	InstanceID  string
	Region      string
	Slot        time.Time
	ImageID     string
	ImageName   string
	AvailableAt *time.Time
	// SourceRegion and SourceImageID name the image copied (a copy only).
	SourceRegion  string
	SourceImageID string
}

// ImageLatestIn returns the newest image of an instance usable in region whose slot is at or
// before before, across policies: an available run made in that region, or an available copy
// there (image_copies), leaving out images and copies imager has deleted. No such image is
// ErrNotFound. At equal slots the run's own image comes before a copy.
func (s *Store) ImageLatestIn(ctx context.Context, instanceID, region string, before time.Time) (RestoreImage, error) {
	var m RestoreImage
	err := s.pool.QueryRow(ctx, `
SELECT run_id, copy_id, account, policy, instance_id, region, slot, image_id, image_name, available_at,
	source_region, source_image_id
FROM (
	SELECT r.id AS run_id, 0::bigint AS copy_id, r.account, r.policy, r.instance_id, r.region,
		r.scheduled_at AS slot, r.image_id, r.image_name, r.finished_at AS available_at,
		''::text AS source_region, ''::text AS source_image_id
	FROM image_runs r
	WHERE r.instance_id = $1 AND r.region = $2 AND r.status = 'available' AND r.scheduled_at <= $3
		AND r.image_id IS NOT NULL
		AND NOT EXISTS (SELECT 1 FROM image_deletions d WHERE d.image_id = r.image_id AND d.status = 'deleted')
	UNION ALL
	SELECT c.run_id, c.id, c.account, c.policy, c.instance_id, c.region, c.slot, c.image_id, c.image_name,
		c.available_at, c.source_region, c.source_image_id
	FROM image_copies c
	WHERE c.instance_id = $1 AND c.region = $2 AND c.status = 'available' AND c.slot <= $3
		AND c.image_id IS NOT NULL AND c.deleted_at IS NULL
		AND NOT EXISTS (SELECT 1 FROM image_deletions d WHERE d.image_id = c.image_id AND d.status = 'deleted')
) images
ORDER BY slot DESC, copy_id, run_id DESC LIMIT 1`, instanceID, region, before).Scan(&m.RunID, &m.CopyID, &m.Account,
		&m.Policy, &m.InstanceID, &m.Region, &m.Slot, &m.ImageID, &m.ImageName, &m.AvailableAt, &m.SourceRegion,
		&m.SourceImageID)
	if errors.Is(err, pgx.ErrNoRows) {
		return RestoreImage{}, fmt.Errorf("no available image of %s in %s at or before %s: %w", instanceID, region,
			before.UTC().Format(time.RFC3339), ErrNotFound)
	}
	if err != nil {
		return RestoreImage{}, fmt.Errorf("latest image of %s in %s: %w", instanceID, region, s.translate(err))
	}
	m.Slot, m.AvailableAt = m.Slot.UTC(), utcPtr(m.AvailableAt)
	return m, nil
}

// CopyCoverage is one row of the copy_coverage view: the newest available copy of one (policy,
// instance) in one destination region, with the account of that copy.
type CopyCoverage struct {
	Policy     string
	InstanceID string
	Region     string
	// Account is the account of the newest copy in the region (available or not).
	Account              string
	LastAvailableImageID string     // "" when no copy became available there
	LastAvailableSlot    *time.Time // the slot of that copy's run
	LastAvailableAt      *time.Time // when it became available (now() - last_available_age)
	Overdue              bool
}

// copy_coverage is read one policy at a time, each query planned for its own values
// (pgx.QueryExecModeExec: an unnamed statement, planned at bind): over 600,000 copies of 10,000
// instances, a view-wide read or a cached generic plan misjudges the coverage join and takes
// 13 to 32 s, where one policy's read takes well under a second and a page of 100 instances 20 ms.

// CopyCoverageList reads copy_coverage by policy, instance and region: every loaded policy's rows
// for policy "" (the metrics), else the policy's, and with instances given only theirs (a page of
// the status page's grid).
func (s *Store) CopyCoverageList(ctx context.Context, policy string, instances []string) ([]CopyCoverage, error) {
	policies := []string{policy}
	if policy == "" {
		var err error
		if policies, err = s.copyPolicies(ctx); err != nil {
			return nil, err
		}
	}
	var out []CopyCoverage
	for _, p := range policies {
		sql, args := copyCoverageSQL+` WHERE cc.policy = $1`, []any{pgx.QueryExecModeExec, p}
		if instances != nil {
			sql, args = sql+` AND cc.instance_id = ANY($2)`, append(args, instances)
		}
		rows, err := s.pool.Query(ctx, sql+` ORDER BY cc.instance_id, cc.region`, args...)
		if err != nil {
			return nil, fmt.Errorf("read copy coverage of %s: %w", p, s.translate(err))
		}
		got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (CopyCoverage, error) {
			var c CopyCoverage
			err := row.Scan(&c.Policy, &c.InstanceID, &c.Region, &c.Account, &c.LastAvailableImageID,
				&c.LastAvailableSlot, &c.LastAvailableAt, &c.Overdue)
			c.LastAvailableSlot, c.LastAvailableAt = utcPtr(c.LastAvailableSlot), utcPtr(c.LastAvailableAt)
			return c, err
		})
		if err != nil {
			return nil, fmt.Errorf("read copy coverage of %s: %w", p, s.translate(err))
		}
		out = append(out, got...)
	}
	return out, nil
}

const copyCoverageSQL = `SELECT cc.policy, cc.instance_id, cc.region,
	COALESCE((SELECT c.account FROM image_copies c
		WHERE c.policy = cc.policy AND c.instance_id = cc.instance_id AND c.region = cc.region
		ORDER BY c.slot DESC, c.id DESC LIMIT 1), ''),
	COALESCE(cc.last_available_image_id, ''), cc.last_available_slot, now() - cc.last_available_age,
	COALESCE(cc.overdue, false)
FROM copy_coverage cc`

// copyPolicies lists the loaded policies (copy_coverage's), by name.
func (s *Store) copyPolicies(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT name FROM policies WHERE removed_at IS NULL ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list loaded policies: %w", s.translate(err))
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list loaded policies: %w", s.translate(err))
	}
	return names, nil
}

// CopyRegionSummary counts the rows of copy_coverage of one policy in one region.
type CopyRegionSummary struct {
	Policy    string
	Region    string
	Instances int
	Overdue   int
	// OldestAt is the oldest of the instances' newest available copies (nil when none is
	// available there yet).
	OldestAt *time.Time
}

// CopyCoverageSummary counts copy_coverage per (policy, region) of the policies given: the
// status page's policies table.
func (s *Store) CopyCoverageSummary(ctx context.Context, policies []string) ([]CopyRegionSummary, error) {
	var out []CopyRegionSummary
	for _, p := range policies {
		rows, err := s.pool.Query(ctx, `SELECT policy, region, count(*), count(*) FILTER (WHERE overdue),
	now() - max(last_available_age)
FROM copy_coverage WHERE policy = $1 GROUP BY policy, region ORDER BY region`, pgx.QueryExecModeExec, p)
		if err != nil {
			return nil, fmt.Errorf("count copy coverage of %s: %w", p, s.translate(err))
		}
		got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (CopyRegionSummary, error) {
			var c CopyRegionSummary
			err := row.Scan(&c.Policy, &c.Region, &c.Instances, &c.Overdue, &c.OldestAt)
			c.OldestAt = utcPtr(c.OldestAt)
			return c, err
		})
		if err != nil {
			return nil, fmt.Errorf("count copy coverage of %s: %w", p, s.translate(err))
		}
		out = append(out, got...)
	}
	return out, nil
}

// RunAccounts returns the account (image_runs.account) of each run of runIDs that exists.
func (s *Store) RunAccounts(ctx context.Context, runIDs []int64) (map[int64]string, error) {
	return s.accountsOf(ctx, "image_runs", runIDs)
}

// DeletionAccounts returns the account (image_deletions.account) of each deletion of ids that exists.
func (s *Store) DeletionAccounts(ctx context.Context, ids []int64) (map[int64]string, error) {
	return s.accountsOf(ctx, "image_deletions", ids)
}

func (s *Store) accountsOf(ctx context.Context, table string, ids []int64) (map[int64]string, error) {
	out := make(map[int64]string, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT id, account FROM `+table+` WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("read accounts of %s: %w", table, s.translate(err))
	}
	var id int64
	var account string
	_, err = pgx.ForEachRow(rows, []any{&id, &account}, func() error {
		out[id] = account
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read accounts of %s: %w", table, s.translate(err))
	}
	return out, nil
}

// AccountKnown reports whether some run was made with account (image_runs.account): imager
// history's --account names one.
func (s *Store) AccountKnown(ctx context.Context, account string) (bool, error) {
	var known bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM image_runs WHERE account = $1)`, account).Scan(&known)
	if err != nil {
		return false, fmt.Errorf("look up account %q: %w", account, s.translate(err))
	}
	return known, nil
}
