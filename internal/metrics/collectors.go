package metrics

import (
	"context"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// LastAvailable is when the newest available image of one (policy, instance) became available.
type LastAvailable struct {
	Policy   string
	Instance string
	At       time.Time
}

// LastAvailableCopy is when the newest available copy of one (policy, instance) in one other
// region became available, and the account of the copies there.
type LastAvailableCopy struct {
	Policy   string
	Instance string
	Region   string
	Account  string
	At       time.Time
}

// PolicyCount is a number per policy.
type PolicyCount struct {
	Policy string
	Count  int64
}

// Sources are the further sources of Options (embedded there). Every func may be nil: a nil
// database source is left out of the scrape, a nil gauge source reads 0.
type Sources struct {
	// LastAvailable returns the coverage view's last available image per (policy, instance):
	// imager_last_available_image_timestamp_seconds.
	LastAvailable func(ctx context.Context) ([]LastAvailable, error)
	// LastAvailableCopy returns the copy_coverage view's newest available copy per (policy,
	// instance, region): imager_last_available_copy_timestamp_seconds.
	LastAvailableCopy func(ctx context.Context) ([]LastAvailableCopy, error)
	// LastRestoreTests returns the restore_coverage view's newest passed test per (test, policy,
	// instance): imager_last_restore_test_timestamp_seconds (restore.go).
	LastRestoreTests func(ctx context.Context) ([]LastRestoreTest, error)
	// RPOBreaches returns the rows of rpo_breaches per loaded policy: imager_rpo_breaches.
	RPOBreaches func(ctx context.Context) ([]PolicyCount, error)
	// NotificationsPending returns how many notifications wait for delivery (read from the
	// database at scrape time): imager_notifications_pending; nil reads 0.
	NotificationsPending func(ctx context.Context) (int64, error)
	// Replicas returns how many imager processes of each role (leader, standby, once) were seen
	// in the last minute (the replicas table): imager_replicas{role}.
	Replicas func(ctx context.Context) (map[string]int, error)
	// QueueDepth returns how many CreateImage requests wait for a worker: imager_queue_depth;
	// nil reads 0.
	QueueDepth func() int
	// Version and Commit label imager_build_info (the Go version is the running one).
	Version string
	Commit  string
}

// dbTimeout bounds the database queries of one scrape together, so a scrape answers well within
// Prometheus' default 10s scrape timeout even when PostgreSQL does not.
const dbTimeout = 3 * time.Second

// registerMore registers the collectors of Sources and the ones fed by the Observe methods.
func (m *Metrics) registerMore(opts Options) {
	m.runsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imager_runs_total",
		Help: "Runs that reached a status in this process, by policy and status (ObserveRun).",
	}, []string{"policy", "status"})
	m.paceWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "imager_pace_wait_seconds",
		Help:    "How long CreateImage calls waited for the shared pace before being sent.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14), // 10ms .. ~82s
	})
	m.reloadOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "imager_config_last_reload_success",
		Help: "1 when the last load or reload of the policies succeeded, 0 when it failed (the old policies keep running).",
	})
	m.reloadAt = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "imager_config_last_reload_success_timestamp_seconds",
		Help: "Unix time of the last successful load or reload of the policies.",
	})
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "imager_build_info",
		Help: "Always 1; the labels say which imager runs.",
	}, []string{"version", "commit", "goversion"})
	buildInfo.WithLabelValues(orUnknown(opts.Version), orUnknown(opts.Commit), runtime.Version()).Set(1)
	queue := opts.QueueDepth
	m.registry.MustRegister(m.runsTotal, m.paceWait, m.reloadOK, m.reloadAt, buildInfo,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "imager_queue_depth",
			Help: "CreateImage requests waiting for a worker.",
		}, func() float64 {
			if queue == nil {
				return 0
			}
			return float64(queue())
		}))
	if opts.NotificationsPending == nil {
		m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "imager_notifications_pending",
			Help: "Notifications waiting for delivery in the notifications outbox (0: notifications not set up).",
		}, func() float64 { return 0 }))
	}
	if opts.RunCounts != nil || opts.LastAvailable != nil || opts.LastAvailableCopy != nil || opts.RPOBreaches != nil ||
		opts.NotificationsPending != nil || opts.Replicas != nil || opts.LastRestoreTests != nil {
		m.registry.MustRegister(&historyCollector{opts: opts, log: opts.Logger})
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// ObserveRun counts one run reaching status (imager_runs_total). The scheduler and the tracker
// call it when they record a terminal status (or requested) for a run of policy.
func (m *Metrics) ObserveRun(policy, status string) {
	m.runsTotal.WithLabelValues(policy, status).Inc()
}

// ObservePaceWait records how long one CreateImage call waited for the pace (imager_pace_wait_seconds).
func (m *Metrics) ObservePaceWait(d time.Duration) {
	m.paceWait.Observe(d.Seconds())
}

// SetConfigReload records the outcome of a load or reload of the policies at at: a success sets
// imager_config_last_reload_success to 1 and its timestamp; a failure sets it to 0 and keeps the
// timestamp of the last success.
func (m *Metrics) SetConfigReload(ok bool, at time.Time) {
	if !ok {
		m.reloadOK.Set(0)
		return
	}
	m.reloadOK.Set(1)
	m.reloadAt.Set(float64(at.UnixNano()) / 1e9)
}

var (
	historyUpDesc = prometheus.NewDesc("imager_history_up",
		"1 when the last scrape read imager's history from PostgreSQL, 0 when it could not (the database-backed metrics are then missing).",
		nil, nil)
	runsDesc = prometheus.NewDesc("imager_runs_last_24h",
		"Runs whose slot is in the last 24 hours, by policy and status (from image_runs).",
		[]string{"policy", "status"}, nil)
	lastAvailableDesc = prometheus.NewDesc("imager_last_available_image_timestamp_seconds",
		"Unix time the newest available image of a (policy, instance) became available (coverage view).",
		[]string{"policy", "instance"}, nil)
	// The copies' gauge carries the account; the source images' gauge keeps its labels (a new
	// label would start new series under the existing alerts and dashboards).
	lastAvailableCopyDesc = prometheus.NewDesc("imager_last_available_copy_timestamp_seconds",
		"Unix time the newest available copy of a (policy, instance) in another region became available (copy_coverage view), with the account of the copies.",
		[]string{"policy", "instance", "region", "account"}, nil)
	rpoDesc = prometheus.NewDesc("imager_rpo_breaches",
		"Instances of a loaded policy without an image within 1.5 intervals (rows of the rpo_breaches view).",
		[]string{"policy"}, nil)
	notificationsDesc = prometheus.NewDesc("imager_notifications_pending",
		"Notifications waiting for delivery in the notifications outbox.", nil, nil)
	replicasDesc = prometheus.NewDesc("imager_replicas",
		"imager processes seen on this database in the last minute, by role (leader, standby, once).",
		[]string{"role"}, nil)
)

// historyCollector reads the database-backed metrics at scrape time, so every replica reports
// the same truth. It never fails the scrape: when a query fails it logs a warning, leaves that
// family out and reports imager_history_up 0; the other collectors are served as usual.
type historyCollector struct {
	opts Options
	log  zerolog.Logger
}

func (c *historyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- historyUpDesc
	ch <- runsDesc
	ch <- lastAvailableDesc
	if c.opts.LastAvailableCopy != nil {
		ch <- lastAvailableCopyDesc
	}
	ch <- rpoDesc
	if c.opts.LastRestoreTests != nil {
		ch <- lastRestoreDesc
	}
	if c.opts.NotificationsPending != nil {
		ch <- notificationsDesc
	}
	if c.opts.Replicas != nil {
		ch <- replicasDesc
	}
}

func (c *historyCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), dbTimeout)
	defer cancel()
	up := 1.0
	// failed records a failed query; after the first failure the others are not tried (the
	// database is most likely away, and each would wait for the rest of the budget).
	failed := func(what string, err error) {
		up = 0
		c.log.Warn().Err(err).Str("metric", what).Msg("metrics: cannot read history")
	}
	if c.opts.RunCounts != nil {
		counts, err := c.opts.RunCounts(ctx, time.Now().Add(-24*time.Hour))
		if err != nil {
			failed("imager_runs_last_24h", err)
		}
		for _, rc := range counts {
			ch <- prometheus.MustNewConstMetric(runsDesc, prometheus.GaugeValue, float64(rc.Count), rc.Policy, rc.Status)
		}
	}
	if c.opts.LastAvailable != nil && up == 1 {
		last, err := c.opts.LastAvailable(ctx)
		if err != nil {
			failed("imager_last_available_image_timestamp_seconds", err)
		}
		for _, l := range last {
			ch <- prometheus.MustNewConstMetric(lastAvailableDesc, prometheus.GaugeValue,
				float64(l.At.UnixNano())/1e9, l.Policy, l.Instance)
		}
	}
	if c.opts.LastAvailableCopy != nil && up == 1 {
		last, err := c.opts.LastAvailableCopy(ctx)
		if err != nil {
			failed("imager_last_available_copy_timestamp_seconds", err)
		}
		for _, l := range last {
			ch <- prometheus.MustNewConstMetric(lastAvailableCopyDesc, prometheus.GaugeValue,
				float64(l.At.UnixNano())/1e9, l.Policy, l.Instance, l.Region, l.Account)
		}
	}
	if c.opts.LastRestoreTests != nil && up == 1 {
		if err := collectRestore(ctx, c.opts.LastRestoreTests, ch); err != nil {
			failed("imager_last_restore_test_timestamp_seconds", err)
		}
	}
	if c.opts.RPOBreaches != nil && up == 1 {
		counts, err := c.opts.RPOBreaches(ctx)
		if err != nil {
			failed("imager_rpo_breaches", err)
		}
		for _, pc := range counts {
			ch <- prometheus.MustNewConstMetric(rpoDesc, prometheus.GaugeValue, float64(pc.Count), pc.Policy)
		}
	}
	if c.opts.NotificationsPending != nil && up == 1 {
		n, err := c.opts.NotificationsPending(ctx)
		if err != nil {
			failed("imager_notifications_pending", err)
		} else {
			ch <- prometheus.MustNewConstMetric(notificationsDesc, prometheus.GaugeValue, float64(n))
		}
	}
	if c.opts.Replicas != nil && up == 1 {
		roles, err := c.opts.Replicas(ctx)
		if err != nil {
			failed("imager_replicas", err)
		}
		for _, role := range []string{"leader", "standby", "once"} {
			if err == nil {
				ch <- prometheus.MustNewConstMetric(replicasDesc, prometheus.GaugeValue, float64(roles[role]), role)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(historyUpDesc, prometheus.GaugeValue, up)
}
