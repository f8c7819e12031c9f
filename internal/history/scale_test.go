package history_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

// TestFireOf50000Targets claims one fire of one policy over 50,000 instances (a broad tag
// selector) on PostgreSQL's default lock table: every slot row is written in the claim's one
// transaction, the fire is begun with its counts, and its verdict follows the runs' outcomes.
// Writing a run's effects takes no lock per row beyond the rows it writes, so the claim cannot
// run out of shared memory however many targets a fire has.
func TestFireOf50000Targets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	var locks string
	require.NoError(t, s.Pool().QueryRow(ctx, `SHOW max_locks_per_transaction`).Scan(&locks))
	require.Equal(t, "64", locks, "the test runs on the default lock table")
	_, err := s.PoliciesSync(ctx, []history.PolicyRow{{Name: "broad", Schedule: "0 3 * * *", Timezone: "UTC",
		Interval: 24 * time.Hour, Enabled: true, SourceFile: "p.yaml", SourceLine: 1, LoadedAt: slot}}, slot)
	require.NoError(t, err)

	const n = 50_000
	ps := make([]history.RunClaimParams, n)
	for i := range ps {
		ps[i] = history.RunClaimParams{Policy: "broad", InstanceID: fmt.Sprintf("ins-%08d", i), Region: "ap-guangzhou",
			ScheduledAt: slot, StartedAt: slot, ImageName: fmt.Sprintf("broad-%08d", i), DaemonID: "d", Status: history.StatusPending}
	}
	runs, claimed, err := s.RunsClaimFire(ctx, ps)
	require.NoError(t, err)
	require.Len(t, runs, n)
	for i := range runs {
		require.True(t, claimed[i])
		require.Equal(t, ps[i].InstanceID, runs[i].InstanceID)
		if i > 0 {
			require.Equal(t, runs[i-1].ID+1, runs[i].ID, "ids follow the targets' order without gaps")
		}
	}
	var fireRuns, unfinished, states, days int
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT runs, unfinished FROM notification_fires WHERE policy = 'broad' AND slot = $1`,
		slot).Scan(&fireRuns, &unfinished))
	require.Equal(t, n, fireRuns)
	require.Equal(t, n, unfinished)
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM coverage_state), (SELECT count(*) FROM coverage_days)`).
		Scan(&states, &days))
	require.Equal(t, n, states)
	require.Equal(t, n, days)

	// The outcomes arrive one by one; the first failure decides the fire, once.
	require.NoError(t, s.RunAvailable(ctx, runs[0].ID, nil, "img-00000000", slot.Add(time.Hour)))
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: runs[1].ID, Status: history.StatusFailed,
		ErrorCode: "InternalError", FinishedAt: slot.Add(time.Hour)}))
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: runs[2].ID, Status: history.StatusFailed,
		ErrorCode: "Timeout", FinishedAt: slot.Add(2 * time.Hour)}))
	var outcome, code string
	var available, failed int
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT f.outcome, f.available, f.failed, n.error_code FROM notification_fires f
		JOIN notifications n ON n.id = f.end_notification_id WHERE f.policy = 'broad'`).Scan(&outcome, &available, &failed, &code))
	require.Equal(t, "fail", outcome)
	require.Equal(t, 1, available)
	require.Equal(t, 2, failed, "an ended fire keeps counting")
	require.Equal(t, "InternalError", code)
	var verdicts int
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT count(*) FROM notifications WHERE event IN ('fire_failed', 'fire_succeeded')`).Scan(&verdicts))
	require.Equal(t, 1, verdicts)
}
