package scheduler

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// countStatus counts runs by status.
func countStatus(runs []history.Run) map[history.Status]int {
	n := map[history.Status]int{}
	for _, r := range runs {
		n[r.Status]++
	}
	return n
}

// waitRuns drives the clock until cond holds for the runs.
func (h *harness) waitRuns(step time.Duration, cond func(runs []history.Run) bool) []history.Run {
	h.t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.hist.waitFor(h.ctx, cond)
	}()
	h.drive(done, step)
	runs, _, _ := h.hist.snapshot()
	require.True(h.t, cond(runs), "runs: %+v", runs)
	return runs
}

func TestStartWalksTheSlotsThatPassedWhileDown(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		downFor   time.Duration // now - t0
		reason    func(*policy.Policy, time.Time) string
		wantFired bool
		wantMsg   string
	}{
		{name: "the latest slot is inside its window: fired; the others missed", downFor: 10 * time.Minute,
			wantFired: true, wantMsg: msgMissedNoLeader},
		{name: "the latest slot's window closed: every slot missed", downFor: 40 * time.Minute,
			wantMsg: msgMissedNoLeader},
		{name: "the leadership component says why", downFor: 10 * time.Minute, wantFired: true,
			reason:  func(*policy.Policy, time.Time) string { return "PostgreSQL was unreachable" },
			wantMsg: "PostgreSQL was unreachable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := scheduled(t, testPolicy("down", "ins-dwn00001", "ins-dwn00002"), "@every 1h")
			p.StartWindow = 30 * time.Minute
			h := newHarnessAt(t, t0.Add(tc.downFor), testConfig(10, 2, p), func(o *Options) { o.MissedReason = tc.reason })
			// The last slot handled was 09:00; 10:00, 11:00 and 12:00 passed while no scheduler ran.
			h.hist.lastSlots = map[string]time.Time{"down": t0.Add(-3 * time.Hour)}
			h.start()
			want := 6
			runs := h.waitRuns(10*time.Millisecond, func(runs []history.Run) bool {
				n := countStatus(runs)
				return len(runs) == want && n[history.StatusPending] == 0
			})
			fired := 0
			for _, r := range runs {
				if tc.wantFired && r.ScheduledAt.Equal(t0) {
					require.Equal(t, history.StatusRequested, r.Status)
					fired++
					continue
				}
				require.Equal(t, history.StatusMissed, r.Status, "slot %s", r.ScheduledAt)
				require.Equal(t, CodeMissed, r.ErrorCode)
				require.Equal(t, tc.wantMsg, r.ErrorMessage)
			}
			if tc.wantFired {
				require.Equal(t, 2, fired)
			}
			require.Equal(t, fired, h.cvm.count("CreateImage"))
			last, _ := h.hist.PolicySlots(h.ctx)
			require.Equal(t, t0, last["down"], "the walk moved the last handled slot")
		})
	}
}

func TestStartRecordsAtMostAHundredMissedSlotsPerPolicy(t *testing.T) {
	t.Parallel()
	p := scheduled(t, testPolicy("many", "ins-many0001"), "@every 1m")
	p.StartWindow = time.Minute
	h := newHarnessAt(t, t0.Add(30*time.Second), testConfig(10, 1, p))
	h.hist.lastSlots = map[string]time.Time{"many": t0.Add(-300 * time.Minute)}
	h.start()
	runs := h.waitRuns(10*time.Millisecond, func(runs []history.Run) bool {
		return countStatus(runs)[history.StatusRequested] == 1
	})
	n := countStatus(runs)
	require.Equal(t, 100, n[history.StatusMissed], "the latest 100 passed slots get rows")
	require.Len(t, runs, 101)
	for _, r := range runs {
		if r.Status == history.StatusMissed {
			require.False(t, r.ScheduledAt.Before(t0.Add(-100*time.Minute)), "the latest slots are recorded")
		}
	}
	require.Contains(t, h.logs.String(), `"missed_slots_without_rows":199`)
	require.Contains(t, h.logs.String(), "only the latest 100 are recorded missed")
}

func TestAPolicyNeverSeenHasNothingBeforeNow(t *testing.T) {
	t.Parallel()
	p := scheduled(t, testPolicy("new", "ins-new00001"), "@every 1h")
	h := newHarness(t, testConfig(10, 1, p))
	h.start()
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1)) // the cron timer: the walk is over
	runs, _, _ := h.hist.snapshot()
	require.Empty(t, runs)
	// From now on the policy is seen: a downtime before its first fire is walked at the next start.
	last, _ := h.hist.PolicySlots(h.ctx)
	require.Equal(t, t0, last["new"], "the latest slot not after now")
}

func TestPreviousSlot(t *testing.T) {
	t.Parallel()
	now := time.Date(2027, 3, 14, 12, 34, 56, 0, time.UTC)
	for spec, want := range map[string]time.Time{
		"* * * * *":   time.Date(2027, 3, 14, 12, 34, 0, 0, time.UTC),
		"0 3 * * *":   time.Date(2027, 3, 14, 3, 0, 0, 0, time.UTC),
		"0 0 1 1 *":   time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		"0 0 29 2 *":  time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC),
		"@every 7h":   time.Unix(now.Unix()/(7*3600)*(7*3600), 0),
		"34 12 * * *": time.Date(2027, 3, 14, 12, 34, 0, 0, time.UTC),
	} {
		s, err := policy.ParseSchedule(spec, time.UTC)
		require.NoError(t, err)
		require.True(t, previousSlot(s, now).Equal(want), "%s: got %s, want %s", spec, previousSlot(s, now), want)
	}
}

func TestConcurrencyForbidSkipsWhileThePreviousImageIsBeingMade(t *testing.T) {
	t.Parallel()
	for _, conc := range []policy.Concurrency{policy.ConcurrencyForbid, policy.ConcurrencyAllow} {
		t.Run(string(conc), func(t *testing.T) {
			t.Parallel()
			p := testPolicy("conc", "ins-conc0001", "ins-conc0002", "ins-conc0003")
			p.Concurrency = conc
			h := newHarness(t, testConfig(10, 1, p))
			earlier := t0.Add(-time.Hour)
			h.hist.seed(history.Run{Policy: "conc", InstanceID: "ins-conc0001", ScheduledAt: earlier, Status: history.StatusRequested, ImageName: "prev-1"})
			h.hist.seed(history.Run{Policy: "conc", InstanceID: "ins-conc0002", ScheduledAt: earlier, Status: history.StatusAvailable, ImageName: "prev-2"})
			h.hist.seed(history.Run{Policy: "other", InstanceID: "ins-conc0003", ScheduledAt: earlier, Status: history.StatusPending, ImageName: "prev-3"})
			h.start()
			out := h.once(10*time.Millisecond, "conc")
			require.Len(t, out, 3)
			if conc == policy.ConcurrencyAllow {
				for _, o := range out {
					require.Equal(t, history.StatusRequested, o.Status)
				}
				require.Equal(t, 3, h.cvm.count("CreateImage"))
				return
			}
			require.Equal(t, history.StatusSkipped, out[0].Status)
			require.Equal(t, CodePreviousImageInProgress, out[0].ErrorCode)
			require.Contains(t, out[0].ErrorMessage, "previous image prev-1")
			require.Contains(t, out[0].ErrorMessage, "is still requested")
			require.Equal(t, history.StatusRequested, out[1].Status, "the previous image is available")
			require.Equal(t, history.StatusRequested, out[2].Status, "another policy's image does not count")
			require.Equal(t, 2, h.cvm.count("CreateImage"))
			runs, _, _ := h.hist.snapshot()
			require.Len(t, runs, 6, "the skipped slot has its row")
			require.Equal(t, history.StatusSkipped, runs[3].Status)
			require.Equal(t, CodePreviousImageInProgress, runs[3].ErrorCode)
		})
	}
}

func TestFencedClaimSendsNothingAndCallsOnFenced(t *testing.T) {
	t.Parallel()
	p := scheduled(t, testPolicy("fence", "ins-fnc00001", "ins-fnc00002"), "@every 1h")
	var fenced atomic.Int32
	h := newHarness(t, testConfig(10, 2, p), func(o *Options) { o.OnFenced = func() { fenced.Add(1) } })
	h.hist.fenced = true
	h.start()
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1))
	h.clk.Advance(time.Hour)
	require.NoError(t, h.logs.waitFor(h.ctx, "stopping sending at once"))
	h.s.Stop()
	require.Equal(t, int32(1), fenced.Load())
	require.True(t, h.s.Fenced())
	runs, _, _ := h.hist.snapshot()
	require.Empty(t, runs)
	require.Zero(t, h.cvm.count("CreateImage"))
}

func TestFencedOutcomeWriteStopsSendingAtOnce(t *testing.T) {
	t.Parallel()
	const inst = "ins-fnc00003"
	p := testPolicy("fence", inst)
	var fenced atomic.Int32
	h := newHarness(t, testConfig(10, 1, p), func(o *Options) { o.OnFenced = func() { fenced.Add(1) } })
	// The first CreateImage fails transiently; while it is in flight another replica takes over,
	// so the attempt's write is refused: the retry must never be sent.
	h.cvm.script(inst, func(context.Context, cvm.CreateImageInput) (cvm.CreateImageOutput, error, bool) {
		h.hist.mu.Lock()
		h.hist.fenceWrites = true
		h.hist.mu.Unlock()
		return cvm.CreateImageOutput{}, &cvm.APIError{Action: "CreateImage", Code: "InternalError", Class: cvm.ClassTransient}, true
	})
	h.start()
	c := h.goRunOnce("fence")
	require.NoError(t, h.logs.waitFor(h.ctx, "stopping sending at once"))
	h.s.Stop()
	<-c.done
	require.NoError(t, c.err)
	require.Equal(t, codeFenced, c.out[0].ErrorCode)
	require.Equal(t, 1, h.cvm.count("CreateImage"))
	require.Equal(t, int32(1), fenced.Load())
}

func TestRecoveryIsFenced(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testConfig(10, 1, testPolicy("rec", "ins-rec00009")))
	h.hist.seed(history.Run{Policy: "rec", InstanceID: "ins-rec00009", ScheduledAt: t0, Status: history.StatusPending, ImageName: "x"})
	h.hist.fenced = true
	err := h.s.Start(h.ctx)
	require.ErrorIs(t, err, history.ErrFenced)
	h.s.Stop()
	require.Zero(t, h.cvm.count("DescribeImages"), "a fenced replica touches nothing")
}

func TestBeforeFireBatchSeesEveryDuePolicyFirst(t *testing.T) {
	t.Parallel()
	a := scheduled(t, testPolicy("alpha", "ins-alpha001"), "@every 1h")
	b := scheduled(t, testPolicy("beta", "ins-beta0001"), "@every 1h")
	c := scheduled(t, testPolicy("gamma", "ins-gamma001"), "@every 2h") // not due at 13:00
	var mu sync.Mutex
	var events []string
	h := newHarness(t, testConfig(10, 2, a, b, c), func(o *Options) {
		o.BeforeFireBatch = func(_ context.Context, ps []*policy.Policy) {
			mu.Lock()
			defer mu.Unlock()
			names := make([]string, len(ps))
			for i, p := range ps {
				names[i] = p.Name
			}
			slices.Sort(names)
			events = append(events, fmt.Sprint("batch", names))
		}
		o.ResolveTargets = func(_ context.Context, p *policy.Policy) ([]string, map[string]string, error) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, "resolve "+p.Name)
			return p.Instances, nil, nil
		}
	})
	h.start()
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1))
	h.clk.Advance(time.Hour)
	h.waitRuns(10*time.Millisecond, func(runs []history.Run) bool { return countStatus(runs)[history.StatusRequested] == 2 })
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, events, 3)
	require.Equal(t, "batch[alpha beta]", events[0], "one call with every due policy, before any target is resolved")
	require.ElementsMatch(t, []string{"resolve alpha", "resolve beta"}, events[1:])
}

func TestTransientErrorsRetryUntilTheStartWindowCloses(t *testing.T) {
	t.Parallel()
	const inst = "ins-win00001"
	p := testPolicy("win", inst)
	p.StartWindow = 30 * time.Second
	cfg := testConfig(100, 1, p)
	cfg.API.Retry.Transient = policy.Backoff{} // the defaults: 200ms doubling to 30s, bounded by the window
	h := newHarness(t, cfg)
	var steps []step
	for range 50 {
		steps = append(steps, apiError("InternalError", cvm.ClassTransient))
	}
	h.cvm.script(inst, steps...)
	h.start()
	out := h.once(50*time.Millisecond, "win")
	require.Equal(t, history.StatusFailed, out[0].Status)
	require.Equal(t, "InternalError", out[0].ErrorCode)
	require.Contains(t, out[0].ErrorMessage, "until the start window closed")
	calls := callTimes(h.cvm.callsOf("CreateImage"))
	require.Greater(t, len(calls), 5, "bounded by time, not by five attempts")
	require.Less(t, len(calls), 20)
	first := calls[1].Sub(calls[0])
	require.GreaterOrEqual(t, first, 100*time.Millisecond, "first retry after 200ms with jitter")
	require.LessOrEqual(t, first, 250*time.Millisecond)
	for i := 2; i < len(calls); i++ {
		require.LessOrEqual(t, calls[i].Sub(calls[i-1]), 30*time.Second+50*time.Millisecond)
	}
	require.False(t, calls[len(calls)-1].After(t0.Add(30*time.Second+50*time.Millisecond)), "no try starts after the window")
}

func TestMissedReasonSaysWhenPostgreSQLWasAway(t *testing.T) {
	t.Parallel()
	p := testPolicy("why", "ins-why00001")
	p.StartWindow = time.Minute
	h := newHarness(t, testConfig(10, 1, p))
	require.Equal(t, msgMissedPaused, h.s.loopMissedReason(p, t0))
	h.s.noteDB(unavailable) // a claim write failed: PostgreSQL away since t0
	require.Equal(t, msgMissedDBDown, h.s.loopMissedReason(p, t0))
	require.Equal(t, msgMissedDBDown, h.s.loopMissedReason(p, t0.Add(-30*time.Second)), "away while its window was open")
	require.Equal(t, msgMissedPaused, h.s.loopMissedReason(p, t0.Add(-2*time.Minute)), "its window closed before")
	h.s.noteDB(nil) // back
	require.Equal(t, msgMissedPaused, h.s.loopMissedReason(p, t0))
	require.Equal(t, msgMissedNoLeader, h.s.startMissedReason(p, t0))
}
