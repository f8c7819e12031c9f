package backoff

import (
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// Budget defaults (see Budget).
const (
	// DefaultBudgetWindow is how far back the transient-failure ratio looks.
	DefaultBudgetWindow = 10 * time.Second
	// DefaultBudgetThreshold is the failure ratio from which failures count as broad: at or above
	// it, the per-call exponential backoff applies.
	DefaultBudgetThreshold = 0.5
	// DefaultBudgetMinCalls is the least number of calls in the window the ratio is judged on;
	// with fewer, nothing says the API fails rarely and the backoff applies.
	DefaultBudgetMinCalls = 20
	// DefaultQuickDelay is the wait before a quick retry: short, since the call goes back into
	// the paced queue, whose pace bounds the rate of calls, retries included.
	DefaultQuickDelay = 50 * time.Millisecond
	// DefaultQuickRetries is how many quick retries one call gets in a row; later failures of the
	// same call wait out the backoff, so one call that keeps failing (a bad instance) cannot take
	// a large share of the pace while the rest of the API is well.
	DefaultQuickRetries = 10

	// budgetBuckets is how many slices the window is counted in.
	budgetBuckets = 10
)

// BudgetOptions tunes a Budget. The zero value means the defaults.
type BudgetOptions struct {
	// Window is how far back the ratio looks; 0 means DefaultBudgetWindow.
	Window time.Duration
	// Threshold is the failure ratio, in (0, 1], at and above which the backoff applies; 0 means
	// DefaultBudgetThreshold.
	Threshold float64
	// MinCalls is the least number of calls in the window the ratio is judged on; 0 means
	// DefaultBudgetMinCalls.
	MinCalls int
	// QuickDelay is the wait before a quick retry; 0 means DefaultQuickDelay.
	QuickDelay time.Duration
	// QuickRetries is the most quick retries of one call in a row; 0 means DefaultQuickRetries.
	QuickRetries int
}

// Budget is a client-wide retry budget for transient errors (InternalError, 5xx, timeouts): it
// counts every call of one action and its transient failures over a sliding window on the
// injected clock, and tells a failed call whether it may be retried quickly.
//
// The rule: while the window holds at least MinCalls calls and fewer than Threshold of them
// failed transiently, the API fails rarely and a failed call is retried after QuickDelay — up to
// QuickRetries times in a row for one call. Otherwise (the API fails broadly, too few calls to
// tell, or the call used up its quick retries) the per-call exponential backoff applies. A quick
// retry goes back into the action's paced queue, so the pace still bounds the rate of calls; the
// budget only decides how long a failed call sits out.
//
// Why: with a share f of calls failing at random, each success costs 1/(1−f) calls on average,
// so a fire of N calls at L per second cannot end before N/(L·(1−f)). The pace keeps that
// floor only while calls are queued: per-call backoff leaves the last failed calls of a fire
// waiting out delays of seconds with nothing else to send, and that tail is what pushed the
// makespan above the floor. Quick retries keep the queue full to the end. When failures are
// broad (an outage), quick retries would only spend the start window on calls that fail, so the
// backoff spreads them out as before; then at most about Threshold·MinCalls failures per Window
// are retried quickly, since those failures alone push the ratio past the threshold.
//
// It is safe for concurrent use.
type Budget struct {
	clock     clockwork.Clock
	window    time.Duration
	bucket    time.Duration
	threshold float64
	minCalls  int
	delay     time.Duration
	quick     int

	mu      sync.Mutex
	calls   [budgetBuckets]int
	fails   [budgetBuckets]int
	current int64 // index (time / bucket) of the newest bucket
}

// NewBudget returns a Budget that reads time from clock (nil: the real clock).
func NewBudget(clock clockwork.Clock, opts BudgetOptions) *Budget {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	if opts.Window <= 0 {
		opts.Window = DefaultBudgetWindow
	}
	if opts.Threshold <= 0 || opts.Threshold > 1 {
		opts.Threshold = DefaultBudgetThreshold
	}
	if opts.MinCalls <= 0 {
		opts.MinCalls = DefaultBudgetMinCalls
	}
	if opts.QuickDelay <= 0 {
		opts.QuickDelay = DefaultQuickDelay
	}
	if opts.QuickRetries <= 0 {
		opts.QuickRetries = DefaultQuickRetries
	}
	return &Budget{
		clock:     clock,
		window:    opts.Window,
		bucket:    max(opts.Window/budgetBuckets, time.Nanosecond),
		threshold: opts.Threshold,
		minCalls:  opts.MinCalls,
		delay:     opts.QuickDelay,
		quick:     opts.QuickRetries,
	}
}

// Record counts one call's answer: failed is true for a transient failure. Other answers
// (success, or errors of other classes) count as calls that did not fail transiently.
func (b *Budget) Record(failed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := b.advanceLocked()
	b.calls[i]++
	if failed {
		b.fails[i]++
	}
}

// Ratio returns the share of the window's calls that failed transiently, and how many calls
// the window holds.
func (b *Budget) Ratio() (float64, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advanceLocked()
	return b.ratioLocked()
}

// Quick reports whether a call that has now failed transiently failures times in a row (≥ 1)
// may be retried quickly, and after what wait (see Budget).
func (b *Budget) Quick(failures int) (time.Duration, bool) {
	if failures < 1 || failures > b.quick {
		return 0, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advanceLocked()
	ratio, calls := b.ratioLocked()
	if calls < b.minCalls || ratio >= b.threshold {
		return 0, false
	}
	return b.delay, true
}

// ratioLocked sums the buckets. The caller holds b.mu.
func (b *Budget) ratioLocked() (float64, int) {
	calls, fails := 0, 0
	for i := range b.calls {
		calls += b.calls[i]
		fails += b.fails[i]
	}
	if calls == 0 {
		return 0, 0
	}
	return float64(fails) / float64(calls), calls
}

// advanceLocked moves the window to now, emptying the buckets that fell out of it, and returns
// the index of the bucket now falls in. The caller holds b.mu.
func (b *Budget) advanceLocked() int {
	now := b.clock.Now().UnixNano() / int64(b.bucket)
	if now > b.current {
		steps := min(now-b.current, budgetBuckets)
		for k := int64(1); k <= steps; k++ {
			i := bucketIndex(b.current + k)
			b.calls[i], b.fails[i] = 0, 0
		}
		b.current = now
	}
	return bucketIndex(b.current)
}

// bucketIndex is the ring slot of bucket number n (times before 1970 included).
func bucketIndex(n int64) int {
	return int((n%budgetBuckets + budgetBuckets) % budgetBuckets)
}
