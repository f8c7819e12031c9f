package scheduler

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
)

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	good := func() Options {
		return Options{Config: testConfig(10, 4), CVM: newFakeCVM(nil), History: &fakeHistory{}}
	}
	cases := map[string]func(o *Options){
		"no config":  func(o *Options) { o.Config = nil },
		"no cvm":     func(o *Options) { o.CVM = nil },
		"no history": func(o *Options) { o.History = nil },
		"zero rate":  func(o *Options) { o.Config.API.CreateImageRate = 0 },
		"no workers": func(o *Options) { o.Config.API.Workers = 0 },
	}
	for name, breakIt := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			o := good()
			breakIt(&o)
			_, err := New(o)
			require.Error(t, err)
		})
	}
	s, err := New(good())
	require.NoError(t, err)
	require.NotEmpty(t, s.daemonID, "a daemon id by default")
	require.InDelta(t, 20*(1-pace.DefaultMargin), s.DescribePace().Rate(), 1e-6)

	// A DescribeImages pace made beforehand is the one used, at the configured rate.
	shared := pace.New(nil, 1, pace.Options{})
	o := good()
	o.DescribePace = shared
	withShared, err := New(o)
	require.NoError(t, err)
	require.Same(t, shared, withShared.DescribePace())
	require.InDelta(t, 20*(1-pace.DefaultMargin), shared.Rate(), 1e-6)
	require.Same(t, o.Config, withShared.Config())
	s.Stop() // before Start: nothing to do, and no error
	require.Error(t, s.Start(context.Background()), "a stopped scheduler does not start")
}

func TestCronFiresOneRunPerTargetAtTheSlot(t *testing.T) {
	t.Parallel()
	p := scheduled(t, testPolicy("hourly", "ins-hr000001", "ins-hr000002", "ins-hr000001"), "@every 1h")
	h := newHarness(t, testConfig(10, 2, p))
	h.start()

	slot := t0.Add(time.Hour)
	for _, want := range []time.Time{slot, slot.Add(time.Hour)} {
		require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1)) // the cron timer
		h.clk.Advance(want.Sub(h.clk.Now()))
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = h.hist.waitFor(h.ctx, func(runs []history.Run) bool {
				n := 0
				for _, r := range runs {
					if r.ScheduledAt.Equal(want) && r.Status == history.StatusRequested {
						n++
					}
				}
				return n == 2
			})
		}()
		h.drive(done, 10*time.Millisecond)
	}
	runs, _, _ := h.hist.snapshot()
	require.Len(t, runs, 4, "one run per distinct target per slot")
	for _, r := range runs {
		require.Equal(t, "hourly", r.Policy)
		require.Equal(t, history.StatusRequested, r.Status)
	}
	require.Contains(t, h.logs.String(), `"message":"policy fired"`)
}

func TestCronFiresOnlyTheLatestSlotAfterAClockJump(t *testing.T) {
	t.Parallel()
	p := scheduled(t, testPolicy("jump", "ins-jmp00001", "ins-jmp00002"), "@every 1h")
	h := newHarness(t, testConfig(10, 1, p))
	h.start()
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1))
	h.clk.Advance(5*time.Hour + 30*time.Minute) // slots 13:00 … 17:00 passed; 17:00 is in its 1h window
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.hist.waitFor(h.ctx, func(runs []history.Run) bool {
			n := 0
			for _, r := range runs {
				if r.Status == history.StatusRequested {
					n++
				}
			}
			return n == 2
		})
	}()
	h.drive(done, 10*time.Millisecond)
	runs, _, _ := h.hist.snapshot()
	require.Len(t, runs, 10, "every slot has a row per target")
	for _, r := range runs {
		if r.ScheduledAt.Equal(t0.Add(5 * time.Hour)) {
			require.Equal(t, history.StatusRequested, r.Status)
			continue
		}
		require.Equal(t, history.StatusMissed, r.Status, "slot %s", r.ScheduledAt)
		require.Equal(t, CodeMissed, r.ErrorCode)
		require.Equal(t, msgMissedPaused, r.ErrorMessage)
		require.NotNil(t, r.FinishedAt)
	}
	require.Equal(t, 2, h.cvm.count("CreateImage"))
	require.Contains(t, h.logs.String(), `"message":"slots missed"`)
}

func TestDisabledPolicyRecordsSkippedRuns(t *testing.T) {
	t.Parallel()
	p := scheduled(t, testPolicy("off", "ins-off00001", "ins-off00002"), "@every 1h")
	p.Enabled = false
	h := newHarness(t, testConfig(10, 1, p))
	h.start()
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1))
	h.clk.Advance(time.Hour)
	require.NoError(t, h.hist.waitFor(h.ctx, func(runs []history.Run) bool { return len(runs) == 2 }))
	runs, _, _ := h.hist.snapshot()
	for _, r := range runs {
		require.Equal(t, history.StatusSkipped, r.Status)
		require.Equal(t, "policy disabled", r.ErrorMessage)
		require.Equal(t, t0.Add(time.Hour), r.ScheduledAt)
		require.NotNil(t, r.FinishedAt)
	}
	calls, _ := h.cvm.snapshot()
	require.Empty(t, calls)

	// RunOnce takes the same path.
	h.clk.Advance(time.Second) // another slot than the fire's
	out, err := h.s.RunOnce(h.ctx, "off", nil)
	require.NoError(t, err)
	require.Len(t, out, 2)
	require.Equal(t, history.StatusSkipped, out[0].Status)
	require.Equal(t, "policy disabled", out[0].ErrorMessage)
	require.False(t, out[0].AlreadyClaimed)
	require.Equal(t, t0.Add(time.Hour+time.Second), out[0].Slot)
}

func TestRunOnce(t *testing.T) {
	t.Parallel()
	targets := []string{"ins-one00001", "ins-one00002", "ins-one00003"}
	h := newHarness(t, testConfig(10, 2, testPolicy("one", targets...), testPolicy("two", "ins-two00001")))

	_, err := h.s.RunOnce(h.ctx, "one", nil)
	require.ErrorContains(t, err, "not running")
	h.start()

	_, err = h.s.RunOnce(h.ctx, "three", nil)
	require.ErrorContains(t, err, `unknown policy "three" (known: one, two)`)
	_, err = h.s.RunOnce(h.ctx, "one", []string{"ins-one00002", "ins-two00001"})
	require.ErrorContains(t, err, "instance ins-two00001 is not a target of policy one")

	h.clk.Advance(750 * time.Millisecond) // the slot is the current second
	out := h.once(10*time.Millisecond, "one", "ins-one00003", "ins-one00001")
	require.Len(t, out, 2)
	require.Equal(t, "ins-one00003", out[0].InstanceID)
	require.Equal(t, "ins-one00001", out[1].InstanceID)
	for _, o := range out {
		require.Equal(t, history.StatusRequested, o.Status)
		require.True(t, o.Succeeded())
		require.Equal(t, t0, o.Slot)
		require.Equal(t, time.UTC, o.Slot.Location())
		run := h.runByInstance("one", o.InstanceID)
		require.Equal(t, o.RunID, run.ID)
		require.Equal(t, o.RequestID, run.RequestID)
	}

	// A run a few seconds later is another slot; no instances means every target.
	h.clk.Advance(3 * time.Second)
	slot := h.clk.Now().Truncate(time.Second)
	out = h.once(10*time.Millisecond, "one")
	require.Len(t, out, 3)
	for _, o := range out {
		require.Equal(t, history.StatusRequested, o.Status)
		require.Equal(t, slot, o.Slot)
		require.False(t, o.AlreadyClaimed)
	}

	// RunOnce returns when its context ends; the runs go on.
	ctx, cancel := context.WithCancel(h.ctx)
	cancel()
	_, err = h.s.RunOnce(ctx, "two", nil)
	require.ErrorIs(t, err, context.Canceled)
}

// Slots claimed but not sent at shutdown stay pending: the next leader (a standby at once) sends
// them under the same names, so a SIGTERM mid-fire loses nothing.
func TestStopLeavesQueuedSlotsPendingForTheNextLeader(t *testing.T) {
	t.Parallel()
	targets := []string{"ins-stp00001", "ins-stp00002", "ins-stp00003"}
	h := newHarness(t, testConfig(10, 1, testPolicy("stop", targets...)))
	started, release := make(chan struct{}), make(chan struct{})
	h.cvm.script(targets[0], blockUntil(started, release))
	h.start()

	c := h.goRunOnce("stop")
	<-started // the first call is in flight, the other two queued behind the only worker
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		h.s.Stop()
	}()
	<-h.s.stopCtx.Done()
	close(release) // the in-flight call ends within the grace
	<-stopped
	<-c.done
	require.NoError(t, c.err)

	require.Equal(t, history.StatusRequested, c.out[0].Status, "the call in flight finished and was recorded")
	for _, o := range c.out[1:] {
		require.Equal(t, history.StatusPending, o.Status)
		require.Contains(t, o.ErrorMessage, "the next leader reconciles it by name")
	}
	require.Equal(t, 1, h.cvm.count("CreateImage"))
	for _, id := range targets[1:] {
		run := h.runByInstance("stop", id)
		require.Equal(t, history.StatusPending, run.Status, "left for the next leader")
		require.Zero(t, run.Attempts)
	}

	h.s.Stop() // idempotent
	_, err := h.s.RunOnce(h.ctx, "stop", nil)
	require.Error(t, err)
}

func TestStopLeavesRunsWaitingToRetryPending(t *testing.T) {
	t.Parallel()
	const inst = "ins-stw00001"
	h := newHarness(t, testConfig(10, 1, testPolicy("wait", inst)))
	h.cvm.script(inst, apiError("InternalError", cvm.ClassTransient))
	h.start()

	c := h.goRunOnce("wait")
	require.False(t, h.waitWaiters(1, c.done)) // in the queue for its retry
	h.s.Stop()
	<-c.done
	require.NoError(t, c.err)
	o := c.out[0]
	require.Equal(t, history.StatusPending, o.Status)
	require.Contains(t, o.ErrorMessage, "last error InternalError")
	run := h.runByInstance("wait", inst)
	require.Equal(t, history.StatusPending, run.Status, "the next leader sends it again under the same name")
	require.Equal(t, 1, run.Attempts)
}

func TestStopCancelsCallsAfterTheGraceAndLeavesThemPending(t *testing.T) {
	t.Parallel()
	const inst = "ins-grc00001"
	h := newHarness(t, testConfig(10, 1, testPolicy("grace", inst)), func(o *Options) { o.ShutdownGrace = 10 * time.Second })
	started := make(chan struct{})
	h.cvm.script(inst, blockUntil(started, nil)) // answers only when its context is cancelled
	h.start()

	c := h.goRunOnce("grace")
	<-started
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		h.s.Stop()
	}()
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1)) // the grace timer
	select {
	case <-stopped:
		t.Fatal("Stop returned with a call in flight before the grace ended")
	default:
	}
	h.clk.Advance(10 * time.Second)
	<-stopped
	<-c.done
	require.NoError(t, c.err)
	require.Equal(t, history.StatusPending, c.out[0].Status)

	run := h.runByInstance("grace", inst)
	require.Equal(t, history.StatusPending, run.Status, "reconciled by name at the next start")
	att := h.hist.attemptsOf(run.ID)
	require.Len(t, att, 1)
	require.Equal(t, cvm.CodeCanceled, att[0].ErrorCode, "cut off by the grace deadline")
}

func TestRecoveryAdoptsOrResendsPendingRuns(t *testing.T) {
	t.Parallel()
	p := testPolicy("rec", "ins-rec00001", "ins-rec00002", "ins-rec00003")
	slot := t0.Add(-time.Hour)
	h := newHarness(t, testConfig(10, 1, p))
	name := func(inst string) string { return policy.ImageName(p, inst, slot, 0) }
	seed := func(policyName, inst string, attempts int) int64 {
		return h.hist.seed(history.Run{Policy: policyName, InstanceID: inst, Region: "ap-beijing", ScheduledAt: slot,
			StartedAt: slot, Status: history.StatusPending, ImageName: name(inst), Attempts: attempts, DaemonID: "crashed"})
	}
	made := seed("rec", "ins-rec00001", 1)    // the crash came after CreateImage: the image exists
	lost := seed("rec", "ins-rec00002", 0)    // the crash came before CreateImage
	gone := seed("gone", "ins-rec00003", 1)   // its policy was removed; its image exists
	orphan := seed("gone", "ins-rec00004", 0) // removed policy, no image
	h.hist.seed(history.Run{Policy: "rec", InstanceID: "ins-rec00003", ScheduledAt: slot, Status: history.StatusRequested,
		ImageName: "tracked-elsewhere"})
	h.cvm.dropTags = true
	h.cvm.addImage(cvm.Image{ID: "img-made", Name: name("ins-rec00001")})
	h.cvm.addImage(cvm.Image{ID: "img-gone", Name: name("ins-rec00003")})
	h.start()

	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.hist.waitFor(h.ctx, func(runs []history.Run) bool {
			for _, id := range []int64{made, lost, gone, orphan} {
				if runs[id-1].Status == history.StatusPending {
					return false
				}
			}
			return true
		})
	}()
	h.drive(done, 10*time.Millisecond)
	runs, _, _ := h.hist.snapshot()

	require.Equal(t, history.StatusRequested, runs[made-1].Status)
	require.Equal(t, "img-made", runs[made-1].ImageID)
	require.Equal(t, []string{"DescribeImages"}, actions(h.hist.attemptsOf(made)))
	require.Equal(t, 2, h.hist.attemptsOf(made)[0].Attempt, "attempt numbers go on from history")

	require.Equal(t, history.StatusRequested, runs[lost-1].Status)
	require.Equal(t, []string{"DescribeImages", "CreateImage"}, actions(h.hist.attemptsOf(lost)))
	creates := h.cvm.callsOf("CreateImage")
	require.Len(t, creates, 1, "only the run whose image is missing is sent again")
	require.Equal(t, name("ins-rec00002"), creates[0].Create.ImageName, "under its recorded name")
	require.Equal(t, "ap-beijing", creates[0].Region, "in the run's region")

	require.Equal(t, history.StatusRequested, runs[gone-1].Status)
	require.Equal(t, "img-gone", runs[gone-1].ImageID)
	require.Equal(t, history.StatusFailed, runs[orphan-1].Status)
	require.Equal(t, codePolicyNotFound, runs[orphan-1].ErrorCode)

	for _, c := range h.cvm.callsOf("DescribeImages") {
		require.Equal(t, "image-name", c.Describe.Filters[0].Name)
	}
}

func TestRecoveryLeavesARunPendingWhenItsImageCannotBeLookedUp(t *testing.T) {
	t.Parallel()
	const inst = "ins-lku00001"
	p := testPolicy("lookup", inst)
	h := newHarness(t, testConfig(10, 1, p))
	id := h.hist.seed(history.Run{Policy: "lookup", InstanceID: inst, Region: "ap-guangzhou", ScheduledAt: t0,
		StartedAt: t0, Status: history.StatusPending, ImageName: policy.ImageName(p, inst, t0, 0), DaemonID: "crashed"})
	h.cvm.describe = func(cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error, bool) {
		return cvm.DescribeImagesOutput{}, &cvm.APIError{Action: "DescribeImages", Code: "InternalError", Message: "boom",
			RequestID: "req-describe", Class: cvm.ClassTransient}, true
	}
	h.start()

	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.hist.waitFor(h.ctx, func(runs []history.Run) bool { return runs[0].Attempts == testRetry.Transient.Attempts })
	}()
	h.drive(done, time.Second)
	require.NoError(t, h.logs.waitFor(h.ctx, "the run stays pending until the next start"))
	require.Zero(t, h.cvm.count("CreateImage"), "never resent without knowing whether the image exists")
	run := h.runByInstance("lookup", inst)
	require.Equal(t, id, run.ID)
	require.Equal(t, history.StatusPending, run.Status)
	require.Equal(t, []string{"DescribeImages", "DescribeImages", "DescribeImages"}, actions(h.hist.attemptsOf(id)))
}

func TestStartFailsWhenHistoryCannotListUnfinishedRuns(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testConfig(10, 1, testPolicy("x", "ins-x0000001")))
	h.hist.unfinishedErr = errFake
	err := h.s.Start(h.ctx)
	require.ErrorIs(t, err, errFake)
	require.ErrorContains(t, err, "recover unfinished runs")
	h.s.Stop()
}

func actions(att []history.Attempt) []string {
	var out []string
	for _, a := range att {
		out = append(out, a.Action)
	}
	return out
}

func TestReload(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testConfig(10, 2, testPolicy("old", "ins-old00001")))
	h.start()
	require.InDelta(t, 9.8, h.s.pace.Rate(), 1e-6)

	cfg := testConfig(5, 3, scheduled(t, testPolicy("new", "ins-new00001"), "@every 1h"))
	require.NoError(t, h.s.Reload(cfg))
	require.InDelta(t, 4.9, h.s.pace.Rate(), 1e-6)
	require.Contains(t, h.logs.String(), "the number of workers changes at the next start")

	bad := testConfig(0, 2)
	require.Error(t, h.s.Reload(bad))
	require.Error(t, h.s.Reload(nil))
	require.InDelta(t, 4.9, h.s.pace.Rate(), 1e-6, "a refused reload keeps the running config")

	_, err := h.s.RunOnce(h.ctx, "old", nil)
	require.ErrorContains(t, err, "unknown policy")

	// The new policy's schedule is armed.
	h.base = 1
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1))
	h.clk.Advance(time.Hour)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.hist.waitFor(h.ctx, func(runs []history.Run) bool {
			return slices.ContainsFunc(runs, func(r history.Run) bool { return r.Policy == "new" && r.Status == history.StatusRequested })
		})
	}()
	h.drive(done, 10*time.Millisecond)
	require.Equal(t, t0.Add(time.Hour), h.runByInstance("new", "ins-new00001").ScheduledAt)
}

func TestSelectTargetsComeFromTheHook(t *testing.T) {
	t.Parallel()
	p := testPolicy("sel", "ins-listed01")
	p.Select = &policy.Selector{Tags: map[string]string{"env": "prod"}}
	type resolve = func(context.Context, *policy.Policy) ([]string, map[string]string, error)
	cases := []struct {
		name string
		hook resolve
		want []string
		log  string
	}{
		{
			name: "resolved",
			hook: func(_ context.Context, p *policy.Policy) ([]string, map[string]string, error) {
				return []string{"ins-listed01", "ins-tagged01", "ins-tagged01"}, nil, nil
			},
			want: []string{"ins-listed01", "ins-tagged01"},
		},
		{
			name: "resolution failed",
			hook: func(context.Context, *policy.Policy) ([]string, map[string]string, error) { return nil, nil, errFake },
			want: []string{"ins-listed01"},
			log:  "cannot resolve the policy's targets",
		},
		{
			name: "no hook",
			want: []string{"ins-listed01"},
			log:  "select is not resolved by this build",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, testConfig(10, 1, p), func(o *Options) { o.ResolveTargets = tc.hook })
			h.start()
			out := h.once(10*time.Millisecond, "sel")
			var got []string
			for _, o := range out {
				require.Equal(t, history.StatusRequested, o.Status)
				got = append(got, o.InstanceID)
			}
			require.Equal(t, tc.want, got)
			if tc.log != "" {
				require.Contains(t, h.logs.String(), tc.log)
			}
		})
	}
}

// goneResolver targets the policy's listed instances but skips those in gone.
func goneResolver(gone ...string) func(context.Context, *policy.Policy) ([]string, map[string]string, error) {
	return func(_ context.Context, p *policy.Policy) ([]string, map[string]string, error) {
		skipped := map[string]string{}
		var targets []string
		for _, id := range p.Instances {
			if slices.Contains(gone, id) {
				skipped[id] = "instance " + id + " no longer exists"
				continue
			}
			targets = append(targets, id)
		}
		return targets, skipped, nil
	}
}

func TestResolveTargetsSkipsInstancesWithTheReason(t *testing.T) {
	t.Parallel()
	const gone = "ins-gone0001"
	p := testPolicy("listed", "ins-here0001", gone, "ins-here0002")
	h := newHarness(t, testConfig(10, 1, p), func(o *Options) { o.ResolveTargets = goneResolver(gone) })
	h.start()

	out := h.once(10*time.Millisecond, "listed")
	require.Len(t, out, 3)
	require.Equal(t, []string{"ins-here0001", "ins-here0002", gone},
		[]string{out[0].InstanceID, out[1].InstanceID, out[2].InstanceID}, "targets first, then the skipped")
	require.Equal(t, history.StatusRequested, out[0].Status)
	require.Equal(t, history.StatusRequested, out[1].Status)
	require.Equal(t, history.StatusSkipped, out[2].Status)
	require.Equal(t, "instance ins-gone0001 no longer exists", out[2].ErrorMessage)

	r := h.runByInstance("listed", gone)
	require.Equal(t, history.StatusSkipped, r.Status)
	require.Equal(t, "instance ins-gone0001 no longer exists", r.ErrorMessage)
	require.NotNil(t, r.FinishedAt)
	for _, c := range h.cvm.callsOf("CreateImage") {
		require.NotEqual(t, gone, c.Create.InstanceID, "a skipped instance is not sent")
	}
	require.Equal(t, 2, h.cvm.count("CreateImage"))

	// Asking for the skipped instance by name is allowed and records it skipped again (new slot).
	h.clk.Advance(time.Second)
	out = h.once(10*time.Millisecond, "listed", gone)
	require.Len(t, out, 1)
	require.Equal(t, history.StatusSkipped, out[0].Status)
	require.Equal(t, 2, h.cvm.count("CreateImage"))
}

func TestScheduledFireSkipsAndRefusesThroughTheHooks(t *testing.T) {
	t.Parallel()
	const gone, full = "ins-gone0001", "ins-full0001"
	p := scheduled(t, testPolicy("nightly", "ins-ok000001", gone, full), "@every 1h")
	var seen [][]string
	var mu sync.Mutex
	h := newHarness(t, testConfig(10, 1, p), func(o *Options) {
		o.ResolveTargets = goneResolver(gone)
		o.BeforeFire = func(_ context.Context, p *policy.Policy, instances []string) (map[string]string, error) {
			mu.Lock()
			seen = append(seen, slices.Clone(instances))
			mu.Unlock()
			return map[string]string{full: "quota of ap-guangzhou is full", "ins-notmine1": "not in this fire"}, nil
		}
	})
	h.start()

	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1))
	h.clk.Advance(time.Hour)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.hist.waitFor(h.ctx, func(runs []history.Run) bool {
			return len(runs) == 3 && slices.ContainsFunc(runs, func(r history.Run) bool {
				return r.InstanceID == "ins-ok000001" && r.Status == history.StatusRequested
			})
		})
	}()
	h.drive(done, 10*time.Millisecond)

	mu.Lock()
	require.Equal(t, [][]string{{"ins-ok000001", full}}, seen, "the hook sees only the slots about to be sent")
	mu.Unlock()
	r := h.runByInstance("nightly", gone)
	require.Equal(t, history.StatusSkipped, r.Status)
	r = h.runByInstance("nightly", full)
	require.Equal(t, history.StatusFailed, r.Status)
	require.Equal(t, "ImageQuotaLimitExceeded", r.ErrorCode)
	require.Equal(t, "quota of ap-guangzhou is full", r.ErrorMessage)
	require.Equal(t, 1, h.cvm.count("CreateImage"))
	require.Equal(t, "ins-ok000001", h.cvm.callsOf("CreateImage")[0].Create.InstanceID)
	require.Equal(t, 1, strings.Count(h.logs.String(), "image quota: slots of this fire fail without being sent"))
}

func TestBeforeFireInRunOnce(t *testing.T) {
	t.Parallel()
	ids := []string{"ins-bf000001", "ins-bf000002", "ins-bf000003"}
	cases := []struct {
		name      string
		disabled  bool
		refuse    map[string]string
		err       error
		wantCalls int // BeforeFire calls
		want      []history.Status
		log       string
	}{
		{
			name:      "refuses the last slots",
			refuse:    map[string]string{ids[1]: "no room", ids[2]: "no room"},
			wantCalls: 1,
			want:      []history.Status{history.StatusRequested, history.StatusFailed, history.StatusFailed},
			log:       `"level":"error","policy":"bf","region":"ap-guangzhou"`,
		},
		{
			name:      "refuses nothing",
			wantCalls: 1,
			want:      []history.Status{history.StatusRequested, history.StatusRequested, history.StatusRequested},
		},
		{
			name:      "an error refuses nothing",
			refuse:    map[string]string{ids[0]: "ignored with the error"},
			err:       errFake,
			wantCalls: 1,
			want:      []history.Status{history.StatusRequested, history.StatusRequested, history.StatusRequested},
			log:       "sending every slot",
		},
		{
			name:     "a disabled policy is not checked",
			disabled: true,
			refuse:   map[string]string{ids[0]: "no room"},
			want:     []history.Status{history.StatusSkipped, history.StatusSkipped, history.StatusSkipped},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := testPolicy("bf", ids...)
			p.Enabled = !tc.disabled
			var calls atomic.Int32
			h := newHarness(t, testConfig(10, 2, p), func(o *Options) {
				o.BeforeFire = func(_ context.Context, got *policy.Policy, instances []string) (map[string]string, error) {
					calls.Add(1)
					require.Equal(t, "bf", got.Name)
					require.Equal(t, ids, instances)
					return tc.refuse, tc.err
				}
			})
			h.start()
			out := h.once(10*time.Millisecond, "bf")
			require.Equal(t, int32(tc.wantCalls), calls.Load())
			sent := 0
			for i, o := range out {
				require.Equal(t, tc.want[i], o.Status, o.InstanceID)
				if o.Status == history.StatusFailed {
					require.Equal(t, "ImageQuotaLimitExceeded", o.ErrorCode)
					require.Equal(t, "no room", o.ErrorMessage)
					r := h.runByInstance("bf", o.InstanceID)
					require.Equal(t, history.StatusFailed, r.Status)
					require.Equal(t, "ImageQuotaLimitExceeded", r.ErrorCode)
					require.Equal(t, "no room", r.ErrorMessage)
				}
				if o.Status == history.StatusRequested {
					sent++
				}
			}
			require.Equal(t, sent, h.cvm.count("CreateImage"), "refused slots are not sent")
			if tc.log != "" {
				require.Contains(t, h.logs.String(), tc.log)
			}
		})
	}
}

// TestCronFiresDuePoliciesSideBySide: policies due at the same slot are fired concurrently, so one
// policy's slow hook (a DescribeInstances round trip) does not hold back the others. Each hook
// here waits until the other policy's hook has started: fired one after another, the first would
// wait in vain.
func TestCronFiresDuePoliciesSideBySide(t *testing.T) {
	t.Parallel()
	a := scheduled(t, testPolicy("alpha", "ins-alpha001"), "@every 1h")
	b := scheduled(t, testPolicy("beta", "ins-beta0001"), "@every 1h")
	entered := map[string]chan struct{}{"alpha": make(chan struct{}), "beta": make(chan struct{})}
	other := map[string]string{"alpha": "beta", "beta": "alpha"}
	var mu sync.Mutex
	var waitedInVain []string
	hook := func(ctx context.Context, p *policy.Policy) ([]string, map[string]string, error) {
		close(entered[p.Name])
		select {
		case <-entered[other[p.Name]]:
		case <-time.After(10 * time.Second): // a deadline for the failure case, not a synchronisation
			mu.Lock()
			waitedInVain = append(waitedInVain, p.Name)
			mu.Unlock()
		}
		return p.Instances, nil, nil
	}
	h := newHarness(t, testConfig(10, 2, a, b), func(o *Options) { o.ResolveTargets = hook })
	h.start()
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1)) // the cron timer
	h.clk.Advance(time.Hour)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.hist.waitFor(h.ctx, func(runs []history.Run) bool {
			n := 0
			for _, r := range runs {
				if r.Status == history.StatusRequested {
					n++
				}
			}
			return n == 2
		})
	}()
	h.drive(done, 10*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, waitedInVain, "the due policies were fired one after another")
}

// warmingHistory is the fake history that also warms its connections: it records the clock when
// asked, and how many claims were written by then.
type warmingHistory struct {
	*fakeHistory
	clk    clockwork.Clock
	warmed chan warmCall
}

type warmCall struct {
	at     time.Time
	n      int
	claims int
}

func (w warmingHistory) WarmConnections(_ context.Context, n int) {
	runs, _, _ := w.snapshot()
	w.warmed <- warmCall{at: w.clk.Now(), n: n, claims: len(runs)}
}

// A second before a slot, the cron loop warms the history's connections, one per fire that may
// run at once, and only then fires the slot.
func TestCronWarmsTheHistoryBeforeTheSlot(t *testing.T) {
	t.Parallel()
	p := scheduled(t, testPolicy("hourly", "ins-hr000001"), "@every 1h")
	var wh warmingHistory
	h := newHarness(t, testConfig(10, 2, p), func(o *Options) {
		wh = warmingHistory{fakeHistory: o.History.(*fakeHistory), clk: o.Clock, warmed: make(chan warmCall, 4)}
		o.History = wh
	})
	h.start()

	slot := t0.Add(time.Hour)
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1)) // the warm-up timer
	h.clk.Advance(slot.Add(-warmAhead).Sub(h.clk.Now()))
	var w warmCall
	select {
	case w = <-wh.warmed:
	case <-h.ctx.Done():
		t.Fatal("never warmed")
	}
	require.Equal(t, slot.Add(-warmAhead), w.at, "warmed a second before the slot")
	require.Equal(t, fireConcurrency+1, w.n)
	require.Zero(t, w.claims, "before the fire")

	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1)) // the slot's timer
	h.clk.Advance(slot.Sub(h.clk.Now()))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.hist.waitFor(h.ctx, func(runs []history.Run) bool { return len(runs) == 1 })
	}()
	h.drive(done, 10*time.Millisecond)
	select {
	case extra := <-wh.warmed:
		t.Fatalf("warmed twice for one slot (at %s)", extra.at)
	default:
	}
}
