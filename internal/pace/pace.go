// Package pace spaces the calls of one API action so that no sliding second holds more than the
// API allows. One Limiter per action is shared by every component that calls it.
package pace

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// Pace defaults.
const (
	// DefaultMargin is the least share of the configured rate the pace leaves unused. At 10 calls
	// per second it spaces calls at least 102 ms apart instead of 100 ms, so 11 calls span at
	// least 1.02 s: ~20 ms of room for the network and scheduling jitter between imager sending a
	// call and the API counting it.
	DefaultMargin = 0.02
	// DefaultMaxMargin is the most of the rate the pace gives up to observed jitter: however
	// wide the spread of recent round trips, the pace keeps 95 % of the limit.
	DefaultMaxMargin = 0.05
	// DefaultSlowdown is how much a lone RequestLimitExceeded lowers the pace, and
	// DefaultSlowdownFor how long: a short, gentle step back, since one throttle usually means one
	// call arrived a few milliseconds early.
	DefaultSlowdown    = 0.10
	DefaultSlowdownFor = 2 * time.Second
	// DefaultThrottleCooldown is how long the pace stays lowered after repeated throttles.
	DefaultThrottleCooldown = 5 * time.Second

	// strikeWindow is how long a throttle counts towards the next one: a throttle within this
	// time of the previous one is "repeated" and backs off harder.
	strikeWindow = 10 * time.Second
	// burstWindow: throttles within this time of the last lowering are one burst of rejections
	// (several workers' calls in flight together) and lower the pace once.
	burstWindow = time.Second
	// minThrottleFactor bounds repeated lowering: the pace never drops below 1/16 of the rate.
	minThrottleFactor = 1.0 / 16
	// jitterSamples is how many recent round trips (and wake-up delays) the spread is read from.
	jitterSamples = 64
	// minJitterSamples: fewer samples than this say nothing about the spread yet.
	minJitterSamples = 8
	// spreadQuantile is the high percentile of the samples the spread is measured to.
	spreadQuantile = 0.95
)

// Options tunes a Limiter. The zero value means the defaults.
type Options struct {
	// Margin is the least share of the rate left unused as jitter room, in (0, 0.5]; 0 means
	// DefaultMargin.
	Margin float64
	// MaxMargin is the most of the rate observed jitter may take, in [Margin, 0.5]; 0 means
	// DefaultMaxMargin (or Margin when that is larger).
	MaxMargin float64
	// Cooldown is how long repeated throttles keep the rate lowered; 0 means
	// DefaultThrottleCooldown.
	Cooldown time.Duration
	// OnGrant, when set, is told the send time of every grant as it is made (under the
	// Limiter's lock: it must be quick). Tests and benchmarks audit the spacing with it.
	OnGrant func(at time.Time)
}

// Limiter spaces the calls of one API action so that, retries included, no sliding one-second
// window ever holds more than the configured number of calls, while keeping close to that rate
// when work is queued. Every caller, for every policy, waits on the same Limiter.
//
// It grants one call at a time (a token bucket of burst 1): each grant comes at least one
// interval after the previous one, and an idle Limiter stores up no burst. A bucket of rate r and
// burst b that has been idle admits b calls at once and then one every 1/r, so a window starting
// with that burst holds b − 1 + ⌈r⌉ calls: over the limit for any b > 1 when r is close to it.
//
// The interval is chosen so that rate+1 consecutive grants span at least one second plus the
// jitter observed lately (Observe): the spread between a high percentile and the least of recent
// call round trips, plus how late this process woke up for its own grants. It is never shorter
// than 1/(rate·(1−Margin)) — any second then holds at most rate grants — and never longer than
// 1/(rate·(1−MaxMargin)), so a noisy network costs at most MaxMargin of the rate. A percentile
// does not catch a single late call, so the pace also remembers when each of the latest rate
// grants was actually sent (Wait woke up): a grant comes at least one second plus half the
// spacing's room (rate intervals less one second) after the send of the grant rate calls before
// it. Lateness within that half costs nothing; one call that left 30 ms late on a busy machine
// pushes the call a second after it back instead of bringing it into its window.
//
// A RequestLimitExceeded answer (Throttle) lowers the rate by DefaultSlowdown for
// DefaultSlowdownFor when it is the first in a while; throttles that keep coming within
// strikeWindow lower it further (×0.75, then halving down to 1/16) for Cooldown.
//
// All time is read from the injected clock, and waits use the clock's timers, so fake clocks work.
type Limiter struct {
	clock     clockwork.Clock
	margin    float64
	maxMargin float64
	cooldown  time.Duration
	onGrant   func(at time.Time)

	mu             sync.Mutex
	perSecond      int
	factor         float64   // 1, or lower while throttled
	strikes        int       // throttles (bursts) in a row, each within strikeWindow of the last
	lastStrike     time.Time // when the pace was last lowered
	lastThrottle   time.Time // the latest Throttle call
	throttledUntil time.Time
	lastGrant      time.Time // send time of the latest reservation
	granted        bool

	// sent holds the send times of the latest perSecond grants, by grant number (seq modulo
	// perSecond): the reserved time, moved later when Wait woke up late for it (see reserveSeq).
	// Empty above maxTrackedRate (sentRing).
	sent      []time.Time
	seq       uint64 // grants made so far
	sentSince uint64 // the first grant number in sent (it starts over when the rate changes)

	rtts     []time.Duration // ring of recent round trips
	rttNext  int
	lates    []time.Duration // ring of recent wake-up delays past a grant's time
	lateNext int
	spread   time.Duration // from rtts and lates, recomputed when they change
}

// New returns a pace of perSecond calls in any sliding second (at least 1).
func New(clock clockwork.Clock, perSecond int, opts Options) *Limiter {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	if opts.Margin <= 0 || opts.Margin > 0.5 {
		opts.Margin = DefaultMargin
	}
	if opts.MaxMargin <= 0 || opts.MaxMargin > 0.5 {
		opts.MaxMargin = DefaultMaxMargin
	}
	opts.MaxMargin = max(opts.MaxMargin, opts.Margin)
	if opts.Cooldown <= 0 {
		opts.Cooldown = DefaultThrottleCooldown
	}
	perSecond = max(perSecond, 1)
	return &Limiter{
		clock:     clock,
		margin:    opts.Margin,
		maxMargin: opts.MaxMargin,
		cooldown:  opts.Cooldown,
		perSecond: perSecond,
		factor:    1,
		onGrant:   opts.OnGrant,
		sent:      sentRing(perSecond),
	}
}

// maxTrackedRate is the highest rate whose send times the pace keeps to guard against a late
// call. No CVM action allows more than a few dozen calls per second; a pace above this (a
// benchmark of the limiter's own cost) keeps the spacing alone rather than a ring as long as its
// rate.
const maxTrackedRate = 10_000

// sentRing is the send-time ring of a pace of perSecond: one slot per grant of the last second,
// none above maxTrackedRate.
func sentRing(perSecond int) []time.Time {
	if perSecond > maxTrackedRate {
		return nil
	}
	return make([]time.Time, perSecond)
}

// Wait blocks until the caller may send one call, or until ctx is done. A reservation given up
// because ctx ended is not returned: that only leaves a little capacity unused.
func (p *Limiter) Wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := p.clock.Now()
	at, seq := p.reserveSeq(now)
	d := at.Sub(now)
	if d <= 0 {
		return nil
	}
	t := p.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		// A late wake-up (a busy machine) sends this call closer to the next one than planned:
		// the grant a second later is pushed back by as much, and the delays seen widen the
		// spacing as round-trip jitter does.
		p.observeSent(seq, at, p.clock.Now())
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Observe records the round trip of one call sent under this pace: the time from sending it to
// its answer. The spread of recent round trips widens the spacing (see Limiter). Callers measure
// on their injected clock; zero and negative durations are ignored.
func (p *Limiter) Observe(rtt time.Duration) {
	if rtt <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rtts, p.rttNext = pushRing(p.rtts, p.rttNext, rtt)
	p.spread = p.measureSpreadLocked()
}

// observeSent records that grant seq, reserved for at, was sent (Wait woke up) at sentAt.
func (p *Limiter) observeSent(seq uint64, at, sentAt time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := uint64(len(p.sent)); n > 0 && seq >= p.sentSince && p.seq-seq <= n && sentAt.After(p.sent[seq%n]) {
		p.sent[seq%n] = sentAt // the slot still holds this grant
	}
	p.lates, p.lateNext = pushRing(p.lates, p.lateNext, max(sentAt.Sub(at), 0))
	p.spread = p.measureSpreadLocked()
}

// pushRing appends d to a ring of jitterSamples durations.
func pushRing(ring []time.Duration, next int, d time.Duration) ([]time.Duration, int) {
	if len(ring) < jitterSamples {
		return append(ring, d), next
	}
	ring[next] = d
	return ring, (next + 1) % jitterSamples
}

// reserveSeq takes the next send time at or after now, and its grant number: one interval after
// the previous grant, and, when the grant perSecond before left late, at least one second plus
// half the spacing's room after it actually left.
func (p *Limiter) reserveSeq(now time.Time) (time.Time, uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.restoreLocked(now)
	at := now
	iv := p.intervalLocked()
	if p.granted {
		if floor := p.lastGrant.Add(iv); at.Before(floor) {
			at = floor
		}
	}
	n := uint64(len(p.sent))
	seq := p.seq
	if n > 0 {
		if prev := p.sent[seq%n]; !prev.IsZero() {
			// Half of the room the spacing leaves beyond one second is for lateness: a call that
			// left later than that pushes the grant a second after it.
			span := time.Duration(n) * p.baseIntervalLocked()
			if floor := prev.Add((time.Second + span) / 2); at.Before(floor) {
				at = floor
			}
		}
		p.sent[seq%n] = at
	}
	p.seq++
	p.lastGrant, p.granted = at, true
	if p.onGrant != nil {
		p.onGrant(at)
	}
	return at, seq
}

// Throttle lowers the pace after the API answered RequestLimitExceeded. The first throttle in a
// while lowers the rate by DefaultSlowdown for DefaultSlowdownFor; one that follows within
// strikeWindow lowers it to 3/4, and each further one halves it, for the cool-down. Throttles
// within a second of the last lowering are the same burst (several workers' calls were in flight)
// and only extend the slow-down.
func (p *Limiter) Throttle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	p.restoreLocked(now)
	p.lastThrottle = now
	if p.strikes > 0 && now.Sub(p.lastStrike) < burstWindow {
		p.throttledUntil = later(p.throttledUntil, now.Add(p.holdLocked()))
		return
	}
	if p.strikes > 0 && now.Sub(p.lastStrike) >= strikeWindow {
		p.strikes = 0 // the last throttle was long ago: this one is lone again
	}
	p.strikes++
	p.lastStrike = now
	switch p.strikes {
	case 1:
		p.factor = min(p.factor, 1-DefaultSlowdown)
	case 2:
		p.factor = min(p.factor, 0.75)
	default:
		p.factor = max(p.factor/2, minThrottleFactor)
	}
	p.throttledUntil = later(p.throttledUntil, now.Add(p.holdLocked()))
}

// holdLocked is how long the current strike keeps the pace lowered. The caller holds p.mu.
func (p *Limiter) holdLocked() time.Duration {
	if p.strikes <= 1 {
		return DefaultSlowdownFor
	}
	return p.cooldown
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// SetRate changes the configured rate (a policy reload), keeping any running slow-down.
func (p *Limiter) SetRate(perSecond int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.restoreLocked(p.clock.Now())
	p.perSecond = max(perSecond, 1)
	if ring := sentRing(p.perSecond); len(ring) != len(p.sent) {
		// The spacing alone keeps any second within the new rate; the send times start over.
		p.sent, p.sentSince = ring, p.seq
	}
}

// Rate returns the calls per second the pace grants now while work is queued: the configured
// rate less the jitter margin, lowered while a slow-down runs.
func (p *Limiter) Rate() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.restoreLocked(p.clock.Now())
	return float64(time.Second) / float64(p.intervalLocked())
}

// Spread returns the jitter the pace currently makes room for (see Limiter).
func (p *Limiter) Spread() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spread
}

// restoreLocked ends a finished slow-down. Strikes are forgotten only after strikeWindow
// without a throttle. The caller holds p.mu.
func (p *Limiter) restoreLocked(now time.Time) {
	if p.factor < 1 && !now.Before(p.throttledUntil) {
		p.factor = 1
	}
	if p.strikes > 0 && now.Sub(p.lastThrottle) >= strikeWindow {
		p.strikes = 0
	}
}

// measureSpreadLocked is the jitter to make room for: the spread of recent round trips (a high
// percentile less the least) plus a high percentile of wake-up delays. The caller holds p.mu.
func (p *Limiter) measureSpreadLocked() time.Duration {
	var s time.Duration
	if len(p.rtts) >= minJitterSamples {
		r := slices.Clone(p.rtts)
		slices.Sort(r)
		s += quantile(r, spreadQuantile) - r[0]
	}
	if len(p.lates) >= minJitterSamples {
		l := slices.Clone(p.lates)
		slices.Sort(l)
		s += quantile(l, spreadQuantile)
	}
	return s
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(float64(len(sorted))*q+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// intervalLocked is the least spacing between two grants now: the jitter-widened interval,
// lowered while a slow-down runs. The caller holds p.mu.
func (p *Limiter) intervalLocked() time.Duration {
	return time.Duration(float64(p.baseIntervalLocked()) / p.factor)
}

// baseIntervalLocked is the spacing that keeps rate+1 consecutive grants at least one second plus
// the observed jitter apart, within the margins, before any slow-down. The caller holds p.mu.
func (p *Limiter) baseIntervalLocked() time.Duration {
	r := float64(p.perSecond)
	lo := float64(time.Second) / (r * (1 - p.margin))
	hi := float64(time.Second) / (r * (1 - p.maxMargin))
	want := (float64(time.Second) + float64(p.spread)) / r
	return time.Duration(min(max(want, lo), hi))
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
