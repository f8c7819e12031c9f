package pace

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// reserve takes the next send time at or after now, as Wait does, without waiting for it.
func (p *Limiter) reserve(now time.Time) time.Time {
	at, _ := p.reserveSeq(now)
	return at
}

func TestLimiterKeepsEverySlidingSecondUnderTheRate(t *testing.T) {
	t.Parallel()
	for _, rate := range []int{1, 10, 40, 100} {
		t.Run(time.Duration(rate).String(), func(t *testing.T) {
			t.Parallel()
			clk := clockwork.NewFakeClockAt(t0)
			p := New(clk, rate, Options{})
			const n = 200
			sends := make([]time.Time, n)
			for i := range sends {
				sends[i] = p.reserve(clk.Now()) // all queued at once
			}
			require.LessOrEqual(t, MaxInAnySecond(sends), rate)

			makespan := sends[n-1].Sub(sends[0])
			want := time.Duration(float64(n-1) / (float64(rate) * (1 - DefaultMargin)) * float64(time.Second))
			require.InDelta(t, float64(want), float64(makespan), float64(time.Millisecond))
			// At least 97% of the rate while work is queued.
			require.GreaterOrEqual(t, float64(n-1)/makespan.Seconds(), 0.97*float64(rate))
		})
	}
}

func TestLimiterIdleBucketAdmitsOneCallNotABurst(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClockAt(t0)
	p := New(clk, 10, Options{})
	clk.Advance(time.Hour) // a long idle time must not store up tokens
	first, second := p.reserve(clk.Now()), p.reserve(clk.Now())
	require.Equal(t, clk.Now(), first)
	require.InDelta(t, float64(time.Second)/9.8, float64(second.Sub(first)), float64(time.Microsecond))
}

func TestLimiterWaitUsesTheClock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := clockwork.NewFakeClockAt(t0)
	p := New(clk, 10, Options{})
	require.NoError(t, p.Wait(ctx)) // the first call goes at once

	done := make(chan error, 1)
	go func() { done <- p.Wait(ctx) }()
	require.NoError(t, clk.BlockUntilContext(ctx, 1))
	clk.Advance(100 * time.Millisecond) // not yet: 1/9.8 s = 102.04 ms
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v before its turn", err)
	default:
	}
	clk.Advance(3 * time.Millisecond)
	require.NoError(t, <-done)

	// A cancelled wait returns the context's error.
	cctx, cancel := context.WithCancel(ctx)
	go func() { done <- p.Wait(cctx) }()
	require.NoError(t, clk.BlockUntilContext(ctx, 1))
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
}

func TestLimiterLoneThrottleIsAGentleShortSlowdown(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClockAt(t0)
	p := New(clk, 10, Options{Cooldown: 5 * time.Second})
	require.InDelta(t, 9.8, p.Rate(), 1e-6)

	p.Throttle()
	require.InDelta(t, 9.8*0.9, p.Rate(), 1e-6, "a lone throttle costs 10 %, not half")
	a := p.reserve(clk.Now())
	b := p.reserve(clk.Now())
	require.InDelta(t, float64(time.Second)/(9.8*0.9), float64(b.Sub(a)), float64(time.Microsecond), "slowed spacing")

	// Other rejections of the same burst (in flight together) do not lower it again.
	clk.Advance(500 * time.Millisecond)
	p.Throttle()
	require.InDelta(t, 9.8*0.9, p.Rate(), 1e-6)
	// The slow-down is short: two seconds from the last throttle.
	clk.Advance(1999 * time.Millisecond)
	require.InDelta(t, 9.8*0.9, p.Rate(), 1e-6)
	clk.Advance(time.Millisecond)
	require.InDelta(t, 9.8, p.Rate(), 1e-6)

	// Long after, a throttle is lone again.
	clk.Advance(20 * time.Second)
	p.Throttle()
	require.InDelta(t, 9.8*0.9, p.Rate(), 1e-6)
}

func TestLimiterRepeatedThrottlesBackOffHarder(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClockAt(t0)
	p := New(clk, 10, Options{Cooldown: 5 * time.Second})
	p.Throttle()
	require.InDelta(t, 9.8*0.9, p.Rate(), 1e-6)
	// Another throttle 3 s later (after the first slow-down ended): a second strike.
	clk.Advance(3 * time.Second)
	require.InDelta(t, 9.8, p.Rate(), 1e-6)
	p.Throttle()
	require.InDelta(t, 9.8*0.75, p.Rate(), 1e-6)
	// A third, more than a second after the second: halved.
	clk.Advance(1100 * time.Millisecond)
	p.Throttle()
	require.InDelta(t, 9.8*0.375, p.Rate(), 1e-6)
	// The cool-down runs from the last throttle.
	clk.Advance(4 * time.Second)
	require.InDelta(t, 9.8*0.375, p.Rate(), 1e-6)
	clk.Advance(time.Second)
	require.InDelta(t, 9.8, p.Rate(), 1e-6)
}

func TestLimiterHalvingHasAFloor(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClockAt(t0)
	p := New(clk, 16, Options{Margin: 0.5})
	for range 20 {
		p.Throttle()
		clk.Advance(time.Second)
	}
	require.InDelta(t, 16*0.5/16, p.Rate(), 1e-6)
}

// TestLimiterWidensSpacingByObservedJitter feeds round trips with a spread into the pace and
// checks that rate+1 grants span one second plus that spread, within the margin bounds.
func TestLimiterWidensSpacingByObservedJitter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		spread   time.Duration
		wantSpan time.Duration // of rate+1 consecutive grants at rate 10
	}{
		{"no jitter keeps the least margin", 0, 1020408163},
		{"small jitter stays within the least margin", 10 * time.Millisecond, 1020408163},
		{"30 ms of jitter", 30 * time.Millisecond, time.Second + 30*time.Millisecond},
		{"wild jitter is capped at 95 % of the rate", 400 * time.Millisecond, 1052631578},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := clockwork.NewFakeClockAt(t0)
			p := New(clk, 10, Options{})
			for i := range jitterSamples {
				// Round trips from 40 ms to 40 ms + spread, evenly.
				p.Observe(40*time.Millisecond + tc.spread*time.Duration(i)/time.Duration(jitterSamples-1))
			}
			sends := make([]time.Time, 200)
			for i := range sends {
				sends[i] = p.reserve(clk.Now())
			}
			require.LessOrEqual(t, MaxInAnySecond(sends), 10)
			span := sends[10].Sub(sends[0])
			require.InDelta(t, float64(tc.wantSpan), float64(span), float64(2*time.Millisecond))
			require.GreaterOrEqual(t, p.Rate(), 0.95*10-1e-9)
		})
	}
}

func TestLimiterSpreadForgetsOldJitter(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClockAt(t0)
	p := New(clk, 10, Options{})
	require.Zero(t, p.Spread(), "too few samples say nothing")
	for i := range jitterSamples {
		p.Observe(time.Duration(50+i) * time.Millisecond)
	}
	require.Greater(t, p.Spread(), 50*time.Millisecond)
	// A network that calmed down: the ring fills with steady round trips.
	for range jitterSamples {
		p.Observe(50 * time.Millisecond)
	}
	require.Zero(t, p.Spread())
	require.InDelta(t, 9.8, p.Rate(), 1e-6)
}

// TestLimiterLateWakeUpsWidenTheSpacing checks that Wait measures how late it woke up past a
// grant's time (a busy machine) and makes room for it.
func TestLimiterLateWakeUpsWidenTheSpacing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := clockwork.NewFakeClockAt(t0)
	p := New(clk, 10, Options{})
	for range minJitterSamples + 2 {
		clk.Advance(time.Second)
		require.NoError(t, p.Wait(ctx)) // an idle pace grants at once
		interval := time.Duration(float64(time.Second) / p.Rate())
		done := make(chan error, 1)
		go func() { done <- p.Wait(ctx) }()
		require.NoError(t, clk.BlockUntilContext(ctx, 1))
		clk.Advance(interval + 30*time.Millisecond) // woken 30 ms past the grant
		require.NoError(t, <-done)
	}
	require.Greater(t, p.Spread(), 20*time.Millisecond)
	require.Less(t, p.Rate(), 9.8)
	require.GreaterOrEqual(t, p.Rate(), 0.95*10-1e-9)
}

func TestLimiterRateIncreaseKeepsQueuedReservationsInOrder(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClockAt(t0)
	p := New(clk, 5, Options{})
	var sends []time.Time
	for range 5 {
		sends = append(sends, p.reserve(clk.Now()))
	}
	p.SetRate(10)
	for range 20 {
		sends = append(sends, p.reserve(clk.Now()))
	}
	for i := 1; i < len(sends); i++ {
		require.False(t, sends[i].Before(sends[i-1]), "reservation %d acts before %d", i, i-1)
	}
	require.LessOrEqual(t, MaxInAnySecond(sends), 10)
	require.InDelta(t, 9.8, p.Rate(), 1e-6)
}

func TestLimiterSetRateKeepsTheCooldown(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClockAt(t0)
	p := New(clk, 10, Options{Cooldown: 5 * time.Second})
	p.Throttle()
	p.SetRate(20)
	require.InDelta(t, 19.6*0.9, p.Rate(), 1e-6) // 20 × 0.98, slowed
	clk.Advance(DefaultSlowdownFor)
	require.InDelta(t, 19.6, p.Rate(), 1e-6)
	p.SetRate(0)
	require.InDelta(t, 0.98, p.Rate(), 1e-6, "rates below 1 are raised to 1")
}

func BenchmarkLimiter(b *testing.B) {
	clk := clockwork.NewFakeClockAt(t0)
	p := New(clk, 100, Options{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		// Each call is due at once: the clock moves one interval per call, as when draining a queue.
		clk.Advance(11 * time.Millisecond)
		if err := p.Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// waitLate makes n calls to Wait at 10 per second, one after another, waking the i-th up late(i)
// after its grant, and returns the grants and the times the calls left (Wait returned).
func waitLate(t *testing.T, n int, late func(i int) time.Duration) (planned, sends []time.Time) {
	t.Helper()
	ctx := context.Background()
	clk := clockwork.NewFakeClockAt(t0)
	grants := make(chan time.Time, n)
	p := New(clk, 10, Options{OnGrant: func(at time.Time) { grants <- at }})
	for i := range n {
		done := make(chan error, 1)
		go func() { done <- p.Wait(ctx) }()
		at := <-grants
		planned = append(planned, at)
		if at.After(clk.Now()) {
			require.NoError(t, clk.BlockUntilContext(ctx, 1))
			clk.Advance(at.Sub(clk.Now()) + late(i))
		}
		require.NoError(t, <-done)
		sends = append(sends, clk.Now())
	}
	return planned, sends
}

// A call that leaves late (Wait woke up after its time: a busy machine) must not let the calls a
// second later into its window: the grant rate calls after it waits for its actual send time.
func TestLimiterLateSendPushesTheGrantASecondLater(t *testing.T) {
	t.Parallel()
	const late = 30 * time.Millisecond // more than the 2 % margin's ~20 ms of room
	_, sends := waitLate(t, 14, func(i int) time.Duration {
		if i == 2 {
			return late // this wake-up comes late
		}
		return 0
	})
	require.LessOrEqual(t, MaxInAnySecond(sends), 10, "sends: %v", sends)
	// The 10th grant after the late one is at least one second plus half the room after it
	// actually left (more once the late wake-up widens the spacing).
	span := 10 * (time.Second * 10 / 98)
	require.GreaterOrEqual(t, sends[12].Sub(sends[2]), (time.Second+span)/2)
	require.Equal(t, late, sends[2].Sub(sends[1])-time.Second*10/98)
}

// A little lateness, within half the margin's room, changes nothing.
func TestLimiterSmallLatenessKeepsTheSpacing(t *testing.T) {
	t.Parallel()
	planned, _ := waitLate(t, 30, func(int) time.Duration { return 2 * time.Millisecond })
	// 2 ms is within the margin's room (and within the spacing floor): every grant keeps the
	// least interval after the previous one.
	for i := 1; i < len(planned); i++ {
		require.LessOrEqual(t, planned[i].Sub(planned[i-1]), time.Second*10/98+time.Microsecond, "grant %d", i)
	}
}

// TestHighRateKeepsNoRing: a pace far above any API limit (a benchmark of the limiter's own cost)
// allocates no send-time ring as long as its rate, and still grants.
func TestHighRateKeepsNoRing(t *testing.T) {
	lim := New(clockwork.NewRealClock(), 1_000_000_000, Options{})
	require.Empty(t, lim.sent)
	for range 1000 {
		require.NoError(t, lim.Wait(context.Background()))
	}
	lim.SetRate(10)
	require.Len(t, lim.sent, 10)
	lim.SetRate(1_000_000_000)
	require.Empty(t, lim.sent)
}
