package bench

import (
	"context"
	"math"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/policy"
)

// The smoke tests run each benchmark once at a tiny size (the sizes of `imager-bench --quick`) and
// check that the results are well-formed and that what must hold whatever the timing holds. They
// assert no speed.

func TestPacingSmoke(t *testing.T) {
	t.Parallel()
	for _, p := range QuickScenarios().Pacing {
		run, err := RunPacing(context.Background(), testEnv(t), p)
		require.NoError(t, err)
		im := run.Imager
		require.Equal(t, p.Calls, im.Requested, "every run requested: nothing lost")
		require.Zero(t, im.Lost)
		require.Positive(t, im.Makespan)
		require.Zero(t, im.Rejected, "N < L: nothing can be over the limit")
		// Every InternalError was retried once more; nothing else failed.
		require.Equal(t, im.Requested+im.InternalErrors, im.Calls)
		require.LessOrEqual(t, im.MaxInAnySecond, im.Calls)
		require.Equal(t, im.MaxInAnySecond, im.MaxAdmittedInAnySecond)
		require.Positive(t, im.AdmittedRate)
		if p.FaultRate == 0 {
			require.Zero(t, im.InternalErrors)
			require.Equal(t, p.Calls, im.Calls)
		}
		if p.NaiveRetries < 0 {
			require.Nil(t, run.Naive)
			continue
		}
		require.NotNil(t, run.Naive)
		nv := *run.Naive
		require.Equal(t, p.Calls, nv.Requested, "N < L: the naive client is never rejected either")
		require.Equal(t, p.Calls, nv.Calls)
		require.Zero(t, nv.Rejected)
		require.Positive(t, nv.Makespan)
	}
}

func TestFireSmoke(t *testing.T) {
	t.Parallel()
	p := QuickScenarios().Fire
	run, err := RunFire(context.Background(), testEnv(t), p)
	require.NoError(t, err)
	require.Len(t, run.Latencies, p.Policies, "one first call per policy")
	require.True(t, slices.IsSorted(run.Latencies))
	require.GreaterOrEqual(t, run.First(), time.Duration(0), "no call leaves before its slot")
	require.GreaterOrEqual(t, run.FirstArrival, run.First(), "a call arrives after it leaves")
	require.Equal(t, run.First(), run.Latencies[0])
	require.Equal(t, run.Last(), run.Latencies[len(run.Latencies)-1])
	require.Positive(t, run.DrainRate)
	require.Positive(t, run.MaxInAnySecond)
	require.LessOrEqual(t, run.MaxInAnySecond, p.Policies)
}

func TestScaleSmoke(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	env.Binary = buildImager(t)
	p := QuickScenarios().Scale
	runs, err := RunScale(context.Background(), env, p, 2)
	require.NoError(t, err, "validate passes, both daemons reach \"imager running\" and exit 0 on SIGTERM")
	require.Len(t, runs, 2)
	for _, r := range runs {
		require.Positive(t, r.Validate)
		require.Positive(t, r.Startup)
		require.Greater(t, r.PeakRSS, int64(1<<20), "a Go daemon holds more than a MiB")
		require.True(t, math.IsNaN(r.IdleCPU), "no idle window, no idle figure")
	}
}

func TestScalePoliciesStayIdle(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 29, 0, 30, 0, 0, time.UTC) // the night Europe/Berlin moves to summer time
	data, instances := scalePolicies(ScaleParams{Policies: 40, Instances: 3}, now)
	require.Len(t, instances, 120)
	cfg, err := policy.LoadBytes("scale.yaml", data)
	require.NoError(t, err)
	require.Len(t, cfg.Policies, 40)
	for _, p := range cfg.Policies {
		require.Len(t, p.Instances, 3)
		next := p.Schedule.Next(now)
		require.Falsef(t, next.Before(now.Add(2*time.Hour)), "%s fires at %s, within two hours", p.Name, next)
	}
}

func TestProcReaders(t *testing.T) {
	t.Parallel()
	pid := os.Getpid()
	ticks, err := readCPUTicks(pid)
	require.NoError(t, err)
	require.GreaterOrEqual(t, int64(ticks), int64(0))
	rss, err := readPeakRSS(pid)
	require.NoError(t, err)
	require.Greater(t, rss, int64(1<<20))
	require.Positive(t, clockTicks())
	_, err = readCPUTicks(-1)
	require.Error(t, err)
}

func TestHistorySmoke(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../docs/audit.md")
	require.NoError(t, err)
	queries := CookbookQueries(readme)
	require.NotEmpty(t, queries)
	p := QuickScenarios().History
	p.Queries = queries
	res, err := RunHistory(context.Background(), testEnv(t), p, 2)
	require.NoError(t, err, "every cookbook query runs against the migrated schema")

	ds := res.Dataset
	require.Equal(t, p.Runs, ds.Runs)
	require.Equal(t, p.Instances, ds.Instances)
	require.Equal(t, p.Runs/p.Instances, ds.Slots)
	for status, n := range ds.ByStatus {
		require.Containsf(t, []string{"pending", "requested", "available", "failed", "missed", "skipped"}, status, "status %s", status)
		require.Positive(t, n)
	}
	require.Positive(t, ds.ByStatus["available"])
	require.Positive(t, ds.ByStatus["failed"])
	require.Greater(t, ds.Attempts, ds.ByStatus["available"], "every accepted run has its call, some more")
	require.Positive(t, ds.Deletions, "40 daily slots: the oldest are past max_age 30d")

	require.Len(t, res.Runs, 2)
	for _, r := range res.Runs {
		require.Positive(t, r.WriteRate)
		require.Len(t, r.Queries, len(queries))
		for i, q := range r.Queries {
			require.Equal(t, queries[i].Title, q.Title)
			require.Equal(t, p.Samples, q.Samples)
			require.Positive(t, q.P50)
			require.LessOrEqual(t, q.P50, q.P95)
		}
	}
	require.Len(t, res.Plans, len(queries))
	for _, plan := range res.Plans {
		require.NotEmpty(t, plan.Plan, plan.Title)
	}
}

func TestHotSmoke(t *testing.T) {
	t.Parallel()
	runs, err := RunHot(true)
	require.NoError(t, err)
	require.Len(t, runs, len(HotPieces()))
	for _, r := range runs {
		require.Positive(t, r.NsPerOp)
	}
}

func TestOneFireSmoke(t *testing.T) {
	t.Parallel()
	res, err := RunOneFire(context.Background(), testEnv(t), OneFireParams{Targets: 500, Windows: []int{100, 300}, Window: 100})
	require.NoError(t, err)
	require.Equal(t, 500, res.Targets)
	require.Positive(t, res.Claim)
	require.Len(t, res.PerWrite, 2)
	for _, d := range res.PerWrite {
		require.Positive(t, d)
	}
}

func TestHooksSmoke(t *testing.T) {
	t.Parallel()
	p := QuickScenarios().Hooks
	run, err := RunHooks(context.Background(), testEnv(t), p)
	require.NoError(t, err)
	require.Len(t, run.Frozen, p.Instances, "every instance imaged between its two hook tasks")
	require.Len(t, run.Extra, p.Instances)
	require.True(t, slices.IsSorted(run.Frozen))
	require.Positive(t, run.Frozen[0], "a post starts after its pre ended")
	require.LessOrEqual(t, run.MaxCreateInAnySecond, p.Limit)
	require.LessOrEqual(t, run.MaxTATInAnySecond, 20)
}
