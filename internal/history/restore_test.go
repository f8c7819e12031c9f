package history_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

// restoreEvents returns the restore events of the outbox, oldest first, with their payloads.
func restoreEvents(t *testing.T, s *history.Store) []map[string]any {
	t.Helper()
	rows, err := s.Pool().Query(context.Background(), `SELECT payload FROM notifications
WHERE event LIKE 'restore_%' ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	var out []map[string]any
	for rows.Next() {
		var raw []byte
		require.NoError(t, rows.Scan(&raw))
		var m map[string]any
		require.NoError(t, json.Unmarshal(raw, &m))
		out = append(out, m)
	}
	require.NoError(t, rows.Err())
	return out
}

// syncWeb loads policy web (daily) at now, so the coverage view lists its instances.
func syncWeb(t *testing.T, s *history.Store, now time.Time) {
	t.Helper()
	web := history.PolicyRow{Name: "web", Schedule: "0 3 * * *", Timezone: "UTC", Interval: 24 * time.Hour,
		Enabled: true, SourceFile: "a.yaml", SourceLine: 4, LoadedAt: now}
	_, err := s.PoliciesSync(context.Background(), []history.PolicyRow{web}, now)
	require.NoError(t, err)
}

func startParams(test, instance string, r history.Run, at time.Time) history.RestoreStartParams {
	return history.RestoreStartParams{Test: test, Slot: at, Account: "default", Policy: r.Policy, InstanceID: instance,
		Region: r.Region, Zone: r.Region + "-3", RunID: r.ID, ImageID: r.ImageID,
		ClientToken: "tok-" + test + "-" + instance + "-" + at.Format("150405"), KeepFor: 30 * time.Minute, StartedAt: at}
}

func candidateIDs(cs []history.RestoreCandidate) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.InstanceID + "/" + c.ImageID
	}
	return out
}

func TestRestoreLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	syncWeb(t, s, now)
	const insA, insB = "ins-aaaaaaaa", "ins-bbbbbbbb"
	available(t, s, "web", insA, now.Add(-48*time.Hour), "img-a0000000")
	a1 := available(t, s, "web", insA, now.Add(-24*time.Hour), "img-a1000000")
	b0 := available(t, s, "web", insB, now.Add(-24*time.Hour), "img-b0000000")
	b1 := claim(t, s, "web", insB, now.Add(-time.Hour)) // in progress: b0 stays the latest available

	// Never tested: by instance id; the latest available image of each.
	cs, err := s.RestoreCandidates(ctx, "web-weekly", "web", "")
	require.NoError(t, err)
	require.Equal(t, []string{insA + "/img-a1000000", insB + "/img-b0000000"}, candidateIDs(cs))
	require.Equal(t, a1.ID, cs[0].RunID)
	require.Nil(t, cs[0].LastTestedAt)
	_ = b1

	// Start: the row is launching; starting the same (test, slot, instance) again returns it.
	at := now.Add(-30 * time.Minute)
	p := startParams("web-weekly", insA, a1, at)
	r, created, err := s.RestoreStart(ctx, p)
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, history.RestoreLaunching, r.Status)
	require.Equal(t, p.ClientToken, r.ClientToken)
	require.Equal(t, 30*time.Minute, r.KeepFor)
	again, created, err := s.RestoreStart(ctx, p)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, r, again)

	// Tested A goes last in turn.
	cs, err = s.RestoreCandidates(ctx, "web-weekly", "web", "")
	require.NoError(t, err)
	require.Equal(t, []string{insB + "/img-b0000000", insA + "/img-a1000000"}, candidateIDs(cs))
	require.Equal(t, at, *cs[1].LastTestedAt)
	cs, err = s.RestoreCandidates(ctx, "other-test", "web", "")
	require.NoError(t, err)
	require.Equal(t, insA, cs[0].InstanceID, "turns are per test")

	// Launched, checking, failed: restore_failed in the same transaction.
	require.NoError(t, s.RestoreLaunched(ctx, r.ID, "ins-launched1", at.Add(time.Second)))
	require.NoError(t, s.RestoreLaunched(ctx, r.ID, "ins-launched1", at.Add(2*time.Second)), "the same answer again")
	require.ErrorIs(t, s.RestoreLaunched(ctx, r.ID, "ins-other000", at), history.ErrConflict)
	require.NoError(t, s.RestoreCheckStarted(ctx, r.ID, "inv-1", "invt-1"))
	open, err := s.RestoresOpen(ctx, "default")
	require.NoError(t, err)
	require.Len(t, open, 1)
	require.Equal(t, history.RestoreChecking, open[0].Status)
	require.Equal(t, "ins-launched1", open[0].LaunchedInstanceID)

	exit := 3
	fin, err := s.RestoreFinish(ctx, r.ID, history.RestoreOutcome{ErrorCode: "CheckFailed", ErrorMessage: "exit 3",
		ExitCode: &exit, Output: "degraded\n", At: at.Add(5 * time.Minute)})
	require.NoError(t, err)
	require.Equal(t, history.RestoreFailed, fin.Status)
	require.Equal(t, 3, *fin.ExitCode)
	require.Equal(t, "degraded\n", fin.Output)
	require.Equal(t, "invt-1", fin.TaskID)
	again, err = s.RestoreFinish(ctx, r.ID, history.RestoreOutcome{Passed: true, At: at.Add(6 * time.Minute)})
	require.NoError(t, err)
	require.Equal(t, history.RestoreFailed, again.Status, "a finished test keeps its outcome")
	evs := restoreEvents(t, s)
	require.Len(t, evs, 1)
	require.Equal(t, "restore_failed", evs[0]["event"])
	require.Equal(t, insA, evs[0]["instance_id"])
	require.Equal(t, "web-weekly", evs[0]["test"])
	require.Equal(t, "ins-launched1", evs[0]["launched_instance_id"])
	require.Equal(t, "CheckFailed", evs[0]["error_code"])
	require.EqualValues(t, 3, evs[0]["exit_code"])
	require.Equal(t, "img-a1000000", evs[0]["image_id"])

	// Finished but not terminated: still open (the sweep terminates it); terminated: closed.
	open, err = s.RestoresOpen(ctx, "")
	require.NoError(t, err)
	require.Len(t, open, 1)
	require.NoError(t, s.RestoreTerminated(ctx, r.ID, at.Add(7*time.Minute)))
	require.NoError(t, s.RestoreTerminated(ctx, r.ID, at.Add(9*time.Minute)))
	got, err := s.RestoreGet(ctx, r.ID)
	require.NoError(t, err)
	require.Equal(t, at.Add(7*time.Minute), *got.TerminatedAt, "the first termination is kept")
	open, err = s.RestoresOpen(ctx, "")
	require.NoError(t, err)
	require.Empty(t, open)

	// A refused launch (never launched) is not open once failed.
	r2, _, err := s.RestoreStart(ctx, startParams("web-weekly", insB, b0, at))
	require.NoError(t, err)
	_, err = s.RestoreFinish(ctx, r2.ID, history.RestoreOutcome{ErrorCode: "LimitExceeded.InstanceQuota", At: at.Add(time.Minute)})
	require.NoError(t, err)
	open, err = s.RestoresOpen(ctx, "")
	require.NoError(t, err)
	require.Empty(t, open)

	// The next test of A passes: restore_recovered (the previous one failed); one more pass: nothing.
	next := now.Add(-10 * time.Minute)
	r3, _, err := s.RestoreStart(ctx, startParams("web-weekly", insA, a1, next))
	require.NoError(t, err)
	require.NoError(t, s.RestoreLaunched(ctx, r3.ID, "ins-launched3", next))
	zero := 0
	_, err = s.RestoreFinish(ctx, r3.ID, history.RestoreOutcome{Passed: true, ExitCode: &zero, At: next.Add(time.Minute)})
	require.NoError(t, err)
	r4, _, err := s.RestoreStart(ctx, startParams("web-weekly", insA, a1, next.Add(time.Minute)))
	require.NoError(t, err)
	_, err = s.RestoreFinish(ctx, r4.ID, history.RestoreOutcome{Passed: true, At: next.Add(2 * time.Minute)})
	require.NoError(t, err)
	evs = restoreEvents(t, s)
	require.Len(t, evs, 3)
	require.Equal(t, []any{"restore_failed", "restore_failed", "restore_recovered"}, []any{evs[0]["event"], evs[1]["event"], evs[2]["event"]})
	require.Equal(t, insA, evs[2]["instance_id"])
	require.Equal(t, "failed", evs[2]["previous_status"])

	byToken, err := s.RestoreByToken(ctx, r3.ClientToken)
	require.NoError(t, err)
	require.Equal(t, r3.ID, byToken.ID)
	_, err = s.RestoreByToken(ctx, "nope")
	require.ErrorIs(t, err, history.ErrNotFound)
	list, err := s.RestoresOf(ctx, "web-weekly", 2)
	require.NoError(t, err)
	require.Equal(t, []int64{r4.ID, r3.ID}, []int64{list[0].ID, list[1].ID})

	// Refused input.
	_, _, err = s.RestoreStart(ctx, history.RestoreStartParams{Test: "x"})
	require.ErrorIs(t, err, history.ErrInvalid)
	_, err = s.RestoreFinish(ctx, r4.ID, history.RestoreOutcome{At: now})
	require.ErrorIs(t, err, history.ErrInvalid, "a failure needs a code")
	require.ErrorIs(t, s.RestoreTerminated(ctx, 999999, now), history.ErrNotFound)
}

func TestRestoreCopyCandidates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	syncWeb(t, s, now)
	r0 := available(t, s, "web", "ins-aaaaaaaa", now.Add(-48*time.Hour), "img-a0000000")
	r1 := available(t, s, "web", "ins-aaaaaaaa", now.Add(-24*time.Hour), "img-a1000000")
	c0 := availableCopy(t, s, r0, singapore, "img-s0000000")
	available(t, s, "web", "ins-bbbbbbbb", now.Add(-24*time.Hour), "img-b0000000") // no copy: not a candidate there
	_ = r1                                                                         // not copied yet: the copy of r0 is the latest in Singapore

	cs, err := s.RestoreCandidates(ctx, "web-dr", "web", singapore)
	require.NoError(t, err)
	require.Equal(t, []string{"ins-aaaaaaaa/img-s0000000"}, candidateIDs(cs))
	require.Equal(t, c0.ID, cs[0].CopyID)
	require.Equal(t, r0.ID, cs[0].RunID)
}

func TestRestoreConfigsAndCoverage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	syncWeb(t, s, now)
	a := available(t, s, "web", "ins-aaaaaaaa", now.Add(-24*time.Hour), "img-a0000000")
	available(t, s, "web", "ins-bbbbbbbb", now.Add(-24*time.Hour), "img-b0000000")

	loaded := now.Add(-30 * 24 * time.Hour)
	require.NoError(t, s.RestoreConfigsSync(ctx, []history.RestoreConfig{
		{Name: "web-weekly", Policy: "web", Overdue: 28 * 24 * time.Hour},
		{Name: "old", Policy: "web", Overdue: time.Hour},
	}, loaded))
	require.NoError(t, s.RestoreConfigsSync(ctx, []history.RestoreConfig{{Name: "web-weekly", Policy: "web", Overdue: 28 * 24 * time.Hour}}, loaded))
	cfgs, err := s.RestoreConfigsList(ctx)
	require.NoError(t, err)
	require.Len(t, cfgs, 2)
	require.Equal(t, "old", cfgs[0].Name)
	require.Equal(t, loaded, *cfgs[0].RemovedAt)
	require.Nil(t, cfgs[1].RemovedAt)
	require.Equal(t, 28*24*time.Hour, cfgs[1].Overdue)

	// A passed test of A: A covered, B overdue (loaded 30 days ago, overdue after 28).
	r, _, err := s.RestoreStart(ctx, startParams("web-weekly", "ins-aaaaaaaa", a, now.Add(-time.Hour)))
	require.NoError(t, err)
	_, err = s.RestoreFinish(ctx, r.ID, history.RestoreOutcome{Passed: true, At: now.Add(-50 * time.Minute)})
	require.NoError(t, err)
	cov, err := s.RestoreCoverageList(ctx)
	require.NoError(t, err)
	require.Len(t, cov, 2, "the removed test is left out")
	require.Equal(t, "ins-aaaaaaaa", cov[0].InstanceID)
	require.Equal(t, r.ID, cov[0].LastPassedID)
	require.Equal(t, now.Add(-50*time.Minute), *cov[0].LastPassedAt)
	require.False(t, cov[0].Overdue)
	require.Equal(t, "ins-bbbbbbbb", cov[1].InstanceID)
	require.Nil(t, cov[1].LastPassedAt)
	require.True(t, cov[1].Overdue)

	// Loading the test again clears removed_at; a bad row is refused.
	require.NoError(t, s.RestoreConfigsSync(ctx, []history.RestoreConfig{{Name: "old", Policy: "web", Overdue: time.Hour}}, now))
	cfgs, err = s.RestoreConfigsList(ctx)
	require.NoError(t, err)
	require.Nil(t, cfgs[0].RemovedAt)
	require.Equal(t, now, *cfgs[1].RemovedAt)
	require.ErrorIs(t, s.RestoreConfigsSync(ctx, []history.RestoreConfig{{Name: "x", Policy: "web"}}, now), history.ErrInvalid)
}
