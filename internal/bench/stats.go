package bench

import (
	"math"
	"slices"
	"time"
)

// Summary is one figure over several runs: its median, minimum and maximum.
type Summary struct {
	Median, Min, Max float64
	Runs             int
}

// Summarize returns the median, minimum and maximum of xs (the mean of the two middle values when
// len(xs) is even). NaN values (a figure a run could not measure) are left out.
func Summarize(xs []float64) Summary {
	vals := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) {
			vals = append(vals, x)
		}
	}
	if len(vals) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(vals)
	n := len(vals)
	med := vals[n/2]
	if n%2 == 0 {
		med = (vals[n/2-1] + vals[n/2]) / 2
	}
	return Summary{Median: med, Min: vals[0], Max: vals[n-1], Runs: n}
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of ds by the nearest-rank method: the
// smallest value with at least p% of the values at or below it. It returns 0 for no values.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ratio is a/b, or NaN when b is zero.
func ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}
