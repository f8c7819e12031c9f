package backoff

import (
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
)

// record counts calls answers of which every fifth (from the first) is a transient failure when
// failEvery is 5, and so on; failEvery 1 fails them all, 0 none.
func record(b *Budget, calls, failEvery int) {
	for i := range calls {
		b.Record(failEvery > 0 && i%failEvery == 0)
	}
}

func TestBudgetRetriesQuicklyWhileTheAPIFailsRarely(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	b := NewBudget(clk, BudgetOptions{})

	_, ok := b.Quick(1)
	require.False(t, ok, "no calls yet: nothing says the API fails rarely")
	record(b, DefaultBudgetMinCalls-1, 5)
	_, ok = b.Quick(1)
	require.False(t, ok, "too few calls to judge")

	record(b, 100, 5) // 20 % failing: the pacing benchmark's fault rate
	ratio, calls := b.Ratio()
	require.Equal(t, DefaultBudgetMinCalls-1+100, calls)
	require.InDelta(t, 0.2, ratio, 0.01)
	d, ok := b.Quick(1)
	require.True(t, ok)
	require.Equal(t, DefaultQuickDelay, d)
	d, ok = b.Quick(DefaultQuickRetries)
	require.True(t, ok, "quick up to the last quick retry")
	require.Equal(t, DefaultQuickDelay, d)
	_, ok = b.Quick(DefaultQuickRetries + 1)
	require.False(t, ok, "one call that keeps failing falls back to its backoff")
	_, ok = b.Quick(0)
	require.False(t, ok)
}

func TestBudgetBacksOffWhileTheAPIFailsBroadly(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	b := NewBudget(clk, BudgetOptions{})
	record(b, 100, 0)
	_, ok := b.Quick(1)
	require.True(t, ok)

	// An outage: every call fails. Quick retries go on only until the failures reach the
	// threshold of the window's calls.
	quick := 0
	for {
		b.Record(true)
		if _, ok := b.Quick(1); !ok {
			break
		}
		quick++
	}
	require.Equal(t, 99, quick, "fails ≥ half of the window's calls after 100 failures against 100 successes")
	ratio, _ := b.Ratio()
	require.GreaterOrEqual(t, ratio, DefaultBudgetThreshold)

	// The window slides: once the old successes fall out, only failures are left.
	clk.Advance(DefaultBudgetWindow)
	ratio, calls := b.Ratio()
	require.Zero(t, calls, "the window forgot the outage's start")
	require.Zero(t, ratio)
	record(b, 30, 1)
	_, ok = b.Quick(1)
	require.False(t, ok)

	// The API recovers: as successes fill the window, quick retries come back.
	clk.Advance(DefaultBudgetWindow)
	record(b, 50, 0)
	_, ok = b.Quick(1)
	require.True(t, ok)
}

func TestBudgetWindowSlidesBucketByBucket(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	b := NewBudget(clk, BudgetOptions{Window: 10 * time.Second, MinCalls: 1, Threshold: 0.5, QuickDelay: time.Millisecond, QuickRetries: 2})
	record(b, 10, 1) // all failed, at t
	clk.Advance(5 * time.Second)
	record(b, 30, 0) // all fine, at t+5s
	ratio, calls := b.Ratio()
	require.Equal(t, 40, calls)
	require.InDelta(t, 0.25, ratio, 1e-9)
	d, ok := b.Quick(2)
	require.True(t, ok)
	require.Equal(t, time.Millisecond, d)
	clk.Advance(5 * time.Second) // the failures of t fall out; t+5s is still within the window
	ratio, calls = b.Ratio()
	require.Equal(t, 30, calls)
	require.Zero(t, ratio)
	clk.Advance(5 * time.Second)
	_, calls = b.Ratio()
	require.Zero(t, calls)
}
