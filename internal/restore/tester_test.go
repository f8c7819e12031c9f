package restore

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/metrics"
	"github.com/imager-dev/imager/internal/policy"
)

var lifecycle = cvmsim.Options{LaunchReadyAfter: 40 * time.Second, AgentOnlineAfter: 25 * time.Second, TerminateAfter: 5 * time.Second}

func TestRestorePasses(t *testing.T) {
	t.Parallel()
	opts := lifecycle
	opts.CommandResult = func(_, content string) cvmsim.CommandOutcome {
		return cvmsim.CommandOutcome{Status: cvmsim.TaskSuccess, Output: "running\n", After: 30 * time.Second}
	}
	e := newEnv(t, 1, opts)
	e.image("ins-aaaaaaaa", t0.Add(-48*time.Hour))
	latest := e.image("ins-aaaaaaaa", t0.Add(-24*time.Hour))

	res := e.runNow(e.rt)
	require.True(t, res.Passed(), "%+v", res)
	require.Equal(t, "ins-aaaaaaaa", res.InstanceID)
	require.Equal(t, latest, res.ImageID, "the latest available image")
	require.True(t, res.Terminated)
	require.Equal(t, 0, *res.ExitCode)
	require.Equal(t, "running\n", res.Output)

	// Exactly one instance, from that image, pay-as-you-go, tagged, terminated.
	launches := e.sim.LaunchedInstances()
	require.Len(t, launches, 1)
	l := launches[0]
	require.Equal(t, res.LaunchedInstanceID, l.InstanceID)
	require.Equal(t, latest, l.ImageID)
	require.Equal(t, "ap-guangzhou-3", l.Zone)
	require.Equal(t, "S5.SMALL2", l.InstanceType)
	require.Equal(t, cvm.ChargePostpaidByHour, l.ChargeType)
	require.Equal(t, "vpc-xxxx", l.VpcID)
	require.Equal(t, "subnet-xxxx", l.SubnetID)
	require.Equal(t, []string{"sg-xxxx"}, l.SecurityGroupIDs)
	require.Equal(t, ClientToken("web-weekly", res.Slot, "ins-aaaaaaaa"), l.ClientToken)
	require.Equal(t, map[string]string{TagTest: "web-weekly", TagToken: l.ClientToken, policy.TagPolicy: "web-nightly",
		policy.TagInstance: "ins-aaaaaaaa", policy.TagSlot: policy.SlotTag(res.Slot)}, l.Tags)
	require.False(t, l.TerminatedAt.IsZero())
	require.Empty(t, e.running(), "nothing of imager's is left running")

	// The check ran once on it, as written, after its agent came online, and before the termination.
	tasks := e.sim.Tasks()
	require.Len(t, tasks, 1)
	require.Equal(t, l.InstanceID, tasks[0].InstanceID)
	require.Equal(t, "systemctl is-system-running --wait", tasks[0].Content)
	require.Equal(t, 5*time.Minute, tasks[0].Timeout)
	require.False(t, tasks[0].CreatedAt.Before(l.RunningAt.Add(25*time.Second)))
	require.True(t, tasks[0].FinishedAt.Before(l.TerminatedAt) || tasks[0].FinishedAt.Equal(l.TerminatedAt))

	// The row says so; nothing to notify.
	row := e.row(res.ID)
	require.Equal(t, history.RestorePassed, row.Status)
	require.Equal(t, l.InstanceID, row.LaunchedInstanceID)
	require.Equal(t, tasks[0].InvocationID, row.InvocationID)
	require.NotNil(t, row.CheckedAt)
	require.NotNil(t, row.TerminatedAt)
	require.Empty(t, e.events())

	// restore_coverage (after the configs are synced) and the metric's source.
	require.NoError(t, SyncConfigs(e.ctx, e.store, e.cfg, e.clk.Now()))
	cov, err := e.store.RestoreCoverageList(e.ctx)
	require.NoError(t, err)
	require.Len(t, cov, 1, "the only instance with runs")
	require.Equal(t, res.ID, cov[0].LastPassedID)
	last, err := metrics.HistoryOptions(e.store).LastRestoreTests(e.ctx)
	require.NoError(t, err)
	require.Equal(t, []metrics.LastRestoreTest{{Test: "web-weekly", Policy: "web-nightly", Instance: "ins-aaaaaaaa", At: *row.CheckedAt}},
		last, "imager_last_restore_test_timestamp_seconds")
	cfgs, err := e.store.RestoreConfigsList(e.ctx)
	require.NoError(t, err)
	require.Equal(t, 2*3*7*24*time.Hour, cfgs[0].Overdue, "three instances one a week, twice")

	// Its log: one line per step, JSON with each key once, durations in ms.
	require.Equal(t, 1, e.logs.Count(`"message":"restore test ended"`, `"status":"passed"`, `"elapsed_ms":`))
	require.Equal(t, 1, e.logs.Count(`"message":"restore instance terminated"`, `"launched_instance":"`+l.InstanceID+`"`))
	for _, line := range strings.Split(strings.TrimSpace(e.logs.String()), "\n") {
		requireKeysOnce(t, line)
	}

	// The same slot of the same instance again (a retry): already tested, nothing new is launched.
	cands, err := e.store.RestoreCandidates(e.ctx, "web-weekly", "web-nightly", "")
	require.NoError(t, err)
	again, err := e.rt.runOne(e.ctx, e.cfg, e.cfg.RestoreTest("web-weekly"), res.Slot, cands[0])
	require.NoError(t, err)
	require.Equal(t, res.ID, again.ID)
	require.Len(t, e.sim.LaunchedInstances(), 1)
}

func TestRestoreCheckFails(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		setup      func(e *env)
		code       string
		exit       *int
		checkCalls int
	}{
		"check exits non-zero": {
			setup: func(e *env) {
				e.sim.SetCommandResult(func(_, _ string) cvmsim.CommandOutcome {
					return cvmsim.CommandOutcome{Status: cvmsim.TaskFailed, ExitCode: 3, Output: "degraded\n", After: 20 * time.Second}
				})
			},
			code: CodeCheckFailed, exit: ptr(3), checkCalls: 1,
		},
		"check runs past its timeout": {
			setup: func(e *env) {
				e.sim.SetCommandResult(func(_, _ string) cvmsim.CommandOutcome {
					return cvmsim.CommandOutcome{Status: cvmsim.TaskSuccess, After: time.Hour}
				})
			},
			code: CodeCheckTimeout, checkCalls: 1,
		},
		"agent never online": {
			setup: func(*env) {}, // AgentOnlineAfter < 0 below
			code:  CodeAgentOffline,
		},
		"launch fails": {
			setup: func(e *env) { e.sim.FailNextLaunches(1) },
			code:  CodeLaunchFailed,
		},
		"launch refused": {
			setup: func(e *env) { e.sim.SetInstanceQuota(-1) },
			code:  "LimitExceeded.InstanceQuota",
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			opts := lifecycle
			if c.code == CodeAgentOffline {
				opts.AgentOnlineAfter = -1
			}
			if c.code == "LimitExceeded.InstanceQuota" {
				opts.InstanceQuota = 1
			}
			e := newEnv(t, 1, opts)
			e.image("ins-aaaaaaaa", t0.Add(-24*time.Hour))
			if c.code == "LimitExceeded.InstanceQuota" {
				e.sim.AddInstance(cvmsim.Instance{ID: "ins-occupied", Region: guangzhou, State: cvm.InstanceStateRunning})
			} else {
				c.setup(e)
			}
			res := e.runNow(e.rt)
			require.Equal(t, history.RestoreFailed, res.Status)
			require.Equal(t, c.code, res.ErrorCode, res.ErrorMessage)
			require.Equal(t, c.exit, res.ExitCode)
			require.Len(t, e.sim.Tasks(), c.checkCalls)
			require.Equal(t, []string{"restore_failed/ins-aaaaaaaa/" + c.code}, e.events(), "notified in the outbox")
			require.Empty(t, e.running(), "nothing of imager's is left running")
			if c.code == "LimitExceeded.InstanceQuota" {
				require.Empty(t, e.sim.LaunchedInstances())
				require.False(t, res.Terminated, "nothing to terminate")
				return
			}
			require.Len(t, e.sim.LaunchedInstances(), 1)
			require.True(t, res.Terminated)
			row := e.row(res.ID)
			require.LessOrEqual(t, row.TerminatedAt.Sub(*row.LaunchedAt), 30*time.Minute+poll, "within keep_for")
			if c.code == CodeCheckFailed {
				require.Equal(t, "degraded\n", row.Output)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// A RunInstances whose answer is lost is called again with the same ClientToken: one instance.
func TestRestoreRetriedLaunch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1, lifecycle)
	e.image("ins-aaaaaaaa", t0.Add(-24*time.Hour))
	e.sim.SetFaults(cvmsim.Faults{DropRate: 1, DropAfterExecute: true, Actions: []string{cvm.ActionRunInstances}})
	e.cvmOf = &dropOnce{CVM: e.cvm, sim: e.sim}
	rt := e.tester()

	res := e.runNow(rt)
	require.True(t, res.Passed(), "%+v", res)
	calls := e.calls(cvm.ActionRunInstances)
	require.Len(t, calls, 2, "called again after the lost answer")
	require.True(t, calls[0].Dropped)
	require.Equal(t, calls[0].Params["ClientToken"], calls[1].Params["ClientToken"])
	require.Len(t, e.sim.LaunchedInstances(), 1, "launched once")
	require.Equal(t, e.sim.LaunchedInstances()[0].InstanceID, res.LaunchedInstanceID)
	require.Empty(t, e.running())
}

// dropOnce clears the simulator's faults once the first RunInstances has returned.
type dropOnce struct {
	CVM
	sim  *cvmsim.Server
	once sync.Once
}

func (d *dropOnce) RunInstances(ctx context.Context, region string, in cvm.RunInstancesInput) (cvm.RunInstancesOutput, error) {
	out, err := d.CVM.RunInstances(ctx, region, in)
	d.once.Do(func() { d.sim.SetFaults(cvmsim.Faults{}) })
	return out, err
}

func TestRestoreSampleInTurn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2, lifecycle)
	for _, ins := range []string{"ins-cccccccc", "ins-aaaaaaaa", "ins-bbbbbbbb"} {
		e.image(ins, t0.Add(-24*time.Hour))
	}
	// RunNow tests the next one in turn; never tested first, by id.
	var order []string
	for range 4 {
		res := e.runNow(e.rt)
		require.True(t, res.Passed())
		order = append(order, res.InstanceID)
		e.clk.Advance(time.Second) // the next call is another slot
	}
	require.Equal(t, []string{"ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc", "ins-aaaaaaaa"}, order)

	// A slot tests sample (2) instances, the next two in turn, at once.
	cfg := e.cfg
	stop := make(chan struct{})
	wg := e.drive(stop)
	e.rt.runSlot(e.ctx, cfg, cfg.RestoreTest("web-weekly"), e.clk.Now().Truncate(time.Second))
	close(stop)
	wg.Wait()
	rows, err := e.store.RestoresOf(e.ctx, "web-weekly", 2)
	require.NoError(t, err)
	got := []string{rows[0].InstanceID, rows[1].InstanceID}
	require.ElementsMatch(t, []string{"ins-bbbbbbbb", "ins-cccccccc"}, got)
	require.Equal(t, rows[0].Slot, rows[1].Slot)
	require.Len(t, e.sim.LaunchedInstances(), 6)
	require.Empty(t, e.running())
}

// The sweep of a new leader: a row left checking with its instance running, a row whose launch
// answer was lost (found by its tag), a finished row whose termination failed, and an instance of
// another imager (an unknown token): the first three are terminated, the unfinished rows failed.
func TestRestoreSweep(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1, cvmsim.Options{})
	e.image("ins-aaaaaaaa", t0.Add(-24*time.Hour))
	e.image("ins-bbbbbbbb", t0.Add(-24*time.Hour))
	e.image("ins-cccccccc", t0.Add(-24*time.Hour))
	rt := e.cfg.RestoreTest("web-weekly")
	slot := t0.Add(-time.Hour)

	// launch records a row and launches its instance as a test would, and returns both.
	launch := func(instance, token string, record bool) (history.RestoreTest, string) {
		row, _, err := e.store.RestoreStart(e.ctx, history.RestoreStartParams{Test: rt.Name, Slot: slot, Account: "default",
			Policy: rt.Policy, InstanceID: instance, Region: guangzhou, Zone: rt.Launch.Zone, ImageID: e.images[instance][0],
			ClientToken: token, KeepFor: rt.KeepFor, StartedAt: slot})
		require.NoError(t, err)
		out, err := e.cvm.RunInstances(e.ctx, guangzhou, cvm.RunInstancesInput{ImageID: e.images[instance][0], Zone: rt.Launch.Zone,
			ClientToken: token, Tags: []cvm.Tag{{Key: TagTest, Value: rt.Name}, {Key: TagToken, Value: token}}})
		require.NoError(t, err)
		if record {
			require.NoError(t, e.store.RestoreLaunched(e.ctx, row.ID, out.InstanceIDs[0], slot))
		}
		return row, out.InstanceIDs[0]
	}
	checking, insChecking := launch("ins-aaaaaaaa", ClientToken(rt.Name, slot, "ins-aaaaaaaa"), true)
	require.NoError(t, e.store.RestoreCheckStarted(e.ctx, checking.ID, "inv-left", ""))
	lost, insLost := launch("ins-bbbbbbbb", ClientToken(rt.Name, slot, "ins-bbbbbbbb"), false)
	done, insDone := launch("ins-cccccccc", ClientToken(rt.Name, slot, "ins-cccccccc"), true)
	_, err := e.store.RestoreFinish(e.ctx, done.ID, history.RestoreOutcome{Passed: true, At: slot.Add(time.Minute)})
	require.NoError(t, err)
	foreign, err := e.cvm.RunInstances(e.ctx, guangzhou, cvm.RunInstancesInput{ImageID: e.images["ins-aaaaaaaa"][0],
		Zone: rt.Launch.Zone, ClientToken: "someone-else", Tags: []cvm.Tag{{Key: TagTest, Value: "x"}, {Key: TagToken, Value: "someone-else"}}})
	require.NoError(t, err)
	require.Len(t, e.running(), 4)

	// Start (a leadership gain) sweeps first.
	tester := e.tester()
	swept := make(chan SweepResult, 1)
	tester.afterSweep = func(res SweepResult, err error) {
		require.NoError(t, err)
		swept <- res
	}
	require.NoError(t, tester.Start(e.ctx))
	res := <-swept
	tester.Stop()

	require.ElementsMatch(t, []string{insChecking, insLost, insDone}, res.Terminated)
	require.ElementsMatch(t, []int64{checking.ID, lost.ID}, res.Failed)
	require.Equal(t, []string{foreign.InstanceIDs[0]}, res.Foreign)
	require.Equal(t, []string{foreign.InstanceIDs[0]}, e.running(), "only the other imager's instance runs")

	for _, id := range []int64{checking.ID, lost.ID} {
		row := e.row(id)
		require.Equal(t, history.RestoreFailed, row.Status)
		require.Equal(t, CodeInterrupted, row.ErrorCode)
		require.NotNil(t, row.TerminatedAt)
	}
	require.Equal(t, insLost, e.row(lost.ID).LaunchedInstanceID, "found by its tag")
	require.Equal(t, history.RestorePassed, e.row(done.ID).Status, "a finished row keeps its outcome")
	require.NotNil(t, e.row(done.ID).TerminatedAt)
	require.ElementsMatch(t, []string{"restore_failed/ins-aaaaaaaa/Interrupted", "restore_failed/ins-bbbbbbbb/Interrupted"}, e.events())

	// Sweeping again finds nothing more to do.
	again, err := e.tester().Sweep(e.ctx)
	require.NoError(t, err)
	require.Empty(t, again.Terminated)
	require.Empty(t, again.Failed)
}

// On its schedule: the tester started on Saturday tests at Sunday 06:00 (UTC, the policy's zone),
// syncs restore_test_configs, and leaves nothing running.
func TestRestoreSchedule(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1, lifecycle)
	e.image("ins-aaaaaaaa", t0.Add(-24*time.Hour))
	tester := e.tester()
	passes := make(chan struct{}, 1)
	tester.afterPass = func() {
		select {
		case passes <- struct{}{}:
		default:
		}
	}
	require.NoError(t, tester.Start(e.ctx))
	defer tester.Stop()
	<-passes
	cfgs, err := e.store.RestoreConfigsList(e.ctx)
	require.NoError(t, err)
	require.Len(t, cfgs, 1, "synced at the first pass")
	require.Empty(t, e.sim.LaunchedInstances(), "not before its slot")

	// Advance to the slot at once, then through the test a poll at a time.
	slot := time.Date(2026, 11, 15, 6, 0, 0, 0, time.UTC)
	require.NoError(t, e.clk.BlockUntilContext(e.ctx, 1))
	e.clk.Advance(slot.Sub(e.clk.Now()))
	for {
		rows, err := e.store.RestoresOf(e.ctx, "web-weekly", 1)
		require.NoError(t, err)
		if len(rows) == 1 && rows[0].TerminatedAt != nil {
			require.Equal(t, slot, rows[0].Slot)
			require.Equal(t, history.RestorePassed, rows[0].Status)
			break
		}
		require.NoError(t, e.clk.BlockUntilContext(e.ctx, 1))
		e.clk.Advance(poll)
	}
	require.Len(t, e.sim.LaunchedInstances(), 1)
	require.Empty(t, e.running())
}

// requireKeysOnce fails when a JSON log line repeats a key.
func requireKeysOnce(t *testing.T, line string) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	tok, err := dec.Token()
	require.NoError(t, err, line)
	require.Equal(t, json.Delim('{'), tok, line)
	seen := map[string]bool{}
	for dec.More() {
		k, err := dec.Token()
		require.NoError(t, err, line)
		key := k.(string)
		require.False(t, seen[key], "key %q twice in %s", key, line)
		seen[key] = true
		var v json.RawMessage
		require.NoError(t, dec.Decode(&v), line)
	}
}
