package leader_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/leader"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

func newStore(t *testing.T) *history.Store {
	t.Helper()
	ctx := context.Background()
	s, err := history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(s.Close)
	_, err = s.Migrate(ctx)
	require.NoError(t, err)
	return s
}

// flaky is a Store whose renewals fail while down is set: the database unreachable from this
// replica only.
type flaky struct {
	*history.Store
	mu   sync.Mutex
	down bool
}

func (f *flaky) setDown(d bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = d
}

func (f *flaky) LeaseRenew(ctx context.Context, id string, term int64, ttl time.Duration) (history.Lease, error) {
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down {
		return history.Lease{}, history.ErrUnavailable
	}
	return f.Store.LeaseRenew(ctx, id, term, ttl)
}

// replica is one elector and what its callbacks reported.
type replica struct {
	e       *leader.Elector
	elected chan int64
	demoted chan struct{}
}

func newReplica(t *testing.T, s leader.Store, id string, clock clockwork.Clock) *replica {
	t.Helper()
	r := &replica{elected: make(chan int64, 4), demoted: make(chan struct{}, 4)}
	e, err := leader.New(leader.Options{
		Store: s, Holder: history.LeaseHolder{DaemonID: id, Host: "host", PID: 1},
		TTL: 3 * time.Second, Clock: clock, Logger: zerolog.Nop(),
		OnElected: func(ctx context.Context, term int64) { r.elected <- term },
		OnDemoted: func() { r.demoted <- struct{}{} },
	})
	require.NoError(t, err)
	r.e = e
	t.Cleanup(e.Stop)
	return r
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second): // a guard against a hang, not a timing assertion
		t.Fatalf("no %s", what)
		panic("unreachable")
	}
}

func TestStandbyTakesOverAtOnceWhenTheLeaderResigns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	clock := clockwork.NewFakeClock()
	a := newReplica(t, s, "a", clock)
	b := newReplica(t, s, "b", clock)

	require.NoError(t, a.e.Start(ctx))
	require.Equal(t, int64(1), recv(t, a.elected, "election of a"))
	require.NoError(t, b.e.Start(ctx))
	require.Equal(t, int64(0), b.e.Term(), "b stands by while a's lease is live")
	require.NoError(t, a.e.Healthy())
	require.NoError(t, b.e.Healthy())

	// No clock moves: b learns of the resignation through NOTIFY.
	a.e.Stop()
	recv(t, a.demoted, "a's work stopped")
	require.Equal(t, int64(2), recv(t, b.elected, "election of b"))
	l, _, err := s.LeaseGet(ctx)
	require.NoError(t, err)
	require.Equal(t, "b", l.DaemonID)

	reps, err := s.ReplicasSeen(ctx, time.Minute)
	require.NoError(t, err)
	roles := map[string]string{}
	for _, r := range reps {
		roles[r.DaemonID] = r.Role
	}
	require.Equal(t, map[string]string{"a": history.RoleStopped, "b": history.RoleLeader}, roles)
}

func TestLeaderStepsDownWhenItCannotRenewBeforeItsDeadline(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := &flaky{Store: newStore(t)}
	clock := clockwork.NewFakeClock()
	a := newReplica(t, s, "a", clock)
	require.NoError(t, a.e.Start(ctx))
	require.Equal(t, int64(1), recv(t, a.elected, "election"))

	s.setDown(true)
	// Two failed renewals inside the TTL keep it leading; the deadline ends it.
	for range 2 {
		require.NoError(t, clock.BlockUntilContext(ctx, 1))
		clock.Advance(time.Second)
	}
	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	require.Equal(t, int64(1), a.e.Term())
	select {
	case <-a.demoted:
		t.Fatal("demoted before its deadline")
	default:
	}
	clock.Advance(time.Second)
	recv(t, a.demoted, "demotion at the deadline")
	require.Equal(t, int64(0), a.e.Term())
}

func TestLeaderStepsDownWhenItsRenewalIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	clock := clockwork.NewFakeClock()
	a := newReplica(t, s, "a", clock)
	require.NoError(t, a.e.Start(ctx))
	require.Equal(t, int64(1), recv(t, a.elected, "election"))

	// Another replica took the lease after it lapsed by the database clock (a paused leader).
	_, err := s.Pool().Exec(ctx, `UPDATE leader_lease SET expires_at = now() - interval '1 second'`)
	require.NoError(t, err)
	_, ok, err := s.LeaseAcquire(ctx, history.LeaseHolder{DaemonID: "b", Host: "h", PID: 2}, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)

	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	clock.Advance(time.Second)
	recv(t, a.demoted, "demotion on a refused renewal")
	require.Equal(t, int64(0), a.e.Term())
}

func TestDemoteStopsLeadingAndTheLeaseIsRetakenUnderANewTerm(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	clock := clockwork.NewFakeClock()
	a := newReplica(t, s, "a", clock)
	require.NoError(t, a.e.Start(ctx))
	require.Equal(t, int64(1), recv(t, a.elected, "election"))
	a.e.Demote()
	recv(t, a.demoted, "demotion")
	// Its own lease is still live: as a standby it waits for it to lapse by the database clock.
	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	clock.Advance(time.Second)
	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	require.Equal(t, int64(0), a.e.Term())
	_, err := s.Pool().Exec(ctx, `UPDATE leader_lease SET expires_at = now()`)
	require.NoError(t, err)
	clock.Advance(time.Second)
	require.Equal(t, int64(2), recv(t, a.elected, "re-election"))
}

func TestStartWithoutDatabaseIsNotAnErrorButUnhealthy(t *testing.T) {
	t.Parallel()
	s := &flaky{Store: newStore(t)}
	broken := brokenStore{s}
	clock := clockwork.NewFakeClock()
	a := newReplica(t, broken, "a", clock)
	require.NoError(t, a.e.Start(context.Background()))
	require.Equal(t, int64(0), a.e.Term())
	require.ErrorContains(t, a.e.Healthy(), "cannot reach the lease")
}

type brokenStore struct{ *flaky }

func (brokenStore) LeaseAcquire(context.Context, history.LeaseHolder, time.Duration) (history.Lease, bool, error) {
	return history.Lease{}, false, errors.New("database unreachable")
}

// heldRenew is a Store whose next renewal, once armed, waits for release, as a renewal that the
// database is slow to run; it records whether that renewal's context had been cancelled by then.
type heldRenew struct {
	*history.Store
	mu            sync.Mutex
	armed         bool
	started       chan struct{}
	release       chan struct{}
	cancelledAtIt bool
	listenDone    chan struct{}
}

func (h *heldRenew) LeaseRenew(ctx context.Context, id string, term int64, ttl time.Duration) (history.Lease, error) {
	h.mu.Lock()
	armed := h.armed
	h.armed = false
	h.mu.Unlock()
	if armed {
		close(h.started)
		<-h.release // the statement runs on the server whatever the client does meanwhile
		h.mu.Lock()
		h.cancelledAtIt = ctx.Err() != nil
		h.mu.Unlock()
		l, err := h.Store.LeaseRenew(context.Background(), id, term, ttl)
		if ctx.Err() != nil {
			return history.Lease{}, ctx.Err() // the client gave up; the server renewed anyway
		}
		return l, err
	}
	return h.Store.LeaseRenew(ctx, id, term, ttl)
}

func (h *heldRenew) Listen(ctx context.Context, channels []string, ready func(), fn func(string, string)) error {
	err := h.Store.Listen(ctx, channels, ready, fn)
	if ctx.Err() != nil {
		select {
		case <-h.listenDone:
		default:
			close(h.listenDone)
		}
	}
	return err
}

// Stop lets a renewal already sent finish before it resigns: were the renewal abandoned, the
// database could still run it after the resignation and revive the lease for a whole TTL.
func TestStopLetsAnInFlightRenewalFinishBeforeResigning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := &heldRenew{Store: newStore(t), started: make(chan struct{}), release: make(chan struct{}),
		listenDone: make(chan struct{})}
	clock := clockwork.NewFakeClock()
	a := newReplica(t, s, "a", clock)
	require.NoError(t, a.e.Start(ctx))
	require.Equal(t, int64(1), recv(t, a.elected, "election"))

	s.mu.Lock()
	s.armed = true
	s.mu.Unlock()
	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	clock.Advance(time.Second) // TTL/3: the next renewal
	recv(t, s.started, "the held renewal")

	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		a.e.Stop()
	}()
	recv(t, s.listenDone, "Stop cancelling the elector's context")
	close(s.release)
	recv(t, stopped, "Stop")

	s.mu.Lock()
	require.False(t, s.cancelledAtIt, "the renewal in flight was abandoned by Stop")
	s.mu.Unlock()
	l, _, err := s.LeaseGet(ctx)
	require.NoError(t, err)
	require.False(t, l.Live(), "the resignation came last")
}
