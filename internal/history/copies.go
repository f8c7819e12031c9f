package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Copies of available images in other regions (a policy's copy_to; package copies makes them with
// SyncImages). Every write below is one transaction with its effects: the copy_failed and
// copy_recovered events go to the notification outbox with the change that causes them.

// CopyStatus is the state of one copy (image_copies.status).
type CopyStatus string

// Copy statuses.
const (
	// CopyStatusRequested: SyncImages is being or was called; whether the copy exists is not known
	// yet (RetryAt set: the API refused the last call, no copy was made).
	CopyStatusRequested CopyStatus = "requested"
	CopyStatusSyncing   CopyStatus = "syncing"   // the copy exists in its region, SYNCING
	CopyStatusAvailable CopyStatus = "available" // the copy is NORMAL
	CopyStatusFailed    CopyStatus = "failed"    // terminal, with ErrorCode
)

// Copy is one row of image_copies: the copy of one run's image in one other region.
type Copy struct {
	ID            int64
	RunID         int64
	Account       string
	Policy        string
	InstanceID    string
	Slot          time.Time // the run's slot
	SourceRegion  string
	SourceImageID string
	Region        string // destination
	ImageName     string
	ImageID       string // "" until known
	Status        CopyStatus
	RequestID     string
	ErrorCode     string
	ErrorMessage  string
	Attempts      int
	RetryAt       *time.Time // requested only: the last call was refused; call again then
	RequestedAt   time.Time
	AvailableAt   *time.Time
	FinishedAt    *time.Time
	DeletedAt     *time.Time
}

// CopyWant is the regions one policy copies its images to (its copy_to), as the live
// configuration says: the copier passes them to CopiesDue, so a reload takes effect at once and
// the policies table holds nothing the store would have to keep in step with the files.
type CopyWant struct {
	Policy  string
	Regions []string
}

// CopyDue is one available run with copies missing in Regions (sorted).
type CopyDue struct {
	Run     Run
	Account string // image_runs.account: the account that owns the source image
	Regions []string
}

const copyColumns = `id, run_id, account, policy, instance_id, slot, source_region, source_image_id, region, image_name,
	COALESCE(image_id, ''), status, COALESCE(request_id, ''), COALESCE(error_code, ''), COALESCE(error_message, ''),
	attempts, retry_at, requested_at, available_at, finished_at, deleted_at`

func scanCopy(row pgx.Row) (Copy, error) {
	var c Copy
	var status string
	err := row.Scan(&c.ID, &c.RunID, &c.Account, &c.Policy, &c.InstanceID, &c.Slot, &c.SourceRegion, &c.SourceImageID,
		&c.Region, &c.ImageName, &c.ImageID, &status, &c.RequestID, &c.ErrorCode, &c.ErrorMessage, &c.Attempts,
		&c.RetryAt, &c.RequestedAt, &c.AvailableAt, &c.FinishedAt, &c.DeletedAt)
	if err != nil {
		return Copy{}, err
	}
	c.Status = CopyStatus(status)
	c.Slot, c.RequestedAt = c.Slot.UTC(), c.RequestedAt.UTC()
	for _, t := range []**time.Time{&c.RetryAt, &c.AvailableAt, &c.FinishedAt, &c.DeletedAt} {
		if *t != nil {
			u := (*t).UTC()
			*t = &u
		}
	}
	return c, nil
}

// queryCopies runs a query selecting copyColumns and collects the rows.
func queryCopies(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args ...any) ([]Copy, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Copy, error) { return scanCopy(row) })
}

// CopiesDue lists up to limit runs (limit <= 0: all) that have a copy due in some region of
// their policy's want, oldest run first. A run is due in a region when it is available with an
// image id, its image has no deletion (retention has not chosen it), it has no copy row there, and
//   - it is newer (by slot) than the newest run of its (policy, instance) with a copy row in that
//     region: from the first copy on, every image is copied, also after the copier was down;
//   - or, for a (policy, instance) with no copy row in that region yet, it is the pair's newest
//     available run: a copy_to added to a policy (or a region added to it) copies the current
//     image, not the whole history.
func (s *Store) CopiesDue(ctx context.Context, wants []CopyWant, limit int) ([]CopyDue, error) {
	var pols, regions []string
	for _, w := range wants {
		for _, r := range w.Regions {
			pols, regions = append(pols, w.Policy), append(regions, r)
		}
	}
	if len(pols) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `
WITH w AS (SELECT DISTINCT policy, region FROM unnest($1::text[], $2::text[]) AS u(policy, region)),
pairs AS (
	SELECT cs.policy, cs.instance_id, cs.last_available_run_id, w.region, lc.slot AS copied_slot
	FROM w
	JOIN coverage_state cs ON cs.policy = w.policy AND cs.last_available_run_id IS NOT NULL
	LEFT JOIN LATERAL (SELECT c.slot FROM image_copies c
		WHERE c.policy = cs.policy AND c.instance_id = cs.instance_id AND c.region = w.region
		ORDER BY c.slot DESC LIMIT 1) lc ON true),
candidates AS (
	-- No copy in the region yet: the pair's newest available run, one probe by id.
	SELECT r.id, r.image_id, r.region AS source_region, p.region FROM pairs p
	JOIN image_runs r ON r.id = p.last_available_run_id AND r.status = 'available'
	WHERE p.copied_slot IS NULL
	UNION ALL
	-- Copies there: the available runs newer than the newest copied, a range of the pair's index.
	SELECT r.id, r.image_id, r.region, p.region FROM pairs p
	JOIN image_runs r ON r.policy = p.policy AND r.instance_id = p.instance_id AND r.status = 'available'
		AND r.scheduled_at > p.copied_slot
	WHERE p.copied_slot IS NOT NULL),
due AS (
	SELECT c.id AS run_id, c.region FROM candidates c
	WHERE c.image_id IS NOT NULL AND c.source_region <> c.region
		AND NOT EXISTS (SELECT 1 FROM image_copies x WHERE x.run_id = c.id AND x.region = c.region)
		AND NOT EXISTS (SELECT 1 FROM image_deletions d WHERE d.image_id = c.image_id)),
picked AS (SELECT DISTINCT run_id FROM due ORDER BY run_id LIMIT $3)
SELECT `+runColumns+`, account,
	(SELECT array_agg(due.region ORDER BY due.region) FROM due WHERE due.run_id = image_runs.id)
FROM image_runs WHERE id IN (SELECT run_id FROM picked) ORDER BY id`, pols, regions, limitArg(limit))
	if err != nil {
		return nil, fmt.Errorf("list copies due: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (CopyDue, error) {
		var d CopyDue
		var status string
		r := &d.Run
		err := row.Scan(&r.ID, &r.Policy, &r.InstanceID, &r.Region, &r.ScheduledAt, &r.StartedAt, &r.FinishedAt,
			&status, &r.ImageName, &r.ImageID, &r.ImageSizeGiB, &r.RequestID, &r.ErrorCode, &r.ErrorMessage,
			&r.Attempts, &r.DaemonID, &r.Account, &d.Account, &d.Regions)
		r.Status = Status(status)
		r.ScheduledAt, r.StartedAt = r.ScheduledAt.UTC(), r.StartedAt.UTC()
		if r.FinishedAt != nil {
			t := r.FinishedAt.UTC()
			r.FinishedAt = &t
		}
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("list copies due: %w", s.translate(err))
	}
	return out, nil
}

// CopyRequested records, before a SyncImages call for run runID, the copy of its image in every
// region of regions: a new row in status requested (requested at at), or, for a row still
// requested without an image id (an earlier call was refused, or its outcome was never known and
// the copy was not found by name since), one more attempt with RetryAt cleared, so a crash
// between the call and its answer leaves the row to be looked up by name. Rows already past
// requested are left as they are. It returns the rows of regions, in region order, and the number
// of this SyncImages call among the run's attempts (image_attempts.attempt).
//
// The run must be available with an image id (ErrConflict otherwise; ErrNotFound when it does not
// exist). A new row is a claim: with a term (WithTerm) that is not the live lease's, nothing is
// written and the error is ErrFenced.
func (s *Store) CopyRequested(ctx context.Context, runID int64, regions []string, at time.Time) ([]Copy, int, error) {
	if len(regions) == 0 || at.IsZero() {
		return nil, 0, fmt.Errorf("record copy request of run %d: regions and a request time are required: %w", runID, ErrInvalid)
	}
	var out []Copy
	attempt := 0
	err := s.fencedTx(ctx, fmt.Sprintf("record copy request of run %d", runID), func(tx pgx.Tx) error {
		var status string
		var imageID *string
		err := tx.QueryRow(ctx, `SELECT status, image_id FROM image_runs WHERE id = $1 FOR SHARE`, runID).Scan(&status, &imageID)
		if err != nil {
			return notFound(err)
		}
		if Status(status) != StatusAvailable || imageID == nil {
			return fmt.Errorf("run is %s without an image to copy: %w", status, ErrConflict)
		}
		if _, err := tx.Exec(ctx, `
INSERT INTO image_copies (run_id, account, policy, instance_id, slot, source_region, source_image_id, region,
	image_name, requested_at, attempts)
SELECT r.id, r.account, r.policy, r.instance_id, r.scheduled_at, r.region, r.image_id, u.region, r.image_name, $3, 1
FROM image_runs r CROSS JOIN unnest($2::text[]) AS u(region)
WHERE r.id = $1
ON CONFLICT (run_id, region) DO UPDATE SET attempts = image_copies.attempts + 1, retry_at = NULL, updated_at = now()
WHERE image_copies.status = 'requested' AND image_copies.image_id IS NULL`, runID, regions, at); err != nil {
			return err
		}
		if out, err = queryCopies(ctx, tx, `SELECT `+copyColumns+` FROM image_copies
WHERE run_id = $1 AND region = ANY($2) ORDER BY region`, runID, regions); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT COALESCE(max(attempt), 0) + 1 FROM image_attempts
WHERE run_id = $1 AND action = 'SyncImages'`, runID).Scan(&attempt)
	})
	if err != nil {
		return nil, 0, err
	}
	return out, attempt, nil
}

// CopyAnswered records that copy id exists in its region: SyncImages accepted it (requestID
// set), or it was found there by exact name (requestID ""). A requested copy becomes syncing; its
// image id is recorded when given (the answer may name none: the copy is then found by name). An
// id other than the one recorded is ErrConflict; a copy already past syncing is left as it is (a
// late answer). Fenced like every outcome write.
func (s *Store) CopyAnswered(ctx context.Context, id int64, imageID, requestID string) error {
	return s.copyWrite(ctx, id, "record answer of copy", func(tx pgx.Tx, c Copy) (*Copy, error) {
		switch {
		case c.Status != CopyStatusRequested && c.Status != CopyStatusSyncing:
			return nil, nil
		case imageID != "" && c.ImageID != "" && c.ImageID != imageID:
			return nil, fmt.Errorf("copy is %s, not %s: %w", c.ImageID, imageID, ErrConflict)
		}
		n, err := scanCopy(tx.QueryRow(ctx, `UPDATE image_copies SET status = 'syncing',
	image_id = COALESCE(image_id, NULLIF($2, '')), request_id = COALESCE(NULLIF($3, ''), request_id),
	error_code = NULL, error_message = NULL, retry_at = NULL, updated_at = now()
WHERE id = $1 RETURNING `+copyColumns, id, imageID, requestID))
		return &n, err
	})
}

// CopyCallFailed records a SyncImages call for the requested copies ids that failed without
// ending them: the code and message (and the RequestId, when the API answered), and retryAt,
// when the API refused the call (no copy was made; the copier calls again then). A nil retryAt
// says the outcome is not known (a network error, a timeout): the copy is looked up by name
// before any new call. Copies no longer requested are left as they are. Fenced.
func (s *Store) CopyCallFailed(ctx context.Context, ids []int64, code, message, requestID string, retryAt *time.Time) error {
	if len(ids) == 0 || code == "" {
		return fmt.Errorf("record failed copy call: copies and an error code are required: %w", ErrInvalid)
	}
	err := s.outcomeTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE image_copies SET error_code = $2, error_message = NULLIF($3, ''),
	request_id = COALESCE(NULLIF($4, ''), request_id), retry_at = $5, updated_at = now()
WHERE id = ANY($1) AND status = 'requested' AND image_id IS NULL`, ids, code, cutBytes(message, 1000), requestID, retryAt)
		return err
	})
	if err != nil {
		return fmt.Errorf("record failed SyncImages of copies %v: %w", ids, err)
	}
	return nil
}

// CopyAvailable records that copy id is NORMAL in its region at at: status available, its image
// id when given. When the copy before it (by slot) of the same policy, instance and region had
// failed, a copy_recovered event is written in the same transaction (copyRecovered). Marking an
// available copy available again changes nothing; a failed copy is ErrConflict. Fenced.
func (s *Store) CopyAvailable(ctx context.Context, id int64, imageID string, at time.Time) error {
	if at.IsZero() {
		return fmt.Errorf("mark copy %d available: no time: %w", id, ErrInvalid)
	}
	return s.copyWrite(ctx, id, "mark copy available", func(tx pgx.Tx, c Copy) (*Copy, error) {
		switch {
		case c.Status == CopyStatusAvailable:
			return nil, nil
		case c.Status == CopyStatusFailed:
			return nil, fmt.Errorf("copy failed (%s): %w", c.ErrorCode, ErrConflict)
		case imageID != "" && c.ImageID != "" && c.ImageID != imageID:
			return nil, fmt.Errorf("copy is %s, not %s: %w", c.ImageID, imageID, ErrConflict)
		}
		n, err := scanCopy(tx.QueryRow(ctx, `UPDATE image_copies SET status = 'available',
	image_id = COALESCE(image_id, NULLIF($2, '')), available_at = $3, finished_at = $3,
	error_code = NULL, error_message = NULL, retry_at = NULL, updated_at = now()
WHERE id = $1 RETURNING `+copyColumns, id, imageID, at))
		if err != nil {
			return nil, err
		}
		var previous string
		err = tx.QueryRow(ctx, `SELECT status FROM image_copies
WHERE policy = $1 AND instance_id = $2 AND region = $3 AND (slot, id) < ($4, $5)
ORDER BY slot DESC, id DESC LIMIT 1`, n.Policy, n.InstanceID, n.Region, n.Slot, n.ID).Scan(&previous)
		if errors.Is(err, pgx.ErrNoRows) {
			return &n, nil // the first copy of the pair there
		}
		if err != nil {
			return nil, err
		}
		if copyRecovered(CopyStatus(previous)) {
			_, err = insertEvent(ctx, tx, copyEvent(EventCopyRecovered, n, map[string]any{
				"recovered_from": "previous_copy_failed", "previous_status": previous}))
		}
		return &n, err
	})
}

// CopyFailed ends copy id with code and message at at and writes its copy_failed event in the
// same transaction. Failing a failed copy again changes nothing; an available one is ErrConflict.
// Fenced.
func (s *Store) CopyFailed(ctx context.Context, id int64, code, message string, at time.Time) error {
	if code == "" || at.IsZero() {
		return fmt.Errorf("fail copy %d: an error code and a time are required: %w", id, ErrInvalid)
	}
	return s.copyWrite(ctx, id, "fail copy", func(tx pgx.Tx, c Copy) (*Copy, error) {
		switch c.Status {
		case CopyStatusFailed:
			return nil, nil
		case CopyStatusAvailable:
			return nil, fmt.Errorf("copy is available: %w", ErrConflict)
		}
		n, err := scanCopy(tx.QueryRow(ctx, `UPDATE image_copies SET status = 'failed', error_code = $2,
	error_message = NULLIF($3, ''), finished_at = $4, retry_at = NULL, updated_at = now()
WHERE id = $1 RETURNING `+copyColumns, id, code, cutBytes(message, 1000), at))
		if err != nil {
			return nil, err
		}
		_, err = insertEvent(ctx, tx, copyEvent(EventCopyFailed, n, nil))
		return &n, err
	})
}

// copyRecovered decides whether a copy that just became available is a recovery: the copy before
// it in its region (the newest of an older slot, of the same policy and instance) failed.
func copyRecovered(previous CopyStatus) bool {
	return previous == CopyStatusFailed
}

// copyEvent is the outbox row of a copy's event: the run's fields, the copy's image, and the
// regions and ids in detail.
func copyEvent(name string, c Copy, detail map[string]any) event {
	d := map[string]any{"region": c.Region, "source_region": c.SourceRegion, "source_image_id": c.SourceImageID,
		"copy_id": c.ID, "account": c.Account}
	for k, v := range detail {
		d[k] = v
	}
	return event{Event: name, Policy: c.Policy, InstanceID: c.InstanceID, RunID: c.RunID, Slot: c.Slot,
		Status: string(c.Status), ErrorCode: c.ErrorCode, ErrorMessage: c.ErrorMessage, ImageID: c.ImageID,
		ImageName: c.ImageName, At: c.FinishedAt, Detail: d}
}

// CopyGet returns one copy.
func (s *Store) CopyGet(ctx context.Context, id int64) (Copy, error) {
	c, err := scanCopy(s.pool.QueryRow(ctx, `SELECT `+copyColumns+` FROM image_copies WHERE id = $1`, id))
	if err != nil {
		return Copy{}, fmt.Errorf("copy %d: %w", id, notFound(s.translate(err)))
	}
	return c, nil
}

// CopiesOfRun lists the copies of one run, in region order.
func (s *Store) CopiesOfRun(ctx context.Context, runID int64) ([]Copy, error) {
	by, err := s.CopiesOfRuns(ctx, []int64{runID})
	return by[runID], err
}

// CopiesPending lists up to limit copies (limit <= 0: all) still requested or syncing, oldest
// request first: the copier resolves the requested ones (by name, or by calling again once
// RetryAt has passed) and follows the syncing ones until they are NORMAL, fail, or time out.
func (s *Store) CopiesPending(ctx context.Context, limit int) ([]Copy, error) {
	out, err := queryCopies(ctx, s.pool, `SELECT `+copyColumns+` FROM image_copies
WHERE status IN ('requested', 'syncing') ORDER BY requested_at, id LIMIT $1`, limitArg(limit))
	if err != nil {
		return nil, fmt.Errorf("list pending copies: %w", s.translate(err))
	}
	return out, nil
}

// CopiesRetainable lists the copies the copies' retention weighs in one region for one policy
// (one instance, or every instance for ""): available, with an image id, not deleted. Copies with
// an open deletion (pending or failed) are listed: the pass retries those. Order: instance, then
// newest slot first.
func (s *Store) CopiesRetainable(ctx context.Context, policy, instanceID, region string) ([]Copy, error) {
	out, err := queryCopies(ctx, s.pool, `SELECT `+copyColumns+` FROM image_copies
WHERE policy = $1 AND ($2 = '' OR instance_id = $2) AND region = $3 AND status = 'available'
	AND image_id IS NOT NULL AND deleted_at IS NULL
ORDER BY instance_id, slot DESC, id DESC`, policy, instanceID, region)
	if err != nil {
		return nil, fmt.Errorf("list retainable copies of %s in %s: %w", policyInstance(policy, instanceID), region, s.translate(err))
	}
	return out, nil
}

// CopyDeletionsOpen lists the deletions of copies of one policy in one region (one instance, or
// all for "") that are not done, oldest decision first.
func (s *Store) CopyDeletionsOpen(ctx context.Context, policy, instanceID, region string) ([]Deletion, error) {
	out, err := s.queryDeletions(ctx, `SELECT `+deletionColumns+` FROM image_deletions
WHERE status <> 'deleted' AND copy_id IS NOT NULL AND policy = $1 AND ($2 = '' OR instance_id = $2) AND region = $3
ORDER BY requested_at, id`, policy, instanceID, region)
	if err != nil {
		return nil, fmt.Errorf("list open copy deletions of %s in %s: %w", policyInstance(policy, instanceID), region, err)
	}
	return out, nil
}

// CopyDeletionInsert records the decision to delete copy copyID (its image in its region), in
// status pending, before the DeleteImages call: an image_deletions row naming the copy, its run
// and its account. A copy already decided returns that row's id and created false and changes
// nothing. DeletionFinish records the outcome and, once deleted, the copy's deleted_at.
func (s *Store) CopyDeletionInsert(ctx context.Context, copyID int64, reason string, at time.Time) (int64, bool, error) {
	if at.IsZero() || reason == "" {
		return 0, false, fmt.Errorf("record deletion of copy %d: a reason and a time are required: %w", copyID, ErrInvalid)
	}
	var id int64
	err := s.pool.QueryRow(ctx, `INSERT INTO image_deletions (image_id, image_name, policy, instance_id, region,
	run_id, reason, requested_at, status, account, copy_id)
SELECT image_id, image_name, policy, instance_id, region, run_id, $2, $3, 'pending', account, id
FROM image_copies WHERE id = $1 AND image_id IS NOT NULL
ON CONFLICT (image_id) DO NOTHING
RETURNING id`, copyID, reason, at).Scan(&id)
	if err == nil {
		return id, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return 0, false, fmt.Errorf("record deletion of copy %d: %w", copyID, s.translate(err))
	}
	err = s.pool.QueryRow(ctx, `SELECT d.id FROM image_deletions d JOIN image_copies c ON c.image_id = d.image_id
WHERE c.id = $1`, copyID).Scan(&id)
	if err != nil {
		return 0, false, fmt.Errorf("record deletion of copy %d (no copy with an image): %w", copyID, notFound(s.translate(err)))
	}
	return id, false, nil
}

// copyWrite makes one outcome write of copy id in one fenced transaction: it locks the row and
// calls write with it, which updates it and writes the effects and returns the row after (nil:
// nothing to change). A copy that does not exist is ErrNotFound.
func (s *Store) copyWrite(ctx context.Context, id int64, what string, write func(tx pgx.Tx, c Copy) (*Copy, error)) error {
	err := s.outcomeTx(ctx, func(tx pgx.Tx) error {
		c, err := scanCopy(tx.QueryRow(ctx, `SELECT `+copyColumns+` FROM image_copies WHERE id = $1 FOR UPDATE`, id))
		if err != nil {
			return notFound(err)
		}
		_, err = write(tx, c)
		return err
	})
	if err != nil {
		return fmt.Errorf("%s %d: %w", what, id, err)
	}
	return nil
}

// outcomeTx runs fn in a transaction fenced like an outcome write: with a term (WithTerm) that is
// no longer the lease's, nothing is written and the error is ErrFenced.
func (s *Store) outcomeTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if s.term != 0 {
			var ok bool
			if err := tx.QueryRow(ctx, `SELECT `+fenceOutcome(1), s.term).Scan(&ok); err != nil {
				return err
			}
			if !ok {
				return ErrFenced
			}
		}
		return fn(tx)
	})
	if err != nil && !errors.Is(err, ErrFenced) && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrConflict) {
		err = s.translate(err)
	}
	return err
}
