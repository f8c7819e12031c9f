package restore

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
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/tat"
	"github.com/imager-dev/imager/internal/testenv"
)

// TestMain gives the tests a PostgreSQL server and checks that no goroutine outlived them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

const (
	guangzhou = "ap-guangzhou"
	poll      = 10 * time.Second
)

// t0 is where every fake clock starts: a Saturday.
var t0 = time.Date(2026, 11, 14, 3, 30, 0, 0, time.UTC)

// env is a Tester over the simulator (the real CVM and TAT clients, on the fake clock), a
// migrated PostgreSQL database and a policy file with one restore test.
type env struct {
	t     *testing.T
	ctx   context.Context
	clk   *clockwork.FakeClock
	sim   *cvmsim.Server
	cvm   *cvm.Client
	cvmOf CVM // what the tester calls (cvm, or a wrapper)
	tat   *tat.Client
	store *history.Store
	cfg   *policy.Config
	logs  *testenv.LogBuffer
	rt    *Tester
	// images: instance → the image ids of its runs, oldest first.
	images map[string][]string
}

const policyFile = `version: 1
policies:
  - name: web-nightly
    region: ap-guangzhou
    schedule: "0 2 * * *"
    instances: [ins-aaaaaaaa, ins-bbbbbbbb, ins-cccccccc]
restore_tests:
  - name: web-weekly
    policy: web-nightly
    schedule: "0 6 * * 0"
    sample: %d
    launch: {zone: ap-guangzhou-3, instance_type: S5.SMALL2, subnet_id: subnet-xxxx, vpc_id: vpc-xxxx,
             security_group_ids: [sg-xxxx]}
    check: {command: "systemctl is-system-running --wait", timeout: 5m}
    keep_for: 30m
`

func newEnv(t *testing.T, sample int, opts cvmsim.Options) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a bound, not a timing
	t.Cleanup(cancel)
	clk := clockwork.NewFakeClockAt(t0)
	opts.Clock, opts.MaxClockSkew = clk, -1
	sim, client := simtest.Start(t, opts)
	store, err := history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(store.Close)
	_, err = store.Migrate(ctx)
	require.NoError(t, err)
	cfg, err := policy.LoadBytes("policies.yaml", []byte(fmt.Sprintf(policyFile, sample)))
	require.NoError(t, err)
	_, err = store.PoliciesSync(ctx, history.PolicyRows(cfg, t0), t0)
	require.NoError(t, err)
	e := &env{t: t, ctx: ctx, clk: clk, sim: sim, cvm: client, cvmOf: client, tat: tat.New(client), store: store, cfg: cfg,
		logs: &testenv.LogBuffer{}, images: map[string][]string{}}
	e.rt = e.tester()
	return e
}

// tester returns a new Tester of the env (a new process, as far as the tester knows).
func (e *env) tester() *Tester {
	return New(Options{History: e.store, Account: policy.DefaultAccount, CVM: e.cvmOf, TAT: e.tat,
		Config: func() *policy.Config { return e.cfg }, Clock: e.clk, Logger: zerolog.New(e.logs), PollInterval: poll})
}

// image makes an available image of instance in slot: NORMAL in the simulator, its run available
// in history. It returns the image id.
func (e *env) image(instance string, slot time.Time) string {
	e.t.Helper()
	name := fmt.Sprintf("web-nightly-%s-%s", instance, slot.Format("20060102-1504"))
	id := fmt.Sprintf("img-%s%02d", instance[4:10], len(e.images[instance]))
	e.sim.AddImage(cvmsim.Image{ID: id, Name: name, Region: guangzhou, InstanceID: instance})
	r, claimed, err := e.store.RunClaim(e.ctx, history.RunClaimParams{Policy: "web-nightly", InstanceID: instance,
		Region: guangzhou, ScheduledAt: slot, ImageName: name, DaemonID: "test", StartedAt: slot, Status: history.StatusPending})
	require.NoError(e.t, err)
	require.True(e.t, claimed)
	require.NoError(e.t, e.store.RunRequested(e.ctx, r.ID, id, "req-create"))
	require.NoError(e.t, e.store.RunAvailable(e.ctx, r.ID, nil, "", slot.Add(20*time.Minute)))
	e.images[instance] = append(e.images[instance], id)
	return id
}

// drive advances the fake clock by poll whenever something waits on it, until stop is closed.
func (e *env) drive(stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(e.ctx)
	wg.Go(func() {
		<-stop
		cancel()
	})
	wg.Go(func() {
		for {
			if err := e.clk.BlockUntilContext(ctx, 1); err != nil {
				return
			}
			e.clk.Advance(poll)
		}
	})
	return &wg
}

// runNow runs the test at once with the clock driven, and returns its result.
func (e *env) runNow(rt *Tester) Result {
	e.t.Helper()
	stop := make(chan struct{})
	wg := e.drive(stop)
	res, err := rt.RunNow(e.ctx, "web-weekly")
	close(stop)
	wg.Wait()
	require.NoError(e.t, err)
	return res
}

// running lists the instances the simulator launched that are not terminated.
func (e *env) running() []string {
	var out []string
	for _, l := range e.sim.LaunchedInstances() {
		if l.TerminatedAt.IsZero() {
			out = append(out, l.InstanceID)
		}
	}
	return out
}

// events returns the restore events of the outbox as "event/instance/error code".
func (e *env) events() []string {
	e.t.Helper()
	rows, err := e.store.Pool().Query(e.ctx, `SELECT event, instance_id, COALESCE(error_code, '')
FROM notifications WHERE event LIKE 'restore_%' ORDER BY id`)
	require.NoError(e.t, err)
	defer rows.Close()
	var out []string
	for rows.Next() {
		var ev, inst, code string
		require.NoError(e.t, rows.Scan(&ev, &inst, &code))
		out = append(out, ev+"/"+inst+"/"+code)
	}
	require.NoError(e.t, rows.Err())
	return out
}

// row returns the restore_tests row of a result.
func (e *env) row(id int64) history.RestoreTest {
	e.t.Helper()
	r, err := e.store.RestoreGet(e.ctx, id)
	require.NoError(e.t, err)
	return r
}

func (e *env) calls(action string) []cvmsim.Call {
	var out []cvmsim.Call
	for _, c := range e.sim.Calls() {
		if c.Action == action {
			out = append(out, c)
		}
	}
	return out
}
