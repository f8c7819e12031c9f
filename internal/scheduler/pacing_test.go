package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pace"
)

// TestFortyInstancesAtTheLimitAreSpacedOnTheClock is the spacing half of
// TestIntegrationFortyInstancesAtTheLimit, on the fake clock: one policy of 40 instances and one
// that answers a permanent error, through the real pool of 4 workers and its pace at 10 calls/s.
// Every CreateImage is sent at least one pace interval (1/9.8 s) after the previous one, so no
// sliding second holds more than 10 of them; the permanent error is one call among them, not
// retried. The real-time test cannot assert this: a busy machine wakes a worker late and sends two
// calls closer together than the pace granted them.
func TestFortyInstancesAtTheLimitAreSpacedOnTheClock(t *testing.T) {
	t.Parallel()
	const rate, workers = 10, 4
	const missing = "ins-gone0001"
	ids := instanceIDs("it", 40)
	p := testPolicy("fleet-nightly-web", append(ids, missing)...)
	h := newHarness(t, testConfig(rate, workers, p))
	h.cvm.script(missing, apiError("InvalidInstanceId.NotFound", cvm.ClassPermanent))
	h.start()

	const n = 41
	c := h.goRunOnce("fleet-nightly-web")
	// Every job not yet sent is held by a worker waiting on the pace once the scheduler settles,
	// so the clock only moves once every call that is due has been made. The step is small
	// against the interval, so a call is sent at most one step after the pace grants it.
	const step = time.Millisecond
	creates := func() int { return h.cvm.count("CreateImage") }
	for creates() < n {
		h.settle(func() int { return min(workers, n-creates()) })
		h.clk.Advance(step)
	}
	<-c.done
	require.NoError(t, c.err)
	require.Len(t, c.out, n)
	for _, o := range c.out {
		if o.InstanceID == missing {
			require.Equal(t, history.StatusFailed, o.Status)
			require.Equal(t, "InvalidInstanceId.NotFound", o.ErrorCode)
			require.Equal(t, 1, o.Attempts, "permanent errors are not retried")
			continue
		}
		require.Equal(t, history.StatusRequested, o.Status, "%+v", o)
		require.Equal(t, 1, o.Attempts)
	}

	calls := h.cvm.callsOf("CreateImage")
	require.Len(t, calls, n, "one call per instance: nothing was throttled or retried")
	times := callTimes(calls)
	interval := func(margin float64) time.Duration { // the pace's spacing at a jitter margin
		return time.Duration(float64(time.Second) / (float64(rate) * (1 - margin)))
	}
	minGap := interval(pace.DefaultMargin)
	for i := 1; i < n; i++ {
		require.GreaterOrEqual(t, times[i].Sub(times[i-1]), minGap-step,
			"call %d (%s) was sent %s after the previous one", i, calls[i].Create.InstanceID, times[i].Sub(times[i-1]))
	}
	require.LessOrEqual(t, pace.MaxInAnySecond(times), rate)
	// And the pool keeps to the pace while work is queued: the 41 calls take no longer than 40
	// of the widest intervals the pace may choose (5 % margin) plus a step each.
	maxGap := interval(pace.DefaultMaxMargin) + step
	require.LessOrEqual(t, times[n-1].Sub(times[0]), (n-1)*maxGap)
}
