package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// runColumns is the select list scanRun reads, in its order.
const runColumns = `id, policy, instance_id, region, scheduled_at, started_at, finished_at, status,
	image_name, COALESCE(image_id, ''), image_size_gib, COALESCE(request_id, ''),
	COALESCE(error_code, ''), COALESCE(error_message, ''), attempts, daemon_id, account`

func scanRun(row pgx.Row) (Run, error) {
	var r Run
	var status string
	err := row.Scan(&r.ID, &r.Policy, &r.InstanceID, &r.Region, &r.ScheduledAt, &r.StartedAt, &r.FinishedAt,
		&status, &r.ImageName, &r.ImageID, &r.ImageSizeGiB, &r.RequestID, &r.ErrorCode, &r.ErrorMessage,
		&r.Attempts, &r.DaemonID, &r.Account)
	if err != nil {
		return Run{}, err
	}
	r.Status = Status(status)
	r.ScheduledAt = r.ScheduledAt.UTC()
	r.StartedAt = r.StartedAt.UTC()
	if r.FinishedAt != nil {
		t := r.FinishedAt.UTC()
		r.FinishedAt = &t
	}
	return r, nil
}

// queryRuns runs a query selecting runColumns and collects the rows.
func (s *Store) queryRuns(ctx context.Context, sql string, args ...any) ([]Run, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, s.translate(err)
	}
	defer rows.Close()
	var runs []Run
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, s.translate(err)
		}
		runs = append(runs, r)
	}
	return runs, s.translate(rows.Err())
}

// RunClaim inserts the run row for (policy, instance, slot). When the slot is already claimed,
// by this or another daemon, it returns the existing row and claimed false. A terminal claim
// (skipped, missed, failed) is finished at StartedAt. The claim is fenced: with a term (WithTerm)
// that is not the live lease's, nothing is written and the error is ErrFenced. Claimed rows carry
// the term.
func (s *Store) RunClaim(ctx context.Context, p RunClaimParams) (Run, bool, error) {
	if err := checkClaim(p); err != nil {
		return Run{}, false, err
	}
	var r Run
	claimed := true
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var fence pipeline
		s.queueFence(&fence)
		if err := fence.flush(ctx, tx); err != nil {
			return err
		}
		var err error
		r, err = scanRun(tx.QueryRow(ctx, claimInsert, s.claimArgs(p)...))
		if err == nil {
			return s.applyEffects(ctx, tx, []runChange{{run: r}})
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		// Claimed before; the claimer has committed (ON CONFLICT waited for it), so this sees the row.
		claimed = false
		r, err = scanRun(tx.QueryRow(ctx, claimSelect, p.Policy, p.InstanceID, p.ScheduledAt))
		return notFound(err)
	})
	if err != nil {
		if !errors.Is(err, ErrFenced) && !errors.Is(err, ErrNotFound) {
			err = s.translate(err)
		}
		return Run{}, false, fmt.Errorf("claim run %s/%s at %s: %w", p.Policy, p.InstanceID, p.ScheduledAt.UTC().Format(time.RFC3339), err)
	}
	return r, claimed, nil
}

// RunGet returns one run.
func (s *Store) RunGet(ctx context.Context, runID int64) (Run, error) {
	r, err := scanRun(s.pool.QueryRow(ctx, `SELECT `+runColumns+` FROM image_runs WHERE id = $1`, runID))
	if err != nil {
		return Run{}, fmt.Errorf("run %d: %w", runID, notFound(s.translate(err)))
	}
	return r, nil
}

// RunRename records the name a pending run will try next (after InvalidImageName.Duplicate).
// Renaming again to the same name changes nothing. Fenced: ErrFenced when the store's term
// (WithTerm) is no longer the lease's.
func (s *Store) RunRename(ctx context.Context, runID int64, imageName string) error {
	if err := checkRename(runID, imageName); err != nil {
		return err
	}
	// A pending run's name is in none of the answers effects.go keeps: one fenced UPDATE.
	tag, err := s.pool.Exec(ctx, `UPDATE image_runs SET image_name = $2, updated_at = now()
WHERE id = $1 AND (status = 'pending' OR image_name = $2) AND `+fenceOutcome(3), runID, imageName, s.term)
	if err != nil {
		return fmt.Errorf("rename run %d: %w", runID, s.translate(err))
	}
	if tag.RowsAffected() == 0 {
		return s.unchanged(ctx, runID, "rename run")
	}
	return nil
}

// RunRequested records an accepted CreateImage on a pending run: status requested, the image id
// (may be empty: found by name later) and the accepted RequestId. Recording the same RequestId
// again (a replay) changes nothing but a missing image id; another RequestId on a run that is no
// longer pending is ErrConflict. Fenced: ErrFenced when the store's term is no longer the lease's.
//
// An empty requestID is an image adopted by name (its CreateImage answer was lost, or recorded
// under a leadership term that is over): the run keeps the RequestId of its accepted CreateImage
// attempt in image_attempts, if one is recorded, so the accepted call stays on its run.
func (s *Store) RunRequested(ctx context.Context, runID int64, imageID, requestID string) error {
	changed, err := s.runWrite(ctx, runID, `UPDATE image_runs SET
	image_id = CASE WHEN status = 'pending' THEN COALESCE(NULLIF($2, ''), image_id)
	                ELSE COALESCE(image_id, NULLIF($2, '')) END,
	status = CASE WHEN status = 'pending' THEN 'requested' ELSE status END,
	request_id = COALESCE(NULLIF($3, ''), request_id, `+acceptedCreateRequestID("image_runs.id")+`),
	updated_at = now()
WHERE id = $1 AND (status = 'pending' OR request_id IS NOT DISTINCT FROM NULLIF($3, '') OR $3 = '') AND `+fenceOutcome(4),
		runID, imageID, requestID, s.term)
	if err != nil {
		return fmt.Errorf("record request of run %d: %w", runID, s.translate(err))
	}
	if !changed {
		return s.unchanged(ctx, runID, "record request of run")
	}
	return nil
}

// acceptedCreateRequestID is the SQL expression of the RequestId of the latest accepted
// CreateImage attempt recorded for the run whose id is runIDExpr (NULL when none is).
func acceptedCreateRequestID(runIDExpr string) string {
	return `(SELECT a.request_id FROM image_attempts a WHERE a.run_id = ` + runIDExpr + `
	AND a.action = 'CreateImage' AND a.error_code IS NULL AND a.request_id IS NOT NULL
	ORDER BY a.attempt DESC, a.id DESC LIMIT 1)`
}

// RunFinish moves a pending or requested run to the terminal status p.Status. Finishing a run
// again with the status it already has (a replay) changes nothing; any other change of a
// finished run is ErrConflict. Fenced: ErrFenced when the store's term is no longer the lease's.
func (s *Store) RunFinish(ctx context.Context, p RunFinishParams) error {
	if err := checkFinish(p); err != nil {
		return err
	}
	changed, err := s.runWrite(ctx, p.RunID, `UPDATE image_runs SET status = $2, error_code = NULLIF($3, ''),
	error_message = NULLIF($4, ''), image_size_gib = COALESCE($5, image_size_gib), finished_at = $6, updated_at = now()
WHERE id = $1 AND status IN ('pending', 'requested') AND `+fenceOutcome(7),
		p.RunID, string(p.Status), p.ErrorCode, p.ErrorMessage, p.ImageSizeGiB, p.FinishedAt, s.term)
	if err != nil {
		return fmt.Errorf("finish run %d: %w", p.RunID, s.translate(err))
	}
	if !changed {
		return s.unchangedUnless(ctx, p.RunID, "finish run", p.Status)
	}
	return nil
}

// RunAvailable records that a run's image is usable (NORMAL): status available, finished at at,
// its size and, when given, its image id. Marking an available run available again changes nothing.
// Fenced: ErrFenced when the store's term is no longer the lease's.
func (s *Store) RunAvailable(ctx context.Context, runID int64, sizeGiB *int64, imageID string, at time.Time) error {
	if err := checkAvailable(runID, at); err != nil {
		return err
	}
	changed, err := s.runWrite(ctx, runID, `UPDATE image_runs SET status = 'available', image_size_gib = COALESCE($2, image_size_gib),
	image_id = COALESCE(NULLIF($3, ''), image_id), finished_at = $4, error_code = NULL, error_message = NULL, updated_at = now()
WHERE id = $1 AND status IN ('pending', 'requested') AND `+fenceOutcome(5), runID, sizeGiB, imageID, at, s.term)
	if err != nil {
		return fmt.Errorf("mark run %d available: %w", runID, s.translate(err))
	}
	if !changed {
		return s.unchangedUnless(ctx, runID, "mark run available", StatusAvailable)
	}
	return nil
}

// RunSetImageID records the image id of a run found by exact name after a CreateImage response
// without ImageId. Setting the id the run already has changes nothing; another id is ErrConflict.
// Fenced: ErrFenced when the store's term is no longer the lease's.
func (s *Store) RunSetImageID(ctx context.Context, runID int64, imageID string) error {
	if err := checkImageID(runID, imageID); err != nil {
		return err
	}
	changed, err := s.runWrite(ctx, runID, `UPDATE image_runs SET image_id = $2, updated_at = now()
WHERE id = $1 AND (image_id IS NULL OR image_id = $2) AND `+fenceOutcome(3), runID, imageID, s.term)
	if err != nil {
		return fmt.Errorf("set image id of run %d: %w", runID, s.translate(err))
	}
	if !changed {
		return s.unchanged(ctx, runID, "set image id of run")
	}
	return nil
}

// RunsUnfinished lists runs in status pending or requested, oldest slot first (crash recovery).
func (s *Store) RunsUnfinished(ctx context.Context) ([]Run, error) {
	runs, err := s.queryRuns(ctx, `SELECT `+runColumns+` FROM image_runs
WHERE status IN ('pending', 'requested') ORDER BY scheduled_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list unfinished runs: %w", err)
	}
	return runs, nil
}

// RunsRequested lists up to limit runs in status requested, oldest slot first: the images whose
// completion is still to be tracked. limit <= 0 lists them all. It lists every account's runs;
// a component of one account reads RunsRequestedOf.
func (s *Store) RunsRequested(ctx context.Context, limit int) ([]Run, error) {
	return s.RunsRequestedOf(ctx, "", limit)
}

// RunsRequestedOf is RunsRequested for the runs of one account (image_runs.account): the
// completion tracker of that account reads these at every poll. An empty account lists every
// account's runs.
func (s *Store) RunsRequestedOf(ctx context.Context, account string, limit int) ([]Run, error) {
	runs, err := s.queryRuns(ctx, `SELECT `+runColumns+` FROM image_runs
WHERE status = 'requested' AND ($1 = '' OR account = $1) ORDER BY scheduled_at, id LIMIT $2`, account, limitArg(limit))
	if err != nil {
		if account != "" {
			return nil, fmt.Errorf("list requested runs of account %s: %w", account, err)
		}
		return nil, fmt.Errorf("list requested runs: %w", err)
	}
	return runs, nil
}

// RunsRecent lists up to limit runs whose slot is at or after since, newest first
// (imager history). limit <= 0 lists them all.
func (s *Store) RunsRecent(ctx context.Context, since time.Time, limit int) ([]Run, error) {
	runs, err := s.queryRuns(ctx, `SELECT `+runColumns+` FROM image_runs
WHERE scheduled_at >= $1 ORDER BY scheduled_at DESC, id DESC LIMIT $2`, since, limitArg(limit))
	if err != nil {
		return nil, fmt.Errorf("list recent runs: %w", err)
	}
	return runs, nil
}

// runWrite makes one outcome write of run runID: update is an UPDATE of that run whose WHERE
// refuses a change the run's state (or the fence) does not allow. In one transaction it locks the
// run, updates it and writes the update's effects (effects.go). changed is false when the update
// matched no row (the caller explains why: unchanged).
func (s *Store) runWrite(ctx context.Context, runID int64, update string, args ...any) (changed bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var before string
		err := tx.QueryRow(ctx, `SELECT status FROM image_runs WHERE id = $1 FOR UPDATE`, runID).Scan(&before)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		r, err := scanRun(tx.QueryRow(ctx, update+`
RETURNING `+runColumns, args...))
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		changed = true
		return s.applyEffects(ctx, tx, []runChange{{before: Status(before), run: r}})
	})
	return changed, err
}

// limitArg turns "no limit" (<= 0) into SQL NULL, which LIMIT reads as ALL.
func limitArg(limit int) *int64 {
	if limit <= 0 {
		return nil
	}
	l := int64(limit)
	return &l
}

// unchanged explains an update of a run that matched no row: the write carried a term that is
// no longer the lease's (ErrFenced), the run does not exist (ErrNotFound) or its state does not
// allow the change (ErrConflict).
func (s *Store) unchanged(ctx context.Context, runID int64, what string) error {
	return s.unchangedUnless(ctx, runID, what, "")
}

// unchangedUnless is unchanged, but a run already in status ok is not an error: the change was
// made before (a replay).
func (s *Store) unchangedUnless(ctx context.Context, runID int64, what string, ok Status) error {
	if over, err := s.termOver(ctx); err != nil {
		return fmt.Errorf("%s %d: %w", what, runID, err)
	} else if over {
		return fmt.Errorf("%s %d under term %d: %w", what, runID, s.term, ErrFenced)
	}
	var status string
	err := s.pool.QueryRow(ctx, `SELECT status FROM image_runs WHERE id = $1`, runID).Scan(&status)
	if err != nil {
		return fmt.Errorf("%s %d: %w", what, runID, notFound(s.translate(err)))
	}
	if ok != "" && Status(status) == ok {
		return nil
	}
	return fmt.Errorf("%s %d: run is %s: %w", what, runID, status, ErrConflict)
}

// notFound turns pgx.ErrNoRows into ErrNotFound.
func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	return err
}

// The check functions refuse values the schema cannot hold, before any SQL (and before a
// Recorder spools a write that could never be applied).

func checkRename(runID int64, imageName string) error {
	if imageName == "" {
		return fmt.Errorf("rename run %d: empty name: %w", runID, ErrInvalid)
	}
	return nil
}

func checkFinish(p RunFinishParams) error {
	if !p.Status.Terminal() {
		return fmt.Errorf("finish run %d: status %q is not terminal: %w", p.RunID, p.Status, ErrInvalid)
	}
	if p.FinishedAt.IsZero() {
		return fmt.Errorf("finish run %d: no finish time: %w", p.RunID, ErrInvalid)
	}
	return nil
}

func checkAvailable(runID int64, at time.Time) error {
	if at.IsZero() {
		return fmt.Errorf("mark run %d available: no finish time: %w", runID, ErrInvalid)
	}
	return nil
}

func checkImageID(runID int64, imageID string) error {
	if imageID == "" {
		return fmt.Errorf("set image id of run %d: empty id: %w", runID, ErrInvalid)
	}
	return nil
}
