package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Fire request statuses (fire_requests.status).
const (
	FireRequestPending = "pending"
	FireRequestTaken   = "taken"
	FireRequestDone    = "done"
	FireRequestFailed  = "failed"
)

// FireRequest is a fire asked for by imager once and carried out by the leader.
type FireRequest struct {
	ID           int64
	Policy       string
	Instances    []string // empty: every target of the policy
	Slot         time.Time
	RequestedBy  string
	Status       string
	TakenBy      string
	TakenTerm    int64
	ErrorMessage string
}

const fireRequestColumns = `id, policy, instances, slot, requested_by, status, COALESCE(taken_by, ''),
	COALESCE(taken_term, 0), COALESCE(error_message, '')`

func scanFireRequest(row pgx.Row) (FireRequest, error) {
	var f FireRequest
	err := row.Scan(&f.ID, &f.Policy, &f.Instances, &f.Slot, &f.RequestedBy, &f.Status, &f.TakenBy, &f.TakenTerm, &f.ErrorMessage)
	f.Slot = f.Slot.UTC()
	return f, err
}

// FireRequestInsert records a fire request and notifies FireRequestChannel in the same
// transaction; it returns the request's id.
func (s *Store) FireRequestInsert(ctx context.Context, f FireRequest) (int64, error) {
	if f.Policy == "" || f.Slot.IsZero() || f.RequestedBy == "" {
		return 0, fmt.Errorf("request fire: policy, slot and requester are required: %w", ErrInvalid)
	}
	if f.Instances == nil {
		f.Instances = []string{}
	}
	var id int64
	err := s.pool.QueryRow(ctx, `
WITH r AS (
	INSERT INTO fire_requests (policy, instances, slot, requested_by) VALUES ($1, $2, $3, $4) RETURNING id
)
SELECT id, pg_notify($5, id::text) IS NULL FROM r`, f.Policy, f.Instances, f.Slot, f.RequestedBy, FireRequestChannel).Scan(&id, new(bool))
	if err != nil {
		return 0, fmt.Errorf("request fire of %s: %w", f.Policy, s.translate(err))
	}
	return id, nil
}

// FireRequestTake marks the oldest request that is pending, or taken under an older term (its
// leader was replaced before finishing it), as taken by takenBy under s's term, and returns it;
// ok is false when there is none. The write is fenced: a leader whose term is over takes nothing
// (ErrFenced).
func (s *Store) FireRequestTake(ctx context.Context, takenBy string) (f FireRequest, ok bool, err error) {
	f, err = scanFireRequest(s.pool.QueryRow(ctx, `
UPDATE fire_requests SET status = 'taken', taken_by = $1, taken_term = $2
WHERE id = (SELECT id FROM fire_requests
	WHERE status = 'pending' OR (status = 'taken' AND COALESCE(taken_term, 0) < $2::bigint)
	ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
	AND `+fenceOutcome(2)+`
RETURNING `+fireRequestColumns, takenBy, s.term))
	if err == nil {
		return f, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return FireRequest{}, false, fmt.Errorf("take fire request: %w", s.translate(err))
	}
	if fenced, ferr := s.termOver(ctx); ferr != nil {
		return FireRequest{}, false, fmt.Errorf("take fire request: %w", ferr)
	} else if fenced {
		return FireRequest{}, false, fmt.Errorf("take fire request under term %d: %w", s.term, ErrFenced)
	}
	return FireRequest{}, false, nil
}

// FireRequestFinish marks a taken request done, or failed with errMessage when it is not empty.
// The write is fenced (ErrFenced when s's term is over).
func (s *Store) FireRequestFinish(ctx context.Context, id int64, errMessage string) error {
	status := FireRequestDone
	if errMessage != "" {
		status = FireRequestFailed
	}
	tag, err := s.pool.Exec(ctx, `UPDATE fire_requests SET status = $2, error_message = NULLIF($3, ''), finished_at = now()
WHERE id = $1 AND status = 'taken' AND `+fenceOutcome(4), id, status, errMessage, s.term)
	if err != nil {
		return fmt.Errorf("finish fire request %d: %w", id, s.translate(err))
	}
	if tag.RowsAffected() == 0 {
		if fenced, ferr := s.termOver(ctx); ferr == nil && fenced {
			return fmt.Errorf("finish fire request %d under term %d: %w", id, s.term, ErrFenced)
		}
		return fmt.Errorf("finish fire request %d: not taken: %w", id, ErrConflict)
	}
	return nil
}

// FireRequestGet reads one request.
func (s *Store) FireRequestGet(ctx context.Context, id int64) (FireRequest, error) {
	f, err := scanFireRequest(s.pool.QueryRow(ctx, `SELECT `+fireRequestColumns+` FROM fire_requests WHERE id = $1`, id))
	if err != nil {
		return FireRequest{}, fmt.Errorf("fire request %d: %w", id, notFound(s.translate(err)))
	}
	return f, nil
}

// RunsAtSlot lists the runs of policy at slot, by instance; with instances given, only theirs.
func (s *Store) RunsAtSlot(ctx context.Context, policy string, slot time.Time, instances []string) ([]Run, error) {
	if instances == nil {
		instances = []string{}
	}
	runs, err := s.queryRuns(ctx, `SELECT `+runColumns+` FROM image_runs
WHERE policy = $1 AND scheduled_at = $2 AND (cardinality($3::text[]) = 0 OR instance_id = ANY($3))
ORDER BY instance_id`, policy, slot.UTC().Truncate(time.Second), instances)
	if err != nil {
		return nil, fmt.Errorf("list runs of %s at %s: %w", policy, slot.UTC().Format(time.RFC3339), err)
	}
	return runs, nil
}

// termOver reports whether s's term is no longer the lease's term (always false for term 0).
func (s *Store) termOver(ctx context.Context) (bool, error) {
	if s.term == 0 {
		return false, nil
	}
	var current int64
	err := s.pool.QueryRow(ctx, `SELECT term FROM leader_lease WHERE name = $1`, LeaseName).Scan(&current)
	if errors.Is(err, pgx.ErrNoRows) {
		return true, nil
	}
	if err != nil {
		return false, s.translate(err)
	}
	return current != s.term, nil
}
