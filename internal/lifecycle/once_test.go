package lifecycle

import (
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/scheduler"
)

// oncePolicyYAML is a policy of four instances, fired by RunOnce.
const oncePolicyYAML = `version: 1
policies:
  - name: fleet
    schedule: "@daily"
    region: ap-guangzhou
    instances: [ins-qt000001, ins-qt000002, ins-qt000003, ins-qt000004]
`

var quotaInstances = []string{"ins-qt000001", "ins-qt000002", "ins-qt000003", "ins-qt000004"}

// onceStack is a real scheduler (real clock) against a simulator holding the four instances.
type onceStack struct {
	*env
	sched *scheduler.Scheduler
}

func newOnceStack(t *testing.T) *onceStack {
	t.Helper()
	e := newEnv(t, true, cvmsim.Options{})
	for _, id := range quotaInstances {
		e.sim.AddInstance(cvmsim.Instance{ID: id, Region: region})
	}
	cfg, err := policy.LoadBytes("once.yaml", []byte(oncePolicyYAML))
	require.NoError(t, err)
	s, err := scheduler.New(scheduler.Options{
		Config: cfg, CVM: e.client, History: e.store, Logger: zerolog.New(e.logs), DaemonID: "once-test",
		DisableCron: true,
	})
	require.NoError(t, err)
	require.NoError(t, s.Start(e.ctx))
	t.Cleanup(s.Stop)
	return &onceStack{env: e, sched: s}
}

// TestOnceFlowTracksToAvailable is `imager once` end to end on the real clock: RunOnce sends,
// then WaitTerminal returns when the tracker has seen every image NORMAL.
func TestOnceFlowTracksToAvailable(t *testing.T) {
	t.Parallel()
	q := newOnceStack(t)
	q.sim.SetImageReadyAfter(-1)
	tr := q.newTracker(func(o *TrackerOptions) {
		o.PollInterval = 20 * time.Millisecond
		o.Pace = q.sched.DescribePace()
		o.Config = q.sched.Config
	})
	tr.start()

	out, err := q.sched.RunOnce(q.ctx, "fleet", quotaInstances[1:3])
	require.NoError(t, err)
	ids := make([]int64, 0, len(out))
	for _, o := range out {
		require.Equal(t, history.StatusRequested, o.Status)
		ids = append(ids, o.RunID)
	}
	// The tracker follows the runs; no image is finished until the test says so.
	for tr.next().res.runs != 2 {
	}
	for _, id := range ids {
		require.Equal(t, history.StatusRequested, q.run(id).Status)
	}
	q.sim.CompleteAll()
	runs, err := tr.WaitTerminal(q.ctx, ids)
	require.NoError(t, err)
	require.Len(t, runs, 2)
	for _, id := range ids {
		require.Equal(t, history.StatusAvailable, runs[id].Status)
		require.Equal(t, history.StatusAvailable, q.run(id).Status)
	}
	require.Len(t, tr.avail.snapshot(), 2)
}
