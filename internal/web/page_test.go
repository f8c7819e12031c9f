package web_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/web"
)

const webPolicy = `version: 1
defaults:
  region: ap-guangzhou
policies:
  - name: web
    schedule: "0 3 * * *"
    instances: [ins-aaaaaaaa]
`

func get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// gridOf returns the HTML of one policy's grid section.
func gridOf(t testing.TB, body, pol string) string {
	t.Helper()
	start := strings.Index(body, `<details class="grid" id="grid-`+pol+`"`)
	require.GreaterOrEqual(t, start, 0, "grid of %s", pol)
	end := strings.Index(body[start:], "</details>")
	require.Greater(t, end, 0)
	return body[start : start+end]
}

// The page is informational: with PostgreSQL gone it still answers 200, says so, and shows what
// the daemon knows without it. Reachability is judged by Ping, or by the queries without one.
func TestPageDatabaseDown(t *testing.T) {
	t.Parallel()
	for _, withPing := range []bool{true, false} {
		name := "ping"
		if !withPing {
			name = "queries"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			now := time.Date(2026, 3, 29, 12, 0, 0, 0, time.UTC)
			cfg := loadPolicies(t, s, webPolicy, now)
			seeder{t: t, s: s}.failed("web", "ins-aaaaaaaa", now.Add(-9*time.Hour), "InternalError", "boom")
			opts := options(s, cfg, now, now)
			if !withPing {
				opts.Ping = nil
			}
			s.Close() // the pool is closed: every query fails as unavailable

			srv := serve(t, opts)
			code, body := get(t, srv.URL+"/")
			require.Equal(t, http.StatusOK, code)
			require.Contains(t, body, `id="db-banner"`)
			require.Contains(t, body, "Database unreachable")
			require.Contains(t, body, `<span class="pill down">unreachable</span>`)
			require.Contains(t, body, `<span class="pill leader">leader</span>`, "the role is known without the database")
			require.Contains(t, body, "2026-03-30 03:00 UTC", "the next fire is computed from the loaded policies")
			require.NotContains(t, body, `<table class="cov"`)
			require.NotContains(t, body, "InternalError")
			require.Contains(t, gridOf(t, body, "web"), "the database is unreachable")
		})
	}
}

func TestPageReachable(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	now := time.Date(2026, 3, 29, 12, 0, 0, 0, time.UTC)
	cfg := loadPolicies(t, s, webPolicy, now)
	srv := serve(t, options(s, cfg, now, now))
	code, body := get(t, srv.URL+"/")
	require.Equal(t, http.StatusOK, code)
	require.NotContains(t, body, "db-banner")
	require.Contains(t, body, `<span class="pill up">reachable</span>`)
	require.Contains(t, gridOf(t, body, "web"), "No runs yet.")
	require.Contains(t, body, `<span class="muted">none yet</span>`, "no last fire")
	require.Contains(t, body, "No failures.")
}

// Without a leader elector, a database or policies the page still renders and says what it lacks.
func TestPageNothingConfigured(t *testing.T) {
	t.Parallel()
	srv := serve(t, web.Options{Clock: clockwork.NewFakeClock(), Logger: zerolog.Nop()})
	code, body := get(t, srv.URL+"/")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "not reported")
	require.Contains(t, body, "not configured")
	require.Contains(t, body, "none loaded yet")
	require.NotContains(t, body, "db-banner")
}

func TestPageStandby(t *testing.T) {
	t.Parallel()
	opts := web.Options{Leader: func() bool { return false }, Clock: clockwork.NewFakeClock(), Logger: zerolog.Nop()}
	_, body := get(t, serve(t, opts).URL+"/")
	require.Contains(t, body, `<span class="pill standby">standby</span>`)
}

func TestPageBadQuery(t *testing.T) {
	t.Parallel()
	cfg, err := policy.LoadBytes("p.yaml", []byte(webPolicy))
	require.NoError(t, err)
	opts := web.Options{Policies: func() (*policy.Config, time.Time) { return cfg, time.Now() }, Logger: zerolog.Nop()}
	srv := serve(t, opts)
	for _, tc := range []struct {
		query string
		code  int
		says  string
	}{
		{"?page=0", http.StatusBadRequest, `page: want a page number of 1 or more, got "0"`},
		{"?page=abc", http.StatusBadRequest, `got "abc"`},
		{"?page=" + strings.Repeat("9", 200), http.StatusBadRequest, `got "` + strings.Repeat("9", 80) + `..."`},
		{"?policy=nope", http.StatusNotFound, `policy "nope" is not loaded`},
	} {
		code, body := get(t, srv.URL+"/"+tc.query)
		require.Equal(t, tc.code, code, tc.query)
		require.Contains(t, body, tc.says, tc.query)
	}
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, "the page is read-only")
}

// A policy of 250 instances is shown 100 at a time, those that need attention first.
func TestPagePaging(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	cfg := loadPolicies(t, s, webPolicy, now)
	// One slot yesterday per instance; every 7th failed.
	_, err := s.Pool().Exec(ctx, `INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at,
	finished_at, status, image_name, image_id, error_code, attempts, daemon_id)
SELECT 'web', 'ins-' || lpad(i::text, 8, '0'), 'ap-guangzhou', $1, $1, $1, st, 'n-' || i,
	CASE WHEN st = 'available' THEN 'img-' || i END, CASE WHEN st = 'failed' THEN 'InternalError' END, 1, 'test'
FROM generate_series(1, 250) i, LATERAL (SELECT CASE WHEN i % 7 = 0 THEN 'failed' ELSE 'available' END AS st) x`,
		now.Add(-time.Hour))
	require.NoError(t, err)
	require.NoError(t, s.RebuildDerived(ctx)) // written in bulk: the kept answers are computed once
	srv := serve(t, options(s, cfg, now, now))

	rowsOf := func(grid string) []string {
		var ids []string
		for _, part := range strings.Split(grid, `<tr data-instance="`)[1:] {
			ids = append(ids, part[:strings.IndexByte(part, '"')])
		}
		return ids
	}
	_, body := get(t, srv.URL+"/")
	g := gridOf(t, body, "web")
	rows := rowsOf(g)
	require.Len(t, rows, 100)
	require.Equal(t, "ins-00000007", rows[0], "failed instances first")
	require.Equal(t, "ins-00000245", rows[34], "all 35 failed ones")
	require.Equal(t, "ins-00000001", rows[35])
	require.Contains(t, g, "250 instances")
	require.Contains(t, g, "showing 1–100")
	require.Contains(t, g, "Page 1 of 3")
	require.Contains(t, g, `href="?page=2&amp;policy=web#grid-web" rel="next"`)

	_, body = get(t, srv.URL+"/?policy=web&page=3")
	rows = rowsOf(gridOf(t, body, "web"))
	require.Len(t, rows, 50)
	require.Equal(t, "ins-00000250", rows[49])
	_, body = get(t, srv.URL+"/?policy=web&page=99")
	require.Contains(t, gridOf(t, body, "web"), "Page 3 of 3", "a page past the end shows the last")
}

// BenchmarkPage10kInstances times the whole page (queries and rendering) for one policy of
// 10,000 instances with 30 days of daily slots (300,000 runs), the scale the page must stay
// fast at. docs/operations.md "Status page" describes the page (the figure is not in BENCHMARKS.md, so no doc quotes it).
func BenchmarkPage10kInstances(b *testing.B) {
	ctx := context.Background()
	s := newStore(b)
	now := time.Now().UTC().Truncate(time.Second)
	cfg := loadPolicies(b, s, webPolicy, now)
	conn, err := s.Pool().Acquire(ctx)
	require.NoError(b, err)
	start := time.Now()
	for _, q := range []string{
		`INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at, finished_at, status,
			image_name, image_id, error_code, attempts, daemon_id)
		 SELECT 'web', 'ins-' || lpad(i::text, 8, '0'), 'ap-guangzhou', slot, slot, slot + interval '20 minutes', st,
			'n-' || i || '-' || d, CASE WHEN st = 'available' THEN 'img-' || i || '-' || d END,
			CASE WHEN st = 'failed' THEN 'InternalError' END, 1, 'bench'
		 FROM generate_series(1, 10000) i, generate_series(1, 30) d,
			LATERAL (SELECT date_trunc('day', now()) - d * interval '1 day' + interval '3 hours' AS slot,
				CASE WHEN (i * 7 + d) % 20 = 0 THEN 'failed' WHEN (i * 7 + d) % 33 = 0 THEN 'missed'
					ELSE 'available' END AS st) x`,
		`ANALYZE`,
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(b, err, q)
	}
	conn.Release()
	require.NoError(b, s.RebuildDerived(ctx))
	b.Logf("seeded 300,000 runs over 10,000 instances in %s", time.Since(start).Round(time.Millisecond))

	h := web.Handler(options(s, cfg, now, now))
	var size int
	b.ResetTimer()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/?policy=web&page=42", nil))
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "Page 42 of 100") {
			b.Fatalf("status %d, body:\n%.2000s", rec.Code, rec.Body.String())
		}
		size = rec.Body.Len()
	}
	b.ReportMetric(float64(size)/1024, "KiB/page")
}

// copyPolicies copy web's images to two regions; db copies nowhere. Two accounts name the
// policies' credentials.
const copyPolicies = `version: 1
accounts:
  - name: prod
    role: {role_arn: "qcs::cam::uin/100000000001:roleName/imager"}
  - name: partner
    role: {role_arn: "qcs::cam::uin/100000000002:roleName/imager"}
defaults:
  region: ap-guangzhou
policies:
  - name: web
    account: prod
    schedule: "0 3 * * *"
    instances: [ins-aaaaaaaa, ins-bbbbbbbb, ins-cccccccc]
    copy_to:
      - region: ap-singapore
      - region: ap-shanghai
  - name: db
    account: partner
    schedule: "0 2 * * *"
    instances: [ins-dddddddd]
`

// seedCopies makes, for the policies of copyPolicies at now: ins-aaaaaaaa's image of 3h ago
// copied to ap-singapore (available 2h ago) and ap-shanghai (failed); ins-bbbbbbbb's image of 40h
// ago copied to ap-singapore only, whose copy is 38h old (overdue); ins-cccccccc has no copy.
func seedCopies(t testing.TB, s *history.Store, now time.Time) {
	t.Helper()
	ctx := context.Background()
	sd := seeder{t: t, s: s}
	copyOf := func(inst string, slot time.Time, imageID string) history.Run {
		sd.available("web", inst, slot, imageID, slot.Add(20*time.Minute))
		runs, err := s.RunsList(ctx, history.RunFilter{Since: slot, Instance: inst, Limit: 1})
		require.NoError(t, err)
		return runs[0].Run
	}
	a := copyOf("ins-aaaaaaaa", now.Add(-3*time.Hour), "img-a0000001")
	rows, _, err := s.CopyRequested(ctx, a.ID, []string{"ap-shanghai", "ap-singapore"}, now.Add(-150*time.Minute))
	require.NoError(t, err)
	require.NoError(t, s.CopyFailed(ctx, rows[0].ID, "InvalidRegion", "no", now.Add(-140*time.Minute)))
	require.NoError(t, s.CopyAnswered(ctx, rows[1].ID, "img-sga00001", "req"))
	require.NoError(t, s.CopyAvailable(ctx, rows[1].ID, "", now.Add(-2*time.Hour)))
	b := copyOf("ins-bbbbbbbb", now.Add(-40*time.Hour), "img-b0000001")
	rows, _, err = s.CopyRequested(ctx, b.ID, []string{"ap-singapore"}, now.Add(-39*time.Hour-30*time.Minute))
	require.NoError(t, err)
	require.NoError(t, s.CopyAnswered(ctx, rows[0].ID, "img-sgb00001", "req"))
	require.NoError(t, s.CopyAvailable(ctx, rows[0].ID, "", now.Add(-38*time.Hour)))
	sd.available("web", "ins-cccccccc", now.Add(-3*time.Hour), "img-c0000001", now.Add(-150*time.Minute))
	sd.available("db", "ins-dddddddd", now.Add(-4*time.Hour), "img-d0000001", now.Add(-220*time.Minute))
}

// The policies table has an account column (the files name accounts) and a column per copy
// region; the grid has a column per copy region of its policy with the newest copy's age.
func TestPageCopiesAndAccounts(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	cfg := loadPolicies(t, s, copyPolicies, now)
	seedCopies(t, s, now)
	_, body := get(t, serve(t, options(s, cfg, now, now)).URL+"/")

	require.Contains(t, body, `<th>Policy</th><th>Account</th><th>Schedule</th>`)
	require.Contains(t, body, `>Copies in ap-shanghai</th><th class="copies" title="the instances' newest copies in ap-singapore: how many are overdue">Copies in ap-singapore</th></tr>`,
		"the union of the copy_to regions, sorted")
	row := func(pol string) string {
		start := strings.Index(body, `<tr id="policy-`+pol+`">`)
		require.GreaterOrEqual(t, start, 0)
		return body[start : start+strings.Index(body[start:], "</tr>")]
	}
	require.Contains(t, row("web"), `<td class="account">prod</td>`)
	require.Contains(t, row("db"), `<td class="account">partner</td>`)
	require.Regexp(t, `<td class="copies" title="1 instances with copies in ap-shanghai, 0 overdue">0 of 1 overdue</td>`+
		`<td class="copies" title="2 instances with copies in ap-singapore, 1 overdue; [^"]*"><span class="breach">1</span> of 2 overdue <span class="muted">\(oldest 1d 14h\)</span></td>`,
		row("web"))
	require.Contains(t, row("db"), `<td class="copies" title="db does not copy to ap-shanghai"><span class="muted">—</span></td>`)

	g := gridOf(t, body, "web")
	require.Contains(t, g, `<th class="copy first" data-region="ap-singapore">ap-singapore</th><th class="copy" data-region="ap-shanghai">ap-shanghai</th></tr>`,
		"the policy's own copy_to regions, in its order")
	cells := func(inst string) string {
		start := strings.Index(g, `<tr data-instance="`+inst+`">`)
		require.GreaterOrEqual(t, start, 0, inst)
		r := g[start : start+strings.Index(g[start:], "</tr>")]
		return r[strings.Index(r, `<td class="copy `):]
	}
	require.Equal(t, `<td class="copy copy-ok first" title="ap-singapore: newest copy img-sga00001, available 2h 0m ago (slot `+
		now.Add(-3*time.Hour).Format("2006-01-02 15:04 UTC")+`)">2h 0m</td>`+
		`<td class="copy copy-ok" title="ap-shanghai: no copy available yet">never</td>`, cells("ins-aaaaaaaa"),
		"a failed copy 2h20m ago is not overdue yet (1.5 x 24h)")
	require.Contains(t, cells("ins-bbbbbbbb"), `<td class="copy copy-overdue first" title="ap-singapore: newest copy img-sgb00001, available 1d 14h ago`)
	require.Contains(t, cells("ins-bbbbbbbb"), `; OVERDUE">1d 14h</td>`)
	require.Contains(t, cells("ins-bbbbbbbb"), `<td class="copy copy-none" title="ap-shanghai: no copy requested yet">–</td>`)
	require.Contains(t, cells("ins-cccccccc"), `<td class="copy copy-none first" title="ap-singapore: no copy requested yet">–</td>`)
	require.NotContains(t, gridOf(t, body, "db"), `class="copy`, "db copies nowhere: no copy columns")
}

// With the one default account the account column is left out; without copy_to there are no
// copy columns.
func TestPageWithoutAccountsOrCopies(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	cfg := loadPolicies(t, s, webPolicy, now)
	_, body := get(t, serve(t, options(s, cfg, now, now)).URL+"/")
	require.Contains(t, body, `<th>Policy</th><th>Schedule</th>`)
	require.NotContains(t, body, "Copies in")
	require.NotContains(t, body, `class="account"`)
}

// restorePolicies test web's images; db has no restore test.
const restorePolicies = `version: 1
defaults:
  region: ap-guangzhou
policies:
  - name: web
    schedule: "0 3 * * *"
    instances: [ins-aaaaaaaa, ins-bbbbbbbb]
  - name: db
    schedule: "0 2 * * *"
    instances: [ins-dddddddd]
restore_tests:
  - name: web-boots
    policy: web
    schedule: "0 6 * * 0"
    launch: {zone: ap-guangzhou-3}
    check: {command: "true"}
`

// The policies table has a restore column when the files have restore_tests: how many of the
// policy's instances passed, how many are overdue, from restore_coverage.
func TestPageRestoreTests(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	cfg := loadPolicies(t, s, restorePolicies, now)
	sd := seeder{t: t, s: s}
	sd.available("web", "ins-aaaaaaaa", now.Add(-3*time.Hour), "img-a0000001", now.Add(-150*time.Minute))
	sd.available("web", "ins-bbbbbbbb", now.Add(-3*time.Hour), "img-b0000001", now.Add(-150*time.Minute))
	sd.available("db", "ins-dddddddd", now.Add(-4*time.Hour), "img-d0000001", now.Add(-220*time.Minute))
	// Loaded 30 days ago with an overdue bound of 7 days: ins-bbbbbbbb, never tested, is overdue.
	require.NoError(t, s.RestoreConfigsSync(ctx, []history.RestoreConfig{{Name: "web-boots", Policy: "web", Overdue: 7 * 24 * time.Hour}},
		now.Add(-30*24*time.Hour)))
	row, _, err := s.RestoreStart(ctx, history.RestoreStartParams{Test: "web-boots", Slot: now.Add(-2 * time.Hour), Account: "default",
		Policy: "web", InstanceID: "ins-aaaaaaaa", Region: "ap-guangzhou", Zone: "ap-guangzhou-3", ImageID: "img-a0000001",
		ClientToken: "tok-1", KeepFor: 30 * time.Minute, StartedAt: now.Add(-2 * time.Hour)})
	require.NoError(t, err)
	require.NoError(t, s.RestoreLaunched(ctx, row.ID, "ins-launched1", now.Add(-119*time.Minute)))
	_, err = s.RestoreFinish(ctx, row.ID, history.RestoreOutcome{Passed: true, At: now.Add(-110 * time.Minute)})
	require.NoError(t, err)

	_, body := get(t, serve(t, options(s, cfg, now, now)).URL+"/")
	require.Contains(t, body, `>Restore tests</th></tr>`)
	row0 := func(pol string) string {
		i := strings.Index(body, `<tr id="policy-`+pol+`">`)
		require.GreaterOrEqual(t, i, 0, pol)
		return body[i : i+strings.Index(body[i:], "</tr>")]
	}
	require.Contains(t, row0("web"), `<td class="restore" title="1 of 2 instances passed a restore test, 1 overdue; the oldest newest pass was 1h 50m ago">1 of 2 passed, <span class="breach">1</span> overdue <span class="muted">(oldest 1h 50m)</span></td>`)
	require.Contains(t, row0("db"), `<td class="restore" title="no restore test names db"><span class="muted">—</span></td>`)
}
