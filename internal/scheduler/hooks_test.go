package scheduler

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/tat"
)

// hookStack is a Scheduler with hooks on the fake clock: the simulator (which runs TAT commands
// on the same clock) over HTTP, the real CVM and TAT clients, and PostgreSQL.
type hookStack struct {
	t        *testing.T
	ctx      context.Context
	clk      *clockwork.FakeClock
	sim      *cvmsim.Server
	store    *history.Store
	tat      *signalTAT
	s        *Scheduler
	outcomes chan Outcome
	frozen   chan time.Duration
}

// signalTAT is the TAT client that tells the test of every accepted RunCommand (its content).
type signalTAT struct {
	*tat.Client
	ran chan string
}

func (c *signalTAT) RunCommand(ctx context.Context, region string, in tat.RunCommandInput) (tat.RunCommandOutput, error) {
	out, err := c.Client.RunCommand(ctx, region, in)
	if err == nil {
		c.ran <- in.Content
	}
	return out, err
}

const (
	preCmd  = "fsfreeze --freeze /data"
	postCmd = "fsfreeze --unfreeze /data"
)

func hooksYAML(name, onFailure string, instances []string, preTimeout string) string {
	return fmt.Sprintf(`  - name: %s
    schedule: "0 3 * * *"
    region: ap-guangzhou
    concurrency: allow
    instances: [%s]
    hooks:
      pre:  {command: %q, timeout: %s}
      post: {command: %q, timeout: 30s}
      on_pre_failure: %s
      user: root
`, name, strings.Join(instances, ", "), preCmd, preTimeout, postCmd, onFailure)
}

// newHookStack loads the policies, prepares the database with prepare (nil: nothing) and starts
// a scheduler; the simulator's commands end as result says.
func newHookStack(t *testing.T, policies string, instances []string, result cvmsim.CommandResultFunc, prepare func(*history.Store)) *hookStack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a hang guard only
	t.Cleanup(cancel)
	clk := clockwork.NewFakeClockAt(time.Date(2027, 3, 1, 12, 0, 20, 0, time.UTC))
	sim := cvmsim.New(cvmsim.Options{Clock: clk, MaxClockSkew: -1, Logger: zerolog.Nop(), TaskStartAfter: time.Second,
		CommandResult: result})
	url, err := sim.Start()
	require.NoError(t, err)
	t.Cleanup(sim.Close)
	for _, id := range instances {
		sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou"})
	}
	client, err := cvm.New(cvm.Config{Endpoint: url, Credential: common.NewCredential(cvmsim.DefaultSecretID, cvmsim.DefaultSecretKey),
		Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(client.Close)

	store, err := history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(store.Close)
	_, err = store.Migrate(ctx)
	require.NoError(t, err)
	if prepare != nil {
		prepare(store)
	}
	cfg, err := policy.LoadBytes("hooks.yaml", []byte("version: 1\napi:\n  create_image_rate: 10\n  workers: 4\npolicies:\n"+policies))
	require.NoError(t, err)

	st := &hookStack{t: t, ctx: ctx, clk: clk, sim: sim, store: store, tat: &signalTAT{Client: tat.New(client), ran: make(chan string, 100)},
		outcomes: make(chan Outcome, 100), frozen: make(chan time.Duration, 100)}
	st.s, err = New(Options{Config: cfg, CVM: client, History: store, Clock: clk, Logger: testLogger(t), DaemonID: "hooks",
		TAT: st.tat, ShutdownGrace: 10 * time.Minute, HookPollInterval: 500 * time.Millisecond, DescribePace: pace.New(clk, 20, pace.Options{}),
		OnOutcome:    func(o Outcome) { st.outcomes <- o },
		OnHookFrozen: func(_ string, d time.Duration) { st.frozen <- d }})
	require.NoError(t, err)
	st.drive()
	require.NoError(t, st.s.Start(ctx))
	t.Cleanup(st.s.Stop)
	return st
}

// drive advances the fake clock by 100ms whenever something beyond one timer waits on it, until
// the test ends. The one timer is the cron loop's while the scheduler runs; while it stops, the
// shutdown grace's (long, so that the clock's steps while goroutines return do not use it up).
func (st *hookStack) drive() {
	ctx, cancel := context.WithCancel(st.ctx)
	var wg sync.WaitGroup
	st.t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			if err := st.clk.BlockUntilContext(ctx, 2); err != nil {
				return
			}
			st.clk.Advance(100 * time.Millisecond)
		}
	})
}

// collect waits for n values from ch.
func collect[T any](st *hookStack, ch <-chan T, n int, what string) []T {
	st.t.Helper()
	var out []T
	for len(out) < n {
		select {
		case v := <-ch:
			out = append(out, v)
		case <-st.ctx.Done():
			st.t.Fatalf("%d of %d %s before the guard", len(out), n, what)
		}
	}
	return out
}

// hooksOf returns the hook rows of every run, by instance and phase.
func (st *hookStack) hooksOf(runs []history.Run) map[string]map[history.HookPhase]history.HookRun {
	st.t.Helper()
	ids := make([]int64, len(runs))
	inst := map[int64]string{}
	for i, r := range runs {
		ids[i], inst[r.ID] = r.ID, r.InstanceID
	}
	by, err := st.store.HookRunsOfRuns(st.ctx, ids)
	require.NoError(st.t, err)
	out := map[string]map[history.HookPhase]history.HookRun{}
	for id, hs := range by {
		out[inst[id]] = map[history.HookPhase]history.HookRun{}
		for _, h := range hs {
			out[inst[id]][h.Phase] = h
		}
	}
	return out
}

// TestHooksAroundCreateImage fires a policy of 22 instances with hooks: 20 whose pre hook
// succeeds after a spread of times, one whose agent is offline and one whose pre hook exits 1
// (on_pre_failure: fail), and a policy with on_pre_failure: continue whose pre hook fails on one
// instance. Every CreateImage lies between the end of its instance's SUCCESS pre task and the
// start of its post task; the agent-offline instance gets no CreateImage, a failed run
// AgentOffline and no post; the failing pre hook fails its run PreHookFailed without an image but
// gets its post; under continue the instance is imaged and the failure recorded and notified.
func TestHooksAroundCreateImage(t *testing.T) {
	t.Parallel()
	good := instanceIDs("h", 20)
	const offline, bad, lax, laxOK = "ins-offline1", "ins-badpre01", "ins-laxpre01", "ins-laxok001"
	all := append(slices.Clone(good), offline, bad, lax, laxOK)
	result := func(instanceID, content string) cvmsim.CommandOutcome {
		if content == postCmd {
			return cvmsim.CommandOutcome{After: time.Second}
		}
		switch instanceID {
		case bad:
			return cvmsim.CommandOutcome{Status: cvmsim.TaskFailed, ExitCode: 1, Output: "fsfreeze: /data: not a mount point\n", After: time.Second}
		case lax:
			return cvmsim.CommandOutcome{Status: cvmsim.TaskFailed, ExitCode: 2, Output: "busy\n", After: time.Second}
		}
		i := slices.Index(good, instanceID)
		return cvmsim.CommandOutcome{After: time.Duration(i%5) * 700 * time.Millisecond}
	}
	st := newHookStack(t, hooksYAML("db-nightly", "fail", append(slices.Clone(good), offline, bad), "30s")+
		hooksYAML("db-lenient", "continue", []string{lax, laxOK}, "30s"), all, result, nil)
	st.sim.SetAgentState(offline, cvmsim.AgentOffline)

	out, err := st.s.RunOnce(st.ctx, "db-nightly", nil)
	require.NoError(t, err)
	require.Len(t, out, 22)
	lenient, err := st.s.RunOnce(st.ctx, "db-lenient", nil)
	require.NoError(t, err)
	require.Len(t, lenient, 2)
	// Every instance whose pre hook ran gets its post: the 20, the failing one and both lenient.
	frozen := collect(st, st.frozen, 23, "post hooks")
	for _, d := range frozen {
		require.Positive(t, d, "the post starts after the pre ended")
	}

	byInstance := map[string]Outcome{}
	for _, o := range append(out, lenient...) {
		byInstance[o.InstanceID] = o
	}
	for _, id := range append(slices.Clone(good), lax, laxOK) {
		require.Equal(t, history.StatusRequested, byInstance[id].Status, "%+v", byInstance[id])
	}
	require.Equal(t, history.StatusFailed, byInstance[offline].Status)
	require.Equal(t, CodeAgentOffline, byInstance[offline].ErrorCode)
	require.Contains(t, byInstance[offline].ErrorMessage, tat.CodeAgentStatusNotOnline)
	require.Equal(t, history.StatusFailed, byInstance[bad].Status)
	require.Equal(t, CodePreHookFailed, byInstance[bad].ErrorCode)
	require.Contains(t, byInstance[bad].ErrorMessage, "exited 1")

	// The simulator's record: tasks by (instance, command), CreateImage calls by instance.
	type key struct{ instance, content string }
	tasks := map[key]cvmsim.Task{}
	for _, task := range st.sim.Tasks() {
		k := key{task.InstanceID, task.Content}
		_, dup := tasks[k]
		require.False(t, dup, "%s ran %q twice", task.InstanceID, task.Content)
		tasks[k] = task
		require.Equal(t, "root", task.Username)
		require.Equal(t, 30*time.Second, task.Timeout)
	}
	creates := map[string]time.Time{}
	var tatCalls []time.Time
	var preCalls []string // RunCommand of the pre command, in order: its instance count and answer
	for _, c := range st.sim.Calls() {
		switch c.Action {
		case cvmsim.ActionCreateImage:
			id := c.Params["InstanceId"].(string)
			_, dup := creates[id]
			require.False(t, dup, "CreateImage of %s twice", id)
			creates[id] = c.At
		case cvmsim.ActionRunCommand, cvmsim.ActionDescribeInvocationTasks, cvmsim.ActionDescribeAutomationAgentStatus:
			tatCalls = append(tatCalls, c.At)
			encoded, _ := c.Params["Content"].(string)
			content, _ := base64.StdEncoding.DecodeString(encoded)
			if c.Action == cvmsim.ActionRunCommand && string(content) == preCmd {
				preCalls = append(preCalls, fmt.Sprintf("%d:%s", len(c.Params["InstanceIds"].([]any)), c.Code))
			}
		}
	}
	// db-nightly's 22 instances in waves of create_image_rate/2 (5); the last wave's call is
	// refused for the offline agent and sent again without it. db-lenient's 2 in one wave.
	require.ElementsMatch(t, []string{"5:", "5:", "5:", "5:", "2:" + tat.CodeAgentStatusNotOnline, "1:", "2:"}, preCalls,
		"pre RunCommands in waves of at most create_image_rate/2 instances")
	require.LessOrEqual(t, pace.MaxInAnySecond(tatCalls), 20, "TAT calls keep to the account's TAT rate")

	for _, id := range append(slices.Clone(good), lax, laxOK) {
		pre, post := tasks[key{id, preCmd}], tasks[key{id, postCmd}]
		at, ok := creates[id]
		require.True(t, ok, "%s was imaged", id)
		require.False(t, pre.FinishedAt.IsZero(), "%s: pre task ended", id)
		require.False(t, at.Before(pre.FinishedAt), "%s: CreateImage at %s before its pre task ended at %s", id, at, pre.FinishedAt)
		require.False(t, post.CreatedAt.IsZero(), "%s: post task sent", id)
		require.False(t, post.CreatedAt.Before(at), "%s: post task at %s before CreateImage at %s", id, post.CreatedAt, at)
		if id != lax {
			require.Equal(t, cvmsim.TaskSuccess, pre.Status, id)
		}
	}
	_, imaged := creates[offline]
	require.False(t, imaged, "no CreateImage for the agent-offline instance")
	_, imaged = creates[bad]
	require.False(t, imaged, "no CreateImage after a failed pre hook (on_pre_failure: fail)")
	_, sent := tasks[key{offline, preCmd}]
	require.False(t, sent)
	_, sent = tasks[key{offline, postCmd}]
	require.False(t, sent, "no post hook where the pre hook never ran")
	require.Equal(t, cvmsim.TaskFailed, tasks[key{bad, preCmd}].Status)
	require.Contains(t, tasks, key{bad, postCmd}, "the failed pre hook ran: its post undoes it")

	// History: every hook a row, ended; failures notified with their phase.
	runs, err := st.store.RunsRecent(st.ctx, time.Time{}, 0)
	require.NoError(t, err)
	require.Len(t, runs, 24)
	hooksBy := st.hooksOf(runs)
	for _, id := range append(slices.Clone(good), laxOK) {
		require.Equal(t, history.HookSuccess, hooksBy[id][history.HookPre].Status, id)
		require.NotEmpty(t, hooksBy[id][history.HookPre].TaskID, id)
		require.NotEmpty(t, hooksBy[id][history.HookPre].InvocationID, id)
		require.Equal(t, history.HookSuccess, hooksBy[id][history.HookPost].Status, id)
	}
	require.Equal(t, history.HookAgentOffline, hooksBy[offline][history.HookPre].Status)
	require.Equal(t, CodeAgentOffline, hooksBy[offline][history.HookPre].ErrorCode)
	require.NotContains(t, hooksBy[offline], history.HookPost)
	laxPre := hooksBy[lax][history.HookPre]
	require.Equal(t, history.HookFailed, laxPre.Status)
	require.Equal(t, CodePreHookFailed, laxPre.ErrorCode)
	require.Equal(t, 2, *laxPre.ExitCode)
	require.Equal(t, "busy\n", laxPre.Output)
	require.Equal(t, history.HookSuccess, hooksBy[lax][history.HookPost].Status)
	require.Equal(t, history.HookFailed, hooksBy[bad][history.HookPre].Status)

	var events []string
	rows, err := st.store.Pool().Query(st.ctx, `SELECT instance_id || ':' || (detail->>'phase') || ':' || error_code
FROM notifications WHERE event = 'hook_failed' ORDER BY instance_id`)
	require.NoError(t, err)
	for rows.Next() {
		var e string
		require.NoError(t, rows.Scan(&e))
		events = append(events, e)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{bad + ":pre:PreHookFailed", lax + ":pre:PreHookFailed", offline + ":pre:AgentOffline"}, events)
}

// TestHooksCrashRepairAtStart: a previous daemon ran a pre hook and stopped before its post;
// the next scheduler sends the post at once when it starts.
func TestHooksCrashRepairAtStart(t *testing.T) {
	t.Parallel()
	const inst = "ins-crash001"
	var preID int64
	st := newHookStack(t, hooksYAML("db-nightly", "fail", []string{inst}, "30s"), []string{inst}, nil, func(store *history.Store) {
		ctx := context.Background()
		slot := time.Date(2027, 3, 1, 3, 0, 0, 0, time.UTC)
		r, claimed, err := store.RunClaim(ctx, history.RunClaimParams{Policy: "db-nightly", InstanceID: inst, Region: "ap-guangzhou",
			ScheduledAt: slot, ImageName: "db-nightly-" + inst + "-crash", DaemonID: "old-daemon", StartedAt: slot,
			Status: history.StatusPending, Account: policy.DefaultAccount})
		require.NoError(t, err)
		require.True(t, claimed)
		pre, err := store.HookRunsRequest(ctx, history.HookPre, []int64{r.ID}, slot)
		require.NoError(t, err)
		preID = pre[0].ID
		require.NoError(t, store.HookRunsInvoked(ctx, []int64{preID}, "inv-old00001"))
		_, err = store.HookRunFinish(ctx, history.HookResult{ID: preID, Status: history.HookSuccess, TaskStatus: tat.TaskSuccess,
			FinishedAt: slot.Add(time.Second)})
		require.NoError(t, err)
		// The old daemon's CreateImage was accepted; it crashed before the post.
		require.NoError(t, store.RunRequested(ctx, r.ID, "img-crash001", "req-old"))
	})

	require.Equal(t, postCmd, collect(st, st.tat.ran, 1, "commands")[0], "the first command after the start is the missing post")
	collect(st, st.frozen, 1, "post hooks")
	tasks := st.sim.Tasks()
	require.Len(t, tasks, 1)
	require.Equal(t, inst, tasks[0].InstanceID)
	require.Equal(t, postCmd, tasks[0].Content)
	runs, err := st.store.RunsRecent(st.ctx, time.Time{}, 0)
	require.NoError(t, err)
	by := st.hooksOf(runs)
	require.Equal(t, history.HookSuccess, by[inst][history.HookPost].Status)
	require.Equal(t, tasks[0].TaskID, by[inst][history.HookPost].TaskID)
	due, err := st.store.HookRunsPostDue(st.ctx, "")
	require.NoError(t, err)
	require.Empty(t, due)
	for _, c := range st.sim.Calls() {
		require.NotEqual(t, cvmsim.ActionCreateImage, c.Action, "the requested run is not sent again")
	}
}

// TestHooksPostSentWhenStopped: Stop while an instance's pre hook runs abandons its slot and
// sends its post; the run is left pending without a CreateImage.
func TestHooksPostSentWhenStopped(t *testing.T) {
	t.Parallel()
	const inst = "ins-stop0001"
	result := func(_, content string) cvmsim.CommandOutcome {
		if content == preCmd {
			return cvmsim.CommandOutcome{After: time.Hour} // still running when the scheduler stops
		}
		return cvmsim.CommandOutcome{After: time.Second}
	}
	st := newHookStack(t, hooksYAML("db-nightly", "fail", []string{inst}, "2h"), []string{inst}, result, nil)
	type onceResult struct {
		out []Outcome
		err error
	}
	once := make(chan onceResult, 1)
	go func() {
		out, err := st.s.RunOnce(st.ctx, "db-nightly", nil)
		once <- onceResult{out, err}
	}()
	select {
	case c := <-st.tat.ran:
		require.Equal(t, preCmd, c)
	case res := <-once:
		t.Fatalf("RunOnce returned before its pre hook was sent: %+v, %v", res.out, res.err)
	case <-st.ctx.Done():
		t.Fatal("no pre hook before the guard")
	}

	st.s.Stop()
	require.Equal(t, postCmd, collect(st, st.tat.ran, 1, "commands")[0])
	res := collect(st, once, 1, "RunOnce answers")[0]
	require.NoError(t, res.err)
	require.Len(t, res.out, 1)
	require.Equal(t, history.StatusPending, res.out[0].Status, "left for the next leader")

	for _, c := range st.sim.Calls() {
		require.NotEqual(t, cvmsim.ActionCreateImage, c.Action)
	}
	runs, err := st.store.RunsRecent(st.ctx, time.Time{}, 0)
	require.NoError(t, err)
	by := st.hooksOf(runs)
	require.Equal(t, history.HookFailed, by[inst][history.HookPre].Status)
	require.Contains(t, by[inst][history.HookPre].ErrorMessage, "stopped before")
	require.Equal(t, history.HookSuccess, by[inst][history.HookPost].Status, "Stop followed the post to its end")
	due, err := st.store.HookRunsPostDue(st.ctx, "")
	require.NoError(t, err)
	require.Empty(t, due)
}

func testLogger(t *testing.T) zerolog.Logger { return zerolog.New(zerolog.NewTestWriter(t)) }

// TestHooksRecoveredRunGetsItsPre: a previous daemon claimed a slot of a policy with hooks and
// stopped before its wave's pre hook (SIGTERM sets such slots aside pending). The next scheduler
// sends it through the pre hook: its CreateImage lies between the pre's end and the post's start.
func TestHooksRecoveredRunGetsItsPre(t *testing.T) {
	t.Parallel()
	const inst = "ins-left0001"
	st := newHookStack(t, hooksYAML("db-nightly", "fail", []string{inst}, "30s"), []string{inst}, nil, func(store *history.Store) {
		slot := time.Date(2027, 3, 1, 3, 0, 0, 0, time.UTC)
		_, claimed, err := store.RunClaim(context.Background(), history.RunClaimParams{Policy: "db-nightly", InstanceID: inst,
			Region: "ap-guangzhou", ScheduledAt: slot, ImageName: "db-nightly-" + inst + "-left", DaemonID: "old-daemon",
			StartedAt: slot, Status: history.StatusPending, Account: policy.DefaultAccount})
		require.NoError(t, err)
		require.True(t, claimed)
	})
	collect(st, st.frozen, 1, "post hooks")
	var pre, post cvmsim.Task
	for _, task := range st.sim.Tasks() {
		switch task.Content {
		case preCmd:
			pre = task
		case postCmd:
			post = task
		}
	}
	require.False(t, pre.FinishedAt.IsZero(), "the recovered run got its pre hook")
	var creates []time.Time
	for _, c := range st.sim.Calls() {
		if c.Action == cvmsim.ActionCreateImage && c.Code == "" {
			creates = append(creates, c.At)
		}
	}
	require.Len(t, creates, 1)
	require.True(t, creates[0].After(pre.FinishedAt) && creates[0].Before(post.StartedAt),
		"CreateImage %s between the pre's end %s and the post's start %s", creates[0], pre.FinishedAt, post.StartedAt)
}
