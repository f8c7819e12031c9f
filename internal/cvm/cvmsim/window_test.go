package cvmsim

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestMaxInWindow(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(offsets ...time.Duration) []time.Time {
		out := make([]time.Time, len(offsets))
		for i, o := range offsets {
			out[i] = t0.Add(o)
		}
		return out
	}
	every := func(n int, step time.Duration) []time.Time {
		out := make([]time.Time, n)
		for i := range out {
			out[i] = t0.Add(time.Duration(i) * step)
		}
		return out
	}
	ms := time.Millisecond
	tests := []struct {
		name  string
		times []time.Time
		want  int
	}{
		{"none", nil, 0},
		{"one", at(0), 1},
		{"ten at once", at(0, 0, 0, 0, 0, 0, 0, 0, 0, 0), 10},
		{"exactly a second apart never share a window", at(0, 1000*ms), 1},
		{"just under a second apart share a window", at(0, 999*ms), 2},
		{"unsorted input", at(999*ms, 0, 500*ms, 2000*ms), 3},
		{"steady 10 per second", every(30, 100*ms), 10},
		{"steady 10 per second plus one squeezed in", append(every(30, 100*ms), t0.Add(1050*ms)), 11},
		{"burst at the end of one second and the start of the next", append(at(900*ms, 950*ms, 990*ms), at(1000*ms, 1010*ms, 1020*ms)...), 6},
		{"bursts two seconds apart", append(at(0, 1*ms, 2*ms), at(2000*ms, 2001*ms)...), 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, MaxInWindow(tt.times, time.Second))
		})
	}
}

func TestMaxInWindowDoesNotReorderInput(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	in := []time.Time{t0.Add(time.Second), t0}
	MaxInWindow(in, time.Second)
	require.Equal(t, t0.Add(time.Second), in[0])
}

func TestSlidingWindowAdmit(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	var w slidingWindow
	for i := range 3 {
		require.True(t, w.admit(t0, 3, time.Second), "call %d", i)
	}
	require.False(t, w.admit(t0.Add(999*time.Millisecond), 3, time.Second), "fourth call inside the second")
	require.True(t, w.admit(t0.Add(time.Second), 3, time.Second), "the first three left the window")
	require.True(t, w.admit(t0.Add(time.Second), 0, time.Second), "limit 0 admits everything")
	require.Len(t, w.times, 2, "expired arrivals are dropped")
}
