// Package backoff is the one exponential backoff imager uses wherever it retries: CreateImage in
// the scheduler, DescribeImages in completion tracking, DeleteImages in retention and
// DescribeInstances in targets. Delays double from Initial up to Max with jitter, and retrying
// stops after Attempts tries, after MaxElapsed, or at a deadline (a slot's start window),
// whichever comes first. Randomness is injected so tests are deterministic; time is passed in
// from the caller's injected clock.
//
// Retry is the one loop that waits between tries, on the injected clock; the scheduler's
// CreateImage retries instead go back into its paced queue (Policy.Until gives their wait), and
// a Budget shortens that wait while the API fails rarely.
package backoff

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Policy describes one class of retries. The zero value retries at once, forever; callers fill
// in their defaults.
type Policy struct {
	// Initial is the delay before the first retry (before jitter).
	Initial time.Duration
	// Max caps each delay (before jitter); 0 means no cap.
	Max time.Duration
	// Attempts is the most tries in all, the first included; 0 means no bound by count.
	Attempts int
	// MaxElapsed stops retrying once this long has passed since the first try; 0 means no bound.
	MaxElapsed time.Duration
}

// Jitter draws random fractions for delays. It is safe for concurrent use.
type Jitter struct {
	mu  sync.Mutex
	rng *rand.Rand
}

// NewJitter returns a Jitter drawing from rng; nil means a randomly seeded source.
func NewJitter(rng *rand.Rand) *Jitter {
	if rng == nil {
		rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return &Jitter{rng: rng}
}

// float64 returns a number in [0, 1).
func (j *Jitter) float64() float64 {
	if j == nil {
		return 0.5
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.rng.Float64()
}

// Ceiling is the delay cap for the retry after the n-th failure (n ≥ 1), before jitter:
// Initial·2^(n−1), at most Max.
func (p Policy) Ceiling(n int) time.Duration {
	c := max(p.Initial, 0)
	for i := 1; i < n && c > 0 && c < 24*time.Hour && (p.Max <= 0 || c < p.Max); i++ {
		c *= 2
	}
	if p.Max > 0 && c > p.Max {
		c = p.Max
	}
	return c
}

// Next returns the wait before the retry that follows the n-th failure (n ≥ 1), elapsed after
// the first try, and whether to retry at all. The wait is drawn from [c/2, c] for the ceiling c
// ("equal jitter": retries of many runs spread out, yet none comes back at once after a long
// run of failures). It is cut to end at MaxElapsed.
func (p Policy) Next(n int, elapsed time.Duration, j *Jitter) (time.Duration, bool) {
	if p.Attempts > 0 && n >= p.Attempts {
		return 0, false
	}
	if p.MaxElapsed > 0 && elapsed >= p.MaxElapsed {
		return 0, false
	}
	c := p.Ceiling(n)
	d := c/2 + time.Duration(float64(c-c/2)*j.float64())
	if p.MaxElapsed > 0 && elapsed+d > p.MaxElapsed {
		d = p.MaxElapsed - elapsed
	}
	return d, true
}

// Until is Next bounded by a deadline as well: no retry is planned to start after deadline (a
// zero deadline means none). It returns the wait and whether to retry.
func (p Policy) Until(n int, elapsed time.Duration, now, deadline time.Time, j *Jitter) (time.Duration, bool) {
	d, ok := p.Next(n, elapsed, j)
	if !ok {
		return 0, false
	}
	if !deadline.IsZero() {
		if !now.Before(deadline) {
			return 0, false
		}
		if now.Add(d).After(deadline) {
			d = deadline.Sub(now)
		}
	}
	return d, true
}
