package metrics_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/metrics"
	"github.com/imager-dev/imager/internal/pgcluster"
)

// scrape fetches /metrics, requires 200 and parses the exposition strictly (as Prometheus would).
func scrape(t *testing.T, base string) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	require.NoError(t, err, "exposition must parse")
	return fams, string(body)
}

// gauge returns the value of the sample of family name whose labels match, or fails.
func gauge(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	require.True(t, ok, "family %s missing", name)
next:
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
				continue next
			}
		}
		if m.GetGauge() != nil {
			return m.GetGauge().GetValue()
		}
		return m.GetCounter().GetValue()
	}
	require.Failf(t, "no sample", "%s%v", name, labels)
	return 0
}

// TestMetricsSurvivePostgreSQLOutage wires the database-backed metrics to a real store on a
// server of its own, stops that server, and checks that /metrics still answers with the rest.
func TestMetricsSurvivePostgreSQLOutage(t *testing.T) {
	ctx := context.Background()
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{Logger: zerolog.Nop()})
	require.NoError(t, err, "start a PostgreSQL server of the test's own (install the PostgreSQL server binaries)")
	t.Cleanup(func() { _ = cluster.Stop() })
	url, err := cluster.CreateDatabase(ctx, "imager")
	require.NoError(t, err)
	store, err := history.Open(ctx, url+"&connect_timeout=2", zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(store.Close)
	_, err = store.Migrate(ctx)
	require.NoError(t, err)

	now := time.Now().UTC().Truncate(time.Second)
	_, err = store.PoliciesSync(ctx, []history.PolicyRow{{Name: "web", Schedule: "@every 1h", Timezone: "UTC",
		Interval: 2 * time.Hour, Enabled: true, SourceFile: "p.yaml", SourceLine: 3, LoadedAt: now}}, now)
	require.NoError(t, err)
	for i, inst := range []string{"ins-aaaaaaaa", "ins-bbbbbbbb"} {
		r, _, err := store.RunClaim(ctx, history.RunClaimParams{Policy: "web", InstanceID: inst, Region: "ap-guangzhou",
			ScheduledAt: now.Add(-time.Duration(3*i+1) * time.Hour), ImageName: "n-" + inst, DaemonID: "d",
			StartedAt: now.Add(-time.Duration(3*i+1) * time.Hour), Status: history.StatusPending})
		require.NoError(t, err)
		require.NoError(t, store.RunRequested(ctx, r.ID, "img-"+inst[4:], "req"))
		require.NoError(t, store.RunAvailable(ctx, r.ID, nil, "", now.Add(-time.Duration(7*i)*30*time.Minute)))
		if i == 0 {
			// ins-aaaaaaaa's image has a copy in ap-singapore, available 10 minutes ago, made with
			// account prod; its copy in ap-shanghai is still syncing (no sample).
			_, err = store.Pool().Exec(ctx, `UPDATE image_runs SET account = 'prod' WHERE id = $1`, r.ID)
			require.NoError(t, err)
			copies, _, err := store.CopyRequested(ctx, r.ID, []string{"ap-shanghai", "ap-singapore"}, now.Add(-20*time.Minute))
			require.NoError(t, err)
			require.NoError(t, store.CopyAnswered(ctx, copies[0].ID, "img-sh000001", "req-s"))
			require.NoError(t, store.CopyAnswered(ctx, copies[1].ID, "img-sg000001", "req-s"))
			require.NoError(t, store.CopyAvailable(ctx, copies[1].ID, "", now.Add(-10*time.Minute)))
		}
	}

	mo := metrics.HistoryOptions(store)
	mo.SpoolPending = func() int { return 7 }
	mo.QueueDepth = func() int { return 4 }
	mo.Version, mo.Commit = "1.2.3", "abc"
	mo.Logger = zerolog.Nop()
	m := metrics.New(mo)
	m.ObserveRun("web", "available")
	m.ObserveRun("web", "available")
	m.ObservePaceWait(250 * time.Millisecond)
	m.SetConfigReload(true, time.Unix(1700000000, 0))
	m.SetConfigReload(false, time.Unix(1700000100, 0))

	srv, err := metrics.Listen("127.0.0.1:0", m, zerolog.Nop())
	require.NoError(t, err)
	srv.Start()
	t.Cleanup(srv.Stop)
	base := "http://" + srv.Addr()

	fams, _ := scrape(t, base)
	require.Equal(t, 1.0, gauge(t, fams, "imager_history_up", nil))
	require.Equal(t, 2.0, gauge(t, fams, "imager_runs_last_24h", map[string]string{"policy": "web", "status": "available"}))
	require.Equal(t, float64(now.Unix()), gauge(t, fams, "imager_last_available_image_timestamp_seconds",
		map[string]string{"policy": "web", "instance": "ins-aaaaaaaa"}))
	require.Equal(t, float64(now.Add(-210*time.Minute).Unix()), gauge(t, fams, "imager_last_available_image_timestamp_seconds",
		map[string]string{"policy": "web", "instance": "ins-bbbbbbbb"}))
	require.Equal(t, float64(now.Add(-10*time.Minute).Unix()), gauge(t, fams, "imager_last_available_copy_timestamp_seconds",
		map[string]string{"policy": "web", "instance": "ins-aaaaaaaa", "region": "ap-singapore", "account": "prod"}))
	require.Len(t, fams["imager_last_available_copy_timestamp_seconds"].GetMetric(), 1, "a copy still syncing has no sample")
	require.Equal(t, 1.0, gauge(t, fams, "imager_rpo_breaches", map[string]string{"policy": "web"}),
		"ins-bbbbbbbb has no image within 1.5 intervals (3h)")
	require.Equal(t, 2.0, gauge(t, fams, "imager_runs_total", map[string]string{"policy": "web", "status": "available"}))
	require.Equal(t, uint64(1), fams["imager_pace_wait_seconds"].GetMetric()[0].GetHistogram().GetSampleCount())
	require.Equal(t, 0.0, gauge(t, fams, "imager_config_last_reload_success", nil))
	require.Equal(t, 1700000000.0, gauge(t, fams, "imager_config_last_reload_success_timestamp_seconds", nil))
	require.Equal(t, 4.0, gauge(t, fams, "imager_queue_depth", nil))
	require.Equal(t, 0.0, gauge(t, fams, "imager_notifications_pending", nil), "not wired: 0")
	require.Equal(t, 1.0, gauge(t, fams, "imager_build_info", map[string]string{"version": "1.2.3", "commit": "abc"}))

	require.NoError(t, cluster.Stop())

	fams, body := scrape(t, base)
	require.Equal(t, 0.0, gauge(t, fams, "imager_history_up", nil), body)
	require.Equal(t, 7.0, gauge(t, fams, "imager_spool_pending", nil))
	require.Equal(t, 2.0, gauge(t, fams, "imager_runs_total", map[string]string{"policy": "web", "status": "available"}))
	require.NotContains(t, fams, "imager_rpo_breaches", "a family that could not be read is left out, not reported as 0")
	require.NotContains(t, fams, "imager_runs_last_24h")
	require.NotContains(t, fams, "imager_last_available_copy_timestamp_seconds")
	require.Contains(t, fams, "go_goroutines")
}
