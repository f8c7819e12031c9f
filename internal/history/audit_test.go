package history_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

func TestAuditQueries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	now := slot.Add(72 * time.Hour)

	type outcome struct {
		policy, instance string
		slot             time.Time
		status           history.Status
		finished         time.Time
		code             string
	}
	fixture := []outcome{
		{"web-nightly", "ins-aaaaaaaa", slot, history.StatusAvailable, slot.Add(15 * time.Minute), ""},
		{"web-nightly", "ins-aaaaaaaa", slot.Add(24 * time.Hour), history.StatusAvailable, slot.Add(24*time.Hour + 20*time.Minute), ""},
		{"web-nightly", "ins-aaaaaaaa", slot.Add(48 * time.Hour), history.StatusFailed, now.Add(-23 * time.Hour), "CREATEFAILED"},
		{"db-hourly", "ins-bbbbbbbb", slot.Add(time.Hour), history.StatusAvailable, slot.Add(70 * time.Minute), ""},
		{"web-nightly", "ins-bbbbbbbb", slot, history.StatusAvailable, slot.Add(10 * time.Minute), ""},
		{"web-nightly", "ins-cccccccc", slot, history.StatusFailed, now.Add(-30 * time.Hour), "InvalidInstanceId.NotFound"},
		{"web-nightly", "ins-cccccccc", slot.Add(24 * time.Hour), history.StatusFailed, now.Add(-time.Hour), "Timeout"},
		{"web-nightly", "ins-dddddddd", slot, history.StatusRequested, time.Time{}, ""},
		{"web-nightly", "ins-eeeeeeee", slot, history.StatusAvailable, slot.Add(5 * time.Minute), ""},
	}
	ids := make([]int64, len(fixture))
	for i, o := range fixture {
		r := claim(t, s, o.policy, o.instance, o.slot)
		ids[i] = r.ID
		require.NoError(t, s.RunRequested(ctx, r.ID, "img-"+o.instance[4:], "req-"+o.slot.Format("0215")))
		switch o.status {
		case history.StatusAvailable:
			require.NoError(t, s.RunAvailable(ctx, r.ID, ptr[int64](20), "", o.finished))
		case history.StatusFailed:
			require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: r.ID, Status: o.status, ErrorCode: o.code, FinishedAt: o.finished}))
		}
	}

	last, err := s.LastAvailablePerInstance(ctx)
	require.NoError(t, err)
	require.Len(t, last, 3)
	require.Equal(t, ids[1], last[0].ID, "ins-aaaaaaaa: the newer of its images; a later failure does not count")
	require.Equal(t, ids[3], last[1].ID, "ins-bbbbbbbb: the most recent across policies")
	require.Equal(t, ids[8], last[2].ID, "ins-eeeeeeee: found past instances without an available image")
	require.Equal(t, history.StatusAvailable, last[0].Status)
	require.Equal(t, "img-aaaaaaaa", last[0].ImageID)

	failures, err := s.FailuresSince(ctx, now.Add(-24*time.Hour))
	require.NoError(t, err)
	require.Len(t, failures, 2)
	require.Equal(t, ids[6], failures[0].ID, "most recent first")
	require.Equal(t, "Timeout", failures[0].ErrorCode)
	require.Equal(t, ids[2], failures[1].ID)
	require.Equal(t, "CREATEFAILED", failures[1].ErrorCode)
}

func TestRunCountsSince(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	base := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	claim(t, s, "web", "ins-aaaaaaa1", base.Add(-48*time.Hour)) // too old
	claim(t, s, "web", "ins-aaaaaaa1", base)
	claim(t, s, "web", "ins-aaaaaaa2", base)
	claim(t, s, "db", "ins-aaaaaaa3", base)
	counts, err := s.RunCountsSince(ctx, base.Add(-24*time.Hour))
	require.NoError(t, err)
	require.Equal(t, []history.RunCount{
		{Policy: "db", Status: history.StatusPending, Count: 1},
		{Policy: "web", Status: history.StatusPending, Count: 2},
	}, counts)
}
