package web_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/web"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

// newStore opens a migrated store on a fresh database, closed when the test ends.
func newStore(t testing.TB) *history.Store {
	t.Helper()
	url := pgtest.NewDatabase(t)
	ctx := context.Background()
	s, err := history.Open(ctx, url, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(s.Close)
	_, err = s.Migrate(ctx)
	require.NoError(t, err)
	return s
}

// loadPolicies loads a policy file held in memory and records it in the policies table, as the
// daemon does at every load.
func loadPolicies(t testing.TB, s *history.Store, yaml string, now time.Time) *policy.Config {
	t.Helper()
	cfg, err := policy.LoadBytes("policies.yaml", []byte(yaml))
	require.NoError(t, err)
	_, err = s.PoliciesSync(context.Background(), history.PolicyRows(cfg, now), now)
	require.NoError(t, err)
	return cfg
}

// seeder writes runs the way the scheduler and tracker do: claim, then request, then finish.
type seeder struct {
	t testing.TB
	s *history.Store
}

func (sd seeder) claim(pol, inst string, slot time.Time, st history.Status, code, msg string) history.Run {
	sd.t.Helper()
	r, claimed, err := sd.s.RunClaim(context.Background(), history.RunClaimParams{
		Policy: pol, InstanceID: inst, Region: "ap-guangzhou", ScheduledAt: slot, StartedAt: slot.Add(time.Second),
		ImageName: pol + "-" + inst + "-" + slot.Format("20060102-1504"), DaemonID: "test", Status: st,
		ErrorCode: code, ErrorMessage: msg,
	})
	require.NoError(sd.t, err)
	require.True(sd.t, claimed)
	return r
}

func (sd seeder) available(pol, inst string, slot time.Time, imageID string, at time.Time) {
	sd.t.Helper()
	r := sd.claim(pol, inst, slot, history.StatusPending, "", "")
	require.NoError(sd.t, sd.s.RunRequested(context.Background(), r.ID, imageID, "req-"+imageID))
	require.NoError(sd.t, sd.s.RunAvailable(context.Background(), r.ID, nil, imageID, at))
}

func (sd seeder) requested(pol, inst string, slot time.Time, imageID string) {
	sd.t.Helper()
	r := sd.claim(pol, inst, slot, history.StatusPending, "", "")
	require.NoError(sd.t, sd.s.RunRequested(context.Background(), r.ID, imageID, "req-"+imageID))
}

func (sd seeder) failed(pol, inst string, slot time.Time, code, msg string) {
	sd.t.Helper()
	r := sd.claim(pol, inst, slot, history.StatusPending, "", "")
	require.NoError(sd.t, sd.s.RunFinish(context.Background(), history.RunFinishParams{RunID: r.ID,
		Status: history.StatusFailed, ErrorCode: code, ErrorMessage: msg, FinishedAt: slot.Add(2 * time.Minute)}))
}

// serve starts the page on a test server, stopped when the test ends.
func serve(t testing.TB, opts web.Options) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", web.Handler(opts))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// options are the page's sources for a daemon that leads, with cfg loaded at loadedAt.
func options(s *history.Store, cfg *policy.Config, loadedAt, now time.Time) web.Options {
	return web.Options{
		Leader:   func() bool { return true },
		Ping:     func(ctx context.Context) error { return s.Pool().Ping(ctx) },
		Policies: func() (*policy.Config, time.Time) { return cfg, loadedAt },
		History:  s,
		Clock:    clockwork.NewFakeClockAt(now),
		Logger:   zerolog.Nop(),
	}
}

// dayStart is midnight UTC of t's calendar day in loc, as daily_coverage reports days.
func dayOf(t time.Time, loc *time.Location) string {
	return t.In(loc).Format(time.DateOnly)
}
