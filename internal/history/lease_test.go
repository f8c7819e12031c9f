package history_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

var (
	holderA = history.LeaseHolder{DaemonID: "host-a/1/1", Host: "host-a", PID: 1}
	holderB = history.LeaseHolder{DaemonID: "host-b/2/2", Host: "host-b", PID: 2}
)

// expireLease moves the lease's expiry into the past, as the database clock passing it would.
func expireLease(t *testing.T, s *history.Store) {
	t.Helper()
	_, err := s.Pool().Exec(context.Background(), `UPDATE leader_lease SET expires_at = now() - interval '1 second'`)
	require.NoError(t, err)
}

func TestLeaseOneHolderAtATimeAndTermsGrow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)

	_, found, err := s.LeaseGet(ctx)
	require.NoError(t, err)
	require.False(t, found)

	a, ok, err := s.LeaseAcquire(ctx, holderA, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(1), a.Term)
	require.True(t, a.Live())
	require.WithinDuration(t, a.Now.Add(time.Minute), a.ExpiresAt, time.Second, "expiry is the database clock plus the TTL")

	// B cannot take a live lease, and is told who holds it.
	got, ok, err := s.LeaseAcquire(ctx, holderB, time.Minute)
	require.NoError(t, err)
	require.False(t, ok)
	require.Equal(t, holderA.DaemonID, got.DaemonID)
	require.Equal(t, int64(1), got.Term)

	// A renews its term; B cannot renew what it does not hold.
	r, err := s.LeaseRenew(ctx, holderA.DaemonID, 1, time.Minute)
	require.NoError(t, err)
	require.False(t, r.ExpiresAt.Before(a.ExpiresAt))
	_, err = s.LeaseRenew(ctx, holderB.DaemonID, 1, time.Minute)
	require.ErrorIs(t, err, history.ErrFenced)

	// Expired by the database clock: B takes it with the next term, and A's renewal is fenced.
	expireLease(t, s)
	b, ok, err := s.LeaseAcquire(ctx, holderB, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(2), b.Term)
	require.Equal(t, "host-b", b.Host)
	_, err = s.LeaseRenew(ctx, holderA.DaemonID, 1, time.Minute)
	require.ErrorIs(t, err, history.ErrFenced)

	// A resign of an old term changes nothing; B's own resign ends the lease at once.
	resigned, err := s.LeaseResign(ctx, holderA.DaemonID, 1)
	require.NoError(t, err)
	require.False(t, resigned)
	resigned, err = s.LeaseResign(ctx, holderB.DaemonID, 2)
	require.NoError(t, err)
	require.True(t, resigned)
	l, _, err := s.LeaseGet(ctx)
	require.NoError(t, err)
	require.False(t, l.Live())
	a2, ok, err := s.LeaseAcquire(ctx, holderA, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(3), a2.Term)
}

func TestLeaseResignNotifiesListeners(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := newStore(t)
	_, ok, err := s.LeaseAcquire(ctx, holderA, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)

	ready := make(chan struct{})
	got := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- s.Listen(ctx, []string{history.LeaseChannel}, func() { close(ready) }, func(ch, payload string) {
			got <- ch + ":" + payload
		})
	}()
	<-ready
	_, err = s.LeaseResign(ctx, holderA.DaemonID, 1)
	require.NoError(t, err)
	require.Equal(t, history.LeaseChannel+":1", <-got)
	cancel()
	require.NoError(t, <-done)
}

func TestOutcomeWritesAreFencedByTerm(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	_, ok, err := s.LeaseAcquire(ctx, holderA, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	old := s.WithTerm(1)
	run := claim(t, s, "web", "ins-00000001", slot)
	run2 := claim(t, s, "web", "ins-00000002", slot)

	require.NoError(t, old.RunRename(ctx, run.ID, "web-renamed"))
	require.NoError(t, old.RunRequested(ctx, run.ID, "", "req-1"))

	expireLease(t, s)
	// Lapsed but not taken: the holder's outcomes still count.
	require.NoError(t, old.RunSetImageID(ctx, run.ID, "img-00000001"))
	_, ok, err = s.LeaseAcquire(ctx, holderB, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)

	at := slot.Add(time.Minute)
	for name, write := range map[string]func() error{
		"rename":    func() error { return old.RunRename(ctx, run2.ID, "other") },
		"requested": func() error { return old.RunRequested(ctx, run2.ID, "", "req-2") },
		"finish": func() error {
			return old.RunFinish(ctx, history.RunFinishParams{RunID: run2.ID, Status: history.StatusFailed, FinishedAt: at})
		},
		"available": func() error { return old.RunAvailable(ctx, run.ID, nil, "", at) },
		"image id":  func() error { return old.RunSetImageID(ctx, run2.ID, "img-00000002") },
	} {
		require.ErrorIs(t, write(), history.ErrFenced, name)
	}
	r, err := s.RunGet(ctx, run2.ID)
	require.NoError(t, err)
	require.Equal(t, history.StatusPending, r.Status)
	require.Empty(t, r.ImageID)

	// The new term writes; unfenced tools (term 0) too.
	require.NoError(t, s.WithTerm(2).RunAvailable(ctx, run.ID, nil, "", at))
	require.NoError(t, s.RunRename(ctx, run2.ID, "other"))
}

func TestRecorderReplayDropsFencedWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o := newOutage(t)
	_, ok, err := o.direct.LeaseAcquire(ctx, holderA, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	run := claim(t, o.direct, "web", "ins-00000001", slot)
	run2 := claim(t, o.direct, "web", "ins-00000002", slot)

	// Term 1 spools an outcome while the database is away...
	dir := t.TempDir()
	rec := newRecorder(t, o.via.WithTerm(1), dir)
	o.proxy.down()
	require.NoError(t, rec.RunRequested(ctx, run.ID, "", "req-1"))
	require.Equal(t, 1, rec.Pending())
	require.NoError(t, rec.Close())

	// ...and loses the lease before the database is back: the new leader's own spool replays
	// the old term's write fenced, and drops it; its own writes go through.
	o.proxy.up()
	expireLease(t, o.direct)
	_, ok, err = o.direct.LeaseAcquire(ctx, holderB, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	rec2 := newRecorder(t, o.via.WithTerm(2), dir)
	require.Equal(t, 1, rec2.Pending())
	n, err := rec2.Replay(ctx)
	require.NoError(t, err)
	require.Equal(t, 0, n)
	require.Equal(t, 0, rec2.Pending())
	r, err := o.direct.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, history.StatusPending, r.Status)

	require.NoError(t, rec2.RunRequested(ctx, run2.ID, "", "req-2"))
	require.ErrorIs(t, o.via.WithTerm(1).RunRequested(ctx, run.ID, "", "req-1"), history.ErrFenced)
}

func TestReplicasAndFireRequests(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	started := slot
	require.NoError(t, s.ReplicaSeen(ctx, history.Replica{DaemonID: "b", Host: "h", PID: 2, Role: history.RoleStandby, StartedAt: started}))
	require.NoError(t, s.ReplicaSeen(ctx, history.Replica{DaemonID: "a", Host: "h", PID: 1, Role: history.RoleStandby, StartedAt: started}))
	require.NoError(t, s.ReplicaSeen(ctx, history.Replica{DaemonID: "b", Host: "h", PID: 2, Role: history.RoleLeader, StartedAt: started}))
	require.Error(t, s.ReplicaSeen(ctx, history.Replica{DaemonID: "c", Role: "boss", StartedAt: started}))
	reps, err := s.ReplicasSeen(ctx, time.Minute)
	require.NoError(t, err)
	require.Len(t, reps, 2)
	require.Equal(t, "b", reps[0].DaemonID, "leader first")
	require.Equal(t, history.RoleLeader, reps[0].Role)

	_, ok, err := s.LeaseAcquire(ctx, holderA, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	id, err := s.FireRequestInsert(ctx, history.FireRequest{Policy: "web", Instances: []string{"ins-1"}, Slot: slot, RequestedBy: "once"})
	require.NoError(t, err)

	// A stale term takes nothing; the current one takes the request once.
	_, _, err = s.WithTerm(7).FireRequestTake(ctx, "x")
	require.ErrorIs(t, err, history.ErrFenced)
	f, ok, err := s.WithTerm(1).FireRequestTake(ctx, "a")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, id, f.ID)
	require.Equal(t, []string{"ins-1"}, f.Instances)
	require.Equal(t, slot, f.Slot)
	_, ok, err = s.WithTerm(1).FireRequestTake(ctx, "a")
	require.NoError(t, err)
	require.False(t, ok)

	// A new leader takes over a request its predecessor took and did not finish.
	expireLease(t, s)
	_, ok, err = s.LeaseAcquire(ctx, holderB, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.ErrorIs(t, s.WithTerm(1).FireRequestFinish(ctx, id, ""), history.ErrFenced)
	f, ok, err = s.WithTerm(2).FireRequestTake(ctx, "b")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(2), f.TakenTerm)
	require.NoError(t, s.WithTerm(2).FireRequestFinish(ctx, id, ""))
	f, err = s.FireRequestGet(ctx, id)
	require.NoError(t, err)
	require.Equal(t, history.FireRequestDone, f.Status)

	claim(t, s, "web", "ins-1", slot)
	claim(t, s, "web", "ins-2", slot)
	runs, err := s.RunsAtSlot(ctx, "web", slot, []string{"ins-1"})
	require.NoError(t, err)
	require.Len(t, runs, 1)
	runs, err = s.RunsAtSlot(ctx, "web", slot, nil)
	require.NoError(t, err)
	require.Len(t, runs, 2)
}
