package cvmsim

import (
	"slices"
	"time"
)

// MaxInWindow returns the largest number of times that fit in one half-open window
// [t, t+span) for any t. Times need not be sorted. Two times exactly span apart never share a
// window, matching the limiter: 10 calls at t fill the second, the next fits at t+span.
func MaxInWindow(times []time.Time, span time.Duration) int {
	if len(times) == 0 {
		return 0
	}
	sorted := slices.Clone(times)
	slices.SortFunc(sorted, func(a, b time.Time) int { return a.Compare(b) })
	best, first := 0, 0
	for last := range sorted {
		for sorted[last].Sub(sorted[first]) >= span {
			first++
		}
		best = max(best, last-first+1)
	}
	return best
}

// slidingWindow holds the arrival times of the admitted calls of one action that are still
// inside the last second, oldest first.
type slidingWindow struct {
	times []time.Time
}

// admit records a call arriving at now and reports true when fewer than limit admitted calls
// arrived in (now-span, now]; otherwise it reports false and records nothing. limit <= 0 admits
// every call.
func (w *slidingWindow) admit(now time.Time, limit int, span time.Duration) bool {
	expired := 0
	for expired < len(w.times) && now.Sub(w.times[expired]) >= span {
		expired++
	}
	w.times = w.times[expired:]
	if limit > 0 && len(w.times) >= limit {
		return false
	}
	w.times = append(w.times, now)
	return true
}
