package lifecycle

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
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

// env is the real thing: the simulator over HTTP with signatures, the CVM client on the SDK,
// and PostgreSQL.
type env struct {
	t      *testing.T
	ctx    context.Context
	clk    clockwork.Clock
	fake   *clockwork.FakeClock // nil on the real clock
	sim    *cvmsim.Server
	client *cvm.Client
	store  *history.Store
	logs   *testenv.LogBuffer
	seq    int
}

// newEnv starts a simulator on a fake clock (nil real: the real clock) and a fresh database.
func newEnv(t *testing.T, real bool, simOpts cvmsim.Options) *env {
	t.Helper()
	a := testenv.Start(t, t0, real, simOpts)
	return &env{t: t, ctx: a.Ctx, clk: a.Clock, fake: a.Fake, sim: a.Sim, client: a.Client, store: a.Store,
		logs: &testenv.LogBuffer{}}
}

// requested makes an image of a new instance through the API and claims its run as requested,
// as the scheduler does; the run's image id is whatever CreateImage answered.
func (e *env) requested(policyName string) history.Run {
	e.t.Helper()
	e.seq++
	inst := fmt.Sprintf("ins-tr%06d", e.seq)
	e.sim.AddInstance(cvmsim.Instance{ID: inst, Region: region})
	name := fmt.Sprintf("%s-%s-20260301-1200-sfx%05d", policyName, inst, e.seq)
	out, err := e.client.CreateImage(e.ctx, region, cvm.CreateImageInput{InstanceID: inst, ImageName: name})
	require.NoError(e.t, err)
	return e.claim(policyName, inst, name, out.ImageID, out.RequestID)
}

// claim records a run in status requested for an image made elsewhere.
func (e *env) claim(policyName, inst, name, imageID, requestID string) history.Run {
	e.t.Helper()
	r, claimed, err := e.store.RunClaim(e.ctx, history.RunClaimParams{
		Policy: policyName, InstanceID: inst, Region: region, ScheduledAt: t0, ImageName: name,
		DaemonID: "test", StartedAt: e.clk.Now(), Status: history.StatusPending,
	})
	require.NoError(e.t, err)
	require.True(e.t, claimed)
	require.NoError(e.t, e.store.RunRequested(e.ctx, r.ID, imageID, requestID))
	return e.run(r.ID)
}

func (e *env) run(id int64) history.Run {
	e.t.Helper()
	r, err := e.store.RunGet(e.ctx, id)
	require.NoError(e.t, err)
	return r
}

func (e *env) attempts(id int64) []history.Attempt {
	e.t.Helper()
	a, err := e.store.AttemptsOfRun(e.ctx, id)
	require.NoError(e.t, err)
	return a
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

// availableLog records the OnAvailable calls.
type availableLog struct {
	mu   sync.Mutex
	runs []history.Run
}

func (a *availableLog) hook(_ context.Context, r history.Run) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.runs = append(a.runs, r)
}

func (a *availableLog) snapshot() []history.Run {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]history.Run(nil), a.runs...)
}

// polled is one poll as the tracker's test hook reports it.
type polled struct {
	res   pollResult
	delay time.Duration
}

// tracked is a Tracker under test with its polls reported on a channel.
type tracked struct {
	*Tracker
	e     *env
	polls chan polled
	avail *availableLog
}

// newTracker makes a Tracker on e's clock, simulator and database; it is stopped at cleanup.
func (e *env) newTracker(opts ...func(*TrackerOptions)) *tracked {
	e.t.Helper()
	tr := &tracked{e: e, polls: make(chan polled, 1000), avail: &availableLog{}}
	o := TrackerOptions{
		History:     e.store,
		CVM:         e.client,
		Clock:       e.clk,
		Logger:      zerolog.New(e.logs),
		OnAvailable: tr.avail.hook,
	}
	for _, f := range opts {
		f(&o)
	}
	tr.Tracker = NewTracker(o)
	tr.afterPoll = func(res pollResult, delay time.Duration) {
		select {
		case tr.polls <- polled{res, delay}:
		default: // a test that drives many polls does not read them all
		}
	}
	e.t.Cleanup(tr.Stop)
	return tr
}

func (tr *tracked) start() {
	tr.e.t.Helper()
	require.NoError(tr.e.t, tr.Start(tr.e.ctx))
}

// next returns the next poll's report.
func (tr *tracked) next() polled {
	tr.e.t.Helper()
	select {
	case p := <-tr.polls:
		return p
	case <-tr.e.ctx.Done():
		tr.e.t.Fatal("no poll happened")
		return polled{}
	}
}

// advance waits until the poll loop waits for its timer, then moves the fake clock by d.
func (tr *tracked) advance(d time.Duration) {
	tr.e.t.Helper()
	require.NoError(tr.e.t, tr.e.fake.BlockUntilContext(tr.e.ctx, 1))
	tr.e.fake.Advance(d)
}

// drive advances the fake clock by step whenever the poll loop waits, until done is closed.
func (tr *tracked) drive(done <-chan struct{}, step time.Duration) {
	tr.e.t.Helper()
	for {
		ctx, cancel := context.WithCancel(tr.e.ctx)
		res := make(chan error, 1)
		go func() { res <- tr.e.fake.BlockUntilContext(ctx, 1) }()
		select {
		case err := <-res:
			cancel()
			require.NoError(tr.e.t, err)
			tr.e.fake.Advance(step)
		case <-done:
			cancel()
			<-res
			return
		}
	}
}

// nextDriving returns the next poll's report, moving the fake clock by step whenever the poll
// waits on it (retry backoffs and the pace) before reporting.
func (tr *tracked) nextDriving(step time.Duration) polled {
	tr.e.t.Helper()
	for {
		ctx, cancel := context.WithCancel(tr.e.ctx)
		blocked := make(chan error, 1)
		go func() { blocked <- tr.e.fake.BlockUntilContext(ctx, 1) }()
		select {
		case p := <-tr.polls:
			cancel()
			<-blocked
			return p
		case err := <-blocked:
			cancel()
			require.NoError(tr.e.t, err)
			// The loop reports a poll before it waits for the next one: a report may be waiting.
			select {
			case p := <-tr.polls:
				return p
			default:
			}
			tr.e.fake.Advance(step)
		}
	}
}
