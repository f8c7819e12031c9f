package history_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/scheduler"
)

// The scheduler's view of history is satisfied by the store and by the spooling recorder.
// (The scheduler imports history, so these assertions live in history's external tests.)
var (
	_ scheduler.History = (*history.Store)(nil)
	_ scheduler.History = (*history.Recorder)(nil)
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

// newStore opens a migrated store on a fresh database, closed when the test ends.
func newStore(t testing.TB) *history.Store {
	t.Helper()
	s, _ := newStoreURL(t)
	return s
}

func newStoreURL(t testing.TB) (*history.Store, string) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	ctx := context.Background()
	s, err := history.Open(ctx, url, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(s.Close)
	_, err = s.Migrate(ctx)
	require.NoError(t, err)
	return s, url
}

// slot is a fixed, whole-second slot time so tests compare times exactly.
var slot = time.Date(2026, 3, 29, 3, 0, 0, 0, time.UTC)

func claimParams(policy, instance string, at time.Time) history.RunClaimParams {
	return history.RunClaimParams{
		Policy:      policy,
		InstanceID:  instance,
		Region:      "ap-guangzhou",
		ScheduledAt: at,
		ImageName:   policy + "-" + instance + "-" + at.Format("20060102-1504"),
		DaemonID:    "daemon-a",
		StartedAt:   at.Add(time.Second),
		Status:      history.StatusPending,
	}
}

// claim claims a pending run and returns it.
func claim(t testing.TB, s *history.Store, policy, instance string, at time.Time) history.Run {
	t.Helper()
	r, claimed, err := s.RunClaim(context.Background(), claimParams(policy, instance, at))
	require.NoError(t, err)
	require.True(t, claimed)
	return r
}

func ptr[T any](v T) *T { return &v }
