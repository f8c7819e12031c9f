package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/imager-dev/imager/internal/policy"
)

const deletionColumns = `id, image_id, image_name, policy, instance_id, region, COALESCE(run_id, 0), COALESCE(copy_id, 0), reason,
	requested_at, finished_at, status, COALESCE(request_id, ''), COALESCE(error_code, ''),
	COALESCE(error_message, ''), attempts, account`

func scanDeletion(row pgx.Row) (Deletion, error) {
	var d Deletion
	var status string
	err := row.Scan(&d.ID, &d.ImageID, &d.ImageName, &d.Policy, &d.InstanceID, &d.Region, &d.RunID, &d.CopyID, &d.Reason,
		&d.RequestedAt, &d.FinishedAt, &status, &d.RequestID, &d.ErrorCode, &d.ErrorMessage, &d.Attempts, &d.Account)
	if err != nil {
		return Deletion{}, err
	}
	d.Status = DeletionStatus(status)
	d.RequestedAt = d.RequestedAt.UTC()
	if d.FinishedAt != nil {
		t := d.FinishedAt.UTC()
		d.FinishedAt = &t
	}
	return d, nil
}

// DeletionInsert records the decision to delete an image, in status pending. An image has one
// deletion row: when it already has one (decided before, perhaps failed since), DeletionInsert
// returns that row's id and created false and changes nothing. The fields ID, FinishedAt,
// Status, RequestID, ErrorCode, ErrorMessage and Attempts of d are ignored; an empty Account
// records policy.DefaultAccount.
func (s *Store) DeletionInsert(ctx context.Context, d Deletion) (int64, bool, error) {
	if d.ImageID == "" || d.RequestedAt.IsZero() {
		return 0, false, fmt.Errorf("record deletion: image id and request time are required: %w", ErrInvalid)
	}
	var id int64
	account := d.Account
	if account == "" {
		account = policy.DefaultAccount
	}
	err := s.pool.QueryRow(ctx, `INSERT INTO image_deletions (image_id, image_name, policy, instance_id, region,
	run_id, reason, requested_at, status, account)
VALUES ($1, $2, $3, $4, $5, NULLIF($6::bigint, 0), $7, $8, 'pending', $9)
ON CONFLICT (image_id) DO NOTHING
RETURNING id`, d.ImageID, d.ImageName, d.Policy, d.InstanceID, d.Region, d.RunID, d.Reason, d.RequestedAt, account).Scan(&id)
	if err == nil {
		return id, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return 0, false, fmt.Errorf("record deletion of %s: %w", d.ImageID, s.translate(err))
	}
	if err := s.pool.QueryRow(ctx, `SELECT id FROM image_deletions WHERE image_id = $1`, d.ImageID).Scan(&id); err != nil {
		return 0, false, fmt.Errorf("read deletion of %s: %w", d.ImageID, notFound(s.translate(err)))
	}
	return id, false, nil
}

// DeletionFinish records the outcome of a DeleteImages call: status deleted, or failed (retried
// at the next pass), with the call's RequestId and error. A deletion already deleted accepts
// deleted again (a replay) and refuses failed with ErrConflict.
func (s *Store) DeletionFinish(ctx context.Context, id int64, status DeletionStatus, requestID, errCode, errMsg string, at time.Time) error {
	if status != DeletionDeleted && status != DeletionFailed {
		return fmt.Errorf("finish deletion %d: status %q is not deleted or failed: %w", id, status, ErrInvalid)
	}
	if at.IsZero() {
		return fmt.Errorf("finish deletion %d: no finish time: %w", id, ErrInvalid)
	}
	// A deleted copy (copy_id set) records its deleted_at in the same statement.
	var n int
	err := s.pool.QueryRow(ctx, `WITH d AS (
	UPDATE image_deletions SET status = $2, request_id = NULLIF($3, ''),
		error_code = NULLIF($4, ''), error_message = NULLIF($5, ''), finished_at = $6
	WHERE id = $1 AND status <> 'deleted'
	RETURNING copy_id, status, finished_at
), c AS (
	UPDATE image_copies cp SET deleted_at = d.finished_at, updated_at = now()
	FROM d WHERE cp.id = d.copy_id AND d.status = 'deleted' AND cp.deleted_at IS NULL
	RETURNING cp.id
)
SELECT count(*) FROM d`, id, string(status), requestID, errCode, errMsg, at).Scan(&n)
	if err != nil {
		return fmt.Errorf("finish deletion %d: %w", id, s.translate(err))
	}
	if n > 0 {
		return nil
	}
	var current string
	if err := s.pool.QueryRow(ctx, `SELECT status FROM image_deletions WHERE id = $1`, id).Scan(&current); err != nil {
		return fmt.Errorf("finish deletion %d: %w", id, notFound(s.translate(err)))
	}
	if DeletionStatus(current) == status {
		return nil
	}
	return fmt.Errorf("finish deletion %d: deletion is %s: %w", id, current, ErrConflict)
}

// DeletionsPending lists the deletions not done yet, oldest decision first: pending ones and
// failed ones, which are retried at every pass until DeleteImages succeeds.
func (s *Store) DeletionsPending(ctx context.Context) ([]Deletion, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deletionColumns+` FROM image_deletions
WHERE status <> 'deleted' ORDER BY requested_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list pending deletions: %w", s.translate(err))
	}
	defer rows.Close()
	var out []Deletion
	for rows.Next() {
		d, err := scanDeletion(rows)
		if err != nil {
			return nil, fmt.Errorf("list pending deletions: %w", s.translate(err))
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list pending deletions: %w", s.translate(err))
	}
	return out, nil
}

// DeletionGet returns one deletion.
func (s *Store) DeletionGet(ctx context.Context, id int64) (Deletion, error) {
	d, err := scanDeletion(s.pool.QueryRow(ctx, `SELECT `+deletionColumns+` FROM image_deletions WHERE id = $1`, id))
	if err != nil {
		return Deletion{}, fmt.Errorf("deletion %d: %w", id, notFound(s.translate(err)))
	}
	return d, nil
}
