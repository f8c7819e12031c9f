package history_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

func TestAttemptInsertCountsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	run := claim(t, s, "web-nightly", "ins-6pb6lrmy", slot)

	calls := []history.Attempt{
		{RunID: run.ID, Attempt: 1, Action: "CreateImage", StartedAt: slot.Add(time.Second), Duration: 120 * time.Millisecond,
			RequestID: "req-1", ErrorCode: "RequestLimitExceeded", ErrorMessage: "too many requests"},
		{RunID: run.ID, Attempt: 2, Action: "CreateImage", StartedAt: slot.Add(3 * time.Second), Duration: 95 * time.Millisecond,
			RequestID: "req-2", ErrorCode: "InvalidImageName.Duplicate", ErrorMessage: "name taken"},
		{RunID: run.ID, Attempt: 3, Action: "CreateImage", StartedAt: slot.Add(4 * time.Second), Duration: 80 * time.Millisecond,
			RequestID: "req-3"},
		{RunID: run.ID, Attempt: 3, Action: "DescribeImages", StartedAt: slot.Add(5 * time.Second), Duration: 40 * time.Millisecond,
			RequestID: "req-4"},
	}
	for _, a := range calls {
		require.NoError(t, s.AttemptInsert(ctx, a))
	}
	// Replays of recorded attempts (the spool after an outage) change nothing.
	require.NoError(t, s.AttemptInsert(ctx, calls[0]))
	require.NoError(t, s.AttemptInsert(ctx, calls[2]))

	got, err := s.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, 4, got.Attempts)

	attempts, err := s.AttemptsOfRun(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, calls, attempts, "in attempt order, every field kept")

	none, err := s.AttemptsOfRun(ctx, run.ID+1000)
	require.NoError(t, err)
	require.Empty(t, none)
}

func TestAttemptInsertConcurrentReplays(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	run := claim(t, s, "web-nightly", "ins-6pb6lrmy", slot)

	a := history.Attempt{RunID: run.ID, Attempt: 1, Action: "CreateImage", StartedAt: slot, RequestID: "req-1"}
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.AttemptInsert(ctx, a)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	got, err := s.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, 1, got.Attempts)
}

func TestAttemptInsertRefusals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	run := claim(t, s, "web-nightly", "ins-6pb6lrmy", slot)

	for name, a := range map[string]history.Attempt{
		"attempt 0":     {RunID: run.ID, Attempt: 0, Action: "CreateImage", StartedAt: slot},
		"no action":     {RunID: run.ID, Attempt: 1, StartedAt: slot},
		"no start time": {RunID: run.ID, Attempt: 1, Action: "CreateImage"},
	} {
		require.ErrorIs(t, s.AttemptInsert(ctx, a), history.ErrInvalid, name)
	}
	require.ErrorIs(t, s.AttemptInsert(ctx, history.Attempt{RunID: run.ID + 1000, Attempt: 1, Action: "CreateImage", StartedAt: slot}),
		history.ErrNotFound)
	require.ErrorIs(t, s.AttemptInsert(ctx, history.Attempt{DeletionID: 1000, Attempt: 1, Action: "DeleteImages", StartedAt: slot}),
		history.ErrNotFound)

	// A call made for no run or deletion is recorded too.
	require.NoError(t, s.AttemptInsert(ctx, history.Attempt{Attempt: 1, Action: "DescribeImageQuota", StartedAt: slot, RequestID: "req-q"}))
	var n int
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT count(*) FROM image_attempts WHERE run_id IS NULL AND deletion_id IS NULL`).Scan(&n))
	require.Equal(t, 1, n)
}

// TestAdoptionKeepsTheAcceptedRequestID: a run adopted by name (RunRequested without a RequestId)
// takes the RequestId of its accepted CreateImage attempt, whether the attempt reached the
// database before the adoption or after it (a spool replayed later); failed calls and pending
// runs are not taken for accepted ones, and a RequestId already on the run stays.
func TestAdoptionKeepsTheAcceptedRequestID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	requestID := func(id int64) string {
		r, err := s.RunGet(ctx, id)
		require.NoError(t, err)
		return r.RequestID
	}

	// The accepted attempt is recorded first, then the run is adopted by name.
	before := claim(t, s, "web-nightly", "ins-aaaaaaaa", slot)
	require.NoError(t, s.AttemptInsert(ctx, history.Attempt{RunID: before.ID, Attempt: 1, Action: "CreateImage",
		StartedAt: slot, RequestID: "req-throttled", ErrorCode: "RequestLimitExceeded"}))
	require.NoError(t, s.AttemptInsert(ctx, history.Attempt{RunID: before.ID, Attempt: 2, Action: "CreateImage",
		StartedAt: slot, RequestID: "req-accepted"}))
	require.NoError(t, s.AttemptInsert(ctx, history.Attempt{RunID: before.ID, Attempt: 3, Action: "DescribeImages",
		StartedAt: slot, RequestID: "req-lookup"}))
	require.Empty(t, requestID(before.ID), "a pending run gets no RequestId from its attempts")
	require.NoError(t, s.RunRequested(ctx, before.ID, "img-aaaaaaaa", ""))
	require.Equal(t, "req-accepted", requestID(before.ID))
	require.NoError(t, s.RunRequested(ctx, before.ID, "img-aaaaaaaa", ""), "an adoption replayed changes nothing")
	require.Equal(t, "req-accepted", requestID(before.ID))

	// The run is adopted first; the accepted attempt arrives later.
	after := claim(t, s, "web-nightly", "ins-bbbbbbbb", slot)
	require.NoError(t, s.RunRequested(ctx, after.ID, "img-bbbbbbbb", ""))
	require.Empty(t, requestID(after.ID))
	require.NoError(t, s.AttemptInsert(ctx, history.Attempt{RunID: after.ID, Attempt: 1, Action: "CreateImage",
		StartedAt: slot, RequestID: "req-timeout", ErrorCode: "InternalError"}))
	require.Empty(t, requestID(after.ID), "a failed call is not the accepted one")
	require.NoError(t, s.AttemptInsert(ctx, history.Attempt{RunID: after.ID, Attempt: 2, Action: "CreateImage",
		StartedAt: slot, RequestID: "req-late"}))
	require.Equal(t, "req-late", requestID(after.ID))

	// A run that has its RequestId keeps it.
	sent := claim(t, s, "web-nightly", "ins-cccccccc", slot)
	require.NoError(t, s.RunRequested(ctx, sent.ID, "img-cccccccc", "req-own"))
	require.NoError(t, s.AttemptInsert(ctx, history.Attempt{RunID: sent.ID, Attempt: 1, Action: "CreateImage",
		StartedAt: slot, RequestID: "req-other"}))
	require.NoError(t, s.RunRequested(ctx, sent.ID, "img-cccccccc", ""))
	require.Equal(t, "req-own", requestID(sent.ID))
}
