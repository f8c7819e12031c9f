// Package web serves imager's read-only status page (GET / on --listen, docs/operations.md "Status page"):
// the daemon's state, each policy's schedule, last fire and copies in other regions, a 30-day
// coverage grid per policy (with each instance's newest copy per copy_to region) and the recent
// failures. It is rendered on the server with html/template and embedded CSS; the page
// needs no JavaScript.
//
// The page is informational: when PostgreSQL is unreachable it still answers 200, with a banner
// saying so and what the daemon knows without the database (its role and loaded policies).
// /readyz is the probe that fails in that case.
package web

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// Defaults of the page.
const (
	// GridDays is how many calendar days the coverage grid shows, today included.
	GridDays = 30
	// PageSize is how many instances one page of a policy's grid shows.
	PageSize = 100
	// FailuresShown is how many recent failures the page lists.
	FailuresShown = 50
	// queryTimeout bounds the database work of one request, so an unreachable database gives a
	// banner rather than a hanging page.
	queryTimeout = 5 * time.Second
)

// History is what the page reads from imager's history (implemented by *history.Store).
type History interface {
	CoveragePageOf(ctx context.Context, policy string, offset, limit int) (history.CoveragePage, error)
	LastFireOf(ctx context.Context, policy string) (time.Time, map[history.Status]int64, error)
	DailyCoverageOf(ctx context.Context, policy string, instances []string, from, to time.Time) ([]history.DailyCoverage, error)
	RunsList(ctx context.Context, f history.RunFilter) ([]history.RunListed, error)
	CopyCoverageList(ctx context.Context, policy string, instances []string) ([]history.CopyCoverage, error)
	CopyCoverageSummary(ctx context.Context, policies []string) ([]history.CopyRegionSummary, error)
	RestoreCoverageSummary(ctx context.Context, policies []string) ([]history.RestoreSummary, error)
}

var _ History = (*history.Store)(nil)

// Options are the page's sources, read at every request. Every field may be nil.
type Options struct {
	// Leader reports whether this daemon leads (fires schedules) or stands by; nil shows the
	// role as not reported.
	Leader func() bool
	// Ping returns nil when PostgreSQL answers; nil judges reachability by the page's own queries.
	Ping func(ctx context.Context) error
	// Policies returns the loaded policies and when they were loaded; a nil Config means none
	// loaded yet.
	Policies func() (*policy.Config, time.Time)
	// History is the database; nil shows the database as not configured.
	History History
	// Clock decides "now" (next fires, the grid's days); nil is the real clock.
	Clock  clockwork.Clock
	Logger zerolog.Logger
}

// Handler returns the status page handler. Mount it for "GET /{$}" so other paths stay 404.
func Handler(opts Options) http.Handler {
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	return &handler{opts: opts}
}

type handler struct {
	opts Options
}

func (h *handler) policyLoaded(name string) bool {
	if h.opts.Policies == nil {
		return false
	}
	cfg, _ := h.opts.Policies()
	return cfg != nil && cfg.Policy(name) != nil
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q, err := parseQuery(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if q.policy != "" && !h.policyLoaded(q.policy) {
		http.Error(w, "policy "+strconv.Quote(truncate(q.policy, 80))+" is not loaded", http.StatusNotFound)
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	p := h.build(ctx, q)
	p.BuildMS = float64(time.Since(start).Microseconds()) / 1000
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := render(w, p); err != nil && r.Context().Err() == nil {
		h.opts.Logger.Warn().Err(err).Msg("render status page")
	}
}

// query is the page's URL parameters: ?policy=NAME&page=N pages one policy's grid.
type query struct {
	policy string
	page   int // 1-based
}

func parseQuery(r *http.Request) (query, error) {
	v := r.URL.Query()
	q := query{policy: v.Get("policy"), page: 1}
	if s := v.Get("page"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return q, errors.New("page: want a page number of 1 or more, got " + strconv.Quote(truncate(s, 80)))
		}
		q.page = n
	}
	return q, nil
}

// truncate quotes at most n bytes of a value given by a visitor.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
