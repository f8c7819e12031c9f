package quota

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

// TestMain gives the tests a PostgreSQL server and checks, once it is stopped, that no
// goroutine outlived the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

// t0 is where every fake clock starts.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const region = "ap-guangzhou"

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// count returns how many log lines contain every one of parts.
func (b *syncBuffer) count(parts ...string) int {
	n := 0
	for _, line := range strings.Split(b.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all && line != "" {
			n++
		}
	}
	return n
}

// env is the simulator over HTTP with signatures, the CVM client on the SDK, and PostgreSQL.
type env struct {
	t      *testing.T
	ctx    context.Context
	clk    clockwork.Clock
	fake   *clockwork.FakeClock // nil on the real clock
	sim    *cvmsim.Server
	client *cvm.Client
	store  *history.Store
	logs   *syncBuffer
}

// newEnv starts a simulator on a fake clock (real: the real clock) and a fresh database.
func newEnv(t *testing.T, real bool, simOpts cvmsim.Options) *env {
	t.Helper()
	// A real-time bound only so a broken test fails instead of hanging; nothing waits on it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, logs: &syncBuffer{}}
	if real {
		e.clk = clockwork.NewRealClock()
	} else {
		e.fake = clockwork.NewFakeClockAt(t0)
		e.clk = e.fake
		simOpts.Clock = e.fake
		simOpts.MaxClockSkew = -1
		// Calls at one fake instant must not trip the sliding-second limits.
		simOpts.Limits = map[string]int{cvmsim.ActionCreateImage: 0, cvmsim.ActionDescribeImages: 0}
	}
	simOpts.Logger = zerolog.Nop()
	e.sim, e.client = simtest.Start(t, simOpts)

	var err error
	e.store, err = history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(e.store.Close)
	_, err = e.store.Migrate(ctx)
	require.NoError(t, err)
	return e
}

// describeCalls returns the DescribeImages calls the simulator received.
func (e *env) describeCalls() []cvmsim.Call {
	var out []cvmsim.Call
	for _, c := range e.sim.Calls() {
		if c.Action == cvmsim.ActionDescribeImages {
			out = append(out, c)
		}
	}
	return out
}

// run reads one run.
func (e *env) run(id int64) history.Run {
	e.t.Helper()
	r, err := e.store.RunGet(e.ctx, id)
	require.NoError(e.t, err)
	return r
}

// countingPace records waits and throttles.
type countingPace struct {
	waits, throttles atomic.Int32
}

func (p *countingPace) Wait(context.Context) error { p.waits.Add(1); return nil }
func (p *countingPace) Throttle()                  { p.throttles.Add(1) }
