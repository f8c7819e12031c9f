package history_test

import (
	"context"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCoverageViewsAtScale checks the coverage views over a generated history of 10 daily
// policies of 1,000 instances each, mostly available, and logs p50/p95 per query. By default it
// generates 20,000 runs (two days); with IMAGER_BENCH_COVERAGE=1 it generates IMAGER_BENCH_RUNS
// runs (1,000,000 unless set) for the figures in BENCHMARKS.md. It asserts the views' contents,
// never timings.
func TestCoverageViewsAtScale(t *testing.T) {
	runs, repeat := 20_000, 3
	if os.Getenv("IMAGER_BENCH_COVERAGE") == "1" {
		runs, repeat = 1_000_000, 40
		if v, err := strconv.Atoi(os.Getenv("IMAGER_BENCH_RUNS")); err == nil && v > 0 {
			runs = v
		}
	}
	ctx := context.Background()
	s := newStore(t)
	pool := s.Pool()
	days := runs / 10_000
	start := time.Now()
	// Generated in bulk, then the kept tables rebuilt (RebuildDerived), as a bulk import would be.
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	for _, q := range []string{
		`INSERT INTO policies (name, schedule, timezone, interval_seconds, overdue_seconds, enabled, source_file, source_line, loaded_at)
		 SELECT 'policy-' || p, '0 3 * * *', 'UTC', 86400, 129600, true, 'p.yaml', p, now() FROM generate_series(0, 9) p`,
		`INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at, finished_at, status, image_name,
			image_id, error_code, attempts, daemon_id)
		 SELECT 'policy-' || (i % 10), 'ins-' || lpad(i::text, 8, '0'), 'ap-guangzhou', slot, slot,
			CASE WHEN st = 'requested' THEN NULL ELSE slot + interval '20 minutes' END, st,
			'img-name-' || i || '-' || d, CASE WHEN st IN ('available', 'requested') THEN 'img-' || i || '-' || d END,
			CASE WHEN st = 'failed' THEN 'InternalError' END, 2, 'bench'
		 FROM generate_series(0, 9999) i, generate_series(1, ` + strconv.Itoa(days) + `) d,
			LATERAL (SELECT date_trunc('day', now()) - d * interval '1 day' + interval '3 hours' AS slot,
				CASE WHEN d = 1 AND i % 50 = 0 THEN 'requested' WHEN (i * 7 + d) % 20 = 0 THEN 'failed'
					WHEN (i * 7 + d) % 33 = 0 THEN 'missed' WHEN i % 100 = 1 AND d < 4 THEN 'failed'
					ELSE 'available' END AS st) x`,
		`ANALYZE`,
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err, q)
	}
	conn.Release()
	require.NoError(t, s.RebuildDerived(ctx))
	_, err = pool.Exec(ctx, `ANALYZE`)
	require.NoError(t, err)
	t.Logf("generated %d runs over %d days in %s", runs, days, time.Since(start).Round(time.Millisecond))

	// What the views hold: one coverage row per (policy, instance), one daily_coverage row per
	// pair and day (one slot a day), and rpo_breaches exactly the overdue coverage rows.
	count := func(sql string) int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, sql).Scan(&n), sql)
		return n
	}
	require.Equal(t, 10_000, count(`SELECT count(*) FROM coverage`))
	require.Equal(t, 10_000*days, count(`SELECT count(*) FROM daily_coverage`))
	require.Equal(t, count(`SELECT count(*) FROM coverage WHERE overdue`), count(`SELECT count(*) FROM rpo_breaches`))
	require.Zero(t, count(`SELECT count(*) FROM coverage WHERE last_slot <> date_trunc('day', now()) - interval '1 day' + interval '3 hours'`),
		"every instance's newest slot is yesterday's")

	queries := []struct{ name, sql string }{
		{"coverage, all rows", `SELECT * FROM coverage`},
		{"coverage, one instance", `SELECT * FROM coverage WHERE instance_id = 'ins-00004242'`},
		{"rpo_breaches, all rows", `SELECT * FROM rpo_breaches`},
		{"rpo_breaches per policy (metric)", `SELECT p.name, count(b.instance_id) FROM policies p LEFT JOIN rpo_breaches b ON b.policy = p.name WHERE p.removed_at IS NULL GROUP BY p.name`},
		{"daily_coverage, one policy, 30 days", `SELECT * FROM daily_coverage WHERE policy = 'policy-3' AND day > current_date - 30`},
		{"daily_coverage, one instance, 30 days", `SELECT * FROM daily_coverage WHERE instance_id = 'ins-00004242' AND day > current_date - 30`},
	}
	for _, q := range queries {
		var took []time.Duration
		var n int
		for range repeat {
			t0 := time.Now()
			rows, err := pool.Query(ctx, q.sql)
			require.NoError(t, err)
			n = 0
			for rows.Next() {
				n++
			}
			require.NoError(t, rows.Err())
			took = append(took, time.Since(t0))
		}
		sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
		t.Logf("%-40s rows=%6d p50=%7.2fms p95=%7.2fms", q.name, n,
			float64(took[len(took)/2].Microseconds())/1000, float64(took[len(took)*95/100].Microseconds())/1000)
	}

	// The triggers' cost on the write path: one run claimed, requested and made available.
	var took []time.Duration
	base := time.Now().UTC().Truncate(time.Hour)
	writes := 20 * repeat
	for i := range writes {
		t0 := time.Now()
		r := claim(t, s, "policy-1", "ins-00000001", base.Add(time.Duration(i)*time.Minute))
		require.NoError(t, s.RunRequested(ctx, r.ID, "img-x"+strconv.Itoa(i), "req"))
		require.NoError(t, s.RunAvailable(ctx, r.ID, nil, "", base.Add(time.Duration(i)*time.Minute+time.Second)))
		took = append(took, time.Since(t0))
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	t.Logf("claim+requested+available (3 writes)     p50=%7.2fms p95=%7.2fms", float64(took[writes/2].Microseconds())/1000, float64(took[writes*95/100].Microseconds())/1000)
}
