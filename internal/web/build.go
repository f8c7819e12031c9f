package web

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// page is what the template renders.
type page struct {
	GeneratedAt string
	BuildMS     float64
	GridDays    int

	Role string // "leader", "standby" or "" (not reported)
	DB   dbState

	PoliciesLoaded bool
	LoadedAt       string
	Sources        []string
	// ShowAccount adds the policies' account column: shown when the policy files name accounts
	// (more than one, or one other than "default"); with the one default account it would repeat
	// "default" on every row.
	ShowAccount bool
	// CopyRegions are the policies table's copy columns: every copy_to region of the loaded
	// policies, sorted.
	CopyRegions []string
	// ShowRestore adds the restore tests' column: shown when the files have restore_tests:.
	ShowRestore   bool
	Policies      []policyView
	Grids         []grid
	Failures      []failure
	FailuresSince string
}

type dbState struct {
	Configured bool
	Up         bool
	Error      string // why the page could not read the database
}

type policyView struct {
	Name       string
	Account    string
	Schedule   string
	Timezone   string
	Enabled    bool
	NextFire   string // in the policy's time zone
	NextFireIn string
	LastFire   string // slot of the newest run, "" when none
	LastCounts []statusCount
	Breaches   int64
	Known      bool // Breaches and LastFire were read from the database
	Instances  int
	Anchor     string
	Copies     []copySummary // one per page.CopyRegions
	Restore    restoreCell   // with page.ShowRestore
}

// restoreCell is one policy's restore tests (a cell of the policies table), from restore_coverage.
type restoreCell struct {
	Tested    bool // a restore test names the policy
	Known     bool // read from the database
	Instances int
	Passed    int
	Overdue   int
	Oldest    string // age of the oldest of the instances' newest passes, "" when none passed
	Title     string
}

// copySummary is one policy's copies in one region (a cell of the policies table), from
// copy_coverage.
type copySummary struct {
	Wanted    bool // the policy copies there (copy_to)
	Instances int  // rows of copy_coverage
	Overdue   int
	Oldest    string // age of the oldest of the instances' newest available copies, "" when none
	Title     string
}

type statusCount struct {
	Status string
	Count  int64
}

type grid struct {
	Policy     string
	Anchor     string
	Days       []dayHead
	Rows       []gridRow
	Page       int
	Pages      int
	Instances  int
	First      int // 1-based index of the first instance shown
	Last       int
	Overdue    int
	PrevURL    string
	NextURL    string
	PageURLs   []pageLink
	Empty      bool // no targeted instance in coverage yet
	Unreadable bool // the database did not answer
	// CopyRegions are the policy's copy_to regions, one column each after the days.
	CopyRegions []string
}

type pageLink struct {
	N       int
	URL     string
	Current bool
}

type dayHead struct {
	Label   string // day of month
	Title   string // full date
	Weekend bool
}

type gridRow struct {
	Instance string
	Overdue  bool
	Title    string
	Cells    []cell
	Copies   []copyCell // one per grid.CopyRegions
}

// copyCell is an instance's newest available copy in one region: its age, red when the region
// is overdue (copy_coverage).
type copyCell struct {
	Class string // copy-ok, copy-overdue, copy-none (no copy requested there yet)
	Text  string
	Title string
}

type cell struct {
	Class string // status class: available, requested, pending, failed, missed, skipped, none
	Title string
}

type failure struct {
	Slot     string
	Policy   string
	Instance string
	Code     string
	Message  string
	Finished string
}

// build gathers the page. Database errors do not fail it: the first one marks the database
// unreachable (a banner) and the remaining queries are skipped, so a dead database costs one
// timeout, not one per query.
func (h *handler) build(ctx context.Context, q query) *page {
	now := h.opts.Clock.Now()
	p := &page{GeneratedAt: now.UTC().Format("2006-01-02 15:04:05 UTC"), GridDays: GridDays}
	if h.opts.Leader != nil {
		p.Role = "standby"
		if h.opts.Leader() {
			p.Role = "leader"
		}
	}

	var cfg *policy.Config
	var loadedAt time.Time
	if h.opts.Policies != nil {
		cfg, loadedAt = h.opts.Policies()
	}
	var rows []history.PolicyRow
	if cfg != nil {
		p.PoliciesLoaded = true
		p.LoadedAt = loadedAt.UTC().Format("2006-01-02 15:04:05 UTC")
		p.Sources = cfg.Sources
		rows = history.PolicyRows(cfg, now)
		p.ShowAccount, p.CopyRegions = accountsNamed(cfg), copyRegions(cfg)
		p.ShowRestore = len(cfg.RestoreTests) > 0
	}

	db := h.opts.History
	p.DB.Configured = db != nil
	failed := func(err error) {
		if p.DB.Error == "" {
			p.DB.Error = describe(err)
		}
	}
	if db != nil {
		if h.opts.Ping != nil {
			if err := h.opts.Ping(ctx); err != nil {
				failed(err)
			}
		}
	}
	up := func() bool { return db != nil && p.DB.Error == "" }

	for i, pol := range policiesOf(cfg) {
		v := policyView{Name: pol.Name, Account: pol.Account, Schedule: pol.ScheduleSpec, Timezone: rows[i].Timezone,
			Enabled: pol.Enabled, Anchor: "grid-" + pol.Name}
		if next := pol.Schedule.Next(now); !next.IsZero() && pol.Enabled {
			v.NextFire = next.Format("2006-01-02 15:04 MST")
			v.NextFireIn = "in " + human(next.Sub(now))
		}
		g := grid{Policy: pol.Name, Anchor: v.Anchor}
		for _, c := range pol.CopyTo {
			g.CopyRegions = append(g.CopyRegions, c.Region)
		}
		if up() {
			page := 1
			if q.policy == pol.Name {
				page = q.page
			}
			if err := h.fillGrid(ctx, &g, &v, rows[i].Timezone, now, page); err != nil {
				failed(err)
			}
		}
		if up() {
			if err := h.lastFire(ctx, &v); err != nil {
				failed(err)
			}
		}
		v.Known = up()
		g.Unreadable = !up()
		p.Policies = append(p.Policies, v)
		p.Grids = append(p.Grids, g)
	}

	if up() && len(p.CopyRegions) > 0 {
		if err := h.copySummaries(ctx, p, cfg, now); err != nil {
			failed(err)
		}
	}
	if up() && p.ShowRestore {
		if err := h.restoreSummaries(ctx, p, cfg, now); err != nil {
			failed(err)
		}
	}

	since := now.AddDate(0, 0, -GridDays)
	p.FailuresSince = since.UTC().Format("2006-01-02")
	if up() {
		runs, err := db.RunsList(ctx, history.RunFilter{Since: since, Status: history.StatusFailed, Limit: FailuresShown})
		if err != nil {
			failed(err)
		}
		for _, r := range runs {
			f := failure{Slot: r.ScheduledAt.Format("2006-01-02 15:04 UTC"), Policy: r.Policy, Instance: r.InstanceID,
				Code: r.ErrorCode, Message: r.ErrorMessage}
			if r.FinishedAt != nil {
				f.Finished = r.FinishedAt.Format("2006-01-02 15:04 UTC")
			}
			p.Failures = append(p.Failures, f)
		}
	}
	p.DB.Up = up()
	return p
}

// accountsNamed reports whether the policy files name accounts: more than one, or one other than
// the default account.
func accountsNamed(cfg *policy.Config) bool {
	if len(cfg.Accounts) > 1 {
		return true
	}
	for _, p := range cfg.Policies {
		if p.Account != "" && p.Account != policy.DefaultAccount {
			return true
		}
	}
	return false
}

// copyRegions is the union of the loaded policies' copy_to regions, sorted.
func copyRegions(cfg *policy.Config) []string {
	var out []string
	for _, p := range cfg.Policies {
		for _, c := range p.CopyTo {
			if !slices.Contains(out, c.Region) {
				out = append(out, c.Region)
			}
		}
	}
	slices.Sort(out)
	return out
}

// copySummaries fills each policy's cells of the copy columns from copy_coverage, one query for
// the page.
// restoreSummaries fills each policy's restore cell from restore_coverage.
func (h *handler) restoreSummaries(ctx context.Context, p *page, cfg *policy.Config, now time.Time) error {
	tested := map[string]bool{}
	var names []string
	for _, rt := range cfg.RestoreTests {
		if !tested[rt.Policy] {
			tested[rt.Policy] = true
			names = append(names, rt.Policy)
		}
	}
	sums, err := h.opts.History.RestoreCoverageSummary(ctx, names)
	if err != nil {
		return err
	}
	by := make(map[string]history.RestoreSummary, len(sums))
	for _, s := range sums {
		by[s.Policy] = s
	}
	for i := range p.Policies {
		v := &p.Policies[i]
		c := &v.Restore
		c.Tested, c.Known = tested[v.Name], true
		if !c.Tested {
			c.Title = "no restore test names " + v.Name
			continue
		}
		s := by[v.Name]
		c.Instances, c.Passed, c.Overdue = s.Instances, s.Passed, s.Overdue
		c.Title = fmt.Sprintf("%d of %d instances passed a restore test, %d overdue", s.Passed, s.Instances, s.Overdue)
		if s.OldestAt != nil {
			c.Oldest = human(now.Sub(*s.OldestAt))
			c.Title += "; the oldest newest pass was " + c.Oldest + " ago"
		}
	}
	return nil
}

func (h *handler) copySummaries(ctx context.Context, p *page, cfg *policy.Config, now time.Time) error {
	var copying []string // the policies with copy_to: the others have no copies to count
	for _, pol := range cfg.Policies {
		if len(pol.CopyTo) > 0 {
			copying = append(copying, pol.Name)
		}
	}
	sums, err := h.opts.History.CopyCoverageSummary(ctx, copying)
	if err != nil {
		return err
	}
	type key struct{ policy, region string }
	byKey := make(map[key]history.CopyRegionSummary, len(sums))
	for _, s := range sums {
		byKey[key{s.Policy, s.Region}] = s
	}
	for i := range p.Policies {
		v := &p.Policies[i]
		pol := cfg.Policy(v.Name)
		v.Copies = make([]copySummary, len(p.CopyRegions))
		for j, region := range p.CopyRegions {
			c := &v.Copies[j]
			c.Wanted = pol != nil && slices.ContainsFunc(pol.CopyTo, func(t policy.CopyTarget) bool { return t.Region == region })
			s, ok := byKey[key{v.Name, region}]
			switch {
			case !c.Wanted && !ok:
				c.Title = v.Name + " does not copy to " + region
				continue
			case !ok:
				c.Title = "no copy requested in " + region + " yet"
				continue
			}
			c.Instances, c.Overdue = s.Instances, s.Overdue
			c.Title = fmt.Sprintf("%d instances with copies in %s, %d overdue", s.Instances, region, s.Overdue)
			if s.OldestAt != nil {
				c.Oldest = human(now.Sub(*s.OldestAt))
				c.Title += "; the oldest newest copy became available " + c.Oldest + " ago"
			}
		}
	}
	return nil
}

func policiesOf(cfg *policy.Config) []*policy.Policy {
	if cfg == nil {
		return nil
	}
	return cfg.Policies
}

// lastFire fills the slot of the policy's newest run and the counts by status of that slot.
func (h *handler) lastFire(ctx context.Context, v *policyView) error {
	slot, counts, err := h.opts.History.LastFireOf(ctx, v.Name)
	if err != nil || slot.IsZero() {
		return err
	}
	v.LastFire = slot.Format("2006-01-02 15:04 UTC")
	for _, st := range statusOrder {
		if n := counts[st]; n > 0 {
			v.LastCounts = append(v.LastCounts, statusCount{Status: string(st), Count: n})
		}
	}
	return nil
}

// statusOrder is how statuses are listed and ranked, best first (as daily_coverage ranks them).
var statusOrder = []history.Status{history.StatusAvailable, history.StatusRequested, history.StatusPending,
	history.StatusFailed, history.StatusMissed, history.StatusSkipped}

// fillGrid reads one page of the policy's grid. Instances that need attention come first
// (history.CoveragePageOf), so page 1 of 10,000 instances shows what is wrong.
func (h *handler) fillGrid(ctx context.Context, g *grid, v *policyView, tz string, now time.Time, pageNo int) error {
	db := h.opts.History
	cov, err := db.CoveragePageOf(ctx, g.Policy, (pageNo-1)*PageSize, PageSize)
	if err != nil {
		return err
	}
	if len(cov.Rows) == 0 && pageNo > 1 {
		// Past the end: show the last page.
		if cov, err = db.CoveragePageOf(ctx, g.Policy, 0, 1); err != nil {
			return err
		}
		if cov.Instances > 0 {
			pageNo = (cov.Instances + PageSize - 1) / PageSize
			if cov, err = db.CoveragePageOf(ctx, g.Policy, (pageNo-1)*PageSize, PageSize); err != nil {
				return err
			}
		}
	}
	g.Instances, g.Overdue = cov.Instances, cov.Overdue
	v.Instances, v.Breaches = cov.Instances, int64(cov.Overdue)
	if len(cov.Rows) == 0 {
		g.Empty = true
		return nil
	}
	g.Pages = (cov.Instances + PageSize - 1) / PageSize
	g.Page = pageNo
	g.First, g.Last = (pageNo-1)*PageSize+1, (pageNo-1)*PageSize+len(cov.Rows)

	loc, err := time.LoadLocation(tz)
	if err != nil {
		loc = time.UTC
	}
	today := now.In(loc)
	from := time.Date(today.Year(), today.Month(), today.Day()-(GridDays-1), 0, 0, 0, 0, time.UTC)
	to := time.Date(today.Year(), today.Month(), today.Day(), 0, 0, 0, 0, time.UTC)
	for d := from; !d.After(to); d = d.AddDate(0, 0, 1) {
		wd := d.Weekday()
		g.Days = append(g.Days, dayHead{Label: strconv.Itoa(d.Day()), Title: d.Format("Mon 2006-01-02"),
			Weekend: wd == time.Saturday || wd == time.Sunday})
	}

	ids := make([]string, len(cov.Rows))
	for i, c := range cov.Rows {
		ids[i] = c.InstanceID
	}
	days, err := db.DailyCoverageOf(ctx, g.Policy, ids, from, to)
	if err != nil {
		return err
	}
	type key struct {
		instance string
		day      string
	}
	byDay := make(map[key]history.DailyCoverage, len(days))
	for _, d := range days {
		byDay[key{d.InstanceID, d.Day.Format(time.DateOnly)}] = d
	}
	type copyKey struct{ instance, region string }
	copies := map[copyKey]history.CopyCoverage{}
	if len(g.CopyRegions) > 0 {
		cc, err := db.CopyCoverageList(ctx, g.Policy, ids)
		if err != nil {
			return err
		}
		for _, c := range cc {
			copies[copyKey{c.InstanceID, c.Region}] = c
		}
	}
	g.Rows = make([]gridRow, 0, len(cov.Rows))
	for _, c := range cov.Rows {
		row := gridRow{Instance: c.InstanceID, Overdue: c.Overdue, Title: instanceTitle(c, now)}
		for _, region := range g.CopyRegions {
			cc, ok := copies[copyKey{c.InstanceID, region}]
			row.Copies = append(row.Copies, newCopyCell(region, cc, ok, now))
		}
		row.Cells = make([]cell, 0, GridDays)
		for d := from; !d.After(to); d = d.AddDate(0, 0, 1) {
			date := d.Format(time.DateOnly)
			dc, ok := byDay[key{c.InstanceID, date}]
			if !ok {
				row.Cells = append(row.Cells, cell{Class: "none", Title: date + ": no slot"})
				continue
			}
			row.Cells = append(row.Cells, cell{Class: string(dc.Status), Title: cellTitle(date, dc)})
		}
		g.Rows = append(g.Rows, row)
	}
	g.pageLinks()
	return nil
}

// newCopyCell is an instance's cell of one copy region: the age of its newest available copy
// there, red when overdue, "never" when none became available, "–" when no copy was requested.
func newCopyCell(region string, c history.CopyCoverage, found bool, now time.Time) copyCell {
	if !found {
		return copyCell{Class: "copy-none", Text: "–", Title: region + ": no copy requested yet"}
	}
	cell := copyCell{Class: "copy-ok", Text: "never", Title: region + ": no copy available yet"}
	if c.LastAvailableAt != nil {
		cell.Text = human(now.Sub(*c.LastAvailableAt))
		cell.Title = region + ": newest copy " + c.LastAvailableImageID + ", available " + cell.Text + " ago"
		if c.LastAvailableSlot != nil {
			cell.Title += " (slot " + c.LastAvailableSlot.Format("2006-01-02 15:04 UTC") + ")"
		}
	}
	if c.Overdue {
		cell.Class = "copy-overdue"
		cell.Title += "; OVERDUE"
	}
	return cell
}

// cellTitle is a grid cell's tooltip: the day, its best status and the image id (available,
// requested) or the error code (failed, missed, skipped).
func cellTitle(date string, d history.DailyCoverage) string {
	t := date + " " + string(d.Status)
	switch {
	case d.ImageID != "" && (d.Status == history.StatusAvailable || d.Status == history.StatusRequested):
		t += ": " + d.ImageID
	case d.ErrorCode != "":
		t += ": " + d.ErrorCode
	}
	if d.Runs > 1 {
		t += fmt.Sprintf(" (best of %d slots)", d.Runs)
	}
	return t
}

func instanceTitle(c history.Coverage, now time.Time) string {
	t := "last slot " + c.LastSlot.Format("2006-01-02 15:04 UTC") + " " + string(c.LastStatus)
	if c.LastErrorCode != "" {
		t += " (" + c.LastErrorCode + ")"
	}
	if c.LastAvailableImageID != "" && c.LastAvailableAt != nil {
		t += "; last image " + c.LastAvailableImageID + ", " + human(now.Sub(*c.LastAvailableAt)) + " ago"
	} else {
		t += "; never imaged"
	}
	if c.Overdue {
		t += "; OVERDUE (RPO breach)"
	}
	return t
}

// pageLinks builds the pager: first, last and the pages around the current one.
func (g *grid) pageLinks() {
	link := func(n int) string {
		return "?" + url.Values{"policy": {g.Policy}, "page": {strconv.Itoa(n)}}.Encode() + "#" + g.Anchor
	}
	if g.Page > 1 {
		g.PrevURL = link(g.Page - 1)
	}
	if g.Page < g.Pages {
		g.NextURL = link(g.Page + 1)
	}
	if g.Pages <= 1 {
		return
	}
	prev := 0
	for n := 1; n <= g.Pages; n++ {
		if n != 1 && n != g.Pages && (n < g.Page-3 || n > g.Page+3) {
			continue
		}
		if prev != 0 && n != prev+1 {
			g.PageURLs = append(g.PageURLs, pageLink{}) // a gap
		}
		g.PageURLs = append(g.PageURLs, pageLink{N: n, URL: link(n), Current: n == g.Page})
		prev = n
	}
}

// describe says why the database could not be read, without anything secret: history's errors
// name no password.
func describe(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer within " + queryTimeout.String()
	default:
		return err.Error()
	}
}

// human prints a duration in days, hours and minutes.
func human(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	d = d.Round(time.Minute)
	days, hours, mins := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour), int(d%time.Hour/time.Minute)
	switch {
	case days > 0:
		return fmt.Sprintf("%dd %dh", days, hours)
	case hours > 0:
		return fmt.Sprintf("%dh %dm", hours, mins)
	default:
		return fmt.Sprintf("%dm", mins)
	}
}
