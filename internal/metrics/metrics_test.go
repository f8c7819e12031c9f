package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func TestMetricsAndHealth(t *testing.T) {
	healthy := true
	var since time.Time
	m := New(Options{
		RunCounts: func(_ context.Context, s time.Time) ([]RunCount, error) {
			since = s
			return []RunCount{{"web", "available", 24}, {"web", "failed", 2}}, nil
		},
		SpoolPending: func() int { return 3 },
		Health: func(context.Context) error {
			if !healthy {
				return errors.New("database unreachable")
			}
			return nil
		},
		Logger: zerolog.Nop(),
	})
	m.ObserveCall("CreateImage", "", 20*time.Millisecond)
	m.ObserveCall("CreateImage", "InternalError", 5*time.Millisecond)
	m.ObserveCall("CreateImage", "InternalError", 5*time.Millisecond)

	srv, err := Listen("127.0.0.1:0", m, zerolog.Nop())
	require.NoError(t, err)
	srv.Start()
	defer srv.Stop()
	base := "http://" + srv.Addr()

	code, body := get(t, base+"/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `imager_api_calls_total{action="CreateImage",code=""} 1`)
	require.Contains(t, body, `imager_api_calls_total{action="CreateImage",code="InternalError"} 2`)
	require.Contains(t, body, `imager_api_call_duration_seconds_count{action="CreateImage"} 3`)
	require.Contains(t, body, `imager_runs_last_24h{policy="web",status="available"} 24`)
	require.Contains(t, body, `imager_runs_last_24h{policy="web",status="failed"} 2`)
	require.Contains(t, body, `imager_spool_pending 3`)
	require.WithinDuration(t, time.Now().Add(-24*time.Hour), since, time.Minute)

	code, body = get(t, base+"/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
	healthy = false
	code, body = get(t, base+"/healthz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "database unreachable")
}

func TestListenReportsABadAddress(t *testing.T) {
	_, err := Listen("127.0.0.1:notaport", New(Options{}), zerolog.Nop())
	require.Error(t, err)
}

func TestReadyzAndLeaderGauge(t *testing.T) {
	var mu sync.Mutex
	leading, notReady := false, error(nil)
	m := New(Options{
		Ready: func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			return notReady
		},
		Leading: func() bool {
			mu.Lock()
			defer mu.Unlock()
			return leading
		},
		DaemonID: "host-a/12/1",
		Logger:   zerolog.Nop(),
		Sources: Sources{Replicas: func(context.Context) (map[string]int, error) {
			return map[string]int{"leader": 1, "standby": 2}, nil
		}},
	})
	srv, err := Listen("127.0.0.1:0", m, zerolog.Nop())
	require.NoError(t, err)
	srv.Start()
	defer srv.Stop()
	base := "http://" + srv.Addr()

	code, body := get(t, base+"/readyz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ready\n", body)
	_, body = get(t, base+"/metrics")
	require.Contains(t, body, `imager_leader{daemon_id="host-a/12/1"} 0`)
	require.Contains(t, body, `imager_replicas{role="leader"} 1`)
	require.Contains(t, body, `imager_replicas{role="standby"} 2`)
	require.Contains(t, body, `imager_replicas{role="once"} 0`)

	mu.Lock()
	leading, notReady = true, errors.New("leader but its work is not running: spool locked")
	mu.Unlock()
	code, body = get(t, base+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "not ready: leader but its work is not running: spool locked")
	_, body = get(t, base+"/metrics")
	require.Contains(t, body, `imager_leader{daemon_id="host-a/12/1"} 1`)
	code, _ = get(t, base+"/healthz")
	require.Equal(t, http.StatusOK, code, "liveness does not depend on readiness")
}
