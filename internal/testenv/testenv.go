// Package testenv holds what the tests of several packages share: the CVM simulator with
// imager's real client and a fresh PostgreSQL database on one clock, and a log sink that several
// goroutines may write. Only tests import it.
package testenv

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

// LogBuffer collects log output from several goroutines.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Count returns how many log lines contain every one of parts.
func (b *LogBuffer) Count(parts ...string) int {
	n := 0
	for _, line := range strings.Split(b.String(), "\n") {
		all := line != ""
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// API is the simulator over HTTP with signatures, the CVM client on the SDK, and a fresh,
// migrated PostgreSQL database (pgtest: the test binary's TestMain must use pgtest).
type API struct {
	Ctx    context.Context
	Clock  clockwork.Clock
	Fake   *clockwork.FakeClock // nil on the real clock
	Sim    *cvmsim.Server
	Client *cvm.Client
	Store  *history.Store
}

// Start starts the simulator on a fake clock at t0 (real: the real clock) and opens a fresh
// database; everything is closed when t ends. On the fake clock the simulator's sliding-second
// limits are off, since calls made at one fake instant would trip them.
func Start(t *testing.T, t0 time.Time, real bool, simOpts cvmsim.Options) *API {
	t.Helper()
	// A real-time bound only so a broken test fails instead of hanging; nothing waits on it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	a := &API{Ctx: ctx}
	if real {
		a.Clock = clockwork.NewRealClock()
	} else {
		a.Fake = clockwork.NewFakeClockAt(t0)
		a.Clock = a.Fake
		simOpts.Clock = a.Fake
		simOpts.MaxClockSkew = -1
		simOpts.Limits = map[string]int{cvmsim.ActionCreateImage: 0, cvmsim.ActionDescribeImages: 0}
	}
	simOpts.Logger = zerolog.Nop()
	a.Sim, a.Client = simtest.Start(t, simOpts)

	var err error
	a.Store, err = history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(a.Store.Close)
	_, err = a.Store.Migrate(ctx)
	require.NoError(t, err)
	return a
}
