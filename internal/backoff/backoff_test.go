package backoff

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNextDoublesWithinJitterUpToMax(t *testing.T) {
	t.Parallel()
	p := Policy{Initial: 200 * time.Millisecond, Max: 30 * time.Second}
	j := NewJitter(rand.New(rand.NewPCG(1, 2)))
	for n, ceiling := range map[int]time.Duration{
		1: 200 * time.Millisecond, 2: 400 * time.Millisecond, 3: 800 * time.Millisecond,
		8: 25600 * time.Millisecond, 9: 30 * time.Second, 40: 30 * time.Second,
	} {
		require.Equal(t, ceiling, p.Ceiling(n), "ceiling after failure %d", n)
		for range 100 {
			d, ok := p.Next(n, 0, j)
			require.True(t, ok)
			require.GreaterOrEqual(t, d, ceiling/2)
			require.LessOrEqual(t, d, ceiling)
		}
	}
}

func TestNextStopsByCountAndByElapsedTime(t *testing.T) {
	t.Parallel()
	p := Policy{Initial: time.Second, Max: 10 * time.Second, Attempts: 3}
	_, ok := p.Next(2, 0, nil)
	require.True(t, ok)
	_, ok = p.Next(3, 0, nil)
	require.False(t, ok, "three tries in all")

	p = Policy{Initial: time.Minute, MaxElapsed: 90 * time.Second}
	d, ok := p.Next(1, 60*time.Second, nil)
	require.True(t, ok)
	require.Equal(t, 30*time.Second, d, "cut to end at MaxElapsed")
	_, ok = p.Next(2, 90*time.Second, nil)
	require.False(t, ok)
}

func TestUntilNeverPlansARetryPastTheDeadline(t *testing.T) {
	t.Parallel()
	now := time.Date(2027, 1, 1, 3, 0, 0, 0, time.UTC)
	p := Policy{Initial: 10 * time.Second}
	d, ok := p.Until(1, 0, now, now.Add(4*time.Second), nil)
	require.True(t, ok)
	require.Equal(t, 4*time.Second, d)
	_, ok = p.Until(1, 0, now, now, nil)
	require.False(t, ok, "the deadline has come")
	d, ok = p.Until(1, 0, now, time.Time{}, nil)
	require.True(t, ok)
	require.Equal(t, 7500*time.Millisecond, d, "no deadline: the plain backoff (nil jitter draws the middle)")
}
