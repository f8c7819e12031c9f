package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/notify"
	"github.com/imager-dev/imager/internal/policy"
)

// TestReloadIsAllOrNothing: a reload that fails in any part (the notify settings, the
// scheduler's check) leaves the config pointer, the notifier and the load time as they were; a
// good one swaps them all.
func TestReloadIsAllOrNothing(t *testing.T) {
	load := func(keep, webhook string) *policy.Config {
		t.Helper()
		path := filepath.Join(t.TempDir(), "p.yaml")
		require.NoError(t, os.WriteFile(path, []byte(`version: 1
notify:
  keep: `+keep+webhook+`
policies:
  - name: web
    schedule: "0 3 * * *"
    region: ap-guangzhou
    instances: [ins-6pb6lrmy]
`), 0o600))
		cfg, err := policy.Load(path)
		require.NoError(t, err)
		return cfg
	}
	env := map[string]string{"HOOK_URL": "https://hooks.example.com/a"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	old := load("30d", "")
	n, err := notify.New(old, notify.Options{Store: history.NewStore(nil, zerolog.Nop()), LookupEnv: lookup})
	require.NoError(t, err)
	clock := clockwork.NewFakeClockAt(time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC))
	d := &daemon{log: zerolog.Nop(), clock: clock, notifier: n}
	d.cfg.Store(old)
	loaded := clock.Now()
	d.loadedAt.Store(&loaded)
	unchanged := func(what string) {
		t.Helper()
		require.Same(t, old, d.cfg.Load(), what)
		require.Equal(t, 30*24*time.Hour, n.Keep(), what)
		require.Equal(t, loaded, *d.loadedAt.Load(), what)
	}
	clock.Advance(time.Minute)

	// The notify settings cannot be resolved: a webhook's variable is not set.
	err = d.reload(load("40d", "\n  webhooks:\n    - url_env: MISSING_HOOK_URL"))
	require.ErrorContains(t, err, "MISSING_HOOK_URL")
	unchanged("notify failed")

	// The notify settings resolve, but the scheduler refuses the API settings: nothing of the
	// new config is applied, the notify settings included.
	bad := load("40d", "\n  webhooks:\n    - url_env: HOOK_URL")
	bad.API.CreateImageRate = 0
	require.Error(t, d.reload(bad))
	unchanged("scheduler check failed")

	good := load("40d", "\n  webhooks:\n    - url_env: HOOK_URL")
	require.NoError(t, d.reload(good))
	require.Same(t, good, d.cfg.Load())
	require.Equal(t, 40*24*time.Hour, n.Keep())
	require.Equal(t, clock.Now(), *d.loadedAt.Load())
}
