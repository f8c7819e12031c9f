package history_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

func TestDeletions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	run := claim(t, s, "web-nightly", "ins-6pb6lrmy", slot)

	decided := slot.Add(48 * time.Hour)
	d := history.Deletion{ImageID: "img-old00001", ImageName: "web-nightly-ins-6pb6lrmy-20260329-0300", Policy: "web-nightly",
		InstanceID: "ins-6pb6lrmy", Region: "ap-guangzhou", RunID: run.ID, Reason: "keep_last 2 exceeded", RequestedAt: decided}
	id, created, err := s.DeletionInsert(ctx, d)
	require.NoError(t, err)
	require.True(t, created)

	// Deciding again on the same image finds the same row.
	again := d
	again.Reason = "older than max_age 30d"
	id2, created, err := s.DeletionInsert(ctx, again)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, id, id2)

	other := history.Deletion{ImageID: "img-old00002", ImageName: "n2", Policy: "web-nightly", InstanceID: "ins-6pb6lrmy",
		Region: "ap-guangzhou", Reason: "quota", RequestedAt: decided.Add(time.Minute)}
	otherID, created, err := s.DeletionInsert(ctx, other)
	require.NoError(t, err)
	require.True(t, created)

	pending, err := s.DeletionsPending(ctx)
	require.NoError(t, err)
	require.Len(t, pending, 2)
	require.Equal(t, history.Deletion{ID: id, ImageID: d.ImageID, ImageName: d.ImageName, Policy: d.Policy,
		InstanceID: d.InstanceID, Region: d.Region, RunID: run.ID, Reason: "keep_last 2 exceeded",
		RequestedAt: decided, Status: history.DeletionPending, Account: "default"}, pending[0])
	require.Equal(t, otherID, pending[1].ID)
	require.Zero(t, pending[1].RunID)

	// A failed call: recorded with its attempt, and the deletion stays due.
	failedAt := decided.Add(time.Second)
	require.NoError(t, s.AttemptInsert(ctx, history.Attempt{DeletionID: id, Attempt: 1, Action: "DeleteImages",
		StartedAt: decided, RequestID: "req-del-1", ErrorCode: "InternalError"}))
	require.NoError(t, s.DeletionFinish(ctx, id, history.DeletionFailed, "req-del-1", "InternalError", "try later", failedAt))
	pending, err = s.DeletionsPending(ctx)
	require.NoError(t, err)
	require.Len(t, pending, 2)
	require.Equal(t, history.DeletionFailed, pending[0].Status)
	require.Equal(t, "InternalError", pending[0].ErrorCode)
	require.Equal(t, 1, pending[0].Attempts)
	require.Equal(t, failedAt, *pending[0].FinishedAt)

	// The retry succeeds.
	deletedAt := decided.Add(time.Hour)
	require.NoError(t, s.AttemptInsert(ctx, history.Attempt{DeletionID: id, Attempt: 2, Action: "DeleteImages",
		StartedAt: deletedAt, RequestID: "req-del-2"}))
	require.NoError(t, s.DeletionFinish(ctx, id, history.DeletionDeleted, "req-del-2", "", "", deletedAt))
	require.NoError(t, s.DeletionFinish(ctx, id, history.DeletionDeleted, "req-del-2", "", "", deletedAt), "a replay")
	require.ErrorIs(t, s.DeletionFinish(ctx, id, history.DeletionFailed, "req-x", "InternalError", "", deletedAt), history.ErrConflict)

	got, err := s.DeletionGet(ctx, id)
	require.NoError(t, err)
	require.Equal(t, history.DeletionDeleted, got.Status)
	require.Equal(t, "req-del-2", got.RequestID)
	require.Empty(t, got.ErrorCode)
	require.Equal(t, 2, got.Attempts)
	require.Equal(t, deletedAt, *got.FinishedAt)

	pending, err = s.DeletionsPending(ctx)
	require.NoError(t, err)
	require.Len(t, pending, 1)
	require.Equal(t, otherID, pending[0].ID)

	// An image deleted once is not decided again.
	_, created, err = s.DeletionInsert(ctx, d)
	require.NoError(t, err)
	require.False(t, created)
}

func TestDeletionRefusals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)

	_, _, err := s.DeletionInsert(ctx, history.Deletion{ImageName: "n", RequestedAt: slot})
	require.ErrorIs(t, err, history.ErrInvalid)
	_, _, err = s.DeletionInsert(ctx, history.Deletion{ImageID: "img-1"})
	require.ErrorIs(t, err, history.ErrInvalid)

	id, _, err := s.DeletionInsert(ctx, history.Deletion{ImageID: "img-1", RequestedAt: slot})
	require.NoError(t, err)
	require.ErrorIs(t, s.DeletionFinish(ctx, id, history.DeletionPending, "", "", "", slot), history.ErrInvalid)
	require.ErrorIs(t, s.DeletionFinish(ctx, id, history.DeletionDeleted, "", "", "", time.Time{}), history.ErrInvalid)
	require.ErrorIs(t, s.DeletionFinish(ctx, id+1000, history.DeletionDeleted, "", "", "", slot), history.ErrNotFound)
	_, err = s.DeletionGet(ctx, id+1000)
	require.ErrorIs(t, err, history.ErrNotFound)
}
