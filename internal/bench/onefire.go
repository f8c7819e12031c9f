package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/imager-dev/imager/internal/history"
)

// OneFireParams sizes the one-fire benchmark: one policy whose selector matches Targets
// instances fires once, and its first runs end one by one.
type OneFireParams struct {
	Targets int
	// Windows are the completion counts at which the cost of a terminal write is reported: the
	// mean over the Window writes that end at each (e.g. writes 1..1000 and 9,001..10,000).
	Windows []int
	Window  int
}

// OneFireResult is what one run of the one-fire benchmark measured.
type OneFireResult struct {
	Targets int
	// Claim is how long RunsClaimFire took to write every slot row of the fire, with what the
	// store keeps beside them (coverage, the fire and its counts, fire_started), in one transaction.
	Claim time.Duration
	// PerWrite is, per window end, the mean time of one terminal write (RunAvailable, with its
	// effects: coverage, latest image, the fire's counts) over the Window writes that end there.
	PerWrite map[int]time.Duration
}

// RunOneFire claims one fire of p.Targets instances on a new database, then marks its runs
// available one by one, as the tracker does, timing the claim and the writes.
func RunOneFire(ctx context.Context, env Env, p OneFireParams) (OneFireResult, error) {
	res := OneFireResult{Targets: p.Targets, PerWrite: map[int]time.Duration{}}
	store, _, err := openStore(ctx, env)
	if err != nil {
		return res, err
	}
	defer store.Close()
	slot := time.Now().UTC().Truncate(time.Hour)
	if _, err := store.PoliciesSync(ctx, []history.PolicyRow{{Name: "broad", Schedule: "0 * * * *", Timezone: "UTC",
		Interval: time.Hour, Enabled: true, SourceFile: "bench.yaml", SourceLine: 1, LoadedAt: slot}}, slot); err != nil {
		return res, err
	}
	ps := make([]history.RunClaimParams, p.Targets)
	for i := range ps {
		id := fmt.Sprintf("ins-%08d", i)
		ps[i] = history.RunClaimParams{Policy: "broad", InstanceID: id, Region: region, ScheduledAt: slot, StartedAt: slot,
			ImageName: "broad-" + id + "-" + slot.Format("20060102-1504"), DaemonID: "imager-bench", Status: history.StatusPending}
	}
	start := time.Now()
	runs, _, err := store.RunsClaimFire(ctx, ps)
	res.Claim = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("claim %d slots: %w", p.Targets, err)
	}
	last := 0
	for _, w := range p.Windows {
		last = max(last, w)
	}
	if last > len(runs) {
		return res, fmt.Errorf("%d completions asked of a fire of %d runs", last, len(runs))
	}
	ends := map[int]bool{}
	for _, w := range p.Windows {
		ends[w] = true
	}
	var windowStart time.Time
	for k := range last {
		if ends[k+p.Window] {
			windowStart = time.Now()
		}
		r := runs[k]
		if err := store.RunAvailable(ctx, r.ID, nil, fmt.Sprintf("img-%08d", k), slot.Add(time.Duration(k)*time.Millisecond+time.Minute)); err != nil {
			return res, fmt.Errorf("write %d: %w", k+1, err)
		}
		if ends[k+1] {
			res.PerWrite[k+1] = time.Since(windowStart) / time.Duration(p.Window)
		}
	}
	return res, ctx.Err()
}
