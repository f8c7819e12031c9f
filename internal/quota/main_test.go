package quota

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/testenv"
)

// TestMain gives the tests a PostgreSQL server and checks, once it is stopped, that no
// goroutine outlived the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

// t0 is where every fake clock starts.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const region = "ap-guangzhou"

// env is the simulator over HTTP with signatures, the CVM client on the SDK, and PostgreSQL.
type env struct {
	t      *testing.T
	ctx    context.Context
	clk    clockwork.Clock
	fake   *clockwork.FakeClock // nil on the real clock
	sim    *cvmsim.Server
	client *cvm.Client
	store  *history.Store
	logs   *testenv.LogBuffer
}

// newEnv starts a simulator on a fake clock (real: the real clock) and a fresh database.
func newEnv(t *testing.T, real bool, simOpts cvmsim.Options) *env {
	t.Helper()
	a := testenv.Start(t, t0, real, simOpts)
	return &env{t: t, ctx: a.Ctx, clk: a.Clock, fake: a.Fake, sim: a.Sim, client: a.Client, store: a.Store,
		logs: &testenv.LogBuffer{}}
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
