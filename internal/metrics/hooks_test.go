package metrics

import (
	"net/http"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

func TestHookFrozenHistogram(t *testing.T) {
	m := New(Options{Logger: zerolog.Nop()})
	m.ObserveHookFrozen("db-nightly", 3*time.Second)
	m.ObserveHookFrozen("db-nightly", 40*time.Second)
	srv, err := Listen("127.0.0.1:0", m, zerolog.Nop())
	require.NoError(t, err)
	srv.Start()
	defer srv.Stop()
	code, body := get(t, "http://"+srv.Addr()+"/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `imager_hook_frozen_seconds_count{policy="db-nightly"} 2`)
	require.Contains(t, body, `imager_hook_frozen_seconds_sum{policy="db-nightly"} 43`)
	require.Contains(t, body, `imager_hook_frozen_seconds_bucket{policy="db-nightly",le="4"} 1`)
}
