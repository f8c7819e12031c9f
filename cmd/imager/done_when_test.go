package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster"
)

// receiver is a local HTTP endpoint that records every request it gets (the webhook receiver and
// the healthchecks-style ping receiver of TestDoneWhen).
type receiver struct {
	srv  *httptest.Server
	mu   sync.Mutex
	got  []received
	wake chan struct{}
}

type received struct {
	path string
	body map[string]any
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{wake: make(chan struct{}, 1)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var body map[string]any
		raw, _ := io.ReadAll(req.Body)
		_ = json.Unmarshal(raw, &body)
		r.mu.Lock()
		r.got = append(r.got, received{path: req.URL.Path, body: body})
		r.mu.Unlock()
		select {
		case r.wake <- struct{}{}:
		default:
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// waitUntil returns the requests received once ok accepts them, or fails the test at deadline.
func (r *receiver) waitUntil(t *testing.T, deadline time.Time, what string, ok func([]received) bool) []received {
	t.Helper()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		r.mu.Lock()
		got := append([]received(nil), r.got...)
		r.mu.Unlock()
		if ok(got) {
			return got
		}
		select {
		case <-r.wake:
		case <-timer.C:
			t.Fatalf("%s: not received by the deadline; got %+v", what, got)
		}
	}
}

// waitLine returns the first log line containing want, or fails the test at deadline.
func (l *logLines) waitLine(t *testing.T, want string, deadline time.Time) string {
	t.Helper()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case line, ok := <-l.lines:
			if !ok {
				t.Fatalf("log ended without %q", want)
			}
			if strings.Contains(line, want) {
				return line
			}
		case <-timer.C:
			t.Fatalf("no log line with %q by the deadline", want)
		}
	}
}

// checkUntil runs check every 200 ms until it returns nil or the deadline passes (then fails with
// check's last error).
func checkUntil(t *testing.T, deadline time.Time, check func() error) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not by the deadline: %v", err)
		}
		<-tick.C
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// metricValue returns the value of the sample of family name whose labels include labels.
func metricValue(t *testing.T, exposition, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(exposition))
	require.NoError(t, err, "the exposition parses")
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
				continue next
			}
		}
		if m.GetGauge() != nil {
			return m.GetGauge().GetValue(), true
		}
		return m.GetCounter().GetValue(), true
	}
	return 0, false
}

// TestDoneWhen is the operator's check end to end (docs/notifications.md; docs/operations.md "Metrics and health"): the real `imager run` against an
// independent CVM endpoint (the simulator, via --cvm-endpoint), a PostgreSQL server of the test's
// own (so the test can stop it), a local webhook receiver and a ping receiver. The daemon runs a
// minute-schedule policy over two instances, one of which the endpoint refuses
// (InvalidInstance.NotSupported), and the test checks what an operator is promised:
//
//   - the failed run's webhook arrives with its error code;
//   - the policy's ping gets /start and then /fail for that fire;
//   - coverage and rpo_breaches name the failing instance (and not the good one);
//   - imager history --format json and imager latest give the runs and the image to restore from;
//   - /readyz and / answer; /metrics answers 200 with PostgreSQL stopped (imager_history_up 0).
//
// RPO needs 1.5 intervals (90 s here) without an available image, counted for a never-imaged
// instance from its first slot. Rather than waiting 90 s more, the test seeds one failed run of
// the same policy and instance three minutes back, as if an earlier daemon had fired it: that is
// the instance's first slot, so the instance is overdue as soon as it has a row in coverage. The
// seeded slot is told apart from the daemon's own fire everywhere below.
//
// It waits for the next minute boundary (the first cron slot after the daemon starts), so it takes
// up to about 1.5 minutes of wall time.
func TestDoneWhen(t *testing.T) {
	start := time.Now()
	ctx := context.Background()
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{Logger: zerolog.Nop()})
	require.NoError(t, err, "PostgreSQL server binaries are needed")
	t.Cleanup(func() { _ = cluster.Stop() })
	dbURL, err := cluster.CreateDatabase(ctx, "imager")
	require.NoError(t, err)
	if strings.Contains(dbURL, "?") {
		dbURL += "&connect_timeout=2"
	} else {
		dbURL += "?connect_timeout=2"
	}

	sim := cvmsim.New(cvmsim.Options{Seed: 1, ImageReadyAfter: time.Second, Logger: zerolog.Nop()})
	simURL, err := sim.Start()
	require.NoError(t, err)
	t.Cleanup(sim.Close)
	sim.AddInstance(cvmsim.Instance{ID: "ins-good0001", Region: "ap-guangzhou", State: "RUNNING"})
	sim.AddInstance(cvmsim.Instance{ID: "ins-old00001", Region: "ap-guangzhou", State: "RUNNING", Unsupported: true})

	hooks, pings := newReceiver(t), newReceiver(t)
	t.Setenv("TENCENTCLOUD_SECRET_ID", cvmsim.DefaultSecretID)
	t.Setenv("TENCENTCLOUD_SECRET_KEY", cvmsim.DefaultSecretKey)
	t.Setenv("IMAGER_CVM_ENDPOINT", "")
	t.Setenv("DATABASE_URL", "")
	t.Setenv("IMAGER_LOG_LEVEL", "")
	t.Setenv("IMAGER_LOG_FORMAT", "")
	t.Setenv("DONE_WHEN_WEBHOOK_URL", hooks.srv.URL+"/hooks/imager")
	dir := t.TempDir()
	policies := filepath.Join(dir, "policies.yaml")
	require.NoError(t, os.WriteFile(policies, []byte(fmt.Sprintf(`version: 1
api:
  create_image_rate: 10
  workers: 2
notify:
  webhooks:
    - url_env: DONE_WHEN_WEBHOOK_URL
      timeout: 2s
defaults: {region: ap-guangzhou, timezone: UTC}
policies:
  - name: minutely
    schedule: "* * * * *"
    instances: [ins-good0001, ins-old00001]
    notify:
      ping: %s/ping/0b7e1c9a
`, pings.srv.URL)), 0o600))

	// The schema first, then the seeded history: one failed slot of the failing instance, three
	// minutes back (see above).
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, dispatch(ctx, []string{"migrate", "--database-url", dbURL}, &stdout, &stderr), stderr.String())
	seeded := time.Now().UTC().Truncate(time.Minute).Add(-3 * time.Minute)
	seedStore, err := history.Open(ctx, dbURL, zerolog.Nop())
	require.NoError(t, err)
	seededRun, _, err := seedStore.RunClaim(ctx, history.RunClaimParams{Policy: "minutely", InstanceID: "ins-old00001",
		Region: "ap-guangzhou", ScheduledAt: seeded, StartedAt: seeded, Status: history.StatusFailed,
		ImageName: "minutely-ins-old00001-seeded", ErrorCode: "InvalidInstance.NotSupported",
		ErrorMessage: "seeded: an earlier daemon's fire", DaemonID: "seed"})
	require.NoError(t, err)
	_, err = seedStore.Pool().Exec(ctx, `UPDATE image_runs SET attempts = 1 WHERE id = $1`, seededRun.ID)
	require.NoError(t, err)
	seedStore.Close()

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	pr, pw := io.Pipe()
	logs := newLogLines(pr)
	done := make(chan int, 1)
	go func() {
		done <- dispatch(runCtx, []string{"run", "--policies", policies, "--database-url", dbURL, "--cvm-endpoint", simURL,
			"--spool-dir", filepath.Join(dir, "spool"), "--listen", "127.0.0.1:0", "--poll-interval", "200ms",
			"--shutdown-grace", "2s"}, io.Discard, pw)
		pw.Close()
	}()
	defer func() {
		stop()
		for range logs.lines { // drain, so the daemon never blocks on its log
		}
	}()
	var served struct{ Listen string }
	require.NoError(t, json.Unmarshal([]byte(logs.waitLine(t, "serving /metrics", time.Now().Add(30*time.Second))), &served))
	base := "http://" + served.Listen
	logs.waitLine(t, "leading:", time.Now().Add(30*time.Second))
	go func() { // keep draining: the checks below read the database and the receivers, not the log
		for range logs.lines {
		}
	}()

	// Wait for the next minute boundary: the daemon's first slot.
	boundary := time.Now().Truncate(time.Minute).Add(time.Minute)
	timer := time.NewTimer(time.Until(boundary))
	<-timer.C
	deadline := boundary.Add(45 * time.Second)
	daemonSlot := func(b map[string]any) bool {
		s, _ := b["slot"].(string)
		slot, err := time.Parse(time.RFC3339, s)
		return err == nil && slot.After(seeded)
	}

	// A failed run's webhook arrives with its code.
	var failed map[string]any
	hooks.waitUntil(t, deadline, "the failed webhook of the daemon's fire", func(got []received) bool {
		for _, r := range got {
			if r.body["event"] == "failed" && r.body["instance_id"] == "ins-old00001" && daemonSlot(r.body) {
				failed = r.body
				return true
			}
		}
		return false
	})
	require.Equal(t, "/hooks/imager", hooksPath(hooks, "failed"))
	require.Equal(t, "minutely", failed["policy"])
	require.Equal(t, "failed", failed["status"])
	require.Equal(t, "InvalidInstance.NotSupported", failed["error_code"])
	require.NotEmpty(t, failed["error_message"])
	require.NotEmpty(t, failed["run_id"])
	require.NotEmpty(t, failed["at"])
	for _, k := range []string{"image_id", "image_name"} {
		require.Contains(t, failed, k, "the payload carries every field, null when it does not apply")
	}
	slot := failed["slot"].(string)

	// The ping gets /start and then /fail for that fire.
	got := pings.waitUntil(t, deadline, "the ping's /start and /fail", func(got []received) bool {
		for _, r := range got {
			if r.path == "/ping/0b7e1c9a/fail" && r.body["slot"] == slot {
				return true
			}
		}
		return false
	})
	var paths []string
	for _, r := range got {
		if r.body["slot"] == slot {
			paths = append(paths, r.path)
		}
	}
	require.Equal(t, []string{"/ping/0b7e1c9a/start", "/ping/0b7e1c9a/fail"}, paths, "one /start, then one verdict")

	// The good instance's image becomes available; coverage and rpo_breaches name the failing one.
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	type covRow struct {
		instance, status string
		code, imageID    *string
		overdue          bool
	}
	coverage := func() map[string]covRow {
		rows, err := conn.Query(ctx, `SELECT instance_id, last_status, last_error_code, last_available_image_id, overdue
			FROM coverage WHERE policy = 'minutely'`)
		require.NoError(t, err)
		out := map[string]covRow{}
		for rows.Next() {
			var r covRow
			require.NoError(t, rows.Scan(&r.instance, &r.status, &r.code, &r.imageID, &r.overdue))
			out[r.instance] = r
		}
		require.NoError(t, rows.Err())
		return out
	}
	checkUntil(t, deadline, func() error {
		if c := coverage()["ins-good0001"]; c.status != "available" {
			return fmt.Errorf("ins-good0001 is %q in coverage, want available", c.status)
		}
		return nil
	})
	cov := coverage()
	require.Len(t, cov, 2)
	require.Equal(t, "failed", cov["ins-old00001"].status)
	require.Equal(t, "InvalidInstance.NotSupported", *cov["ins-old00001"].code)
	require.Nil(t, cov["ins-old00001"].imageID)
	require.True(t, cov["ins-old00001"].overdue, "never imaged since its first slot three minutes ago")
	require.False(t, cov["ins-good0001"].overdue)
	require.NotNil(t, cov["ins-good0001"].imageID)
	goodImage := *cov["ins-good0001"].imageID
	var breaches []string
	rows, err := conn.Query(ctx, `SELECT instance_id FROM rpo_breaches WHERE policy = 'minutely'`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		breaches = append(breaches, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"ins-old00001"}, breaches)
	// The breach is told once, by its own webhook.
	hooks.waitUntil(t, deadline, "the rpo_breach webhook", func(got []received) bool {
		for _, r := range got {
			if r.body["event"] == "rpo_breach" && r.body["instance_id"] == "ins-old00001" {
				return true
			}
		}
		return false
	})

	// imager history --format json: the runs under image_runs' column names, the failure with its
	// code, one CreateImage attempt each; nothing logged on stderr.
	stdout.Reset()
	stderr.Reset()
	require.Equal(t, 0, dispatch(ctx, []string{"history", "--database-url", dbURL, "--policy", "minutely", "--since", "1h", "--format", "json"},
		&stdout, &stderr), stderr.String())
	require.Empty(t, stderr.String(), "a one-shot command logs only warnings and errors")
	var hist struct {
		Runs []struct {
			ID                  int64   `json:"id"`
			Policy              string  `json:"policy"`
			InstanceID          string  `json:"instance_id"`
			ScheduledAt         string  `json:"scheduled_at"`
			Status              string  `json:"status"`
			ImageID             *string `json:"image_id"`
			ImageName           string  `json:"image_name"`
			ErrorCode           *string `json:"error_code"`
			CreateImageAttempts int     `json:"create_image_attempts"`
		} `json:"runs"`
		Deletions []json.RawMessage `json:"deletions"`
	}
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &hist), stdout.String())
	require.NotNil(t, hist.Deletions, "a deletions section, empty here")
	var sawFailed, sawAvailable bool
	for _, r := range hist.Runs {
		require.Equal(t, "minutely", r.Policy)
		if r.ScheduledAt == seeded.Format(time.RFC3339) {
			continue
		}
		switch r.InstanceID {
		case "ins-old00001":
			if r.Status == "failed" && r.ErrorCode != nil && *r.ErrorCode == "InvalidInstance.NotSupported" {
				sawFailed = true
				require.Equal(t, 1, r.CreateImageAttempts, "a permanent refusal is one CreateImage call")
				require.Nil(t, r.ImageID)
			}
		case "ins-good0001":
			if r.Status == "available" && r.ImageID != nil && *r.ImageID == goodImage {
				sawAvailable = true
				require.Equal(t, 1, r.CreateImageAttempts, "a clean success is one CreateImage attempt")
				require.Nil(t, r.ErrorCode)
			}
		}
	}
	require.True(t, sawFailed, "history shows the failed run with its code:\n%s", stdout.String())
	require.True(t, sawAvailable, "history shows the available image:\n%s", stdout.String())
	stdout.Reset()
	stderr.Reset()
	require.Equal(t, 1, dispatch(ctx, []string{"history", "--database-url", dbURL, "--policy", "no-such-policy"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), `unknown policy "no-such-policy"`)

	// imager latest: the image to restore from, with its slot, policy and tags and the tccli lines.
	stdout.Reset()
	stderr.Reset()
	require.Equal(t, 0, dispatch(ctx, []string{"latest", "--database-url", dbURL, "--instance", "ins-good0001", "--policies", policies},
		&stdout, &stderr), stderr.String())
	require.Empty(t, stderr.String())
	out := stdout.String()
	require.Contains(t, out, goodImage)
	require.Contains(t, out, "minutely")
	require.Contains(t, out, "tccli cvm ResetInstance --region ap-guangzhou --InstanceId ins-good0001 --ImageId "+goodImage)
	require.Contains(t, out, "tccli cvm RunInstances --region ap-guangzhou --ImageId "+goodImage)
	stdout.Reset()
	require.Equal(t, 0, dispatch(ctx, []string{"latest", "--database-url", dbURL, "--instance", "ins-good0001", "--format", "json"},
		&stdout, &stderr), stderr.String())
	var latest map[string]any
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &latest))
	require.Equal(t, goodImage, latest["image_id"])
	require.Equal(t, "minutely", latest["policy"])
	require.NotEmpty(t, latest["slot"])
	require.NotEmpty(t, latest["tags"])
	stdout.Reset()
	stderr.Reset()
	require.Equal(t, 1, dispatch(ctx, []string{"latest", "--database-url", dbURL, "--instance", "ins-old00001"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "ins-old00001 has no available image")

	// /readyz and / answer; /metrics reads the database.
	code, body := httpGet(t, base+"/readyz")
	require.Equal(t, http.StatusOK, code, body)
	code, body = httpGet(t, base+"/")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "minutely")
	require.Contains(t, body, "ins-old00001")
	require.Contains(t, body, "InvalidInstance.NotSupported")
	code, body = httpGet(t, base+"/metrics")
	require.Equal(t, http.StatusOK, code)
	up, ok := metricValue(t, body, "imager_history_up", nil)
	require.True(t, ok)
	require.Equal(t, 1.0, up)
	breached, ok := metricValue(t, body, "imager_rpo_breaches", map[string]string{"policy": "minutely"})
	require.True(t, ok, body)
	require.Equal(t, 1.0, breached)
	failedRuns, ok := metricValue(t, body, "imager_runs_total", map[string]string{"policy": "minutely", "status": "failed"})
	require.True(t, ok, body)
	require.GreaterOrEqual(t, failedRuns, 1.0)

	// PostgreSQL stops: /metrics still answers 200, says so with imager_history_up 0 and serves
	// the rest; the page answers with what the daemon knows; /readyz answers not ready.
	conn.Close(ctx)
	require.NoError(t, cluster.Stop())
	code, body = httpGet(t, base+"/metrics")
	require.Equal(t, http.StatusOK, code, body)
	up, ok = metricValue(t, body, "imager_history_up", nil)
	require.True(t, ok)
	require.Equal(t, 0.0, up)
	_, ok = metricValue(t, body, "imager_spool_pending", nil)
	require.True(t, ok, "the spool gauge is served while PostgreSQL is away")
	_, ok = metricValue(t, body, "imager_rpo_breaches", nil)
	require.False(t, ok, "a family that could not be read is left out")
	code, body = httpGet(t, base+"/")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "minutely")
	code, body = httpGet(t, base+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "database")

	stop()
	select {
	case c := <-done:
		require.Equal(t, 0, c, "the daemon stops cleanly with PostgreSQL away")
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not stop within 30 s of its context ending")
	}
	t.Logf("took %s", time.Since(start).Round(time.Second))
}

// hooksPath returns the path the first webhook of event was posted to.
func hooksPath(r *receiver, event string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, g := range r.got {
		if g.body["event"] == event {
			return g.path
		}
	}
	return ""
}
