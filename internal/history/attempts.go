package history

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// AttemptInsert records one API call and, in the same statement, bumps the attempts counter of
// its run (or deletion). An attempt already recorded with the same (run or deletion, attempt,
// action) changes nothing, so a replayed write is counted once. A run or deletion that does not
// exist is ErrNotFound.
//
// An accepted CreateImage (no error code, a RequestId) recorded for a run that is past pending
// without a RequestId — its image was adopted by name before this attempt reached the database,
// e.g. replayed from a spool written under an earlier leadership term — gives the run its
// RequestId. Attempts are not fenced: they are the audit of calls that were made.
func (s *Store) AttemptInsert(ctx context.Context, a Attempt) error {
	if err := checkAttempt(a); err != nil {
		return err
	}
	ms := a.Duration.Milliseconds()
	switch {
	case ms < 0:
		ms = 0
	case ms > math.MaxInt32:
		ms = math.MaxInt32
	}
	_, err := s.pool.Exec(ctx, `
WITH ins AS (
	INSERT INTO image_attempts (run_id, deletion_id, attempt, action, started_at, duration_ms,
		request_id, error_code, error_message)
	VALUES (NULLIF($1::bigint, 0), NULLIF($2::bigint, 0), $3, $4, $5, $6, NULLIF($7, ''), NULLIF($8, ''), NULLIF($9, ''))
	ON CONFLICT DO NOTHING
	RETURNING run_id, deletion_id, action, request_id, error_code
), run_count AS (
	UPDATE image_runs r SET attempts = r.attempts + 1, updated_at = now(),
		request_id = CASE WHEN r.request_id IS NULL AND r.status <> 'pending' AND ins.action = 'CreateImage'
			AND ins.error_code IS NULL THEN ins.request_id ELSE r.request_id END
	FROM ins WHERE r.id = ins.run_id
	RETURNING r.id
), deletion_count AS (
	UPDATE image_deletions d SET attempts = d.attempts + 1
	FROM ins WHERE d.id = ins.deletion_id
	RETURNING d.id
)
SELECT 1`,
		a.RunID, a.DeletionID, a.Attempt, a.Action, a.StartedAt, ms, a.RequestID, a.ErrorCode, a.ErrorMessage)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23503" { // foreign_key_violation
			err = ErrNotFound
		}
		return fmt.Errorf("record attempt %d of %s (run %d, deletion %d): %w", a.Attempt, a.Action, a.RunID, a.DeletionID, s.translate(err))
	}
	return nil
}

// AttemptsOfRun lists the API calls made for one run, in attempt order.
func (s *Store) AttemptsOfRun(ctx context.Context, runID int64) ([]Attempt, error) {
	rows, err := s.pool.Query(ctx, `SELECT COALESCE(run_id, 0), COALESCE(deletion_id, 0), attempt, action, started_at,
	duration_ms, COALESCE(request_id, ''), COALESCE(error_code, ''), COALESCE(error_message, '')
FROM image_attempts WHERE run_id = $1 ORDER BY attempt, started_at, id`, runID)
	if err != nil {
		return nil, fmt.Errorf("list attempts of run %d: %w", runID, s.translate(err))
	}
	defer rows.Close()
	var out []Attempt
	for rows.Next() {
		var a Attempt
		var ms int64
		if err := rows.Scan(&a.RunID, &a.DeletionID, &a.Attempt, &a.Action, &a.StartedAt, &ms,
			&a.RequestID, &a.ErrorCode, &a.ErrorMessage); err != nil {
			return nil, fmt.Errorf("list attempts of run %d: %w", runID, s.translate(err))
		}
		a.StartedAt = a.StartedAt.UTC()
		a.Duration = time.Duration(ms) * time.Millisecond
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list attempts of run %d: %w", runID, s.translate(err))
	}
	return out, nil
}

func checkAttempt(a Attempt) error {
	if a.Attempt < 1 || a.Action == "" || a.StartedAt.IsZero() {
		return fmt.Errorf("record attempt: attempt number >= 1, action and start time are required: %w", ErrInvalid)
	}
	return nil
}
