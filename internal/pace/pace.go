// Package pace spaces the calls of one API action so that no sliding second holds more than the
// API allows. One Limiter per action is shared by every component that calls it.
package pace

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/time/rate"
)

// Pace defaults.
const (
	// DefaultMargin is the share of the configured rate the pace leaves unused. At 10 calls per
	// second it spaces calls 102 ms apart instead of 100 ms, so 11 calls span at least 1.02 s: the
	// server may see each call up to ~20 ms early or late (network and scheduling jitter) and still
	// never count more than 10 in one second, while imager reaches 98% of the limit.
	DefaultMargin = 0.02
	// DefaultThrottleCooldown is how long the pace stays halved after a RequestLimitExceeded.
	DefaultThrottleCooldown = 5 * time.Second

	// minThrottleFactor bounds repeated halving: the pace never drops below 1/16 of the rate.
	minThrottleFactor = 1.0 / 16
)

// Options tunes a Limiter. The zero value means the defaults.
type Options struct {
	// Margin is the share of the rate left unused as jitter room, in (0, 0.5]; 0 means
	// DefaultMargin.
	Margin float64
	// Cooldown is how long Throttle keeps the rate lowered; 0 means DefaultThrottleCooldown.
	Cooldown time.Duration
}

// Limiter spaces the calls of one API action so that, retries included, no sliding one-second
// window ever holds more than the configured number of calls, while keeping close to that rate
// when work is queued. Every caller, for every policy, waits on the same Limiter.
//
// It is a token bucket (golang.org/x/time/rate) with burst 1, run at rate×(1−margin). The burst
// must be 1: a bucket of rate r and burst b that has been idle holds b tokens, so it admits b
// calls at once and then one every 1/r — a window that starts with that burst holds b − 1 + ⌈r⌉
// calls (PRODUCT.md's "b + r" bound), over the limit for any b > 1 when r is close to the limit.
// With burst 1 every two grants are at least 1/(rate(1−margin)) apart, so any one-second window
// holds at most ⌈rate(1−margin)⌉ ≤ rate calls, and rate+1 calls span at least 1/(1−margin) s:
// about 20 ms to spare for jitter at the default margin.
//
// All time is read from the injected clock, and waits use the clock's timers, so fake clocks work.
type Limiter struct {
	clock    clockwork.Clock
	margin   float64
	cooldown time.Duration

	mu             sync.Mutex
	perSecond      int
	factor         float64   // 1, or lower while throttled
	lastHalved     time.Time // when factor was last lowered
	throttledUntil time.Time
	lastGrant      time.Time // send time of the latest reservation
	granted        bool
	lim            *rate.Limiter
}

// New returns a pace of perSecond calls in any sliding second (at least 1).
func New(clock clockwork.Clock, perSecond int, opts Options) *Limiter {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	if opts.Margin <= 0 || opts.Margin > 0.5 {
		opts.Margin = DefaultMargin
	}
	if opts.Cooldown <= 0 {
		opts.Cooldown = DefaultThrottleCooldown
	}
	p := &Limiter{
		clock:     clock,
		margin:    opts.Margin,
		cooldown:  opts.Cooldown,
		perSecond: max(perSecond, 1),
		factor:    1,
	}
	p.lim = rate.NewLimiter(p.bucketRate(), 1)
	return p
}

// Wait blocks until the caller may send one call, or until ctx is done. A reservation given up
// because ctx ended is not returned to the bucket: that only leaves a little capacity unused.
func (p *Limiter) Wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := p.clock.Now()
	d := p.reserve(now).Sub(now)
	if d <= 0 {
		return nil
	}
	t := p.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reserve takes the next send time at or after now.
func (p *Limiter) reserve(now time.Time) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.restoreLocked(now)
	r := p.lim.ReserveN(now, 1) // always OK: n equals the burst
	at := now.Add(r.DelayFrom(now))
	// rate.Limiter.SetLimitAt lets a reservation made after a rate increase act before, or too
	// close to, those made earlier at the old rate. Keeping each grant at least one interval after
	// the previous one holds the burst-1 guarantee across SetRate and the end of a cool-down.
	if p.granted {
		if floor := p.lastGrant.Add(p.intervalLocked()); at.Before(floor) {
			at = floor
		}
	}
	p.lastGrant, p.granted = at, true
	return at
}

// Throttle lowers the pace after the API answered RequestLimitExceeded: the rate is halved for the
// cool-down, then restored. Throttles within a second of the last halving only extend the
// cool-down, so one burst of rejections seen by several workers halves the rate once.
func (p *Limiter) Throttle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	p.restoreLocked(now)
	if (p.factor == 1 || now.Sub(p.lastHalved) >= time.Second) && p.factor > minThrottleFactor {
		p.factor /= 2
		p.lastHalved = now
		p.lim.SetLimitAt(now, p.bucketRate())
	}
	p.throttledUntil = now.Add(p.cooldown)
}

// SetRate changes the configured rate (a policy reload), keeping any running cool-down.
func (p *Limiter) SetRate(perSecond int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	p.restoreLocked(now)
	p.perSecond = max(perSecond, 1)
	p.lim.SetLimitAt(now, p.bucketRate())
}

// Rate returns the calls per second the bucket grants now: the configured rate less the margin,
// lowered while a throttle cool-down runs.
func (p *Limiter) Rate() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.restoreLocked(p.clock.Now())
	return float64(p.bucketRate())
}

// restoreLocked ends a finished cool-down. The caller holds p.mu.
func (p *Limiter) restoreLocked(now time.Time) {
	if p.factor < 1 && !now.Before(p.throttledUntil) {
		p.factor = 1
		p.lim.SetLimitAt(now, p.bucketRate())
	}
}

// bucketRate is the token rate for the current settings. The caller holds p.mu.
func (p *Limiter) bucketRate() rate.Limit {
	return rate.Limit(float64(p.perSecond) * (1 - p.margin) * p.factor)
}

// intervalLocked is the least spacing between two grants. The caller holds p.mu.
func (p *Limiter) intervalLocked() time.Duration {
	return time.Duration(float64(time.Second) / float64(p.bucketRate()))
}

// MaxInAnySecond returns the most of times that fall in any half-open one-second window: the
// figure the API's per-second limit is checked against. Tests and benchmarks measure a pace with it.
func MaxInAnySecond(times []time.Time) int {
	ts := slices.Clone(times)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	most, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= time.Second {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}
