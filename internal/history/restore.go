package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Restore tests (docs/restore-tests.md; package restore runs them): one restore_tests row per
// instance a test tried, written before RunInstances, and restore_test_configs, the tests the
// loaded file names. Every outcome write is one fenced transaction with its effects: the
// restore_failed and restore_recovered events go to the notification outbox with the change that
// causes them, as copies.go does for copies.

// Restore test events (notifications.event).
const (
	EventRestoreFailed    = "restore_failed"    // a restore test failed
	EventRestoreRecovered = "restore_recovered" // a restore test passed after a failed one of the same test and instance
)

// RestoreStatus is the state of one restore test row (restore_tests.status).
type RestoreStatus string

// Restore test statuses.
const (
	RestoreLaunching RestoreStatus = "launching" // RunInstances is being or was called; waiting for RUNNING and the agent
	RestoreChecking  RestoreStatus = "checking"  // the check command runs
	RestorePassed    RestoreStatus = "passed"    // the check exited 0
	RestoreFailed    RestoreStatus = "failed"    // see ErrorCode
)

// RestoreTest is one row of restore_tests.
type RestoreTest struct {
	ID                 int64
	Test               string
	Slot               time.Time
	Account            string
	Policy             string
	InstanceID         string // the instance whose image is tested
	Region             string
	Zone               string
	RunID              int64 // 0 once pruned
	CopyID             int64 // 0 unless a copy is tested (or once pruned)
	ImageID            string
	ClientToken        string
	LaunchedInstanceID string // "" until RunInstances answered
	Status             RestoreStatus
	ErrorCode          string
	ErrorMessage       string
	InvocationID       string
	TaskID             string
	ExitCode           *int
	Output             string
	KeepFor            time.Duration
	StartedAt          time.Time
	LaunchedAt         *time.Time
	CheckedAt          *time.Time
	TerminatedAt       *time.Time
}

// Finished reports whether the test has its outcome (passed or failed).
func (r RestoreTest) Finished() bool { return r.Status == RestorePassed || r.Status == RestoreFailed }

// MaxRestoreOutput is how much of a check's output a row keeps.
const MaxRestoreOutput = 4096

const restoreColumns = `id, test, slot, account, policy, instance_id, region, zone, COALESCE(run_id, 0), COALESCE(copy_id, 0),
	image_id, client_token, COALESCE(launched_instance_id, ''), status, COALESCE(error_code, ''), COALESCE(error_message, ''),
	COALESCE(invocation_id, ''), COALESCE(task_id, ''), exit_code, COALESCE(output, ''), keep_for_seconds,
	started_at, launched_at, checked_at, terminated_at`

func scanRestore(row pgx.Row) (RestoreTest, error) {
	var r RestoreTest
	var status string
	var keep float64
	var exit *int32
	err := row.Scan(&r.ID, &r.Test, &r.Slot, &r.Account, &r.Policy, &r.InstanceID, &r.Region, &r.Zone, &r.RunID, &r.CopyID,
		&r.ImageID, &r.ClientToken, &r.LaunchedInstanceID, &status, &r.ErrorCode, &r.ErrorMessage, &r.InvocationID,
		&r.TaskID, &exit, &r.Output, &keep, &r.StartedAt, &r.LaunchedAt, &r.CheckedAt, &r.TerminatedAt)
	if err != nil {
		return RestoreTest{}, err
	}
	r.Status = RestoreStatus(status)
	r.KeepFor = time.Duration(keep * float64(time.Second))
	if exit != nil {
		e := int(*exit)
		r.ExitCode = &e
	}
	r.Slot, r.StartedAt = r.Slot.UTC(), r.StartedAt.UTC()
	r.LaunchedAt, r.CheckedAt, r.TerminatedAt = utcPtr(r.LaunchedAt), utcPtr(r.CheckedAt), utcPtr(r.TerminatedAt)
	return r, nil
}

func queryRestores(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args ...any) ([]RestoreTest, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (RestoreTest, error) { return scanRestore(row) })
}

// RestoreConfig is one restore test as the loaded file names it (restore_test_configs).
type RestoreConfig struct {
	Name   string
	Policy string
	// Overdue is how long an instance of the policy may go without a passed test before
	// restore_coverage calls it overdue.
	Overdue time.Duration
}

// RestoreConfigsSync records the loaded restore tests at at, in one transaction: each of cfgs is
// inserted or updated (removed_at cleared), and every other test loaded before is marked removed
// at at, so restore_coverage leaves it out and its history stays.
func (s *Store) RestoreConfigsSync(ctx context.Context, cfgs []RestoreConfig, at time.Time) error {
	names := make([]string, 0, len(cfgs))
	for _, c := range cfgs {
		if c.Name == "" || c.Policy == "" || c.Overdue <= 0 {
			return fmt.Errorf("sync restore tests: test %q: a name, a policy and a positive overdue time are required: %w", c.Name, ErrInvalid)
		}
		names = append(names, c.Name)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		for _, c := range cfgs {
			if _, err := tx.Exec(ctx, `INSERT INTO restore_test_configs (name, policy, overdue_seconds, loaded_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE SET policy = EXCLUDED.policy, overdue_seconds = EXCLUDED.overdue_seconds,
	loaded_at = EXCLUDED.loaded_at, removed_at = NULL`, c.Name, c.Policy, c.Overdue.Seconds(), at); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `UPDATE restore_test_configs SET removed_at = $2
WHERE removed_at IS NULL AND NOT (name = ANY($1))`, names, at)
		return err
	})
	if err != nil {
		return fmt.Errorf("sync restore tests: %w", s.translate(err))
	}
	return nil
}

// RestoreConfigRow is one row of restore_test_configs.
type RestoreConfigRow struct {
	RestoreConfig
	LoadedAt  time.Time
	RemovedAt *time.Time
}

// RestoreConfigsList lists restore_test_configs by name.
func (s *Store) RestoreConfigsList(ctx context.Context) ([]RestoreConfigRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, policy, overdue_seconds, loaded_at, removed_at
FROM restore_test_configs ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list restore tests: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RestoreConfigRow, error) {
		var r RestoreConfigRow
		var secs float64
		err := row.Scan(&r.Name, &r.Policy, &secs, &r.LoadedAt, &r.RemovedAt)
		r.Overdue = time.Duration(secs * float64(time.Second))
		r.LoadedAt, r.RemovedAt = r.LoadedAt.UTC(), utcPtr(r.RemovedAt)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("list restore tests: %w", s.translate(err))
	}
	return out, nil
}

// RestoreCandidate is one instance a restore test may test: the latest available image of the
// instance (its run's, or its copy's in the test's region), and when the test last tried it.
type RestoreCandidate struct {
	InstanceID   string
	RunID        int64
	CopyID       int64 // 0 unless the test's region is a copy_to region
	ImageID      string
	LastTestedAt *time.Time // started_at of the test's newest row of the instance; nil when never tested
}

// RestoreCandidates lists the instances policy targets (the coverage view) that have an image to
// restore, in the order a restore test takes them in turn: never tested by test first, then the
// one tested longest ago, by instance id among equals. The image is the latest available one of
// the policy, not deleted; with copyRegion set, the latest available copy in that region instead.
func (s *Store) RestoreCandidates(ctx context.Context, test, policy, copyRegion string) ([]RestoreCandidate, error) {
	rows, err := s.pool.Query(ctx, `
WITH targets AS (SELECT instance_id FROM coverage WHERE policy = $2),
images AS (
	SELECT t.instance_id, r.id AS run_id, 0::bigint AS copy_id, r.image_id
	FROM targets t
	JOIN coverage_state cs ON cs.policy = $2 AND cs.instance_id = t.instance_id
	JOIN image_runs r ON r.id = cs.last_available_run_id AND r.status = 'available' AND r.image_id IS NOT NULL
	WHERE $3 = ''
		AND NOT EXISTS (SELECT 1 FROM image_deletions d WHERE d.image_id = r.image_id AND d.status = 'deleted')
	UNION ALL
	SELECT t.instance_id, c.run_id, c.id, c.image_id
	FROM targets t
	JOIN LATERAL (SELECT c.id, c.run_id, c.image_id FROM image_copies c
		WHERE c.policy = $2 AND c.instance_id = t.instance_id AND c.region = $3 AND c.status = 'available'
			AND c.deleted_at IS NULL AND c.image_id IS NOT NULL
		ORDER BY c.slot DESC, c.id DESC LIMIT 1) c ON true
	WHERE $3 <> '')
SELECT i.instance_id, i.run_id, i.copy_id, i.image_id,
	(SELECT max(rt.started_at) FROM restore_tests rt WHERE rt.test = $1 AND rt.instance_id = i.instance_id) AS last_tested
FROM images i
ORDER BY last_tested NULLS FIRST, i.instance_id`, test, policy, copyRegion)
	if err != nil {
		return nil, fmt.Errorf("restore candidates of %s: %w", test, s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RestoreCandidate, error) {
		var c RestoreCandidate
		err := row.Scan(&c.InstanceID, &c.RunID, &c.CopyID, &c.ImageID, &c.LastTestedAt)
		c.LastTestedAt = utcPtr(c.LastTestedAt)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("restore candidates of %s: %w", test, s.translate(err))
	}
	return out, nil
}

// RestoreStartParams is a restore test about to launch an instance.
type RestoreStartParams struct {
	Test        string
	Slot        time.Time
	Account     string
	Policy      string
	InstanceID  string
	Region      string
	Zone        string
	RunID       int64
	CopyID      int64 // 0: the run's image is tested
	ImageID     string
	ClientToken string
	KeepFor     time.Duration
	StartedAt   time.Time
}

// RestoreStart records, before the RunInstances call, that test tests instance p.InstanceID in
// slot p.Slot: a new row, launching. When the (test, slot, instance) row exists already (a retry
// of the slot) it is returned as it is with created false, so the retry reuses its ClientToken. A
// new row is a claim: with a term that is not the live lease's, nothing is written (ErrFenced).
func (s *Store) RestoreStart(ctx context.Context, p RestoreStartParams) (RestoreTest, bool, error) {
	switch {
	case p.Test == "" || p.Policy == "" || p.InstanceID == "" || p.Region == "" || p.Zone == "" || p.ImageID == "" ||
		p.ClientToken == "" || p.Slot.IsZero() || p.StartedAt.IsZero():
		return RestoreTest{}, false, fmt.Errorf("start restore test: test, policy, instance, region, zone, image, token, slot and start time are required: %w", ErrInvalid)
	case p.KeepFor <= 0:
		return RestoreTest{}, false, fmt.Errorf("start restore test %s: keep_for must be positive: %w", p.Test, ErrInvalid)
	}
	var out RestoreTest
	created := false
	err := s.fencedTx(ctx, "start restore test "+p.Test, func(tx pgx.Tx) error {
		var ok bool
		if err := tx.QueryRow(ctx, `SELECT `+fenceClaim(1), s.term).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return ErrFenced
		}
		r, err := scanRestore(tx.QueryRow(ctx, `INSERT INTO restore_tests (test, slot, account, policy, instance_id,
	region, zone, run_id, copy_id, image_id, client_token, keep_for_seconds, started_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, NULLIF($8, 0), NULLIF($9, 0), $10, $11, $12, $13)
ON CONFLICT (test, slot, instance_id) DO NOTHING
RETURNING `+restoreColumns, p.Test, p.Slot, p.Account, p.Policy, p.InstanceID, p.Region, p.Zone, p.RunID, p.CopyID,
			p.ImageID, p.ClientToken, p.KeepFor.Seconds(), p.StartedAt))
		if err == nil {
			out, created = r, true
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		out, err = scanRestore(tx.QueryRow(ctx, `SELECT `+restoreColumns+` FROM restore_tests
WHERE test = $1 AND slot = $2 AND instance_id = $3`, p.Test, p.Slot, p.InstanceID))
		return err
	})
	if err != nil {
		return RestoreTest{}, false, err
	}
	return out, created, nil
}

// RestoreLaunched records the instance RunInstances launched for row id at at. The same id again
// changes nothing; another id is ErrConflict. Fenced.
func (s *Store) RestoreLaunched(ctx context.Context, id int64, launchedID string, at time.Time) error {
	if launchedID == "" || at.IsZero() {
		return fmt.Errorf("record launch of restore test %d: an instance id and a time are required: %w", id, ErrInvalid)
	}
	return s.restoreWrite(ctx, id, "record launch of restore test", func(tx pgx.Tx, r RestoreTest) error {
		switch {
		case r.LaunchedInstanceID == launchedID:
			return nil
		case r.LaunchedInstanceID != "":
			return fmt.Errorf("launched %s, not %s: %w", r.LaunchedInstanceID, launchedID, ErrConflict)
		}
		_, err := tx.Exec(ctx, `UPDATE restore_tests SET launched_instance_id = $2, launched_at = $3, updated_at = now()
WHERE id = $1`, id, launchedID, at)
		return err
	})
}

// RestoreCheckStarted records that the check of row id runs as TAT invocation invocationID (task
// taskID when known): status checking. A finished row is ErrConflict. Fenced.
func (s *Store) RestoreCheckStarted(ctx context.Context, id int64, invocationID, taskID string) error {
	if invocationID == "" {
		return fmt.Errorf("record check of restore test %d: an invocation id is required: %w", id, ErrInvalid)
	}
	return s.restoreWrite(ctx, id, "record check of restore test", func(tx pgx.Tx, r RestoreTest) error {
		if r.Finished() {
			return fmt.Errorf("restore test is %s: %w", r.Status, ErrConflict)
		}
		_, err := tx.Exec(ctx, `UPDATE restore_tests SET status = 'checking', invocation_id = $2,
	task_id = COALESCE(NULLIF($3, ''), task_id), updated_at = now() WHERE id = $1`, id, invocationID, taskID)
		return err
	})
}

// RestoreOutcome is how a restore test ended.
type RestoreOutcome struct {
	Passed       bool
	ErrorCode    string // required unless Passed
	ErrorMessage string
	TaskID       string // the check's TAT task, when known
	ExitCode     *int
	Output       string // clipped to MaxRestoreOutput bytes
	At           time.Time
}

// RestoreFinish ends row id as o says, and writes its event in the same transaction: a failure
// writes restore_failed; a pass writes restore_recovered when the previous finished test of the
// same test and instance failed. Finishing a finished row changes nothing and returns it as it is.
// Fenced.
func (s *Store) RestoreFinish(ctx context.Context, id int64, o RestoreOutcome) (RestoreTest, error) {
	if o.At.IsZero() || (!o.Passed && o.ErrorCode == "") {
		return RestoreTest{}, fmt.Errorf("finish restore test %d: a time, and an error code for a failure, are required: %w", id, ErrInvalid)
	}
	var out RestoreTest
	err := s.restoreWrite(ctx, id, "finish restore test", func(tx pgx.Tx, r RestoreTest) error {
		if r.Finished() {
			out = r
			return nil
		}
		status, code, msg := RestorePassed, "", ""
		if !o.Passed {
			status, code, msg = RestoreFailed, o.ErrorCode, cutBytes(o.ErrorMessage, 1000)
		}
		var exit *int32
		if o.ExitCode != nil {
			e := int32(*o.ExitCode)
			exit = &e
		}
		n, err := scanRestore(tx.QueryRow(ctx, `UPDATE restore_tests SET status = $2, error_code = NULLIF($3, ''),
	error_message = NULLIF($4, ''), task_id = COALESCE(NULLIF($5, ''), task_id), exit_code = $6, output = NULLIF($7, ''),
	checked_at = $8, updated_at = now()
WHERE id = $1 RETURNING `+restoreColumns, id, string(status), code, msg, o.TaskID, exit,
			cutBytes(o.Output, MaxRestoreOutput), o.At))
		if err != nil {
			return err
		}
		out = n
		if !o.Passed {
			_, err = insertEvent(ctx, tx, restoreEvent(EventRestoreFailed, n, nil))
			return err
		}
		var previous string
		err = tx.QueryRow(ctx, `SELECT status FROM restore_tests
WHERE test = $1 AND instance_id = $2 AND checked_at IS NOT NULL AND id <> $3 AND (checked_at, id) < ($4, $3)
ORDER BY checked_at DESC, id DESC LIMIT 1`, n.Test, n.InstanceID, n.ID, o.At).Scan(&previous)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if RestoreStatus(previous) == RestoreFailed {
			_, err = insertEvent(ctx, tx, restoreEvent(EventRestoreRecovered, n, map[string]any{"previous_status": previous}))
		}
		return err
	})
	if err != nil {
		return RestoreTest{}, err
	}
	return out, nil
}

// restoreEvent is the outbox row of a restore test's event: the tested instance and image, the
// test's slot, and in detail the test, the row and the launched instance.
func restoreEvent(name string, r RestoreTest, detail map[string]any) event {
	d := map[string]any{"test": r.Test, "restore_test_id": r.ID, "account": r.Account, "region": r.Region, "zone": r.Zone,
		"launched_instance_id": r.LaunchedInstanceID}
	if r.CopyID != 0 {
		d["copy_id"] = r.CopyID
	}
	if r.ExitCode != nil {
		d["exit_code"] = *r.ExitCode
	}
	for k, v := range detail {
		d[k] = v
	}
	return event{Event: name, Policy: r.Policy, InstanceID: r.InstanceID, RunID: r.RunID, Slot: r.Slot,
		Status: string(r.Status), ErrorCode: r.ErrorCode, ErrorMessage: r.ErrorMessage, ImageID: r.ImageID,
		At: r.CheckedAt, Detail: d}
}

// RestoreTerminated records that the launched instance of row id was terminated (TerminateInstances
// accepted it, or it was found gone) at at. A row already terminated keeps its time. Fenced.
func (s *Store) RestoreTerminated(ctx context.Context, id int64, at time.Time) error {
	if at.IsZero() {
		return fmt.Errorf("record termination of restore test %d: no time: %w", id, ErrInvalid)
	}
	return s.restoreWrite(ctx, id, "record termination of restore test", func(tx pgx.Tx, r RestoreTest) error {
		if r.TerminatedAt != nil {
			return nil
		}
		_, err := tx.Exec(ctx, `UPDATE restore_tests SET terminated_at = $2, updated_at = now() WHERE id = $1`, id, at)
		return err
	})
}

// RestoresOpen lists the rows of account (every account for "") that are not finished, or whose
// launched instance may still run (launched, not terminated), oldest first: what the sweep looks at
// when a process becomes leader.
func (s *Store) RestoresOpen(ctx context.Context, account string) ([]RestoreTest, error) {
	out, err := queryRestores(ctx, s.pool, `SELECT `+restoreColumns+` FROM restore_tests
WHERE (checked_at IS NULL OR terminated_at IS NULL) AND ($1 = '' OR account = $1)
	AND (checked_at IS NULL OR launched_instance_id IS NOT NULL)
ORDER BY started_at, id`, account)
	if err != nil {
		return nil, fmt.Errorf("list open restore tests: %w", s.translate(err))
	}
	return out, nil
}

// RestoreGet returns one row.
func (s *Store) RestoreGet(ctx context.Context, id int64) (RestoreTest, error) {
	r, err := scanRestore(s.pool.QueryRow(ctx, `SELECT `+restoreColumns+` FROM restore_tests WHERE id = $1`, id))
	if err != nil {
		return RestoreTest{}, fmt.Errorf("restore test %d: %w", id, notFound(s.translate(err)))
	}
	return r, nil
}

// RestoreByToken returns the row whose RunInstances ClientToken is token (ErrNotFound when none):
// an instance carrying imager's restore tags names its row by it.
func (s *Store) RestoreByToken(ctx context.Context, token string) (RestoreTest, error) {
	r, err := scanRestore(s.pool.QueryRow(ctx, `SELECT `+restoreColumns+` FROM restore_tests WHERE client_token = $1`, token))
	if err != nil {
		return RestoreTest{}, fmt.Errorf("restore test of token %s: %w", token, notFound(s.translate(err)))
	}
	return r, nil
}

// RestoresOf lists the rows of test, newest first, at most limit (<= 0: all).
func (s *Store) RestoresOf(ctx context.Context, test string, limit int) ([]RestoreTest, error) {
	out, err := queryRestores(ctx, s.pool, `SELECT `+restoreColumns+` FROM restore_tests WHERE test = $1
ORDER BY started_at DESC, id DESC LIMIT $2`, test, limitArg(limit))
	if err != nil {
		return nil, fmt.Errorf("restore tests of %s: %w", test, s.translate(err))
	}
	return out, nil
}

// RestoreCoverage is one row of the restore_coverage view.
type RestoreCoverage struct {
	Test         string
	Policy       string
	InstanceID   string
	LastPassedID int64      // 0 when none passed
	LastPassedAt *time.Time // nil when none passed
	LastImageID  string
	LastRegion   string
	Overdue      bool
}

// RestoreCoverageList reads restore_coverage, by test and instance.
func (s *Store) RestoreCoverageList(ctx context.Context) ([]RestoreCoverage, error) {
	rows, err := s.pool.Query(ctx, `SELECT restore_test, policy, instance_id, COALESCE(last_passed_id, 0), last_passed_at,
	COALESCE(last_passed_image_id, ''), COALESCE(last_passed_region, ''), overdue
FROM restore_coverage ORDER BY restore_test, instance_id`)
	if err != nil {
		return nil, fmt.Errorf("read restore_coverage: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RestoreCoverage, error) {
		var c RestoreCoverage
		err := row.Scan(&c.Test, &c.Policy, &c.InstanceID, &c.LastPassedID, &c.LastPassedAt, &c.LastImageID, &c.LastRegion, &c.Overdue)
		c.LastPassedAt = utcPtr(c.LastPassedAt)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read restore_coverage: %w", s.translate(err))
	}
	return out, nil
}

// restoreWrite makes one outcome write of row id in one fenced transaction: it locks the row and
// calls write with it. A row that does not exist is ErrNotFound.
func (s *Store) restoreWrite(ctx context.Context, id int64, what string, write func(tx pgx.Tx, r RestoreTest) error) error {
	err := s.outcomeTx(ctx, func(tx pgx.Tx) error {
		r, err := scanRestore(tx.QueryRow(ctx, `SELECT `+restoreColumns+` FROM restore_tests WHERE id = $1 FOR UPDATE`, id))
		if err != nil {
			return notFound(err)
		}
		return write(tx, r)
	})
	if err != nil {
		return fmt.Errorf("%s %d: %w", what, id, err)
	}
	return nil
}
