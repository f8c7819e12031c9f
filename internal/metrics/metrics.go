// Package metrics exposes imager's Prometheus metrics and health check over HTTP (--listen).
//
// It uses prometheus/client_golang rather than hand-written exposition: the text format,
// histograms and the Go/process collectors come for free and stay correct.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/rs/zerolog"
)

// RunCount is the number of runs of one policy in one status.
type RunCount struct {
	Policy string
	Status string
	Count  int64
}

// Options are the sources the metrics read at scrape time. A source that needs PostgreSQL never
// fails the scrape: it reports imager_history_up 0 and the rest is served (collectors.go).
type Options struct {
	// RunCounts returns run counts per policy and status for slots since the given time; nil
	// leaves imager_runs_last_24h out.
	RunCounts func(ctx context.Context, since time.Time) ([]RunCount, error)
	// SpoolPending returns how many history writes wait in the local spool; nil leaves it out.
	SpoolPending func() int
	// Health returns nil when the daemon can do its work (database reachable); nil = always healthy.
	Health func(ctx context.Context) error
	// Ready returns nil when this replica is ready (/readyz): the leader with its work running,
	// or a standby that reaches the database, with policies loaded; otherwise the reason. Nil
	// means ready whenever healthy.
	Ready func(ctx context.Context) error
	// Leading reports whether this replica holds the leader lease (imager_leader{daemon_id});
	// nil leaves the gauge out.
	Leading  func() bool
	DaemonID string
	// Page, when set, is served at GET / (the status page); other paths stay 404.
	Page    http.Handler
	Logger  zerolog.Logger
	Sources // further sources (collectors.go)
}

// Metrics holds imager's collectors and their registry.
type Metrics struct {
	registry    *prometheus.Registry
	apiCalls    *prometheus.CounterVec
	apiDuration *prometheus.HistogramVec
	opts        Options

	runsTotal *prometheus.CounterVec // collectors.go
	paceWait  prometheus.Histogram
	reloadOK  prometheus.Gauge
	reloadAt  prometheus.Gauge

	hookFrozen *prometheus.HistogramVec // hooks.go
}

// New builds the registry with the Go and process collectors and imager's own.
func New(opts Options) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		apiCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imager_api_calls_total",
			Help: "CVM API calls by action and error code (code=\"\" for success).",
		}, []string{"action", "code"}),
		apiDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "imager_api_call_duration_seconds",
			Help:    "Duration of CVM API calls by action.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"action"}),
		opts: opts,
	}
	m.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.apiCalls, m.apiDuration)
	m.registerMore(opts)
	m.registerHooks()
	if opts.Leading != nil {
		m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "imager_leader",
			Help:        "1 while this replica holds the leader lease, 0 while it stands by.",
			ConstLabels: prometheus.Labels{"daemon_id": opts.DaemonID},
		}, func() float64 {
			if opts.Leading() {
				return 1
			}
			return 0
		}))
	}
	if opts.SpoolPending != nil {
		m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "imager_spool_pending",
			Help: "History writes waiting in the local spool for PostgreSQL to come back.",
		}, func() float64 { return float64(opts.SpoolPending()) }))
	}
	return m
}

// ObserveCall records one CVM API call; it matches cvm.Config.OnCall.
func (m *Metrics) ObserveCall(action, code string, elapsed time.Duration) {
	m.apiCalls.WithLabelValues(action, code).Inc()
	m.apiDuration.WithLabelValues(action).Observe(elapsed.Seconds())
}

// Handler serves /metrics, /healthz (liveness), /readyz (readiness) and, when configured, the
// status page at /.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	if m.opts.Page != nil {
		mux.Handle("GET /{$}", m.opts.Page)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if m.opts.Health != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
			defer cancel()
			if err := m.opts.Health(ctx); err != nil {
				http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		check := m.opts.Ready
		if check == nil {
			check = m.opts.Health
		}
		if check != nil {
			if err := check(ctx); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// Server serves the metrics on an address until stopped.
type Server struct {
	srv       *http.Server
	ln        net.Listener
	webConfig string
	web       WebConfig
	wg        sync.WaitGroup
	once      sync.Once
	log       zerolog.Logger
}

// Listen binds addr (e.g. ":9090") and serves plain HTTP to anyone; the error names the address.
func Listen(addr string, m *Metrics, log zerolog.Logger) (*Server, error) {
	return ListenWeb(addr, "", m, log)
}

// ListenWeb is Listen with a --web-config file (exporter-toolkit format: TLS and basic auth over
// every path, /healthz and /readyz included). The file is validated before addr is bound; a bad
// one is an error that names it (ValidateWebConfig). exporter-toolkit reads the file again for
// every request and TLS handshake, so certificates and users can be rotated without a restart;
// a file broken later fails those requests (500, or a failed handshake) with an error log line
// and the daemon runs on.
func ListenWeb(addr, webConfig string, m *Metrics, log zerolog.Logger) (*Server, error) {
	wc, err := ValidateWebConfig(webConfig)
	if err != nil {
		return nil, fmt.Errorf("web config %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &Server{srv: &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}, ln: ln,
		webConfig: webConfig, web: wc, log: log}, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Scheme is "https" when the web config turns TLS on, else "http".
func (s *Server) Scheme() string {
	if s.web.TLS {
		return "https"
	}
	return "http"
}

// WebConfig is what the --web-config file turned on (all false without one).
func (s *Server) WebConfig() WebConfig { return s.web }

// Start serves in the background.
func (s *Server) Start() {
	s.wg.Go(func() {
		var err error
		if s.webConfig == "" {
			err = s.srv.Serve(s.ln)
		} else {
			err = web.Serve(s.ln, s.srv, &web.FlagConfig{WebConfigFile: &s.webConfig}, slogFor(s.log))
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("metrics server stopped")
		}
	})
}

// Stop shuts the server down (idempotent) and waits for it.
func (s *Server) Stop() {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(ctx)
		_ = s.ln.Close() // when Start was never called, Shutdown does not know the listener
	})
	s.wg.Wait()
}
