package restore

import (
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// Stopping the tester (shutdown, lost leadership) in the middle of a check ends the test
// Interrupted and still terminates its instance.
func TestRestoreStopMidCheck(t *testing.T) {
	t.Parallel()
	opts := lifecycle
	opts.CommandResult = func(_, _ string) cvmsim.CommandOutcome {
		return cvmsim.CommandOutcome{Status: cvmsim.TaskSuccess, After: 4 * time.Minute}
	}
	e := newEnv(t, 1, opts)
	e.image("ins-aaaaaaaa", t0.Add(-24*time.Hour))
	tester := e.tester()
	swept := make(chan struct{})
	tester.afterSweep = func(SweepResult, error) { close(swept) }
	require.NoError(t, tester.Start(e.ctx))
	<-swept
	require.NoError(t, e.clk.BlockUntilContext(e.ctx, 1))
	e.clk.Advance(time.Date(2026, 11, 15, 6, 0, 0, 0, time.UTC).Sub(e.clk.Now()))
	var row history.RestoreTest
	for {
		rows, err := e.store.RestoresOf(e.ctx, "web-weekly", 1)
		require.NoError(t, err)
		if len(rows) == 1 && rows[0].Status == history.RestoreChecking {
			row = rows[0]
			break
		}
		require.NoError(t, e.clk.BlockUntilContext(e.ctx, 1))
		e.clk.Advance(poll)
	}
	require.Equal(t, []string{row.LaunchedInstanceID}, e.running())
	tester.Stop()

	row = e.row(row.ID)
	require.Equal(t, history.RestoreFailed, row.Status)
	require.Equal(t, CodeInterrupted, row.ErrorCode)
	require.NotNil(t, row.TerminatedAt)
	require.Empty(t, e.running(), "nothing of imager's is left running")
}

// At every pass the leader terminates what no test of its own runs: a finished test whose
// termination failed, and an unfinished test past keep_for (failed Timeout). An unfinished test
// within keep_for may be another live process's: it is left alone.
func TestRestoreReap(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1, cvmsim.Options{})
	e.image("ins-aaaaaaaa", t0.Add(-24*time.Hour))
	e.image("ins-bbbbbbbb", t0.Add(-24*time.Hour))
	e.image("ins-cccccccc", t0.Add(-24*time.Hour))
	rt := e.cfg.RestoreTest("web-weekly")
	launch := func(instance string, at time.Time) (history.RestoreTest, string) {
		token := ClientToken(rt.Name, at, instance)
		row, _, err := e.store.RestoreStart(e.ctx, history.RestoreStartParams{Test: rt.Name, Slot: at, Account: "default",
			Policy: rt.Policy, InstanceID: instance, Region: guangzhou, Zone: rt.Launch.Zone, ImageID: e.images[instance][0],
			ClientToken: token, KeepFor: rt.KeepFor, StartedAt: at})
		require.NoError(t, err)
		out, err := e.cvm.RunInstances(e.ctx, guangzhou, cvm.RunInstancesInput{ImageID: e.images[instance][0], Zone: rt.Launch.Zone,
			ClientToken: token, Tags: []cvm.Tag{{Key: TagTest, Value: rt.Name}, {Key: TagToken, Value: token}}})
		require.NoError(t, err)
		require.NoError(t, e.store.RestoreLaunched(e.ctx, row.ID, out.InstanceIDs[0], at))
		return row, out.InstanceIDs[0]
	}
	stale, insStale := launch("ins-aaaaaaaa", t0.Add(-31*time.Minute))
	live, insLive := launch("ins-bbbbbbbb", t0.Add(-5*time.Minute))
	done, insDone := launch("ins-cccccccc", t0.Add(-10*time.Minute))
	_, err := e.store.RestoreFinish(e.ctx, done.ID, history.RestoreOutcome{ErrorCode: CodeCheckFailed, At: t0.Add(-2 * time.Minute)})
	require.NoError(t, err)

	e.rt.reap(e.ctx)
	require.Equal(t, []string{insLive}, e.running())
	require.Equal(t, CodeTimeout, e.row(stale.ID).ErrorCode)
	require.NotNil(t, e.row(stale.ID).TerminatedAt)
	require.NotNil(t, e.row(done.ID).TerminatedAt)
	require.Equal(t, history.RestoreLaunching, e.row(live.ID).Status)
	_, _ = insStale, insDone

	// Once past its keep_for, the live one too.
	e.clk.Advance(26 * time.Minute)
	e.rt.reap(e.ctx)
	require.Empty(t, e.running())
	require.Equal(t, CodeTimeout, e.row(live.ID).ErrorCode)
}

// With region: the test launches the latest available copy there, in its zone.
func TestRestoreCopy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1, lifecycle)
	cfg, err := policy.LoadBytes("policies.yaml", []byte(`version: 1
policies:
  - name: web-nightly
    region: ap-guangzhou
    schedule: "0 2 * * *"
    instances: [ins-aaaaaaaa]
    copy_to: [{region: ap-singapore}]
restore_tests:
  - name: web-weekly
    policy: web-nightly
    region: ap-singapore
    schedule: "@weekly"
    launch: {zone: ap-singapore-1}
    check: {command: "true"}
`))
	require.NoError(t, err)
	e.cfg = cfg
	e.image("ins-aaaaaaaa", t0.Add(-24*time.Hour))
	runs, err := e.store.RunsAtSlot(e.ctx, "web-nightly", t0.Add(-24*time.Hour), []string{"ins-aaaaaaaa"})
	require.NoError(t, err)
	e.sim.AddImage(cvmsim.Image{ID: "img-sgcopy01", Name: "copy", Region: "ap-singapore"})
	copies, _, err := e.store.CopyRequested(e.ctx, runs[0].ID, []string{"ap-singapore"}, t0.Add(-23*time.Hour))
	require.NoError(t, err)
	require.NoError(t, e.store.CopyAnswered(e.ctx, copies[0].ID, "img-sgcopy01", "req-sync"))
	require.NoError(t, e.store.CopyAvailable(e.ctx, copies[0].ID, "", t0.Add(-22*time.Hour)))

	res := e.runNow(e.rt)
	require.True(t, res.Passed(), "%+v", res)
	require.Equal(t, "img-sgcopy01", res.ImageID)
	require.Equal(t, "ap-singapore", res.Region)
	l := e.sim.LaunchedInstances()
	require.Len(t, l, 1)
	require.Equal(t, "ap-singapore", l[0].Region)
	require.Equal(t, "ap-singapore-1", l[0].Zone)
	require.Equal(t, copies[0].ID, e.row(res.ID).CopyID)
	require.Empty(t, e.running())
}

// A tester whose leadership term is over records nothing and launches nothing.
func TestRestoreFenced(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1, lifecycle)
	e.image("ins-aaaaaaaa", t0.Add(-24*time.Hour))
	demoted := 0
	tester := New(Options{History: e.store.WithTerm(42), Account: policy.DefaultAccount, CVM: e.cvm, TAT: e.tat,
		Config: func() *policy.Config { return e.cfg }, Clock: e.clk, Logger: zerolog.Nop(), PollInterval: poll,
		OnFenced: func() { demoted++ }})
	_, err := tester.RunNow(e.ctx, "web-weekly")
	require.ErrorIs(t, err, history.ErrFenced)
	require.Empty(t, e.sim.LaunchedInstances())
	require.Equal(t, 1, demoted, "OnFenced is told")

	_, err = tester.RunNow(e.ctx, "nope")
	require.ErrorIs(t, err, ErrUnknownTest)
	other := New(Options{History: e.store, Account: "other", CVM: e.cvm, TAT: e.tat,
		Config: func() *policy.Config { return e.cfg }, Clock: e.clk, Logger: zerolog.Nop()})
	_, err = other.RunNow(e.ctx, "web-weekly")
	require.ErrorIs(t, err, ErrOtherAccount)
}
