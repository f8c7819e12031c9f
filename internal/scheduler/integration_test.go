package scheduler

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
)

// stack is the real thing end to end: the simulator over HTTP with signatures, the CVM client
// on the SDK, PostgreSQL, and a Scheduler on the real clock.
type stack struct {
	sim   *cvmsim.Server
	store *history.Store
	s     *Scheduler
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
	s, err := New(Options{Config: cfg, CVM: client, History: store, Logger: zerolog.Nop(), DaemonID: "integration"})
	require.NoError(t, err)
	require.NoError(t, s.Start(ctx))
	t.Cleanup(s.Stop)
	return &stack{sim: sim, store: store, s: s}
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

	names := map[string]bool{}
	for _, o := range out {
		if o.InstanceID == missing {
			require.Equal(t, history.StatusFailed, o.Status)
			require.Equal(t, "InvalidInstanceId.NotFound", o.ErrorCode)
			require.Equal(t, 1, o.Attempts, "permanent errors are not retried")
			continue
		}
		require.Equal(t, history.StatusRequested, o.Status, "%+v", o)
		require.LessOrEqual(t, len(o.ImageName), 60)
		require.False(t, names[o.ImageName], "name %s used twice", o.ImageName)
		names[o.ImageName] = true
	}
	require.Len(t, names, 40)

	// At the simulator: paced, never rejected, booleans exactly when set.
	require.LessOrEqual(t, st.sim.MaxInAnySecond(cvmsim.ActionCreateImage), 10)
	accepted := map[string]bool{}
	var first, last time.Time
	for _, c := range st.sim.Calls() {
		require.False(t, strings.HasPrefix(c.Code, "RequestLimitExceeded"), "rejected call %+v", c)
		if c.Action != cvmsim.ActionCreateImage {
			continue
		}
		require.Equal(t, "true", c.Params["ForcePoweroff"])
		require.NotContains(t, c.Params, "Sysprep")
		require.NotContains(t, c.Params, "Reboot")
		if c.Code == "" {
			accepted[c.RequestID] = true
		}
		if first.IsZero() {
			first = c.At
		}
		last = c.At
	}
	require.Len(t, accepted, 40)
	t.Logf("41 CreateImage calls in %s: %.2f calls/s", last.Sub(first), 40/last.Sub(first).Seconds())

	// In PostgreSQL: every accepted RequestId is an attempt and is on its run.
	rows, err := st.store.Pool().Query(ctx, `SELECT a.request_id, r.request_id, r.status
FROM image_attempts a JOIN image_runs r ON r.id = a.run_id
WHERE a.action = 'CreateImage' AND a.error_code IS NULL`)
	require.NoError(t, err)
	recorded := map[string]bool{}
	for rows.Next() {
		var attemptReq, runReq, status string
		require.NoError(t, rows.Scan(&attemptReq, &runReq, &status))
		require.Equal(t, attemptReq, runReq)
		require.Equal(t, "requested", status)
		recorded[attemptReq] = true
	}
	require.NoError(t, rows.Err())
	require.Equal(t, accepted, recorded)

	var code string
	var attempts int
	require.NoError(t, st.store.Pool().QueryRow(ctx,
		`SELECT error_code, attempts FROM image_runs WHERE instance_id = $1`, missing).Scan(&code, &attempts))
	require.Equal(t, "InvalidInstanceId.NotFound", code)
	require.Equal(t, 1, attempts)
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
