package lifecycle

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

func TestRequestedRunBecomesAvailable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: 10 * time.Minute})
	r := e.requested("web")
	require.NotEmpty(t, r.ImageID)
	tr := e.newTracker()
	tr.start()

	p := tr.next()
	require.Equal(t, 1, p.res.runs)
	require.Equal(t, 1, p.res.calls)
	require.Zero(t, p.res.terminal)
	require.Equal(t, DefaultPollInterval, p.delay)
	require.Equal(t, history.StatusRequested, e.run(r.ID).Status)
	require.Empty(t, e.attempts(r.ID), "an uneventful poll is not recorded")

	tr.advance(10 * time.Minute)
	p = tr.next()
	require.Equal(t, 1, p.res.terminal)

	got := e.run(r.ID)
	require.Equal(t, history.StatusAvailable, got.Status)
	require.NotNil(t, got.FinishedAt)
	require.Equal(t, t0.Add(10*time.Minute), *got.FinishedAt)
	require.NotNil(t, got.ImageSizeGiB)
	require.Equal(t, int64(cvmsim.DefaultImageSizeGiB), *got.ImageSizeGiB)
	require.Equal(t, r.ImageID, got.ImageID)
	require.Equal(t, r.RequestID, got.RequestID, "the accepted CreateImage's RequestId stays")

	// The call that saw NORMAL is the run's one DescribeImages attempt, with its RequestId.
	calls := e.describeCalls()
	require.Len(t, calls, 2)
	a := e.attempts(r.ID)
	require.Len(t, a, 1)
	require.Equal(t, "DescribeImages", a[0].Action)
	require.Equal(t, calls[1].RequestID, a[0].RequestID)
	require.Empty(t, a[0].ErrorCode)
	require.Equal(t, 1, got.Attempts)

	avail := tr.avail.snapshot()
	require.Len(t, avail, 1)
	require.Equal(t, r.ID, avail[0].ID)
	require.Equal(t, history.StatusAvailable, avail[0].Status)
	require.Equal(t, int64(cvmsim.DefaultImageSizeGiB), *avail[0].ImageSizeGiB)

	// The run is no longer followed, and the hook is not called again.
	tr.advance(DefaultPollInterval)
	p = tr.next()
	require.Zero(t, p.res.runs)
	require.Zero(t, p.res.calls)
	require.Len(t, tr.avail.snapshot(), 1)
}

func TestCreateFailedImageFailsTheRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: time.Minute})
	e.sim.FailNextImages(1)
	bad := e.requested("web")
	good := e.requested("web")
	tr := e.newTracker()
	tr.start()
	tr.next()
	tr.advance(time.Minute)
	require.Equal(t, 2, tr.next().res.terminal)

	got := e.run(bad.ID)
	require.Equal(t, history.StatusFailed, got.Status)
	require.Equal(t, CodeCreateFailed, got.ErrorCode)
	require.Contains(t, got.ErrorMessage, bad.ImageID)
	require.Equal(t, t0.Add(time.Minute), *got.FinishedAt)
	require.Len(t, e.attempts(bad.ID), 1)
	require.Equal(t, history.StatusAvailable, e.run(good.ID).Status)

	avail := tr.avail.snapshot()
	require.Len(t, avail, 1, "OnAvailable is for available runs only")
	require.Equal(t, good.ID, avail[0].ID)
}

func TestTimeoutFollowsThePolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: -1}) // CREATING until CompleteAll
	cfg := &policy.Config{Policies: []*policy.Policy{
		{Name: "short", Image: policy.ImageSpec{Timeout: time.Hour}},
	}}
	short := e.requested("short")
	gone := e.requested("removed") // its policy is no longer loaded: the default 4h applies
	tr := e.newTracker(func(o *TrackerOptions) {
		o.Config = func() *policy.Config { return cfg }
		o.PollInterval = 10 * time.Minute
	})
	tr.start()
	require.Zero(t, tr.next().res.terminal)

	tr.advance(time.Hour) // exactly the timeout: not past it yet
	require.Zero(t, tr.next().res.terminal)
	tr.advance(10 * time.Minute)
	require.Equal(t, 1, tr.next().res.terminal)

	got := e.run(short.ID)
	require.Equal(t, history.StatusFailed, got.Status)
	require.Equal(t, CodeTimeout, got.ErrorCode)
	require.Contains(t, got.ErrorMessage, "image.timeout 1h0m0s")
	require.Len(t, e.attempts(short.ID), 1, "the call that saw it still CREATING is recorded")
	require.Equal(t, history.StatusRequested, e.run(gone.ID).Status)

	tr.advance(3 * time.Hour)
	require.Equal(t, 1, tr.next().res.terminal)
	got = e.run(gone.ID)
	require.Equal(t, CodeTimeout, got.ErrorCode)
	require.Contains(t, got.ErrorMessage, "image.timeout 4h0m0s")
	require.Empty(t, tr.avail.snapshot())
}

func TestSeedShapeRunIsFoundByExactName(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: 10 * time.Minute, SeedShape: true})
	r := e.requested("web")
	require.Empty(t, r.ImageID, "the seed's answer has no ImageId")
	// Newer images first in DescribeImages: decoys whose names contain the run's name, and one
	// with the very name but another instance's tags.
	e.sim.AddImage(cvmsim.Image{Name: r.ImageName + "-copy", Region: region})
	e.sim.AddImage(cvmsim.Image{Name: "old-" + r.ImageName, Region: region})
	e.sim.AddImage(cvmsim.Image{Name: r.ImageName, Region: region,
		Tags: map[string]string{policy.TagInstance: "ins-someone1"}})
	var want string
	for _, img := range e.sim.Images() {
		if img.Name == r.ImageName && img.InstanceID == r.InstanceID {
			want = img.ID
		}
	}
	require.NotEmpty(t, want)

	tr := e.newTracker()
	tr.start()
	p := tr.next()
	require.Zero(t, p.res.terminal)
	got := e.run(r.ID)
	require.Equal(t, want, got.ImageID)
	require.Equal(t, history.StatusRequested, got.Status)
	calls := e.describeCalls()
	require.Len(t, calls, 2, "the look-up by imager's tags, then by name (this image has no imager tags)")
	require.NotContains(t, calls[0].Params, "ImageIds")
	require.NotContains(t, calls[1].Params, "ImageIds")
	a := e.attempts(r.ID)
	require.Len(t, a, 1, "the call that found the image id is recorded")
	require.Equal(t, calls[1].RequestID, a[0].RequestID)

	tr.advance(10 * time.Minute)
	require.Equal(t, 1, tr.next().res.terminal)
	got = e.run(r.ID)
	require.Equal(t, history.StatusAvailable, got.Status)
	require.Equal(t, want, got.ImageID)
	calls = e.describeCalls()
	require.Equal(t, []any{want}, calls[len(calls)-1].Params["ImageIds"], "once known, the id is asked by id")
}

func TestUnknownImageFailsAfterThreePolls(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: -1})
	byID := e.claim("web", "ins-gone0001", "web-gone-1", "img-neverwas", "req-1")
	seed := e.claim("web", "ins-gone0002", "web-gone-2", "", "req-2") // no image by that name
	tr := e.newTracker()
	tr.start()
	for i := 1; i < MissingPolls; i++ {
		if i > 1 {
			tr.advance(DefaultPollInterval)
		}
		require.Zero(t, tr.next().res.terminal, "poll %d", i)
		require.Empty(t, e.attempts(byID.ID))
	}
	tr.advance(DefaultPollInterval)
	require.Equal(t, 2, tr.next().res.terminal)
	for _, id := range []int64{byID.ID, seed.ID} {
		got := e.run(id)
		require.Equal(t, history.StatusFailed, got.Status)
		require.Equal(t, CodeImageNotFound, got.ErrorCode)
		require.Contains(t, got.ErrorMessage, "3 consecutive polls")
		require.Len(t, e.attempts(id), 1)
	}
}

func TestTrackingResumesAfterARestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: -1})
	r := e.requested("web")

	first := e.newTracker()
	first.start()
	require.Zero(t, first.next().res.terminal)
	first.Stop()
	first.Stop() // idempotent
	require.Equal(t, history.StatusRequested, e.run(r.ID).Status)
	_, err := first.WaitTerminal(e.ctx, []int64{r.ID})
	require.ErrorIs(t, err, ErrNotRunning)

	e.sim.CompleteAll()
	second := e.newTracker()
	second.start()
	require.Equal(t, 1, second.next().res.terminal)
	require.Equal(t, history.StatusAvailable, e.run(r.ID).Status)
	require.Empty(t, first.avail.snapshot())
	require.Len(t, second.avail.snapshot(), 1)
}

func TestBatchesHoldAtMostOneHundredIDs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{})
	const n = 2*BatchSize + 30
	want := map[string]bool{}
	for i := range n {
		img := cvmsim.Image{ID: fmt.Sprintf("img-bt%06d", i), Name: fmt.Sprintf("batch-%03d", i), Region: region, SizeGiB: int64(i + 1)}
		e.sim.AddImage(img)
		e.claim("batch", fmt.Sprintf("ins-bt%06d", i), img.Name, img.ID, "")
		want[img.ID] = true
	}
	tr := e.newTracker()
	tr.start()
	p := tr.next()
	require.Equal(t, n, p.res.runs)
	require.Equal(t, n, p.res.terminal)

	calls := e.describeCalls()
	require.Len(t, calls, 3)
	asked := map[string]bool{}
	for _, c := range calls {
		ids, ok := c.Params["ImageIds"].([]any)
		require.True(t, ok)
		require.LessOrEqual(t, len(ids), BatchSize)
		require.EqualValues(t, len(ids), c.Params["Limit"], "the page holds the whole batch")
		for _, id := range ids {
			asked[id.(string)] = true
		}
	}
	require.Equal(t, want, asked)
	require.Len(t, tr.avail.snapshot(), n)

	var wrongSize int
	require.NoError(t, e.store.Pool().QueryRow(e.ctx, `SELECT count(*) FROM image_runs
WHERE status <> 'available' OR image_size_gib <> substr(image_id, 7)::int + 1`).Scan(&wrongSize))
	require.Zero(t, wrongSize, "every run available with its own image's size")
}

// countingPace records waits and throttles.
type countingPace struct {
	waits, throttles atomic.Int32
}

func (p *countingPace) Wait(context.Context) error { p.waits.Add(1); return nil }
func (p *countingPace) Throttle()                  { p.throttles.Add(1) }

func TestDescribeFailuresAreRetriedWithinThePoll(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: -1})
	runs := []history.Run{e.requested("web"), e.requested("web")}
	e.sim.QueueErrors(cvmsim.ActionDescribeImages, "InternalError", "RequestLimitExceeded", "InternalError")
	pace := &countingPace{}
	tr := e.newTracker(func(o *TrackerOptions) { o.Pace = pace })
	tr.start()

	// The first poll retries its one question until the API answers: no poll is lost, and the
	// interval does not grow.
	p := tr.nextDriving(time.Second)
	require.Equal(t, 4, p.res.calls)
	require.Equal(t, 3, p.res.failedCalls)
	require.Zero(t, p.res.gaveUp)
	require.Equal(t, DefaultPollInterval, p.delay)
	require.EqualValues(t, 1, pace.throttles.Load(), "RequestLimitExceeded slows the shared pace")
	require.Less(t, e.clk.Since(t0), 4*time.Second, "retries start at 200 ms, not at the next poll")

	wantCodes := []string{"InternalError", "RequestLimitExceeded", "InternalError"}
	calls := e.describeCalls()
	require.Len(t, calls, 4)
	for _, r := range runs {
		a := e.attempts(r.ID)
		require.Len(t, a, 3, "each failed call is recorded on each run of its batch")
		for i := range a {
			require.Equal(t, i+1, a[i].Attempt)
			require.Equal(t, "DescribeImages", a[i].Action)
			require.Equal(t, wantCodes[i], a[i].ErrorCode)
			require.Equal(t, calls[i].RequestID, a[i].RequestID)
		}
		require.Equal(t, history.StatusRequested, e.run(r.ID).Status)
	}

	e.sim.CompleteAll()
	tr.advance(DefaultPollInterval)
	require.Equal(t, 2, tr.next().res.terminal)
	for _, r := range runs {
		a := e.attempts(r.ID)
		require.Len(t, a, 4)
		require.Equal(t, 4, a[3].Attempt)
		require.Empty(t, a[3].ErrorCode)
	}
	require.EqualValues(t, 5, pace.waits.Load(), "every call waited on the pace")
}

// A question that keeps failing is given up for this poll without holding up the others, and
// only a poll whose questions mostly failed backs the interval off.
func TestAFailingQuestionDoesNotEndThePass(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: -1})
	var runs []history.Run
	for range BatchSize + 1 { // two batches of ids
		runs = append(runs, e.requested("web"))
	}
	e.sim.CompleteAll()
	codes := make([]string, describeRetry.Attempts)
	for i := range codes {
		codes[i] = "InternalError"
	}
	e.sim.QueueErrors(cvmsim.ActionDescribeImages, codes...) // the first batch, every try
	tr := e.newTracker()
	tr.start()

	p := tr.nextDriving(time.Second)
	require.Equal(t, 2, p.res.lookups)
	require.Equal(t, 1, p.res.gaveUp)
	require.Equal(t, 1, p.res.terminal, "the second batch was still asked about")
	require.Equal(t, DefaultPollInterval, p.delay, "half the questions answered: the interval holds")
	tr.advance(DefaultPollInterval)
	require.Equal(t, BatchSize, tr.next().res.terminal)
	for _, r := range runs {
		require.Equal(t, history.StatusAvailable, e.run(r.ID).Status)
	}

	// A poll whose only question fails every try does back off.
	r := e.requested("web")
	e.sim.QueueErrors(cvmsim.ActionDescribeImages, codes...)
	tr.advance(DefaultPollInterval)
	p = tr.nextDriving(time.Second)
	require.Equal(t, 1, p.res.gaveUp)
	require.Equal(t, 2*DefaultPollInterval, p.delay)
	require.Equal(t, history.StatusRequested, e.run(r.ID).Status)
}

// TestTrackingKeepsUpUnderInternalErrors: with 20 % of DescribeImages calls answered
// InternalError, every image the API has finished is available within two poll intervals, and
// runs without an image id are found by imager's tags in batches, not one call each.
func TestTrackingKeepsUpUnderInternalErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: -1})
	var runs []history.Run
	for range 150 {
		runs = append(runs, e.requested("web"))
	}
	// 50 runs of one fire whose CreateImage answer had no ImageId; their images carry imager's
	// tags, as every image imager makes does.
	for i := range 50 {
		inst := fmt.Sprintf("ins-un%06d", i)
		e.sim.AddInstance(cvmsim.Instance{ID: inst, Region: region})
		name := fmt.Sprintf("web-%s-20260301-1200-sfx%05d", inst, i)
		_, err := e.client.CreateImage(e.ctx, region, cvm.CreateImageInput{InstanceID: inst, ImageName: name, Tags: []cvm.Tag{
			{Key: policy.TagPolicy, Value: "web"}, {Key: policy.TagInstance, Value: inst}, {Key: policy.TagSlot, Value: policy.SlotTag(t0)},
		}})
		require.NoError(t, err)
		runs = append(runs, e.claim("web", inst, name, "", ""))
	}
	e.sim.CompleteAll()
	e.sim.SetFaults(cvmsim.Faults{InternalErrorRate: 0.2, Actions: []string{cvmsim.ActionDescribeImages}})

	interval := 30 * time.Second
	tr := e.newTracker(func(o *TrackerOptions) { o.PollInterval = interval })
	tr.start()
	start := e.clk.Now()
	available := func() int {
		n := 0
		for _, r := range runs {
			if e.run(r.ID).Status == history.StatusAvailable {
				n++
			}
		}
		return n
	}
	p := tr.nextDriving(time.Second)
	polls := 1
	if available() < len(runs) {
		require.Equal(t, interval, p.delay, "the interval does not grow while most calls succeed")
		tr.advance(p.delay)
		tr.nextDriving(time.Second)
		polls++
	}
	require.Equal(t, len(runs), available(), "after %d polls", polls)
	require.LessOrEqual(t, e.clk.Since(start), 2*interval)

	var byName, byTag, byID, failed int
	for _, c := range e.describeCalls() {
		switch {
		case c.Params["ImageIds"] != nil:
			byID++
		case strings.Contains(fmt.Sprint(c.Params["Filters"]), "image-name"):
			byName++
		default:
			byTag++
		}
		if c.Code != "" {
			failed++
		}
	}
	require.Zero(t, byName, "no run was looked up on its own")
	// Two batches of ids and one page of tags per poll, plus retries of the ~20 % that failed.
	require.LessOrEqual(t, byID+byTag, 3*polls+failed)
	require.GreaterOrEqual(t, byTag, 1)
	t.Logf("polls %d, calls by id %d, by tag %d, failed %d", polls, byID, byTag, failed)
}

func TestPollDelay(t *testing.T) {
	t.Parallel()
	cases := []struct {
		interval time.Duration
		failures int
		want     time.Duration
	}{
		{30 * time.Second, 0, 30 * time.Second},
		{30 * time.Second, 1, time.Minute},
		{30 * time.Second, 3, 4 * time.Minute},
		{30 * time.Second, 4, MaxPollBackoff},
		{30 * time.Second, 1000, MaxPollBackoff},
		{10 * time.Minute, 3, 10 * time.Minute},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, pollDelay(tc.interval, tc.failures), "%s after %d failures", tc.interval, tc.failures)
	}
}

func TestWaitTerminalReturnsWhenEveryRunEnds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: 10 * time.Minute})
	e.sim.FailNextImages(1)
	failing := e.requested("web")
	pending := e.requested("web")
	done := e.claim("web", "ins-done0001", "web-done", "img-done0001", "req-done")
	require.NoError(t, e.store.RunAvailable(e.ctx, done.ID, nil, "", t0))

	hookDone := make(chan int64, 10)
	tr := e.newTracker(func(o *TrackerOptions) {
		o.OnAvailable = func(_ context.Context, r history.Run) { hookDone <- r.ID }
	})
	_, err := tr.WaitTerminal(e.ctx, []int64{pending.ID})
	require.ErrorIs(t, err, ErrNotRunning, "before Start")
	tr.start()
	tr.next()

	// A run already terminal answers at once.
	got, err := tr.WaitTerminal(e.ctx, []int64{done.ID})
	require.NoError(t, err)
	require.Equal(t, history.StatusAvailable, got[done.ID].Status)

	_, err = tr.WaitTerminal(e.ctx, []int64{999999})
	require.ErrorIs(t, err, history.ErrNotFound)

	type result struct {
		runs map[int64]history.Run
		err  error
	}
	res := make(chan result, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		runs, err := tr.WaitTerminal(e.ctx, []int64{failing.ID, pending.ID, done.ID, pending.ID})
		res <- result{runs, err}
	}()
	tr.drive(finished, time.Minute)
	r := <-res
	require.NoError(t, r.err)
	require.Len(t, r.runs, 3)
	require.Equal(t, history.StatusFailed, r.runs[failing.ID].Status)
	require.Equal(t, CodeCreateFailed, r.runs[failing.ID].ErrorCode)
	require.Equal(t, history.StatusAvailable, r.runs[pending.ID].Status)
	require.Equal(t, history.StatusAvailable, r.runs[done.ID].Status)
	select {
	case id := <-hookDone:
		require.Equal(t, pending.ID, id, "OnAvailable ran before WaitTerminal returned")
	default:
		t.Fatal("WaitTerminal returned before OnAvailable ran")
	}

	// A caller that gives up gets what is known, and Stop ends every wait.
	slow := e.requested("web")
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	_, err = tr.WaitTerminal(ctx, []int64{slow.ID})
	require.ErrorIs(t, err, context.Canceled)

	// Once the loop idles (its last report is sent), the only poll to come is the waiter's kick:
	// when it is reported, the waiter is registered.
	require.NoError(t, e.fake.BlockUntilContext(e.ctx, 1))
	for len(tr.polls) > 0 {
		<-tr.polls
	}
	waiting := make(chan error, 1)
	go func() {
		_, err := tr.WaitTerminal(e.ctx, []int64{slow.ID})
		waiting <- err
	}()
	tr.next()
	tr.Stop()
	require.ErrorIs(t, <-waiting, ErrStopped)
}

func TestWaitTerminalSeesRunsFinishedElsewhere(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: -1})
	r, claimed, err := e.store.RunClaim(e.ctx, history.RunClaimParams{
		Policy: "web", InstanceID: "ins-else0001", Region: region, ScheduledAt: t0, ImageName: "web-else",
		DaemonID: "other", StartedAt: t0, Status: history.StatusPending,
	})
	require.NoError(t, err)
	require.True(t, claimed)
	tr := e.newTracker()
	tr.start()
	tr.next()

	finished := make(chan struct{})
	var got map[int64]history.Run
	go func() {
		defer close(finished)
		got, err = tr.WaitTerminal(e.ctx, []int64{r.ID})
	}()
	// The run is still pending (another daemon is sending it); it then fails there.
	require.Zero(t, tr.next().res.runs)
	require.NoError(t, e.store.RunFinish(e.ctx, history.RunFinishParams{RunID: r.ID, Status: history.StatusFailed,
		ErrorCode: "InvalidInstanceId.NotFound", FinishedAt: t0}))
	tr.drive(finished, DefaultPollInterval)
	require.NoError(t, err)
	require.Equal(t, "InvalidInstanceId.NotFound", got[r.ID].ErrorCode)
}

func TestStartNeedsItsDependencies(t *testing.T) {
	t.Parallel()
	tr := NewTracker(TrackerOptions{})
	require.Error(t, tr.Start(context.Background()))
	tr.Stop()
	e := newEnv(t, false, cvmsim.Options{})
	ok := e.newTracker()
	ok.start()
	require.Error(t, ok.Start(e.ctx), "started twice")
	ok.Stop()
	require.Error(t, ok.Start(e.ctx), "a stopped tracker does not start again")
}

func TestTrackerThroughTheRecorder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{})
	rec, err := history.NewRecorder(e.store, t.TempDir(), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, rec.Close()) })
	r := e.requested("web")
	tr := e.newTracker(func(o *TrackerOptions) { o.History = RecorderHistory(rec) })
	tr.start()
	require.Equal(t, 1, tr.next().res.terminal)
	require.Equal(t, history.StatusAvailable, e.run(r.ID).Status)
	require.Len(t, e.attempts(r.ID), 1)
	got, err := tr.WaitTerminal(e.ctx, []int64{r.ID})
	require.NoError(t, err)
	require.Equal(t, history.StatusAvailable, got[r.ID].Status)
}

func TestAnImageIDTheAPIRefusesDoesNotBlockItsBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{})
	good := e.requested("web")
	bad := e.claim("web", "ins-bad00001", "web-bad", "bad-0001", "req-bad") // the API answers InvalidImageId.Malformed
	tr := e.newTracker()
	tr.start()
	p := tr.next()
	require.Equal(t, 1, p.res.terminal)
	require.Zero(t, p.res.failedCalls, "an id the API refuses is not an API failure")
	require.Equal(t, DefaultPollInterval, p.delay)
	require.Equal(t, history.StatusAvailable, e.run(good.ID).Status)

	tr.advance(DefaultPollInterval)
	tr.next()
	tr.advance(DefaultPollInterval)
	require.Equal(t, 1, tr.next().res.terminal)
	got := e.run(bad.ID)
	require.Equal(t, history.StatusFailed, got.Status)
	require.Equal(t, CodeImageNotFound, got.ErrorCode)
	var codes []string
	for _, a := range e.attempts(bad.ID) {
		codes = append(codes, a.ErrorCode)
	}
	// Poll 1: the batch and then the id alone; polls 2 and 3: the id alone.
	require.Equal(t, []string{"InvalidImageId.Malformed", "InvalidImageId.Malformed", "InvalidImageId.Malformed", "InvalidImageId.Malformed"}, codes)
}
