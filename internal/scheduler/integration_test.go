package scheduler

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
)

// stack is the real thing end to end: the simulator over HTTP with signatures, the CVM client
// on the SDK, PostgreSQL, and a Scheduler on the real clock. The CreateImage pace reports its
// grants (pace.Options.OnGrant) to grants.
type stack struct {
	sim    *cvmsim.Server
	store  *history.Store
	s      *Scheduler
	grants *grantLog
}

// grantLog collects the send times the CreateImage pace granted.
type grantLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (g *grantLog) add(at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.times = append(g.times, at)
}

// Grants returns the grant times so far.
func (g *grantLog) Grants() []time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.times)
}

func newStack(t *testing.T, ctx context.Context, policyYAML string, instances []string) *stack {
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

	cfg, err := policy.LoadBytes("integration.yaml", []byte(policyYAML))
	require.NoError(t, err)
	grants := &grantLog{}
	s, err := New(Options{Config: cfg, CVM: client, History: store, Logger: zerolog.Nop(), DaemonID: "integration",
		Pace: pace.Options{OnGrant: grants.add}, DescribePace: pace.New(clockwork.NewRealClock(), 1, pace.Options{})})
	require.NoError(t, err)
	require.NoError(t, s.Start(ctx))
	t.Cleanup(s.Stop)
	return &stack{sim: sim, store: store, s: s, grants: grants}
}

func TestIntegrationFortyInstancesAtTheLimit(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ids := make([]string, 40)
	for i := range ids {
		ids[i] = fmt.Sprintf("ins-it%06d", i)
	}
	const missing = "ins-gone0001" // not in the simulator: a permanent error
	yaml := fmt.Sprintf(`version: 1
api:
  create_image_rate: 10
  workers: 4
policies:
  - name: fleet-nightly-web
    schedule: "0 3 * * *"
    region: ap-guangzhou
    instances: [%s, %s]
    image:
      name: "{policy}-{instance}-{time}-night"
      force_poweroff: true
`, strings.Join(ids, ", "), missing)
	st := newStack(t, ctx, yaml, ids)

	out, err := st.s.RunOnce(ctx, "fleet-nightly-web", nil)
	require.NoError(t, err)
	require.Len(t, out, 41)

	// This runs on the real clock, where a busy machine can wake a worker late and send two
	// calls closer together than the pace granted them; the simulator then answers
	// RequestLimitExceeded and the run retries. So the test asserts what holds whatever the
	// timing: every slot accepted exactly once, every call recorded, the simulator's admitted
	// calls within its limit, and the pace's grants (on the clock it uses) within the rate. The
	// spacing of the sends is asserted on the fake clock by
	// TestFortyInstancesAtTheLimitAreSpacedOnTheClock.
	names := map[string]bool{}
	for _, o := range out {
		if o.InstanceID == missing {
			require.Equal(t, history.StatusFailed, o.Status)
			require.Equal(t, "InvalidInstanceId.NotFound", o.ErrorCode)
			continue
		}
		require.Equal(t, history.StatusRequested, o.Status, "%+v", o)
		require.LessOrEqual(t, len(o.ImageName), 60)
		require.False(t, names[o.ImageName], "name %s used twice", o.ImageName)
		names[o.ImageName] = true
	}
	require.Len(t, names, 40)

	// At the simulator: each instance accepted exactly once, the missing one answered
	// InvalidInstanceId.NotFound once and not retried; any other answer is a throttle, which is
	// retried. Booleans exactly when set.
	accepted := map[string]int{}    // instance → accepted calls
	answered := map[string]string{} // RequestId → error code of every CreateImage
	var admitted []time.Time
	var first, last time.Time
	throttled, notFound := 0, 0
	for _, c := range st.sim.Calls() {
		if c.Action != cvmsim.ActionCreateImage {
			continue
		}
		require.Equal(t, "true", c.Params["ForcePoweroff"])
		require.NotContains(t, c.Params, "Sysprep")
		require.NotContains(t, c.Params, "Reboot")
		require.False(t, c.Dropped)
		answered[c.RequestID] = c.Code
		switch {
		case c.Code == "":
			accepted[c.Params["InstanceId"].(string)]++
		case c.Code == "InvalidInstanceId.NotFound":
			require.Equal(t, missing, c.Params["InstanceId"])
			notFound++
		case strings.HasPrefix(c.Code, "RequestLimitExceeded"):
			throttled++
			continue
		default:
			t.Fatalf("unexpected answer %+v", c)
		}
		admitted = append(admitted, c.At)
		if first.IsZero() {
			first = c.At
		}
		last = c.At
	}
	require.Len(t, accepted, 40)
	for id, n := range accepted {
		require.Equal(t, 1, n, "%s accepted %d times", id, n)
	}
	require.Equal(t, 1, notFound, "permanent errors are not retried")
	require.LessOrEqual(t, cvmsim.MaxInWindow(admitted, time.Second), 10, "the simulator admits at most its limit")
	t.Logf("%d CreateImage calls (%d throttled) in %s: %.2f admitted calls/s",
		len(answered), throttled, last.Sub(first), float64(len(admitted)-1)/last.Sub(first).Seconds())

	// The pace granted every call, and its grants never put more than the rate in a second.
	grants := st.grants.Grants()
	require.Len(t, grants, len(answered), "one grant of the pace per CreateImage")
	require.LessOrEqual(t, pace.MaxInAnySecond(grants), 10)

	// In PostgreSQL: every call is an attempt with its RequestId and answer, and every accepted
	// RequestId is on its run.
	rows, err := st.store.Pool().Query(ctx, `SELECT a.request_id, COALESCE(a.error_code, ''), r.request_id, r.status
FROM image_attempts a JOIN image_runs r ON r.id = a.run_id
WHERE a.action = 'CreateImage'`)
	require.NoError(t, err)
	recorded := map[string]string{}
	for rows.Next() {
		var attemptReq, code, status string
		var runReq *string
		require.NoError(t, rows.Scan(&attemptReq, &code, &runReq, &status))
		if code == "" {
			require.NotNil(t, runReq)
			require.Equal(t, attemptReq, *runReq)
			require.Equal(t, "requested", status)
		}
		recorded[attemptReq] = code
	}
	require.NoError(t, rows.Err())
	require.Equal(t, answered, recorded)

	var code string
	var attempts int
	require.NoError(t, st.store.Pool().QueryRow(ctx,
		`SELECT error_code, attempts FROM image_runs WHERE instance_id = $1`, missing).Scan(&code, &attempts))
	require.Equal(t, "InvalidInstanceId.NotFound", code)
	require.Equal(t, 1+countCalls(st.sim.Calls(), missing, "RequestLimitExceeded"), attempts,
		"one attempt per call: the throttled ones, then the permanent error")
}

// countCalls counts the CreateImage calls for instance answered with a code starting with prefix.
func countCalls(calls []cvmsim.Call, instance, prefix string) int {
	n := 0
	for _, c := range calls {
		if c.Action == cvmsim.ActionCreateImage && c.Params["InstanceId"] == instance && strings.HasPrefix(c.Code, prefix) {
			n++
		}
	}
	return n
}

func TestIntegrationRetriesAreRecordedAsAttempts(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const inst = "ins-retry001"
	st := newStack(t, ctx, `version: 1
api:
  retry:
    transient: {initial: 10ms, max: 40ms, attempts: 3}
    busy: {initial: 20ms, max: 80ms, max_elapsed: 5s}
policies:
  - name: retried
    schedule: "@daily"
    region: ap-guangzhou
    instances: [ins-retry001]
`, []string{inst})
	st.sim.QueueErrors(cvmsim.ActionCreateImage, "InternalError", "MutexOperation.TaskRunning")

	out, err := st.s.RunOnce(ctx, "retried", nil)
	require.NoError(t, err)
	require.Equal(t, history.StatusRequested, out[0].Status)
	require.Equal(t, 3, out[0].Attempts)

	rows, err := st.store.Pool().Query(ctx, `SELECT attempt, action, COALESCE(error_code, ''), COALESCE(request_id, '')
FROM image_attempts WHERE run_id = $1 ORDER BY attempt`, out[0].RunID)
	require.NoError(t, err)
	var codes []string
	for rows.Next() {
		var n int
		var action, code, req string
		require.NoError(t, rows.Scan(&n, &action, &code, &req))
		require.Equal(t, len(codes)+1, n)
		require.Equal(t, "CreateImage", action)
		require.NotEmpty(t, req, "every answered call keeps its RequestId")
		codes = append(codes, code)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"InternalError", "MutexOperation.TaskRunning", ""}, codes)
}
