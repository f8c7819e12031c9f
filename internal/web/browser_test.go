package web_test

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

// chromiumPath finds the browser the page tests drive: IMAGER_CHROMIUM, else chromium (Debian's
// package, which .ci/run installs), chromium-browser or google-chrome on PATH.
func chromiumPath() string {
	if p := os.Getenv("IMAGER_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// newBrowser starts headless Chromium for one test (a fresh profile, no network of its own) and
// returns a context to drive it with; it is stopped when the test ends. A missing browser fails
// the test: the page test is part of the suite, not an optional extra.
func newBrowser(t testing.TB) context.Context {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		t.Fatal("headless Chromium not found: install Debian's chromium (apt-get install -y --no-install-recommends chromium; .ci/run does) or set IMAGER_CHROMIUM to the browser binary")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // the tests may run as root, where Chromium's sandbox refuses to start
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() {
		cancelTimeout()
		cancelBrowser()
		cancelAlloc()
	})
	require.NoError(t, chromedp.Do(ctx), "start %s", path)
	return ctx
}

// evaluate runs an expression in the page and decodes its value.
func evaluate[T any](t testing.TB, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	require.NoError(t, err, expr)
	return v
}

// gridCell is one cell of the coverage grid as the browser sees it.
type gridCell struct {
	Class string `json:"cls"`
	Title string `json:"title"`
	BG    string `json:"bg"`
}

type gridRow struct {
	Instance string     `json:"instance"`
	Overdue  bool       `json:"overdue"`
	Cells    []gridCell `json:"cells"`
	Copies   []copyCell `json:"copies"`
}

// copyCell is one cell of a grid's copy columns as the browser sees it.
type copyCell struct {
	Text  string `json:"text"`
	Color string `json:"color"`
	BG    string `json:"bg"`
}

type gridTable struct {
	Policy  string    `json:"policy"`
	Days    []string  `json:"days"`
	Regions []string  `json:"regions"`
	Rows    []gridRow `json:"rows"`
}

const readGrids = `[...document.querySelectorAll('table.cov')].map(tb => ({
	policy: tb.dataset.policy,
	days: [...tb.querySelectorAll('thead th[title]')].map(th => th.title),
	regions: [...tb.querySelectorAll('thead th.copy')].map(th => th.textContent),
	rows: [...tb.querySelectorAll('tbody tr')].map(tr => ({
		instance: tr.dataset.instance,
		overdue: tr.querySelector('th').classList.contains('overdue'),
		cells: [...tr.querySelectorAll('td:not(.copy)')].map(td => ({cls: td.className, title: td.title, bg: getComputedStyle(td).backgroundColor})),
		copies: [...tr.querySelectorAll('td.copy')].map(td => ({text: td.textContent, color: getComputedStyle(td).color, bg: getComputedStyle(td).backgroundColor})),
	})),
}))`

const readFailures = `[...document.querySelectorAll('#failures tr.failure')].map(tr => [...tr.cells].map(c => c.textContent))`

const readPolicies = `[...document.querySelectorAll('#policies tbody tr')].map(tr => [...tr.cells].map(c => c.textContent.trim()))`

// Colours of the grid (assets/style.css), as getComputedStyle reports them.
const (
	green       = "rgb(46, 157, 79)"
	amber       = "rgb(240, 163, 10)"
	red         = "rgb(215, 38, 61)"
	grey        = "rgb(138, 143, 152)"
	transparent = "rgba(0, 0, 0, 0)"
)

func TestPageInBrowser(t *testing.T) {
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	cfg := loadPolicies(t, s, `version: 1
defaults:
  region: ap-guangzhou
policies:
  - name: web-daily
    schedule: "0 3 * * *"
    instances: [ins-aaaaaaaa, ins-bbbbbbbb, ins-cccccccc]
  - name: db-nightly
    schedule: "0 2 * * *"
    timezone: Asia/Shanghai
    instances: [ins-dddddddd]
`, now)
	shanghai, err := time.LoadLocation("Asia/Shanghai")
	require.NoError(t, err)

	// Slot d days ago at 03:00 UTC; whatever the time of day, the overdue answers below hold:
	// ins-aaaaaaaa and ins-cccccccc have a slot minutes ago, ins-bbbbbbbb's last image is at
	// least 44h old (overdue after 1.5 x 24h).
	midnight := now.Truncate(24 * time.Hour)
	daysAgo := func(d int) time.Time { return midnight.AddDate(0, 0, -d).Add(3 * time.Hour) }
	sd := seeder{t: t, s: s}
	for d := 2; d <= 5; d++ {
		sd.available("web-daily", "ins-aaaaaaaa", daysAgo(d), "img-a"+string(rune('0'+d)), daysAgo(d).Add(20*time.Minute))
	}
	sd.available("web-daily", "ins-aaaaaaaa", now.Add(-30*time.Minute), "img-anow", now.Add(-20*time.Minute))
	sd.available("web-daily", "ins-bbbbbbbb", daysAgo(3), "img-b3", daysAgo(3).Add(20*time.Minute))
	sd.claim("web-daily", "ins-bbbbbbbb", daysAgo(2), history.StatusMissed, "", "daemon shut down before the slot was sent")
	sd.failed("web-daily", "ins-bbbbbbbb", daysAgo(1), "InvalidInstanceId.NotFound", `instance <ins-bbbbbbbb> not found & "gone"`)
	sd.requested("web-daily", "ins-cccccccc", now.Add(-10*time.Minute), "img-cnow")
	sd.failed("db-nightly", "ins-dddddddd", now.Add(-2*time.Hour), "InsufficientBalance", "account balance too low")

	loadedAt := now.Add(-time.Hour)
	srv := serve(t, options(s, cfg, loadedAt, now))

	b := newBrowser(t)
	require.NoError(t, chromedp.Do(b, chromedp.Navigate(srv.URL+"/"), chromedp.WaitReady(chromedp.CSS("#failures"))))
	grids := evaluate[[]gridTable](t, b, readGrids)
	failures := evaluate[[][]string](t, b, readFailures)
	policies := evaluate[[][]string](t, b, readPolicies)
	role := evaluate[string](t, b, `document.querySelector('#role').textContent`)
	database := evaluate[string](t, b, `document.querySelector('#database').textContent`)
	loaded := evaluate[string](t, b, `document.querySelector('#loaded').textContent`)
	scripts := evaluate[int](t, b, `document.scripts.length`)

	require.Equal(t, 0, scripts, "the page needs no JavaScript")
	require.Equal(t, "leader", role)
	require.Equal(t, "reachable", database)
	require.Contains(t, loaded, "2 loaded at "+loadedAt.Format("2006-01-02 15:04:05 UTC")+" from policies.yaml")

	// Policies: schedule, zone, next fire, the last fire's counts, breaches.
	require.Len(t, policies, 2)
	require.Equal(t, "web-daily", policies[0][0])
	require.Equal(t, "0 3 * * *", policies[0][1])
	require.Equal(t, "UTC", policies[0][2])
	next := cfg.Policies[0].Schedule.Next(now)
	require.Contains(t, policies[0][3], next.Format("2006-01-02 15:04 UTC"))
	require.Equal(t, now.Add(-10*time.Minute).Format("2006-01-02 15:04 UTC"), policies[0][4], "the newest slot")
	require.Equal(t, "1 requested", policies[0][5])
	require.Equal(t, "1 of 3", policies[0][6])
	require.Equal(t, "db-nightly", policies[1][0])
	require.Equal(t, "Asia/Shanghai", policies[1][2])
	require.Contains(t, policies[1][3], cfg.Policies[1].Schedule.Next(now).Format("2006-01-02 15:04 CST"))
	require.Equal(t, "1 failed", policies[1][5])

	// The grid: 30 days ending today in the policy's zone, attention first.
	require.Len(t, grids, 2)
	web := grids[0]
	require.Equal(t, "web-daily", web.Policy)
	require.Len(t, web.Days, 30)
	require.Contains(t, web.Days[29], dayOf(now, time.UTC))
	require.Equal(t, []string{"ins-bbbbbbbb", "ins-cccccccc", "ins-aaaaaaaa"},
		[]string{web.Rows[0].Instance, web.Rows[1].Instance, web.Rows[2].Instance},
		"overdue first, then by how the last slot ended")
	require.True(t, web.Rows[0].Overdue)
	require.False(t, web.Rows[1].Overdue)
	require.False(t, web.Rows[2].Overdue)
	cellOf := func(row gridRow, day string) gridCell {
		t.Helper()
		for i, d := range web.Days {
			if len(d) >= 10 && d[len(d)-10:] == day {
				return row.Cells[i]
			}
		}
		t.Fatalf("day %s is not in the grid %v", day, web.Days)
		return gridCell{}
	}
	for _, row := range web.Rows {
		require.Len(t, row.Cells, 30, row.Instance)
	}
	bRow := web.Rows[0]
	d1, d2, d3, d4 := dayOf(daysAgo(1), time.UTC), dayOf(daysAgo(2), time.UTC), dayOf(daysAgo(3), time.UTC), dayOf(daysAgo(4), time.UTC)
	require.Equal(t, gridCell{"c-failed", d1 + " failed: InvalidInstanceId.NotFound", red}, cellOf(bRow, d1))
	require.Equal(t, gridCell{"c-missed", d2 + " missed", grey}, cellOf(bRow, d2))
	require.Equal(t, gridCell{"c-available", d3 + " available: img-b3", green}, cellOf(bRow, d3))
	require.Equal(t, gridCell{"c-none", d4 + ": no slot", transparent}, cellOf(bRow, d4))
	cNow := dayOf(now.Add(-10*time.Minute), time.UTC)
	require.Equal(t, gridCell{"c-requested", cNow + " requested: img-cnow", amber}, cellOf(web.Rows[1], cNow))
	aRow := web.Rows[2]
	require.Equal(t, gridCell{"c-available", d4 + " available: img-a4", green}, cellOf(aRow, d4))
	painted := 0
	for _, c := range aRow.Cells {
		if c.Class != "c-none" {
			painted++
			require.Equal(t, "c-available", c.Class)
		}
	}
	require.Contains(t, []int{5, 4}, painted, "days 2..5 and the slot 30 minutes ago (which may be yesterday)")

	db := grids[1]
	require.Equal(t, "db-nightly", db.Policy)
	require.Contains(t, db.Days[29], dayOf(now, shanghai), "days are in the policy's time zone")
	require.Len(t, db.Rows, 1)
	dDay := dayOf(now.Add(-2*time.Hour), shanghai)
	var dCell gridCell
	for i, d := range db.Days {
		if d[len(d)-10:] == dDay {
			dCell = db.Rows[0].Cells[i]
		}
	}
	require.Equal(t, gridCell{"c-failed", dDay + " failed: InsufficientBalance", red}, dCell)

	// Failures, newest first, with codes and messages as written (escaped, not interpreted).
	require.Equal(t, [][]string{
		{now.Add(-2 * time.Hour).Format("2006-01-02 15:04 UTC"), "db-nightly", "ins-dddddddd", "InsufficientBalance", "account balance too low"},
		{daysAgo(1).Format("2006-01-02 15:04 UTC"), "web-daily", "ins-bbbbbbbb", "InvalidInstanceId.NotFound", `instance <ins-bbbbbbbb> not found & "gone"`},
	}, failures)
}

// TestPageCopiesInBrowser: the copy columns as a browser shows them: the account and copy columns
// of the policies table, and per instance the age of its newest copy in each region, red on pink
// when overdue.
func TestPageCopiesInBrowser(t *testing.T) {
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	cfg := loadPolicies(t, s, copyPolicies, now)
	seedCopies(t, s, now)
	srv := serve(t, options(s, cfg, now, now))

	b := newBrowser(t)
	require.NoError(t, chromedp.Do(b, chromedp.Navigate(srv.URL+"/"), chromedp.WaitReady(chromedp.CSS("#failures"))))
	policies := evaluate[[][]string](t, b, readPolicies)
	heads := evaluate[[]string](t, b, `[...document.querySelectorAll('#policies thead th')].map(th => th.textContent)`)
	grids := evaluate[[]gridTable](t, b, readGrids)

	require.Equal(t, []string{"Policy", "Account", "Schedule", "Time zone", "Next fire", "Last fire", "Last fire by status",
		"RPO breaches", "Copies in ap-shanghai", "Copies in ap-singapore"}, heads)
	require.Equal(t, []string{"web", "prod"}, policies[0][:2])
	require.Equal(t, []string{"0 of 1 overdue", "1 of 2 overdue (oldest 1d 14h)"}, policies[0][8:])
	require.Equal(t, []string{"db", "partner"}, policies[1][:2])
	require.Equal(t, []string{"—", "—"}, policies[1][8:])

	web := grids[0]
	require.Equal(t, []string{"ap-singapore", "ap-shanghai"}, web.Regions)
	require.Len(t, web.Days, 30, "the copy columns are not days")
	byInstance := map[string]gridRow{}
	for _, r := range web.Rows {
		require.Len(t, r.Cells, 30, r.Instance)
		byInstance[r.Instance] = r
	}
	const okText, okBG, pink = "rgb(31, 107, 55)", "rgb(227, 243, 232)", "rgb(253, 232, 234)"
	require.Equal(t, []copyCell{{"2h 0m", okText, okBG}, {"never", okText, okBG}}, byInstance["ins-aaaaaaaa"].Copies)
	require.Equal(t, copyCell{"1d 14h", red, pink}, byInstance["ins-bbbbbbbb"].Copies[0])
	require.Equal(t, "–", byInstance["ins-bbbbbbbb"].Copies[1].Text)
	require.Equal(t, transparent, byInstance["ins-cccccccc"].Copies[0].BG)
	require.Empty(t, grids[1].Regions, "db copies nowhere")
}
