package scheduler

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
)

func TestPacingAcrossPoliciesSharingThePool(t *testing.T) {
	t.Parallel()
	const rate, workers, perPolicy = 10, 4, 20
	const n = 2 * perPolicy
	alpha := testPolicy("alpha", instanceIDs("a", perPolicy)...)
	beta := testPolicy("beta", instanceIDs("b", perPolicy)...)
	h := newHarness(t, testConfig(rate, workers, alpha, beta))
	h.start()

	ca, cb := h.goRunOnce("alpha"), h.goRunOnce("beta")
	// Every uncalled job is held by a worker waiting on the pace once the scheduler settles, so
	// the clock only moves when every call that is due has been made.
	creates := func() int { return h.cvm.count("CreateImage") }
	for creates() < n {
		h.settle(func() int { return min(workers, n-creates()) })
		h.clk.Advance(time.Millisecond)
	}
	<-ca.done
	<-cb.done
	require.NoError(t, ca.err)
	require.NoError(t, cb.err)

	names := map[string]bool{}
	for _, o := range append(ca.out, cb.out...) {
		require.Equal(t, history.StatusRequested, o.Status, "%+v", o)
		require.NotEmpty(t, o.RequestID)
		require.LessOrEqual(t, len(o.ImageName), 60)
		require.False(t, names[o.ImageName], "duplicate name %s", o.ImageName)
		names[o.ImageName] = true
	}
	require.Len(t, names, n)

	calls := h.cvm.callsOf("CreateImage")
	times := callTimes(calls)
	require.LessOrEqual(t, pace.MaxInAnySecond(times), rate)
	makespan := times[n-1].Sub(times[0])
	achieved := float64(n-1) / makespan.Seconds()
	require.GreaterOrEqual(t, achieved, 0.97*rate, "makespan %s", makespan)
	require.LessOrEqual(t, achieved, float64(rate))

	// One pool and one pace: the calls of both policies follow each other at the pace, with no
	// gap where one policy's queue ends and the other's begins.
	seen := map[bool]int{}
	for i, c := range calls {
		seen[strings.HasPrefix(c.Create.InstanceID, "ins-a")]++
		if i > 0 {
			require.LessOrEqual(t, c.At.Sub(calls[i-1].At), time.Second/10*102/100+time.Millisecond, "gap before call %d", i)
		}
	}
	require.Equal(t, map[bool]int{true: perPolicy, false: perPolicy}, seen)
}

func TestCreateImageRequestAndRecords(t *testing.T) {
	t.Parallel()
	p := testPolicy("web", "ins-web00001")
	p.Region = "ap-shanghai-fsi"
	yes, no := true, false
	p.Image.ForcePoweroff, p.Image.Sysprep = &yes, &no
	p.Image.DescriptionTemplate = "Nightly {instance}"
	p.Image.DataDisks.IDs = []string{"disk-00000001"}
	p.Image.Tags = map[string]string{"team": "web", "env": "{policy}"}
	h := newHarness(t, testConfig(10, 2, p))
	h.start()

	out := h.once(time.Second, "web")
	require.Len(t, out, 1)
	o := out[0]
	slot := t0.Truncate(time.Second)
	require.Equal(t, history.StatusRequested, o.Status)
	require.Equal(t, slot, o.Slot)
	require.Equal(t, policy.ImageName(p, "ins-web00001", slot, 0), o.ImageName)
	require.NotEmpty(t, o.ImageID)
	require.NotEmpty(t, o.RequestID)

	calls := h.cvm.callsOf("CreateImage")
	require.Len(t, calls, 1)
	in := calls[0].Create
	require.Equal(t, "ap-shanghai-fsi", calls[0].Region)
	require.Equal(t, "ins-web00001", in.InstanceID)
	require.Equal(t, o.ImageName, in.ImageName)
	require.Equal(t, "Nightly ins-web00001", in.ImageDescription)
	require.Equal(t, &yes, in.ForcePoweroff)
	require.Equal(t, &no, in.Sysprep)
	require.Nil(t, in.Reboot, "not set, not sent")
	require.Equal(t, []string{"disk-00000001"}, in.DataDiskIDs)
	require.False(t, in.DryRun)
	require.Equal(t, []cvm.Tag{
		{Key: "env", Value: "web"},
		{Key: policy.TagInstance, Value: "ins-web00001"},
		{Key: policy.TagPolicy, Value: "web"},
		{Key: policy.TagSlot, Value: slot.Format(time.RFC3339)},
		{Key: "team", Value: "web"},
	}, in.Tags)

	run := h.runByInstance("web", "ins-web00001")
	require.Equal(t, history.StatusRequested, run.Status)
	require.Equal(t, o.RequestID, run.RequestID)
	require.Equal(t, o.ImageID, run.ImageID)
	require.Equal(t, "ap-shanghai-fsi", run.Region)
	require.Equal(t, "test-daemon", run.DaemonID)
	require.Equal(t, 1, run.Attempts)
	att := h.hist.attemptsOf(run.ID)
	require.Len(t, att, 1)
	require.Equal(t, history.Attempt{RunID: run.ID, Attempt: 1, Action: "CreateImage", StartedAt: t0, RequestID: o.RequestID}, att[0])

	logs := h.logs.String()
	require.Contains(t, logs, `"message":"policy fired"`)
	require.Contains(t, logs, `"request_id":"`+o.RequestID+`"`)
	require.NotContains(t, logs, `"component"`, "the caller tags the logger with its component, the scheduler does not add one")
}

func TestErrorClasses(t *testing.T) {
	t.Parallel()
	const inst = "ins-cls00001"
	type env struct {
		h         *harness
		hookCalls *atomic.Int32
	}
	cases := []struct {
		name        string
		steps       []step
		dryRun      bool
		quotaHook   func(calls *atomic.Int32) func(context.Context, *policy.Policy) bool
		wantStatus  history.Status
		wantCode    string
		wantMessage string
		wantCreates int
		check       func(t *testing.T, e env, o Outcome)
	}{
		{
			name:        "permanent fails at once with the API's code",
			steps:       []step{apiError("InvalidInstanceId.NotFound", cvm.ClassPermanent)},
			wantStatus:  history.StatusFailed,
			wantCode:    "InvalidInstanceId.NotFound",
			wantMessage: "InvalidInstanceId.NotFound from the fake",
			wantCreates: 1,
		},
		{
			name:        "transient is retried up to the attempts, then fails with the last code",
			steps:       []step{apiError("InternalError", cvm.ClassTransient), apiError("HTTP503", cvm.ClassTransient), apiError("InternalError", cvm.ClassTransient)},
			wantStatus:  history.StatusFailed,
			wantCode:    "InternalError",
			wantCreates: 3,
		},
		{
			name:        "transient then success",
			steps:       []step{apiError("InternalError", cvm.ClassTransient)},
			wantStatus:  history.StatusRequested,
			wantCreates: 2,
		},
		{
			name: "an unclassified error is transient",
			steps: []step{func(context.Context, cvm.CreateImageInput) (cvm.CreateImageOutput, error, bool) {
				return cvm.CreateImageOutput{}, errFake, true
			}},
			wantStatus:  history.StatusRequested,
			wantCreates: 2,
			check: func(t *testing.T, e env, o Outcome) {
				att := e.h.hist.attemptsOf(o.RunID)
				require.Equal(t, codeUnclassified, att[0].ErrorCode)
			},
		},
		{
			name: "throttled is retried up to the attempts",
			steps: []step{apiError("RequestLimitExceeded", cvm.ClassThrottled), apiError("RequestLimitExceeded.UinLimitExceeded", cvm.ClassThrottled),
				apiError("RequestLimitExceeded", cvm.ClassThrottled), apiError("RequestLimitExceeded", cvm.ClassThrottled)},
			wantStatus:  history.StatusFailed,
			wantCode:    "RequestLimitExceeded",
			wantCreates: 4,
		},
		{
			name:        "busy is retried later",
			steps:       []step{apiError("MutexOperation.TaskRunning", cvm.ClassBusy), apiError("ResourceInUse", cvm.ClassBusy)},
			wantStatus:  history.StatusRequested,
			wantCreates: 3,
			check: func(t *testing.T, e env, o Outcome) {
				calls := e.h.cvm.callsOf("CreateImage")
				require.GreaterOrEqual(t, calls[1].At.Sub(calls[0].At), 15*time.Second, "busy backoff starts at Initial/2")
			},
		},
		{
			name: "busy gives up once MaxElapsed has passed since the first call",
			steps: func() []step {
				s := make([]step, 50)
				for i := range s {
					s[i] = apiError("MutexOperation.TaskRunning", cvm.ClassBusy)
				}
				return s
			}(),
			wantStatus: history.StatusFailed,
			wantCode:   "MutexOperation.TaskRunning",
			check: func(t *testing.T, e env, o Outcome) {
				calls := e.h.cvm.callsOf("CreateImage")
				require.Greater(t, len(calls), 3)
				require.Less(t, len(calls), 20)
				// The clock moves in 1 s steps, so call times are up to 1 s late.
				require.InDelta(t, float64(5*time.Minute), float64(calls[len(calls)-1].At.Sub(calls[0].At)), float64(time.Second),
					"the last try is at MaxElapsed")
				for i := 1; i < len(calls); i++ {
					require.LessOrEqual(t, calls[i].At.Sub(calls[i-1].At), 2*time.Minute+time.Second, "capped at Max")
				}
			},
		},
		{
			name:        "quota without a hook fails with an error log",
			steps:       []step{apiError("ImageQuotaLimitExceeded", cvm.ClassQuota)},
			wantStatus:  history.StatusFailed,
			wantCode:    "ImageQuotaLimitExceeded",
			wantCreates: 1,
			check: func(t *testing.T, e env, o Outcome) {
				require.Regexp(t, `"level":"error"[^\n]*ImageQuotaLimitExceeded|ImageQuotaLimitExceeded[^\n]*"level":"error"`, e.h.logs.String())
			},
		},
		{
			name:  "quota hook asking to retry gets one more call",
			steps: []step{apiError("ImageQuotaLimitExceeded", cvm.ClassQuota), apiError("ImageQuotaLimitExceeded", cvm.ClassQuota)},
			quotaHook: func(calls *atomic.Int32) func(context.Context, *policy.Policy) bool {
				return func(context.Context, *policy.Policy) bool { calls.Add(1); return true }
			},
			wantStatus:  history.StatusFailed,
			wantCode:    "ImageQuotaLimitExceeded",
			wantCreates: 2,
			check: func(t *testing.T, e env, o Outcome) {
				require.EqualValues(t, 1, e.hookCalls.Load())
			},
		},
		{
			name:  "quota hook that freed room lets the retry succeed",
			steps: []step{apiError("ImageQuotaLimitExceeded", cvm.ClassQuota)},
			quotaHook: func(calls *atomic.Int32) func(context.Context, *policy.Policy) bool {
				return func(_ context.Context, p *policy.Policy) bool { calls.Add(1); return p.Name == "cls" }
			},
			wantStatus:  history.StatusRequested,
			wantCreates: 2,
		},
		{
			name:  "quota hook declining fails at once",
			steps: []step{apiError("ImageQuotaLimitExceeded", cvm.ClassQuota)},
			quotaHook: func(calls *atomic.Int32) func(context.Context, *policy.Policy) bool {
				return func(context.Context, *policy.Policy) bool { calls.Add(1); return false }
			},
			wantStatus:  history.StatusFailed,
			wantCode:    "ImageQuotaLimitExceeded",
			wantCreates: 1,
		},
		{
			name:        "api dry run: DryRunOperation means the checks passed",
			steps:       []step{apiError("DryRunOperation", cvm.ClassPermanent)},
			dryRun:      true,
			wantStatus:  history.StatusSkipped,
			wantMessage: "api dry run: request passed the API's checks",
			wantCreates: 1,
			check: func(t *testing.T, e env, o Outcome) {
				require.True(t, e.h.cvm.callsOf("CreateImage")[0].Create.DryRun)
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var hookCalls atomic.Int32
			h := newHarness(t, testConfig(10, 1, testPolicy("cls", inst)), func(o *Options) {
				o.APIDryRun = tc.dryRun
				if tc.quotaHook != nil {
					o.OnQuotaExceeded = tc.quotaHook(&hookCalls)
				}
			})
			h.cvm.script(inst, tc.steps...)
			h.start()

			out := h.once(time.Second, "cls")
			require.Len(t, out, 1)
			o := out[0]
			require.Equal(t, tc.wantStatus, o.Status, "%+v", o)
			require.Equal(t, tc.wantCode, o.ErrorCode)
			if tc.wantMessage != "" {
				require.Equal(t, tc.wantMessage, o.ErrorMessage)
			}
			creates := h.cvm.count("CreateImage")
			if tc.wantCreates > 0 {
				require.Equal(t, tc.wantCreates, creates)
			}

			run := h.runByInstance("cls", inst)
			require.Equal(t, tc.wantStatus, run.Status)
			require.Equal(t, tc.wantCode, run.ErrorCode)
			require.Equal(t, creates, run.Attempts, "one attempt row per call")
			att := h.hist.attemptsOf(run.ID)
			require.Len(t, att, creates)
			for i, a := range att {
				require.Equal(t, i+1, a.Attempt)
				require.Equal(t, "CreateImage", a.Action)
				if i < len(tc.steps) {
					require.NotEmpty(t, a.ErrorCode, "attempt %d", i+1)
				}
			}
			if tc.wantStatus == history.StatusFailed {
				require.Equal(t, tc.wantCode, att[len(att)-1].ErrorCode)
				require.Equal(t, "req-"+strings.ToLower(tc.wantCode), att[len(att)-1].RequestID, "the API's RequestId of a failed call is kept")
				require.NotNil(t, run.FinishedAt)
			}
			if tc.check != nil {
				tc.check(t, env{h: h, hookCalls: &hookCalls}, o)
			}
		})
	}
}

func TestThrottledSlowsTheSharedPace(t *testing.T) {
	t.Parallel()
	const inst = "ins-thr00001"
	h := newHarness(t, testConfig(10, 1, testPolicy("thr", inst)))
	h.cvm.script(inst, apiError("RequestLimitExceeded", cvm.ClassThrottled))
	h.start()
	require.InDelta(t, 9.8, h.s.pace.Rate(), 1e-6)

	c := h.goRunOnce("thr")
	// The run waits for its retry on the dispatcher's timer: a lone throttle has slowed the pace
	// gently by then.
	require.False(t, h.waitWaiters(1, c.done))
	require.InDelta(t, 9.8*(1-pace.DefaultSlowdown), h.s.pace.Rate(), 1e-6)
	h.drive(c.done, time.Second)
	require.NoError(t, c.err)
	require.Equal(t, history.StatusRequested, c.out[0].Status)
	require.Equal(t, 2, h.cvm.count("CreateImage"))

	// Restored after the cool-down.
	h.clk.Advance(pace.DefaultThrottleCooldown)
	require.InDelta(t, 9.8, h.s.pace.Rate(), 1e-6)
}

func TestBusyBackoffDoesNotHoldAWorker(t *testing.T) {
	t.Parallel()
	busyInst, otherInst := "ins-bsy00001", "ins-oth00001"
	h := newHarness(t, testConfig(10, 1, testPolicy("busy", busyInst), testPolicy("other", otherInst)))
	h.cvm.script(busyInst, apiError("MutexOperation.TaskRunning", cvm.ClassBusy), apiError("MutexOperation.TaskRunning", cvm.ClassBusy))
	h.start()

	busy := h.goRunOnce("busy")
	require.False(t, h.waitWaiters(1, busy.done)) // waiting out its backoff in the queue
	require.Equal(t, 1, h.cvm.count("CreateImage"))

	// The only worker is free: the other policy's run goes through while the busy one waits. (The
	// clock moves past the pace's spacing first, so the run needs no more clock time at all.)
	h.clk.Advance(time.Second)
	other := h.goRunOnce("other")
	<-other.done
	require.NoError(t, other.err)
	require.Equal(t, history.StatusRequested, other.out[0].Status)
	select {
	case <-busy.done:
		t.Fatal("the busy run finished before its backoff")
	default:
	}

	h.drive(busy.done, time.Second)
	require.NoError(t, busy.err)
	require.Equal(t, history.StatusRequested, busy.out[0].Status)
	var order []string
	for _, c := range h.cvm.callsOf("CreateImage") {
		order = append(order, c.Create.InstanceID)
	}
	require.Equal(t, []string{busyInst, otherInst, busyInst, busyInst}, order)
}

func TestDuplicateName(t *testing.T) {
	t.Parallel()
	const inst = "ins-dup00001"
	p := testPolicy("dup", inst)
	slot := t0.Truncate(time.Second)
	name := func(attempt int) string { return policy.ImageName(p, inst, slot, attempt) }
	cases := []struct {
		name        string
		setup       func(h *harness)
		wantStatus  history.Status
		wantName    string
		wantRenames []string
		wantCreates int
		wantImages  int
		wantActions []string
	}{
		{
			name:        "someone else's image: fresh name",
			setup:       func(h *harness) { h.cvm.addImage(cvm.Image{ID: "img-other", Name: name(0)}) },
			wantStatus:  history.StatusRequested,
			wantName:    name(1),
			wantRenames: []string{name(1)},
			wantCreates: 2,
			wantImages:  2,
			wantActions: []string{"CreateImage", "DescribeImages", "CreateImage"},
		},
		{
			name: "a name is only compared exactly: a longer name does not match",
			setup: func(h *harness) {
				// Tags that would prove ownership, on a name the fuzzy filter also returns.
				h.cvm.addImage(cvm.Image{ID: "img-longer", Name: name(0) + "-copy", Tags: sortedTags(policy.ImageTags(p, inst, slot))})
				h.cvm.addImage(cvm.Image{ID: "img-other", Name: name(0), Tags: []cvm.Tag{{Key: policy.TagInstance, Value: "ins-else0001"}}})
			},
			wantStatus:  history.StatusRequested,
			wantName:    name(1),
			wantRenames: []string{name(1)},
			wantCreates: 2,
			wantImages:  3,
			wantActions: []string{"CreateImage", "DescribeImages", "CreateImage"},
		},
		{
			name: "fresh names at most Duplicate times",
			setup: func(h *harness) {
				for i := range 3 {
					h.cvm.addImage(cvm.Image{ID: "img-taken" + string(rune('0'+i)), Name: name(i)})
				}
			},
			wantStatus:  history.StatusFailed,
			wantName:    name(2),
			wantRenames: []string{name(1), name(2)},
			wantCreates: 3,
			wantImages:  3,
			wantActions: []string{"CreateImage", "DescribeImages", "CreateImage", "DescribeImages", "CreateImage", "DescribeImages"},
		},
		{
			name: "an image whose tags name this slot is adopted (another replica sent it)",
			setup: func(h *harness) {
				tags := sortedTags(policy.ImageTags(p, inst, slot))
				h.cvm.addImage(cvm.Image{ID: "img-replica", Name: name(0), Tags: tags})
			},
			wantStatus:  history.StatusRequested,
			wantName:    name(0),
			wantCreates: 1,
			wantImages:  1,
			wantActions: []string{"CreateImage", "DescribeImages"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, testConfig(10, 1, testPolicy("dup", inst)))
			tc.setup(h)
			h.start()
			out := h.once(time.Second, "dup")
			o := out[0]
			require.Equal(t, tc.wantStatus, o.Status, "%+v", o)
			require.Equal(t, tc.wantName, o.ImageName)
			_, _, renames := h.hist.snapshot()
			require.Equal(t, tc.wantRenames, renames)
			require.Equal(t, tc.wantCreates, h.cvm.count("CreateImage"))
			_, images := h.cvm.snapshot()
			require.Len(t, images, tc.wantImages)

			run := h.runByInstance("dup", inst)
			require.Equal(t, tc.wantName, run.ImageName)
			if tc.wantStatus == history.StatusFailed {
				require.Equal(t, "InvalidImageName.Duplicate", run.ErrorCode)
			} else {
				require.NotEmpty(t, run.ImageID)
				for _, img := range images {
					if img.Name == tc.wantName {
						require.Equal(t, img.ID, run.ImageID)
					}
				}
			}
			if tc.wantActions != nil {
				var actions []string
				for _, a := range h.hist.attemptsOf(run.ID) {
					actions = append(actions, a.Action)
				}
				require.Equal(t, tc.wantActions, actions)
			}
			for _, c := range h.cvm.callsOf("DescribeImages") {
				require.Equal(t, []cvm.Filter{{Name: "image-name", Values: []string{c.Describe.Filters[0].Values[0]}}}, c.Describe.Filters)
			}
		})
	}
}

func TestAmbiguousDuplicateAdoptsWithoutRenaming(t *testing.T) {
	t.Parallel()
	const inst = "ins-amb00001"
	h := newHarness(t, testConfig(10, 1, testPolicy("amb", inst)))
	h.cvm.dropTags = true
	h.cvm.script(inst, h.cvm.failAfterCreating())
	h.start()
	out := h.once(time.Second, "amb")
	o := out[0]
	require.Equal(t, history.StatusRequested, o.Status)
	_, images := h.cvm.snapshot()
	require.Len(t, images, 1, "no second image")
	require.Equal(t, images[0].ID, o.ImageID)
	require.Empty(t, o.RequestID, "adopted: no accepted request of ours")

	run := h.runByInstance("amb", inst)
	require.Equal(t, images[0].ID, run.ImageID)
	var codes, actions []string
	for _, a := range h.hist.attemptsOf(run.ID) {
		codes = append(codes, a.ErrorCode)
		actions = append(actions, a.Action)
	}
	require.Equal(t, []string{"CreateImage", "CreateImage", "DescribeImages"}, actions)
	require.Equal(t, []string{cvm.CodeNetworkError, "InvalidImageName.Duplicate", ""}, codes)
	_, _, renames := h.hist.snapshot()
	require.Empty(t, renames)
}

func TestClaimConflictSendsNothing(t *testing.T) {
	t.Parallel()
	const inst = "ins-clm00001"
	h := newHarness(t, testConfig(10, 1, testPolicy("clm", inst)))
	// Another daemon claimed this second's slot first.
	h.hist.seed(history.Run{Policy: "clm", InstanceID: inst, ScheduledAt: t0, Status: history.StatusRequested,
		ImageName: "theirs", RequestID: "req-theirs", DaemonID: "other-daemon"})
	h.start()
	out := h.once(time.Second, "clm")
	require.True(t, out[0].AlreadyClaimed)
	require.Equal(t, history.StatusRequested, out[0].Status)
	require.Equal(t, "theirs", out[0].ImageName)
	calls, _ := h.cvm.snapshot()
	require.Empty(t, calls)
	runs, attempts, _ := h.hist.snapshot()
	require.Len(t, runs, 1)
	require.Empty(t, attempts)
}

// unavailable is the error the history store answers while PostgreSQL is away.
var unavailable = fmt.Errorf("claim: %w", history.ErrUnavailable)

func TestClaimIsRetriedWithinTheStartWindow(t *testing.T) {
	t.Parallel()
	const inst = "ins-cle00001"
	p := testPolicy("cle", inst)
	p.StartWindow = time.Minute
	h := newHarness(t, testConfig(10, 1, p))
	h.hist.claimErr, h.hist.claimErrs = unavailable, 3
	h.start()
	out := h.once(100*time.Millisecond, "cle")
	require.Equal(t, history.StatusRequested, out[0].Status)
	require.Equal(t, 1, h.cvm.count("CreateImage"))
	require.Equal(t, 4, h.hist.claimCalls)
	require.Contains(t, h.logs.String(), "slot claimed after retrying")
}

func TestClaimThatCannotBeWrittenBeforeTheWindowClosesIsRecordedMissed(t *testing.T) {
	t.Parallel()
	const inst = "ins-cle00002"
	p := testPolicy("cle", inst)
	p.StartWindow = 10 * time.Second
	cfg := testConfig(10, 1, p)
	cfg.API.Retry.Transient = policy.Backoff{} // the defaults: 200ms doubling, bounded by the window
	h := newHarness(t, cfg)
	// PostgreSQL stays away well past the window, then comes back.
	h.hist.claimErr, h.hist.claimErrs = unavailable, 12
	h.start()
	out := h.once(200*time.Millisecond, "cle")
	require.Equal(t, history.StatusMissed, out[0].Status)
	require.Equal(t, CodeMissed, out[0].ErrorCode)
	require.Contains(t, out[0].ErrorMessage, "PostgreSQL was unreachable")
	require.Zero(t, h.cvm.count("CreateImage"), "a slot that was never claimed is never sent")
	run := h.runByInstance("cle", inst)
	require.Equal(t, history.StatusMissed, run.Status)
	require.Equal(t, t0, run.ScheduledAt)
	require.False(t, run.StartedAt.Before(t0.Add(10*time.Second)), "recorded after the window closed")
	require.Equal(t, 13, h.hist.claimCalls)
}

func TestClaimWhoseAnswerWasLostIsTakenOnRetry(t *testing.T) {
	t.Parallel()
	const inst = "ins-cll00001"
	h := newHarness(t, testConfig(10, 1, testPolicy("cll", inst)))
	h.hist.claimLost = 1
	h.start()
	out := h.once(time.Second, "cll")
	require.Equal(t, history.StatusRequested, out[0].Status)
	require.False(t, out[0].AlreadyClaimed)
	require.Equal(t, 1, h.cvm.count("CreateImage"))
	require.Equal(t, history.StatusRequested, h.runByInstance("cll", inst).Status)
}

func TestDataDisksAllUsesTheHook(t *testing.T) {
	t.Parallel()
	const inst = "ins-dsk00001"
	p := testPolicy("dsk", inst)
	p.Image.DataDisks.All = true

	h := newHarness(t, testConfig(10, 1, p))
	h.start()
	out := h.once(time.Second, "dsk")
	require.Equal(t, history.StatusFailed, out[0].Status)
	require.Equal(t, codeDataDisksUnresolved, out[0].ErrorCode)
	require.Zero(t, h.cvm.count("CreateImage"))

	h2 := newHarness(t, testConfig(10, 1, p), func(o *Options) {
		o.ResolveDataDisks = func(_ context.Context, _ *policy.Policy, id string) ([]string, error) {
			return []string{"disk-of-" + id}, nil
		}
	})
	h2.start()
	out = h2.once(time.Second, "dsk")
	require.Equal(t, history.StatusRequested, out[0].Status)
	require.Equal(t, []string{"disk-of-" + inst}, h2.cvm.callsOf("CreateImage")[0].Create.DataDiskIDs)
}

// TestRetryKeepsItsPlaceInTheQueue: a run retried after a transient error goes out as soon as its
// backoff ends, before the slots queued after it, rather than behind the whole fire.
func TestRetryKeepsItsPlaceInTheQueue(t *testing.T) {
	t.Parallel()
	ids := instanceIDs("rq", 20)
	h := newHarness(t, testConfig(10, 1, testPolicy("queue", ids...)))
	h.cvm.script(ids[1], apiError("InternalError", cvm.ClassTransient))
	h.start()

	out := h.once(10*time.Millisecond, "queue")
	require.Len(t, out, len(ids))
	var order []string
	for _, c := range h.cvm.callsOf("CreateImage") {
		order = append(order, c.Create.InstanceID)
	}
	require.Len(t, order, len(ids)+1)
	// The retry waits 0.5–1 s (testRetry: from 1 s, equal jitter) while the pace sends one call
	// every ~102 ms, so it goes out 5 to 11 calls after the failure, long before the last slot.
	retry := slices.Index(order[2:], ids[1]) + 2
	require.GreaterOrEqual(t, retry, 1+5, "the retry waited out its backoff: %v", order)
	require.LessOrEqual(t, retry, 1+11, "the retry went out once its backoff ended: %v", order)
	require.Equal(t, ids[len(ids)-1], order[len(order)-1], "the last slot is sent last: %v", order)
}
