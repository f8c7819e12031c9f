package scheduler

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// t0 is where every fake clock starts.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testRetry keeps the backoffs short and the limits small.
var testRetry = policy.Retry{
	Transient: policy.Backoff{Initial: time.Second, Max: 4 * time.Second, Attempts: 3},
	Throttled: policy.Backoff{Initial: time.Second, Max: 2 * time.Second, Attempts: 4},
	Busy:      policy.Backoff{Initial: 30 * time.Second, Max: 2 * time.Minute, MaxElapsed: 5 * time.Minute},
	Duplicate: 2,
}

func testConfig(rate, workers int, policies ...*policy.Policy) *policy.Config {
	return &policy.Config{
		API:      policy.API{CreateImageRate: rate, DescribeImagesRate: 20, Workers: workers, Retry: testRetry},
		Policies: policies,
	}
}

// testPolicy is an enabled policy with no schedule (fired by RunOnce only).
func testPolicy(name string, instances ...string) *policy.Policy {
	return &policy.Policy{
		Name:      name,
		Region:    "ap-guangzhou",
		Location:  time.UTC,
		Instances: instances,
		Image:     policy.ImageSpec{NameTemplate: policy.DefaultNameTemplate},
		Enabled:   true,
		// Most tests fire an instance again while its previous image is being made; the
		// concurrency tests set forbid.
		Concurrency: policy.ConcurrencyAllow,
	}
}

// scheduled gives p a schedule.
func scheduled(t *testing.T, p *policy.Policy, spec string) *policy.Policy {
	t.Helper()
	s, err := policy.ParseSchedule(spec, time.UTC)
	require.NoError(t, err)
	p.ScheduleSpec, p.Schedule = spec, s
	return p
}

func instanceIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("ins-%s%07d", prefix, i)
	}
	return ids
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	changed broadcast
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	defer b.changed.fire()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// waitFor blocks until the logs contain s, or ctx ends.
func (b *syncBuffer) waitFor(ctx context.Context, s string) error {
	for {
		ch := b.changed.C()
		if strings.Contains(b.String(), s) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("logs never contained %q: %w", s, ctx.Err())
		}
	}
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harness runs a Scheduler on a fake clock against the fake CVM and history.
type harness struct {
	t    *testing.T
	ctx  context.Context
	clk  *clockwork.FakeClock
	cvm  *fakeCVM
	hist *fakeHistory
	logs *syncBuffer
	s    *Scheduler
	// base is the number of clock waiters always present while the scheduler idles (one cron
	// timer when a policy has a schedule).
	base int
}

func newHarness(t *testing.T, cfg *policy.Config, opts ...func(*Options)) *harness {
	t.Helper()
	return newHarnessAt(t, t0, cfg, opts...)
}

// newHarnessAt is newHarness with the fake clock starting at start.
func newHarnessAt(t *testing.T, start time.Time, cfg *policy.Config, opts ...func(*Options)) *harness {
	t.Helper()
	// A real-time bound only so a broken test fails instead of hanging; nothing waits on it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	clk := clockwork.NewFakeClockAt(start)
	h := &harness{t: t, ctx: ctx, clk: clk, cvm: newFakeCVM(clk), hist: &fakeHistory{}, logs: &syncBuffer{}}
	for _, p := range cfg.Policies {
		if p.Schedule != nil {
			h.base = 1
		}
	}
	o := Options{
		Config:   cfg,
		CVM:      h.cvm,
		History:  h.hist,
		Clock:    clk,
		Logger:   zerolog.New(h.logs),
		DaemonID: "test-daemon",
		Rand:     rand.New(rand.NewPCG(1, 2)),
	}
	for _, f := range opts {
		f(&o)
	}
	s, err := New(o)
	require.NoError(t, err)
	h.s = s
	return h
}

func (h *harness) start() {
	h.t.Helper()
	require.NoError(h.t, h.s.Start(h.ctx))
	h.t.Cleanup(h.s.Stop)
}

// onceCall is a RunOnce running in its own goroutine.
type onceCall struct {
	done chan struct{}
	out  []Outcome
	err  error
}

func (h *harness) goRunOnce(name string, instances ...string) *onceCall {
	c := &onceCall{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.out, c.err = h.s.RunOnce(h.ctx, name, instances)
	}()
	return c
}

// once runs RunOnce, advancing the fake clock by step whenever the scheduler waits on it.
func (h *harness) once(step time.Duration, name string, instances ...string) []Outcome {
	h.t.Helper()
	c := h.goRunOnce(name, instances...)
	h.drive(c.done, step)
	require.NoError(h.t, c.err)
	return c.out
}

// drive advances the clock by step each time something waits on it beyond the idle waiters,
// until done is closed.
func (h *harness) drive(done <-chan struct{}, step time.Duration) {
	h.t.Helper()
	for !h.waitWaiters(h.base+1, done) {
		h.clk.Advance(step)
	}
}

// waitWaiters blocks until the clock has n waiters (false) or done is closed (true).
func (h *harness) waitWaiters(n int, done <-chan struct{}) bool {
	h.t.Helper()
	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- h.clk.BlockUntilContext(ctx, n) }()
	select {
	case err := <-res:
		require.NoError(h.t, err, "waiting for %d clock waiters", n)
		return false
	case <-done:
		cancel()
		<-res
		return true
	}
}

// settle blocks until the clock has want() waiters, re-reading want at every CVM call. want must
// never be less than the number of waiters the scheduler will settle at.
func (h *harness) settle(want func() int) {
	h.t.Helper()
	for {
		changed := h.cvm.changed.C()
		n := want()
		ctx, cancel := context.WithCancel(h.ctx)
		res := make(chan error, 1)
		go func() { res <- h.clk.BlockUntilContext(ctx, n) }()
		select {
		case err := <-res:
			cancel()
			require.NoError(h.t, err, "waiting for %d clock waiters", n)
			return
		case <-changed:
			cancel()
			<-res
		}
	}
}

// runByInstance returns the run of (policy, instance), failing when there is not exactly one.
func (h *harness) runByInstance(policyName, instance string) history.Run {
	h.t.Helper()
	runs, _, _ := h.hist.snapshot()
	runs = slices.DeleteFunc(runs, func(r history.Run) bool { return r.Policy != policyName || r.InstanceID != instance })
	require.Len(h.t, runs, 1, "runs of %s/%s", policyName, instance)
	return runs[0]
}

func callTimes(calls []cvmCall) []time.Time {
	ts := make([]time.Time, len(calls))
	for i, c := range calls {
		ts[i] = c.At
	}
	return ts
}
