package notify_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/notify"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

// secretPath is in every receiver URL: it must never reach a log line or the database.
const secretPath = "/hooks/T0SECRET/B0SECRET"

var slot = time.Date(2026, 3, 29, 3, 0, 0, 0, time.UTC)

func newStore(t *testing.T) *history.Store {
	t.Helper()
	ctx := context.Background()
	s, err := history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(s.Close)
	_, err = s.Migrate(ctx)
	require.NoError(t, err)
	return s
}

// request is one request the receiver got.
type request struct {
	Path    string
	EventID string
	Body    map[string]any
}

// receiver is a webhook and ping endpoint. answer decides each status code (200 when nil).
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []request
	answer func(n int, r *http.Request) int
}

func newReceiver(t *testing.T, answer func(n int, r *http.Request) int) *receiver {
	rc := &receiver{answer: answer}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var m map[string]any
		_ = json.Unmarshal(body, &m)
		rc.mu.Lock()
		n := len(rc.got)
		rc.got = append(rc.got, request{Path: r.URL.Path, EventID: r.Header.Get("X-Imager-Event-Id"), Body: m})
		rc.mu.Unlock()
		code := 200
		if rc.answer != nil {
			code = rc.answer(n, r)
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.got...)
}

func (rc *receiver) events() []string {
	var out []string
	for _, r := range rc.requests() {
		out = append(out, r.Body["event"].(string)+":"+r.Path)
	}
	return out
}

// config loads a policy file with the given notify block and ping of policy web.
func config(t *testing.T, notifyBlock, ping string) *policy.Config {
	t.Helper()
	src := "version: 1\n" + notifyBlock + `
policies:
  - name: web
    schedule: "0 3 * * *"
    region: ap-guangzhou
    instances: [ins-aaaaaaaa, ins-bbbbbbbb]
`
	if ping != "" {
		src += "    notify:\n      ping: " + ping + "\n"
	}
	cfg, err := policy.LoadBytes("policies.yaml", []byte(src))
	require.NoError(t, err)
	return cfg
}

type fixture struct {
	store *history.Store
	clock *clockwork.FakeClock
	n     *notify.Notifier
	logs  *testenv.LogBuffer
}

func newFixture(t *testing.T, s *history.Store, cfg *policy.Config, retry *backoff.Policy) *fixture {
	t.Helper()
	f := &fixture{store: s, clock: clockwork.NewFakeClockAt(slot.Add(time.Hour)), logs: &testenv.LogBuffer{}}
	if retry == nil {
		retry = &backoff.Policy{Initial: time.Second, Max: time.Second, Attempts: 10}
	}
	n, err := notify.New(cfg, notify.Options{Store: s, Clock: f.clock, Retry: retry,
		Log: zerolog.New(f.logs).Level(zerolog.DebugLevel), LookupEnv: func(string) (string, bool) { return "", false }})
	require.NoError(t, err)
	f.n = n
	return f
}

func (f *fixture) pass(t *testing.T) {
	t.Helper()
	require.NoError(t, f.n.Pass(context.Background()))
}

func run(t *testing.T, s *history.Store, pol, inst string, at time.Time, st history.Status, code, msg string) history.Run {
	t.Helper()
	ctx := context.Background()
	r, claimed, err := s.RunClaim(ctx, history.RunClaimParams{Policy: pol, InstanceID: inst, Region: "ap-guangzhou",
		ScheduledAt: at, ImageName: pol + "-" + inst + "-" + at.Format("20060102"), DaemonID: "d", StartedAt: at, Status: history.StatusPending})
	require.NoError(t, err)
	require.True(t, claimed)
	require.NoError(t, s.RunRequested(ctx, r.ID, "img-"+inst[4:], "req"))
	switch st {
	case history.StatusAvailable:
		require.NoError(t, s.RunAvailable(ctx, r.ID, nil, "", at.Add(30*time.Minute)))
	case history.StatusRequested:
	default:
		require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: r.ID, Status: st, ErrorCode: code,
			ErrorMessage: msg, FinishedAt: at.Add(30 * time.Minute)}))
	}
	r, err = s.RunGet(ctx, r.ID)
	require.NoError(t, err)
	return r
}

type deliveryRow struct {
	Target   string
	Host     string
	Status   string
	Attempts int
	Code     *int
	Error    *string
}

func deliveries(t *testing.T, s *history.Store) []deliveryRow {
	t.Helper()
	rows, err := s.Pool().Query(context.Background(), `SELECT target, target_host, status, attempts, last_response_code,
		last_error FROM notification_deliveries ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	var out []deliveryRow
	for rows.Next() {
		var d deliveryRow
		require.NoError(t, rows.Scan(&d.Target, &d.Host, &d.Status, &d.Attempts, &d.Code, &d.Error))
		out = append(out, d)
	}
	require.NoError(t, rows.Err())
	return out
}

func TestFailedRunWebhook(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	rc := newReceiver(t, nil)
	other := newReceiver(t, nil)
	cfg := config(t, `notify:
  webhooks:
    - url: `+rc.srv.URL+secretPath+`
    - url: `+other.srv.URL+secretPath+`
      events: [recovered]
`, "")
	f := newFixture(t, s, cfg, nil)
	r := run(t, s, "web", "ins-aaaaaaaa", slot, history.StatusFailed, "CREATEFAILED", "image state CREATEFAILED")

	pending, err := f.n.Pending(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 1, pending)
	f.pass(t)

	got := rc.requests()
	require.Len(t, got, 1)
	require.Equal(t, secretPath, got[0].Path)
	require.Equal(t, map[string]any{
		"event_id": got[0].Body["event_id"], "event": "failed", "policy": "web", "instance_id": "ins-aaaaaaaa",
		"run_id": float64(r.ID), "slot": "2026-03-29T03:00:00Z", "status": "failed", "error_code": "CREATEFAILED",
		"error_message": "image state CREATEFAILED", "image_id": "img-aaaaaaaa", "image_name": "web-ins-aaaaaaaa-20260329",
		"at": "2026-03-29T03:30:00Z", "count": float64(1), "instance_ids": []any{"ins-aaaaaaaa"},
		"instance_ids_truncated": false,
	}, got[0].Body)
	require.NotZero(t, got[0].Body["event_id"])
	require.Equal(t, strconv.FormatInt(int64(got[0].Body["event_id"].(float64)), 10), got[0].EventID, "X-Imager-Event-Id header")
	require.Empty(t, other.requests(), "that webhook wants recovered only")

	rows := deliveries(t, s)
	require.Len(t, rows, 1)
	require.Equal(t, "delivered", rows[0].Status)
	require.Equal(t, 1, rows[0].Attempts)
	require.Equal(t, 200, *rows[0].Code)
	require.Equal(t, rc.srv.URL, rows[0].Host, "scheme://host only")
	require.True(t, strings.HasPrefix(rows[0].Target, "webhook/"))
	pending, err = f.n.Pending(context.Background())
	require.NoError(t, err)
	require.Zero(t, pending)

	// Another pass sends nothing again.
	f.clock.Advance(time.Hour)
	f.pass(t)
	require.Len(t, rc.requests(), 1)
}

func TestRecoveredOnceAfterFailure(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	rc := newReceiver(t, nil)
	f := newFixture(t, s, config(t, "notify:\n  webhooks:\n    - url: "+rc.srv.URL+"/hook\n", ""), nil)
	day := 24 * time.Hour
	run(t, s, "web", "ins-aaaaaaaa", slot, history.StatusFailed, "Timeout", "")
	run(t, s, "web", "ins-aaaaaaaa", slot.Add(day), history.StatusAvailable, "", "")
	run(t, s, "web", "ins-aaaaaaaa", slot.Add(2*day), history.StatusAvailable, "", "")
	f.pass(t)
	require.Equal(t, []string{"failed:/hook", "recovered:/hook"}, rc.events())
	require.Equal(t, "ins-aaaaaaaa", rc.requests()[1].Body["instance_id"])
	require.Equal(t, "img-aaaaaaaa", rc.requests()[1].Body["image_id"])
}

func TestRPOBreachOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	rc := newReceiver(t, nil)
	f := newFixture(t, s, config(t, "notify:\n  webhooks:\n    - url: "+rc.srv.URL+"/hook\n      events: [rpo_breach]\n", ""), nil)
	// rpo_breaches compares with the database's now(): the fixture is laid out backwards from it.
	now := time.Now().UTC().Truncate(time.Second)
	day := 24 * time.Hour
	_, err := s.PoliciesSync(ctx, []history.PolicyRow{{Name: "web", Schedule: "0 3 * * *", Timezone: "UTC",
		Interval: day, Enabled: true, SourceFile: "policies.yaml", SourceLine: 3, LoadedAt: now}}, now)
	require.NoError(t, err)
	run(t, s, "web", "ins-aaaaaaaa", now.Add(-3*day), history.StatusAvailable, "", "")
	run(t, s, "web", "ins-aaaaaaaa", now.Add(-2*day), history.StatusRequested, "", "")

	for range 4 {
		f.pass(t)
		f.clock.Advance(notify.DefaultRPOEvery)
	}
	require.Equal(t, []string{"rpo_breach:/hook"}, rc.events())
	b := rc.requests()[0].Body
	require.Equal(t, "ins-aaaaaaaa", b["instance_id"])
	require.Equal(t, "img-aaaaaaaa", b["image_id"])
	require.Equal(t, "requested", b["status"])
}

func TestRetryUntilDelivered(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	rc := newReceiver(t, func(n int, _ *http.Request) int {
		if n < 2 {
			return http.StatusInternalServerError
		}
		return http.StatusNoContent
	})
	f := newFixture(t, s, config(t, "notify:\n  webhooks:\n    - url: "+rc.srv.URL+secretPath+"\n", ""), nil)
	run(t, s, "web", "ins-aaaaaaaa", slot, history.StatusFailed, "Timeout", "")

	f.pass(t)
	require.Len(t, rc.requests(), 1)
	rows := deliveries(t, s)
	require.Equal(t, "pending", rows[0].Status)
	require.Equal(t, 1, rows[0].Attempts)
	require.Equal(t, 500, *rows[0].Code)
	require.Equal(t, "HTTP 500", *rows[0].Error)

	f.pass(t) // not due yet: the retry waits at least half a second
	require.Len(t, rc.requests(), 1)
	f.clock.Advance(time.Second)
	f.pass(t)
	require.Len(t, rc.requests(), 2)
	f.clock.Advance(time.Second)
	f.pass(t)
	got := rc.requests()
	require.Len(t, got, 3)
	require.Equal(t, got[0].Body, got[2].Body, "a retry sends the same payload")
	rows = deliveries(t, s)
	require.Equal(t, "delivered", rows[0].Status)
	require.Equal(t, 3, rows[0].Attempts)
	require.Equal(t, 204, *rows[0].Code)
	require.Nil(t, rows[0].Error)
	require.NotContains(t, f.logs.String(), "T0SECRET")
}

func TestRetriesExhausted(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	rc := newReceiver(t, func(int, *http.Request) int { return http.StatusBadGateway })
	f := newFixture(t, s, config(t, "notify:\n  webhooks:\n    - url: "+rc.srv.URL+"/hook\n", ""),
		&backoff.Policy{Initial: time.Second, Max: time.Second, Attempts: 2})
	run(t, s, "web", "ins-aaaaaaaa", slot, history.StatusMissed, "", "")
	f.pass(t)
	f.clock.Advance(time.Second)
	f.pass(t)
	f.clock.Advance(time.Hour)
	f.pass(t)
	require.Len(t, rc.requests(), 2)
	rows := deliveries(t, s)
	require.Equal(t, "failed", rows[0].Status)
	require.Equal(t, 2, rows[0].Attempts)
	require.Equal(t, 502, *rows[0].Code)
	require.Contains(t, f.logs.String(), "giving up")
}

func TestTimeoutHonoured(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	release := make(chan struct{})
	rc := newReceiver(t, func(_ int, r *http.Request) int {
		select {
		case <-r.Context().Done(): // the client gave up
		case <-release:
		}
		return http.StatusOK
	})
	t.Cleanup(func() { close(release) })
	f := newFixture(t, s, config(t, "notify:\n  webhooks:\n    - url: "+rc.srv.URL+secretPath+"\n      timeout: 100ms\n", ""), nil)
	run(t, s, "web", "ins-aaaaaaaa", slot, history.StatusFailed, "Timeout", "")
	f.pass(t) // returns although the receiver never answers
	rows := deliveries(t, s)
	require.Equal(t, "pending", rows[0].Status)
	require.Equal(t, 1, rows[0].Attempts)
	require.Nil(t, rows[0].Code)
	require.Equal(t, "no answer within 100ms", *rows[0].Error)
}

func TestURLNeverLogged(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	failing := newReceiver(t, func(int, *http.Request) int { return http.StatusInternalServerError })
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close() // connection refused
	ok := newReceiver(t, nil)
	cfg := config(t, `notify:
  webhooks:
    - url: `+failing.srv.URL+secretPath+`?token=Q0SECRET
    - url: `+closedURL+secretPath+`
    - url: `+ok.srv.URL+secretPath+`
`, ok.srv.URL+"/ping/P0SECRET")
	f := newFixture(t, s, cfg, nil)
	// A fire of the schedule (its claim begins the fire the ping reports), whose only run fails.
	ctx := context.Background()
	runs, _, err := s.RunsClaimFire(ctx, []history.RunClaimParams{{Policy: "web", InstanceID: "ins-aaaaaaaa",
		Region: "ap-guangzhou", ScheduledAt: slot, ImageName: "web-ins-aaaaaaaa-" + slot.Format("20060102"), DaemonID: "d",
		StartedAt: slot, Status: history.StatusPending}})
	require.NoError(t, err)
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: runs[0].ID, Status: history.StatusFailed,
		ErrorCode: "Timeout", FinishedAt: slot.Add(30 * time.Minute)}))
	f.pass(t)

	require.Len(t, failing.requests(), 1)
	require.Len(t, ok.requests(), 3, "the webhook, and the ping's /start and /fail (its only run had failed)")
	logs := f.logs.String()
	require.Contains(t, logs, `"target_host":"`+failing.srv.URL+`"`, "scheme://host is logged")
	require.Contains(t, logs, "connection refused")
	require.Contains(t, logs, "notification delivered")
	for _, secret := range []string{"T0SECRET", "B0SECRET", "Q0SECRET", "P0SECRET", "/hooks/"} {
		require.NotContains(t, logs, secret)
	}
	var stored string
	require.NoError(t, s.Pool().QueryRow(context.Background(),
		`SELECT string_agg(concat_ws(' ', target, target_host, last_error), ' ') FROM notification_deliveries`).Scan(&stored))
	require.NotContains(t, stored, "SECRET")
}

func TestPing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	rc := newReceiver(t, nil)
	f := newFixture(t, s, config(t, "", rc.srv.URL+"/ping/abc/"), nil)
	// fire claims a fire of two slots as the scheduler does (their runs, then policy_slots).
	fire := func(at time.Time) map[string]history.Run {
		var ps []history.RunClaimParams
		for _, inst := range []string{"ins-aaaaaaaa", "ins-bbbbbbbb"} {
			ps = append(ps, history.RunClaimParams{Policy: "web", InstanceID: inst, Region: "ap-guangzhou",
				ScheduledAt: at, ImageName: "web-" + inst + "-" + at.Format("20060102"), DaemonID: "d", StartedAt: at,
				Status: history.StatusPending})
		}
		runs, _, err := s.RunsClaimFire(ctx, ps)
		require.NoError(t, err)
		return map[string]history.Run{runs[0].InstanceID: runs[0], runs[1].InstanceID: runs[1]}
	}
	end := func(r history.Run, st history.Status, code string) {
		require.NoError(t, s.RunRequested(ctx, r.ID, "img-"+r.InstanceID[4:], "req"))
		if st == history.StatusAvailable {
			require.NoError(t, s.RunAvailable(ctx, r.ID, nil, "", r.ScheduledAt.Add(30*time.Minute)))
			return
		}
		require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: r.ID, Status: st, ErrorCode: code,
			FinishedAt: r.ScheduledAt.Add(30 * time.Minute)}))
	}

	// A fire with a failed slot: /start, then /fail.
	runs := fire(slot)
	f.pass(t)
	require.Equal(t, []string{"fire_started:/ping/abc/start"}, rc.events())
	end(runs["ins-aaaaaaaa"], history.StatusAvailable, "")
	f.pass(t)
	require.Len(t, rc.requests(), 1, "one of two slots done: no verdict yet")
	end(runs["ins-bbbbbbbb"], history.StatusFailed, "CREATEFAILED")
	f.pass(t)
	require.Equal(t, []string{"fire_started:/ping/abc/start", "fire_failed:/ping/abc/fail"}, rc.events())
	require.Equal(t, "CREATEFAILED", rc.requests()[1].Body["error_code"])

	// Every slot available: /start, then the bare URL.
	next := slot.Add(24 * time.Hour)
	runs = fire(next)
	end(runs["ins-aaaaaaaa"], history.StatusAvailable, "")
	end(runs["ins-bbbbbbbb"], history.StatusAvailable, "")
	f.pass(t)
	require.Equal(t, []string{"fire_started:/ping/abc/start", "fire_succeeded:/ping/abc"}, rc.events()[2:])
	require.Equal(t, float64(2), rc.requests()[3].Body["available"])

	// A mark (a policy seen for the first time starts from its latest slot) pings nothing; a fire
	// whose targets could not be resolved pings /start, then /fail with the code.
	third := next.Add(24 * time.Hour)
	require.NoError(t, s.PolicySlotSet(ctx, "web", third))
	f.pass(t)
	require.Len(t, rc.requests(), 4)
	fourth := third.Add(24 * time.Hour)
	require.NoError(t, s.FireWithoutRuns(ctx, "web", fourth, "TargetsUnresolved", "cannot resolve the targets"))
	f.pass(t)
	require.Equal(t, []string{"fire_started:/ping/abc/start", "fire_failed:/ping/abc/fail"}, rc.events()[4:])
	require.Equal(t, "TargetsUnresolved", rc.requests()[5].Body["error_code"])
}

func TestTargetRemovedOnReload(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	rc := newReceiver(t, func(int, *http.Request) int { return http.StatusServiceUnavailable })
	f := newFixture(t, s, config(t, "notify:\n  webhooks:\n    - url: "+rc.srv.URL+"/hook\n", ""), nil)
	run(t, s, "web", "ins-aaaaaaaa", slot, history.StatusFailed, "Timeout", "")
	f.pass(t)
	require.NoError(t, f.n.Reload(config(t, "", "")))
	f.clock.Advance(time.Minute)
	f.pass(t)
	rows := deliveries(t, s)
	require.Equal(t, "failed", rows[0].Status)
	require.Equal(t, 1, rows[0].Attempts)
	require.Equal(t, "target no longer configured", *rows[0].Error)

	// A reload that cannot resolve its URLs keeps the old targets.
	bad, err := policy.LoadBytes("p.yaml", []byte("version: 1\nnotify:\n  webhooks:\n    - url_env: NOPE\npolicies:\n  - name: web\n    schedule: \"@daily\"\n    region: ap-guangzhou\n    instances: [ins-aaaaaaaa]\n"))
	require.NoError(t, err)
	require.EqualError(t, f.n.Reload(bad), "p.yaml:4: notify.webhooks[0].url_env: environment variable NOPE is not set")
	_, err = notify.New(bad, notify.Options{Store: s})
	require.Error(t, err)
}

// flaky fails the first NotificationsUndispatched, as a database outage would.
type flaky struct {
	notify.Store
	mu    sync.Mutex
	fails int
}

func (f *flaky) NotificationsUndispatched(ctx context.Context, limit int) ([]history.Notification, error) {
	f.mu.Lock()
	fail := f.fails > 0
	f.fails--
	f.mu.Unlock()
	if fail {
		return nil, history.ErrUnavailable
	}
	return f.Store.NotificationsUndispatched(ctx, limit)
}

func TestLoopSurvivesErrorsAndRestarts(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	delivered := make(chan string, 10)
	rc := newReceiver(t, func(_ int, r *http.Request) int {
		delivered <- r.URL.Path
		return http.StatusOK
	})
	clock := clockwork.NewFakeClockAt(slot)
	logs := &testenv.LogBuffer{}
	n, err := notify.New(config(t, "notify:\n  webhooks:\n    - url: "+rc.srv.URL+"/hook\n", ""),
		notify.Options{Store: &flaky{Store: s, fails: 1}, Clock: clock, Log: zerolog.New(logs), Poll: time.Minute})
	require.NoError(t, err)
	run(t, s, "web", "ins-aaaaaaaa", slot, history.StatusFailed, "Timeout", "")

	ctx := context.Background()
	require.NoError(t, n.Start(ctx))
	require.Error(t, n.Start(ctx), "already started")
	// The first pass fails (database unavailable); the loop logs it and waits for the next.
	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	require.Contains(t, logs.String(), "notification pass failed")
	clock.Advance(time.Minute)
	require.Equal(t, "/hook", <-delivered)
	n.Stop()
	n.Stop()

	// Started again (leadership regained): it goes on from the database.
	run(t, s, "web", "ins-bbbbbbbb", slot, history.StatusFailed, "Timeout", "")
	require.NoError(t, n.Start(ctx))
	require.Equal(t, "/hook", <-delivered)
	n.Stop()
	require.Len(t, rc.requests(), 2)
	require.False(t, errors.Is(ctx.Err(), context.Canceled))
}

func TestEndedNotificationsArePrunedAfterKeep(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	rc := newReceiver(t, nil)
	cfg := config(t, `notify:
  keep: 1d
  webhooks:
    - url: `+rc.srv.URL+secretPath+`
`, "")
	f := newFixture(t, s, cfg, nil)
	run(t, s, "web", "ins-aaaaaaaa", slot, history.StatusFailed, "CREATEFAILED", "image state CREATEFAILED")
	f.pass(t)
	require.Len(t, rc.requests(), 1)
	count := func() (n int) {
		require.NoError(t, s.Pool().QueryRow(context.Background(), `SELECT count(*) FROM notifications`).Scan(&n))
		return n
	}

	// Older than notify.keep by the database clock, but the last prune was this pass's.
	_, err := s.Pool().Exec(context.Background(), `UPDATE notifications SET created_at = now() - interval '2 days'`)
	require.NoError(t, err)
	f.pass(t)
	require.Equal(t, 1, count(), "pruning runs once per PruneEvery")

	f.clock.Advance(notify.DefaultPruneEvery)
	f.pass(t)
	require.Zero(t, count())
	require.Empty(t, deliveries(t, s), "its delivery went with it")
	require.Contains(t, f.logs.String(), "pruned ended notifications older than notify.keep")
}
