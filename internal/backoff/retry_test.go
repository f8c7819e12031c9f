package backoff

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
)

var (
	errFlaky = errors.New("InternalError")
	errAuth  = errors.New("AuthFailure")
)

// retried is what one Retry did: its error, the try numbers fn saw with their fake times, and
// the waits OnRetry was told of.
type retried struct {
	err   error
	tries []int
	at    []time.Time
	waits []time.Duration
}

// runRetry runs Retry in a goroutine and moves clk through every wait it starts, until it returns.
func runRetry(t *testing.T, ctx context.Context, clk *clockwork.FakeClock, p Policy, fn func(try int) error, opts ...Option) retried {
	t.Helper()
	var r retried
	opts = append(opts, OnRetry(func(try int, err error, wait time.Duration) {
		r.waits = append(r.waits, wait)
	}))
	done := make(chan error, 1)
	go func() {
		done <- Retry(ctx, clk, p, func(try int) error {
			r.tries = append(r.tries, try)
			r.at = append(r.at, clk.Now())
			return fn(try)
		}, opts...)
	}()
	bound, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a bound, not a timing
	defer cancel()
	for {
		select {
		case r.err = <-done:
			return r
		default:
		}
		waiting, stop := context.WithCancel(bound)
		blocked := make(chan error, 1)
		go func() { blocked <- clk.BlockUntilContext(waiting, 1) }()
		select {
		case r.err = <-done:
			stop()
			<-blocked
			return r
		case err := <-blocked:
			stop()
			require.NoError(t, err, "Retry neither waited nor returned")
			// The wait is one timer: moving to its end fires it (and nothing else waits).
			clk.Advance(r.waits[len(r.waits)-1])
		}
	}
}

func TestRetryStopsAtTheFirstSuccess(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	start := clk.Now()
	r := runRetry(t, context.Background(), clk, Policy{Initial: time.Second, Max: 4 * time.Second, Attempts: 5},
		func(try int) error {
			if try < 3 {
				return errFlaky
			}
			return nil
		})
	require.NoError(t, r.err)
	require.Equal(t, []int{1, 2, 3}, r.tries)
	// No jitter given: the middle of [c/2, c] for c = 1 s, then 2 s.
	require.Equal(t, []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond}, r.waits)
	require.Equal(t, []time.Time{start, start.Add(750 * time.Millisecond), start.Add(2250 * time.Millisecond)}, r.at)
}

func TestRetryStopsAfterTheAttempts(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	r := runRetry(t, context.Background(), clk, Policy{Initial: time.Second, Attempts: 3},
		func(int) error { return errFlaky },
		WithJitter(NewJitter(rand.New(rand.NewPCG(1, 2)))))
	require.ErrorIs(t, r.err, errFlaky)
	require.Equal(t, errFlaky, r.err, "the last try's own error")
	require.Equal(t, []int{1, 2, 3}, r.tries)
	require.Len(t, r.waits, 2)
	require.GreaterOrEqual(t, r.waits[0], 500*time.Millisecond)
	require.LessOrEqual(t, r.waits[0], time.Second)
	require.GreaterOrEqual(t, r.waits[1], time.Second)
	require.LessOrEqual(t, r.waits[1], 2*time.Second)
}

func TestRetryStopsAtMaxElapsedAndAtTheDeadline(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	start := clk.Now()
	r := runRetry(t, context.Background(), clk, Policy{Initial: 4 * time.Second, MaxElapsed: 10 * time.Second},
		func(int) error { return errFlaky })
	require.ErrorIs(t, r.err, errFlaky)
	// 3 s (middle of 2–4 s), then 6 s (of 4–8 s), then cut to end at 10 s; then elapsed is spent.
	require.Equal(t, []time.Duration{3 * time.Second, 6 * time.Second, time.Second}, r.waits)
	require.Equal(t, start.Add(10*time.Second), r.at[len(r.at)-1])

	clk = clockwork.NewFakeClock()
	start = clk.Now()
	r = runRetry(t, context.Background(), clk, Policy{Initial: 4 * time.Second},
		func(int) error { return errFlaky }, Deadline(start.Add(5*time.Second)))
	require.ErrorIs(t, r.err, errFlaky)
	require.Equal(t, []time.Duration{3 * time.Second, 2 * time.Second}, r.waits, "the wait is cut at the deadline")
	require.Equal(t, start.Add(5*time.Second), r.at[len(r.at)-1], "no try starts after the deadline")
}

func TestRetryReturnsAPermanentErrorAtOnce(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	r := runRetry(t, context.Background(), clk, Policy{Initial: time.Second},
		func(try int) error {
			if try == 2 {
				return Permanent(errAuth)
			}
			return errFlaky
		})
	require.Equal(t, errAuth, r.err, "unwrapped from Permanent")
	require.Equal(t, []int{1, 2}, r.tries)
	require.Nil(t, Permanent(nil))
}

func TestRetryWaitsWhatAfterAsks(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	start := clk.Now()
	r := runRetry(t, context.Background(), clk, Policy{Initial: time.Hour, Attempts: 3},
		func(try int) error { return After(errFlaky, time.Duration(try)*time.Second) },
		Deadline(start.Add(2500*time.Millisecond)))
	require.Equal(t, errFlaky, r.err)
	require.Equal(t, []time.Duration{time.Second, 1500 * time.Millisecond}, r.waits, "After's wait, cut at the deadline")
	require.Nil(t, After(nil, time.Second))
}

func TestRetryResumesAfterTheCallersFailures(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	start := clk.Now()
	r := runRetry(t, context.Background(), clk, Policy{Initial: time.Second, Attempts: 4},
		func(int) error { return errFlaky }, AlreadyFailed(2, errAuth))
	require.Equal(t, errFlaky, r.err)
	require.Equal(t, []int{3, 4}, r.tries, "the caller made tries 1 and 2")
	require.Equal(t, start.Add(1500*time.Millisecond), r.at[0], "waits the delay after the 2nd failure first")
	require.Equal(t, []time.Duration{1500 * time.Millisecond, 3 * time.Second}, r.waits)

	// A policy that stops before Retry's first try returns the caller's error.
	err := Retry(context.Background(), clk, Policy{Attempts: 2}, func(int) error { return nil }, AlreadyFailed(2, errAuth))
	require.Equal(t, errAuth, err)
	err = Retry(context.Background(), clk, Policy{}, func(int) error { return nil }, AlreadyFailed(1, errAuth), Deadline(clk.Now()))
	require.Equal(t, errAuth, err, "the deadline has come")
}

func TestRetryEndsWithTheContext(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	calls := 0
	go func() {
		done <- Retry(ctx, clk, Policy{Initial: time.Minute}, func(int) error { calls++; return errFlaky })
	}()
	require.NoError(t, clk.BlockUntilContext(context.Background(), 1), "Retry waits out its backoff")
	cancel()
	err := <-done
	require.ErrorIs(t, err, ErrInterrupted)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, errFlaky, "the last try's error is kept")
	require.Equal(t, 1, calls)

	// A try that failed after ctx ended (a call cut off by shutdown) is not retried.
	ctx, cancel = context.WithCancel(context.Background())
	calls = 0
	err = Retry(ctx, clk, Policy{Initial: time.Minute}, func(int) error { calls++; cancel(); return errFlaky })
	require.Equal(t, errFlaky, err)
	require.Equal(t, 1, calls)
}
