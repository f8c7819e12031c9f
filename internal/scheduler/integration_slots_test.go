package scheduler

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
)

// slotStack is the simulator, a real PostgreSQL and a Scheduler on a fake clock.
type slotStack struct {
	sim   *cvmsim.Server
	store *history.Store
	clk   *clockwork.FakeClock
	logs  *syncBuffer
	opts  Options
}

func newSlotStack(t *testing.T, ctx context.Context, now time.Time, policyYAML string, instances ...string) *slotStack {
	t.Helper()
	sim, client := simtest.Start(t, cvmsim.Options{Logger: zerolog.Nop()})
	for _, id := range instances {
		sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou"})
	}
	store, err := history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(store.Close)
	_, err = store.Migrate(ctx)
	require.NoError(t, err)
	cfg, err := policy.LoadBytes("slots.yaml", []byte(policyYAML))
	require.NoError(t, err)
	st := &slotStack{sim: sim, store: store, clk: clockwork.NewFakeClockAt(now), logs: &syncBuffer{}}
	st.opts = Options{Config: cfg, CVM: client, History: store, Clock: st.clk, Logger: zerolog.New(st.logs), DaemonID: "integration"}
	return st
}

func (st *slotStack) runs(t *testing.T, ctx context.Context) []history.Run {
	t.Helper()
	runs, err := st.store.RunsRecent(ctx, time.Time{}, 0)
	require.NoError(t, err)
	return runs
}

// TestIntegrationDownAcrossTwoSlots: the daemon was down across two minute-slots; at start the
// latest, still inside its window, runs and the other is recorded missed, in PostgreSQL.
func TestIntegrationDownAcrossTwoSlots(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	now := time.Date(2027, 3, 1, 12, 0, 30, 0, time.UTC)
	st := newSlotStack(t, ctx, now, `version: 1
policies:
  - name: minutely
    schedule: "* * * * *"
    region: ap-guangzhou
    instances: [ins-down0001]
`, "ins-down0001")
	require.Equal(t, time.Minute, st.opts.Config.Policies[0].StartWindow, "default: the shortest interval")
	// The last slot handled was 11:58; 11:59 and 12:00 passed while no scheduler ran.
	require.NoError(t, st.store.PolicySlotSet(ctx, "minutely", now.Add(-150*time.Second)))
	s, err := New(st.opts)
	require.NoError(t, err)
	require.NoError(t, s.Start(ctx))
	defer s.Stop()
	require.NoError(t, st.logs.waitFor(ctx, `"status":"requested"`))

	runs := st.runs(t, ctx)
	require.Len(t, runs, 2)
	require.Equal(t, now.Add(-30*time.Second), runs[0].ScheduledAt)
	require.Equal(t, history.StatusRequested, runs[0].Status)
	require.Equal(t, now.Add(-90*time.Second), runs[1].ScheduledAt)
	require.Equal(t, history.StatusMissed, runs[1].Status)
	require.Equal(t, CodeMissed, runs[1].ErrorCode)
	require.Equal(t, msgMissedNoLeader, runs[1].ErrorMessage)
	last, err := st.store.PolicySlots(ctx)
	require.NoError(t, err)
	require.Equal(t, now.Add(-30*time.Second), last["minutely"])
	creates := 0
	for _, c := range st.sim.Calls() {
		if c.Action == cvmsim.ActionCreateImage {
			creates++
		}
	}
	require.Equal(t, 1, creates)
}

// TestIntegrationFencedReplicaClaimsNothing: a scheduler whose term is no longer the lease's
// writes no row and sends nothing, and tells the leadership component.
func TestIntegrationFencedReplicaClaimsNothing(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	now := time.Date(2027, 3, 1, 12, 0, 30, 0, time.UTC)
	st := newSlotStack(t, ctx, now, `version: 1
policies:
  - name: fenced
    schedule: "@daily"
    region: ap-guangzhou
    instances: [ins-fenc0001]
`, "ins-fenc0001")
	_, err := st.store.Pool().Exec(ctx, `INSERT INTO leader_lease (name, term, daemon_id, host, pid, acquired_at, renewed_at, expires_at)
VALUES ('leader', 5, 'other', 'h', 1, now(), now(), now() + interval '1 minute')`)
	require.NoError(t, err)
	fenced := make(chan struct{})
	st.opts.History = st.store.WithTerm(4)
	st.opts.OnFenced = func() { close(fenced) }
	s, err := New(st.opts)
	require.NoError(t, err)
	require.NoError(t, s.Start(ctx))
	defer s.Stop()
	_, err = s.RunOnce(ctx, "fenced", nil)
	require.ErrorIs(t, err, history.ErrFenced)
	<-fenced
	require.Empty(t, st.runs(t, ctx))
	require.Empty(t, st.sim.Calls())
}
