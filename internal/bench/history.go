package bench

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/history"
)

// Query is one audit query of docs/audit.md's cookbook.
type Query struct {
	Title string
	SQL   string
	// Source says where the query is kept: "cookbook.go" (history.Cookbook: printed by imager
	// demo, and kept equal to docs/audit.md by a test) or "docs" (docs/audit.md alone).
	Source string
}

// HistoryParams is the history scenario.
type HistoryParams struct {
	Runs      int // image_runs rows generated (their attempts come with them)
	Instances int // distinct instances; Runs/Instances daily slots each, 10 instances per policy
	// WriteRuns is how many runs each write measurement records through the daemon's own write
	// path (RunClaim, AttemptInsert, RunRequested), from Writers goroutines at once.
	WriteRuns int
	Writers   int
	// Samples is how many timed executions each query gets per run (after an untimed one); a
	// query that has used SampleBudget stops early, after at least 5.
	Samples      int
	SampleBudget time.Duration
	Queries      []Query
}

// Dataset describes the generated history.
type Dataset struct {
	Runs, Attempts, Deletions, Instances, Policies, Slots int
	ByStatus                                              map[string]int
	Took                                                  time.Duration
}

// QueryTiming is one query's latency in one run: executed and every row read by the client.
type QueryTiming struct {
	Title    string
	P50, P95 time.Duration
	Rows     int
	Samples  int
}

// HistoryRun is one measurement over the generated history.
type HistoryRun struct {
	WriteRate float64 // runs recorded per second through the write path (3 statements each)
	Queries   []QueryTiming
}

// QueryPlan is a query's plan (EXPLAIN, costs off) and the indexes it reads.
type QueryPlan struct {
	Title   string
	Plan    string
	Indexes []string
	// SeqScans names the tables read whole.
	SeqScans []string
	// Execution is the server's own execution time (EXPLAIN ANALYZE, timing off), without sending
	// the rows; Rows is how many the query returned.
	Execution time.Duration
	Rows      int
}

// HistoryResult is the history benchmark: the dataset, its runs and the query plans.
type HistoryResult struct {
	Dataset Dataset
	Runs    []HistoryRun
	Plans   []QueryPlan
}

// docPlaceholders are the names the docs' queries use for "your instance" and "your policy", and
// the generated dataset's names that stand for them, so those queries read rows when timed.
var docPlaceholders = strings.NewReplacer("'ins-xxxxxxxx'", "'ins-00000001'", "'web-nightly'", "'policy-0000'")

// onDataset returns qs with the docs' placeholder names replaced by the dataset's.
func onDataset(qs []Query) []Query {
	out := make([]Query, len(qs))
	for i, q := range qs {
		q.SQL = docPlaceholders.Replace(q.SQL)
		out[i] = q
	}
	return out
}

// RunHistory generates the history once on a fresh, migrated database, then measures runs times:
// the write path's throughput, then every query's p50 and p95. The plans are read at the end.
func RunHistory(ctx context.Context, env Env, p HistoryParams, runs int) (HistoryResult, error) {
	if p.Runs < 1 || p.Instances < 10 || p.Instances%10 != 0 || p.Runs%p.Instances != 0 ||
		p.WriteRuns < 1 || p.Writers < 1 || p.Samples < 1 || runs < 1 {
		return HistoryResult{}, fmt.Errorf("history: bad parameters %+v, %d runs (instances a multiple of 10, runs a multiple of instances)", p, runs)
	}
	store, _, err := openStore(ctx, env)
	if err != nil {
		return HistoryResult{}, err
	}
	defer store.Close()

	var res HistoryResult
	if res.Dataset, err = generateHistory(ctx, store.Pool(), p.Runs, p.Instances); err != nil {
		return res, fmt.Errorf("generate history: %w", err)
	}
	p.Queries = onDataset(p.Queries)
	for run := range runs {
		var hr HistoryRun
		if hr.WriteRate, err = measureWrites(ctx, store, p, run); err != nil {
			return res, err
		}
		for _, q := range p.Queries {
			qt, err := timeQuery(ctx, store.Pool(), q, p.Samples, p.SampleBudget)
			if err != nil {
				return res, fmt.Errorf("%s: %w", q.Title, err)
			}
			hr.Queries = append(hr.Queries, qt)
		}
		res.Runs = append(res.Runs, hr)
	}
	for _, q := range p.Queries {
		plan, err := explain(ctx, store.Pool(), q)
		if err != nil {
			return res, fmt.Errorf("explain %s: %w", q.Title, err)
		}
		res.Plans = append(res.Plans, plan)
	}
	return res, nil
}

// generateSQL fills image_runs with runs $3 to $4-1 of $1 runs over $2 instances: instance i%$2, daily slot i/$2
// (the newest within the last day), policy instance/10 firing at a minute of the day of its own.
// Older slots: 93% available, 5% failed (five error codes), 1% skipped, 0.5% missed; the newest
// slot: 60% still requested, 0.2% pending. Runs retried once after InternalError: 10%; failed runs
// carry the calls their error code implies. Pseudo-random but deterministic.
const generateSQL = `
INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at, finished_at, status,
    image_name, image_id, image_size_gib, request_id, error_code, error_message, attempts, daemon_id, updated_at)
SELECT policy, instance_id, 'ap-guangzhou', scheduled_at, started_at,
       CASE WHEN status IN ('pending', 'requested') THEN NULL
            WHEN status = 'available' THEN started_at + (600 + h % 1800) * interval '1 second'
            WHEN status = 'failed' THEN started_at + (1 + h % 120) * interval '1 second'
            ELSE started_at END,
       status,
       policy || '-' || instance_id || '-' || to_char(scheduled_at, 'YYYYMMDD-HH24MI') || '-' || substr(md5(i::text), 1, 8),
       CASE WHEN status IN ('requested', 'available') THEN 'img-' || lpad(to_hex(i), 8, '0') END,
       CASE WHEN status = 'available' THEN 20 + h % 80 END,
       CASE WHEN status IN ('requested', 'available') THEN md5('req' || i)::uuid::text END,
       CASE WHEN status = 'failed' THEN (ARRAY['InternalError', 'InvalidInstanceId.NotFound',
            'MutexOperation.TaskRunning', 'ImageQuotaLimitExceeded', 'CREATEFAILED'])[1 + h % 5] END,
       CASE WHEN status = 'failed' THEN (ARRAY['An internal error has occurred. Retry your request.',
            'The instance does not exist.', 'The instance has an operation in progress.',
            'The custom image quota is reached.', 'The image could not be created.'])[1 + h % 5]
            WHEN status = 'skipped' THEN 'policy disabled'
            WHEN status = 'missed' THEN 'daemon shut down before the slot was sent' END,
       CASE WHEN status IN ('skipped', 'missed') THEN 0
            WHEN status = 'failed' THEN (ARRAY[5, 1, 4, 1, 1])[1 + h % 5]
            WHEN h % 10 = 3 THEN 2 ELSE 1 END,
       'imager-bench/' || (i % 3), started_at
FROM (
    SELECT i, policy, instance_id, scheduled_at, h,
           scheduled_at + (h % 5000) * interval '1 millisecond' AS started_at,
           CASE WHEN s = last AND h % 1000 < 2 THEN 'pending'
                WHEN s = last AND h % 10 < 6 THEN 'requested'
                WHEN h % 1000 < 50 THEN 'failed'
                WHEN h % 1000 < 60 THEN 'skipped'
                WHEN h % 1000 < 65 THEN 'missed'
                ELSE 'available' END AS status
    FROM (
        SELECT i, i / $2 AS s, $1 / $2 - 1 AS last, (i::bigint * 2654435761) % 4294967296 / 7 AS h,
               'policy-' || lpad(((i % $2) / 10)::text, 4, '0') AS policy,
               'ins-' || lpad((i % $2)::text, 8, '0') AS instance_id,
               date_trunc('minute', now()) - ($1 / $2 - i / $2) * interval '1 day'
                   + ((i % $2) / 10 % 1440) * interval '1 minute' AS scheduled_at
        FROM generate_series($3::int, $4::int - 1) AS i
    ) g
) r`

// generateAttemptsSQL adds one image_attempts row per call counted on each run: every call but the
// last answered InternalError; the last has the run's own outcome.
const generateAttemptsSQL = `
INSERT INTO image_attempts (run_id, attempt, action, started_at, duration_ms, request_id, error_code, error_message)
SELECT r.id, n, 'CreateImage', r.started_at + (n - 1) * interval '2 seconds', 40 + r.id % 200,
       CASE WHEN n = r.attempts AND r.status IN ('requested', 'available') THEN r.request_id
            ELSE md5('attempt' || r.id || '-' || n)::uuid::text END,
       CASE WHEN n < r.attempts THEN 'InternalError'
            WHEN r.status = 'failed' AND r.error_code <> 'CREATEFAILED' THEN r.error_code END,
       CASE WHEN n < r.attempts THEN 'An internal error has occurred. Retry your request.'
            WHEN r.status = 'failed' AND r.error_code <> 'CREATEFAILED' THEN r.error_message END
FROM image_runs r, generate_series(1, r.attempts) AS n
WHERE r.id % $1 = $2`

// generateDeletionsSQL records the retention of the even-numbered policies (max_age 30d): each
// of their available images older than 30 days was deleted a few seconds after its slot turned 30
// days old, with one DeleteImages call; 0.5% failed after three calls, 0.3% of the last day's
// decisions are still pending. Rows go in in the order of their decisions, as they would.
const generateDeletionsSQL = `
INSERT INTO image_deletions (image_id, image_name, policy, instance_id, region, run_id, reason,
    requested_at, finished_at, status, request_id, error_code, error_message, attempts)
SELECT image_id, image_name, policy, instance_id, region, id, 'older than max_age 30d', requested_at,
       CASE WHEN st = 'pending' THEN NULL ELSE requested_at + (1 + id % 3) * interval '1 second' END,
       st,
       CASE WHEN st = 'deleted' THEN md5('delete' || id)::uuid::text END,
       CASE WHEN st = 'failed' THEN 'InternalError' END,
       CASE WHEN st = 'failed' THEN 'An internal error has occurred. Retry your request.' END,
       CASE st WHEN 'pending' THEN 0 WHEN 'failed' THEN 3 ELSE 1 END
FROM (
    SELECT r.*, requested_at,
           CASE WHEN r.id % 1000 < 5 THEN 'failed'
                WHEN r.id % 1000 < 8 AND requested_at > now() - interval '1 day' THEN 'pending'
                ELSE 'deleted' END AS st
    FROM image_runs r,
         LATERAL (SELECT least(r.scheduled_at + interval '30 days' + (r.id % 3600) * interval '1 second',
                               now() - interval '1 minute') AS requested_at) t
    WHERE r.status = 'available' AND r.image_id IS NOT NULL
      AND r.scheduled_at < now() - interval '30 days' AND substr(r.policy, 8)::int % 2 = 0
      AND r.id % $1 = $2
) d
ORDER BY requested_at`

// generateDeletionAttemptsSQL adds the DeleteImages calls of every deletion.
const generateDeletionAttemptsSQL = `
INSERT INTO image_attempts (deletion_id, attempt, action, started_at, duration_ms, request_id, error_code, error_message)
SELECT d.id, n, 'DeleteImages', d.requested_at + (n - 1) * interval '6 hours', 30 + d.id % 100,
       CASE WHEN d.status = 'deleted' AND n = d.attempts THEN d.request_id
            ELSE md5('delete-attempt' || d.id || '-' || n)::uuid::text END,
       CASE WHEN d.status = 'failed' THEN 'InternalError' END,
       CASE WHEN d.status = 'failed' THEN 'An internal error has occurred. Retry your request.' END
FROM image_deletions d, generate_series(1, d.attempts) AS n
WHERE d.id % $1 = $2`

// generateHistory loads the dataset, the larger steps split over one connection per core (two at
// least, four at most). As a bulk import would, it writes image_runs directly and then has the
// store recompute what it keeps beside them (history.Store.RebuildDerived); then it vacuums and
// analyzes as autovacuum would.
func generateHistory(ctx context.Context, pool *pgxpool.Pool, runs, instances int) (Dataset, error) {
	start := time.Now()
	ds := Dataset{Instances: instances, Policies: instances / 10, Slots: runs / instances, ByStatus: map[string]int{}}
	parts := min(max(runtime.NumCPU(), 2), 4)
	for _, step := range []struct {
		what  string
		sql   string
		parts int
		args  func(part, parts int) []any
	}{
		{"image_runs", generateSQL, parts, func(part, parts int) []any {
			return []any{runs, instances, runs * part / parts, runs * (part + 1) / parts}
		}},
		{"image_attempts", generateAttemptsSQL, parts, func(part, parts int) []any { return []any{parts, part} }},
		{"image_deletions", generateDeletionsSQL, 1, func(part, parts int) []any { return []any{parts, part} }},
		{"image_attempts of deletions", generateDeletionAttemptsSQL, parts, func(part, parts int) []any { return []any{parts, part} }},
	} {
		err := inParallel(ctx, pool, step.parts, func(ctx context.Context, tx pgx.Tx, part int) error {
			_, err := tx.Exec(ctx, step.sql, step.args(part, step.parts)...)
			return err
		})
		if err != nil {
			return ds, fmt.Errorf("%s: %w", step.what, err)
		}
	}
	// The coverage views (docs/audit.md "Coverage and RPO") read the policies a daemon would have
	// loaded: one row per generated policy, daily like its slots (overdue after 1.5 days, history.OverdueAfter).
	var migrated bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('coverage_state') IS NOT NULL`).Scan(&migrated); err != nil {
		return ds, err
	}
	if migrated {
		if _, err := pool.Exec(ctx, `
INSERT INTO policies (name, schedule, timezone, interval_seconds, overdue_seconds, enabled, source_file, source_line, loaded_at)
SELECT DISTINCT policy, '@daily', 'UTC', 86400, $1::bigint, true, 'bench.yaml', 1, now() FROM image_runs ON CONFLICT DO NOTHING`,
			int64(history.OverdueAfter(24*time.Hour)/time.Second)); err != nil {
			return ds, fmt.Errorf("policies: %w", err)
		}
		if err := history.NewStore(pool, zerolog.Nop()).RebuildDerived(ctx); err != nil {
			return ds, err
		}
	}
	var wg sync.WaitGroup
	tables := []string{"image_runs", "image_attempts", "image_deletions"}
	errs := make([]error, len(tables))
	for i, table := range tables {
		wg.Go(func() { _, errs[i] = pool.Exec(ctx, "VACUUM ANALYZE "+table) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return ds, err
	}
	if _, err := pool.Exec(ctx, "ANALYZE"); err != nil {
		return ds, err
	}
	ds.Took = time.Since(start)
	if err := pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM image_attempts), (SELECT count(*) FROM image_deletions)").
		Scan(&ds.Attempts, &ds.Deletions); err != nil {
		return ds, err
	}
	rows, err := pool.Query(ctx, "SELECT status, count(*) FROM image_runs GROUP BY status")
	if err != nil {
		return ds, err
	}
	defer rows.Close()
	for rows.Next() {
		var status string
		var n int
		if err := rows.Scan(&status, &n); err != nil {
			return ds, err
		}
		ds.ByStatus[status] = n
		ds.Runs += n
	}
	return ds, rows.Err()
}

// inParallel runs f for parts 0..parts-1 at once, each in its own transaction. It returns the
// errors joined; parts that succeeded stay committed.
func inParallel(ctx context.Context, pool *pgxpool.Pool, parts int, f func(ctx context.Context, tx pgx.Tx, part int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, parts)
	for part := range parts {
		wg.Go(func() {
			errs[part] = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return f(ctx, tx, part) })
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// measureWrites records p.WriteRuns new runs through history.Store as the scheduler's workers do
// (claim the slot, record the call, record the accepted CreateImage), from p.Writers goroutines at
// once, and returns the runs recorded per second. Slots are new (policy, instance, slot) keys a
// few minutes ahead, on the generated instances; run r of the benchmark uses its own minute.
func measureWrites(ctx context.Context, store *history.Store, p HistoryParams, run int) (float64, error) {
	base := time.Now().UTC().Truncate(time.Minute).Add(time.Duration(run+1) * time.Minute)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range p.Writers {
		wg.Go(func() {
			for {
				k := int(next.Add(1)) - 1
				if k >= p.WriteRuns || ctx.Err() != nil {
					return
				}
				if err := writeOneRun(ctx, store, p.Instances, base, k); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return 0, fmt.Errorf("write path: %w", firstErr)
	}
	return ratio(float64(p.WriteRuns), elapsed.Seconds()), ctx.Err()
}

// writeOneRun is the scheduler's write path for one accepted run.
func writeOneRun(ctx context.Context, store *history.Store, instances int, base time.Time, k int) error {
	inst := k % instances
	slot := base.Add(time.Duration(k/instances) * time.Second)
	pol := fmt.Sprintf("policy-%04d", inst/10)
	id := fmt.Sprintf("ins-%08d", inst)
	now := time.Now()
	run, claimed, err := store.RunClaim(ctx, history.RunClaimParams{
		Policy: pol, InstanceID: id, Region: region, ScheduledAt: slot,
		ImageName: fmt.Sprintf("%s-%s-%s-bench%03d", pol, id, slot.Format("20060102-1504"), k%1000),
		DaemonID:  "imager-bench", StartedAt: now, Status: history.StatusPending,
	})
	if err != nil {
		return err
	}
	if !claimed {
		return fmt.Errorf("slot %s/%s at %s was already claimed", pol, id, slot)
	}
	requestID := fmt.Sprintf("bench-%d-%d", base.Unix(), k)
	if err := store.AttemptInsert(ctx, history.Attempt{
		RunID: run.ID, Attempt: 1, Action: "CreateImage", StartedAt: now,
		Duration: 80 * time.Millisecond, RequestID: requestID,
	}); err != nil {
		return err
	}
	return store.RunRequested(ctx, run.ID, fmt.Sprintf("img-b%07d", k%10000000), requestID)
}

// timeQuery executes q once untimed, then up to samples times, reading every row as a client
// does, and returns its p50 and p95.
func timeQuery(ctx context.Context, pool *pgxpool.Pool, q Query, samples int, budget time.Duration) (QueryTiming, error) {
	qt := QueryTiming{Title: q.Title}
	if _, err := execQuery(ctx, pool, q.SQL); err != nil { // warm the caches and the plan
		return qt, err
	}
	var took []time.Duration
	var spent time.Duration
	for len(took) < samples && (len(took) < 5 || budget <= 0 || spent < budget) {
		start := time.Now()
		n, err := execQuery(ctx, pool, q.SQL)
		d := time.Since(start)
		if err != nil {
			return qt, err
		}
		took = append(took, d)
		spent += d
		qt.Rows = n
	}
	qt.P50, qt.P95, qt.Samples = Percentile(took, 50), Percentile(took, 95), len(took)
	return qt, nil
}

// execQuery runs sql and decodes every row, returning how many there were.
func execQuery(ctx context.Context, pool *pgxpool.Pool, sql string) (int, error) {
	rows, err := pool.Query(ctx, sql)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		if _, err := rows.Values(); err != nil {
			return n, err
		}
		n++
	}
	return n, rows.Err()
}

var (
	indexRe   = regexp.MustCompile(`(?:Index Scan|Index Only Scan|Bitmap Index Scan)(?: Backward)? (?:using|on) (\S+)`)
	seqScanRe = regexp.MustCompile(`Seq Scan on (\S+)`)
)

// explain returns q's plan, the indexes it reads and the tables it reads whole.
func explain(ctx context.Context, pool *pgxpool.Pool, q Query) (QueryPlan, error) {
	sql := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(q.SQL), ";"))
	rows, err := pool.Query(ctx, "EXPLAIN (COSTS OFF) "+sql)
	if err != nil {
		return QueryPlan{}, err
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return QueryPlan{}, err
		}
		lines = append(lines, line)
	}
	if err := rows.Err(); err != nil {
		return QueryPlan{}, err
	}
	if len(lines) == 0 {
		return QueryPlan{}, errors.New("empty plan")
	}
	plan := QueryPlan{Title: q.Title, Plan: strings.Join(lines, "\n")}
	if plan.Execution, plan.Rows, err = executionTime(ctx, pool, sql); err != nil {
		return plan, err
	}
	for _, m := range indexRe.FindAllStringSubmatch(plan.Plan, -1) {
		if !slices.Contains(plan.Indexes, m[1]) {
			plan.Indexes = append(plan.Indexes, m[1])
		}
	}
	for _, m := range seqScanRe.FindAllStringSubmatch(plan.Plan, -1) {
		if !slices.Contains(plan.SeqScans, m[1]) {
			plan.SeqScans = append(plan.SeqScans, m[1])
		}
	}
	return plan, nil
}

var (
	execTimeRe = regexp.MustCompile(`^Execution Time: ([0-9.]+) ms$`)
	topRowsRe  = regexp.MustCompile(`\(actual rows=(\d+) loops=\d+\)`)
)

// executionTime runs sql under EXPLAIN (ANALYZE, TIMING OFF) and returns the server's execution
// time and the rows of the plan's top node.
func executionTime(ctx context.Context, pool *pgxpool.Pool, sql string) (time.Duration, int, error) {
	rows, err := pool.Query(ctx, "EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) "+sql)
	if err != nil {
		return 0, 0, err
	}
	defer rows.Close()
	var exec time.Duration
	n, first := 0, true
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return 0, 0, err
		}
		if first {
			if m := topRowsRe.FindStringSubmatch(line); m != nil {
				n, _ = strconv.Atoi(m[1])
			}
			first = false
		}
		if m := execTimeRe.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			f, _ := strconv.ParseFloat(m[1], 64)
			exec = time.Duration(f * float64(time.Millisecond))
		}
	}
	return exec, n, rows.Err()
}
