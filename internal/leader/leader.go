// Package leader elects one leader among the imager processes that share a database: one row
// of leader_lease (docs/design.md "Leadership and fencing"). The holder renews it every TTL/3; others
// poll at the same pace and LISTEN for the holder's resignation. Every change of holder raises
// the term, which fences the writes of a holder that lost the lease without knowing it.
//
// A leader stops leading as soon as it learns it lost: its renewal is refused (another term),
// or it could not renew before its own deadline (last successful renewal + TTL, on the
// monotonic clock, which never runs ahead of the database's expiry), or the work it leads was
// refused a write as fenced (Demote).
package leader

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/startstop"
)

// DefaultTTL is how long a lease lasts without renewal.
const DefaultTTL = 15 * time.Second

// Store is what the elector needs from history. *history.Store implements it.
type Store interface {
	LeaseAcquire(ctx context.Context, h history.LeaseHolder, ttl time.Duration) (history.Lease, bool, error)
	LeaseRenew(ctx context.Context, daemonID string, term int64, ttl time.Duration) (history.Lease, error)
	LeaseResign(ctx context.Context, daemonID string, term int64) (bool, error)
	ReplicaSeen(ctx context.Context, r history.Replica) error
	Listen(ctx context.Context, channels []string, ready func(), fn func(channel, payload string)) error
}

var _ Store = (*history.Store)(nil)

// Options configures an Elector. Store and Holder.DaemonID are required.
type Options struct {
	Store  Store
	Holder history.LeaseHolder
	// Version and StartedAt are recorded in replicas.
	Version   string
	StartedAt time.Time
	// Once marks an imager once: its replicas row says role once whatever it holds.
	Once bool
	// TTL is the lease duration; 0 means DefaultTTL. Renewals and standby polls run every TTL/3.
	TTL time.Duration
	// Clock paces renewals and polls and measures the local deadline; nil is the real clock.
	Clock  clockwork.Clock
	Logger zerolog.Logger
	// OnElected is called when this process becomes leader, with the term and a context that
	// ends when it stops leading. It starts the leader's work and returns.
	OnElected func(ctx context.Context, term int64)
	// OnDemoted is called when this process stops leading (lost, fenced, or Stop); it stops
	// the leader's work and returns when it has stopped. During Stop the lease is kept renewed
	// until it returns, then resigned.
	OnDemoted func()
}

// Elector holds or waits for the leader lease. Start it, Stop it.
type Elector struct {
	opts  Options
	clock clockwork.Clock
	log   zerolog.Logger
	ttl   time.Duration

	wake   chan struct{} // one slot: the lease may be free (resign notified)
	demote chan struct{} // one slot: the leader's work was fenced

	mu        sync.Mutex
	term      int64 // 0 when not leading
	lastOK    time.Time
	lastErr   error
	leadStop  context.CancelFunc
	started   bool // for Healthy: between Start and the end of Stop
	stopped   bool
	life      startstop.Life // the renewal loop and the listener
	stopOnce  sync.Once
	renewedAt time.Time // monotonic instant the last successful renewal was sent
}

// New returns an Elector that is not yet running.
func New(opts Options) (*Elector, error) {
	if opts.Store == nil || opts.Holder.DaemonID == "" {
		return nil, errors.New("leader: store and daemon id are required")
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultTTL
	}
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.StartedAt.IsZero() {
		opts.StartedAt = opts.Clock.Now()
	}
	return &Elector{
		opts:   opts,
		clock:  opts.Clock,
		log:    opts.Logger,
		ttl:    opts.TTL,
		wake:   make(chan struct{}, 1),
		demote: make(chan struct{}, 1),
	}, nil
}

// TTL is the lease duration in use.
func (e *Elector) TTL() time.Duration { return e.ttl }

// Term returns the term this process leads under, or 0 when it does not lead.
func (e *Elector) Term() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.term
}

// Healthy returns nil when the elector reached the database within the last TTL (a leader
// renewed, a standby polled), otherwise why not.
func (e *Elector) Healthy() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.started || e.stopped {
		return errors.New("leader election not running")
	}
	if e.lastOK.IsZero() || e.clock.Since(e.lastOK) > e.ttl {
		if e.lastErr != nil {
			return errors.New("cannot reach the lease: " + e.lastErr.Error())
		}
		return errors.New("lease not checked within its TTL")
	}
	return nil
}

// Demote makes the leader stop leading at once (its work was refused a write as fenced). It
// never blocks and may be called from the leader's own work.
func (e *Elector) Demote() {
	select {
	case e.demote <- struct{}{}:
	default:
	}
}

// Start makes a first attempt at the lease (calling OnElected before it returns when it wins),
// then renews or polls in the background until Stop. An unreachable database at Start is not an
// error: the elector keeps trying.
func (e *Elector) Start(ctx context.Context) error {
	ctx, err := e.life.Start(ctx)
	if err != nil {
		return fmt.Errorf("leader: %w", err)
	}
	e.mu.Lock()
	e.started = true
	e.mu.Unlock()

	e.tryAcquire(ctx)
	e.life.Go(func() { e.loop(ctx) })
	e.life.Go(func() { e.listen(ctx) })
	return nil
}

// interval is the renewal and poll period.
func (e *Elector) interval() time.Duration { return e.ttl / 3 }

// opTimeout bounds one database call of the elector.
func (e *Elector) opTimeout() time.Duration { return max(e.interval(), time.Second) }

func (e *Elector) role() string {
	switch {
	case e.opts.Once:
		return history.RoleOnce
	case e.Term() != 0:
		return history.RoleLeader
	}
	return history.RoleStandby
}

// seen upserts this process's replicas row; a failure is only logged (the lease decides).
func (e *Elector) seen(ctx context.Context, role string) {
	opCtx, cancel := context.WithTimeout(ctx, e.opTimeout())
	defer cancel()
	err := e.opts.Store.ReplicaSeen(opCtx, history.Replica{DaemonID: e.opts.Holder.DaemonID, Host: e.opts.Holder.Host,
		PID: e.opts.Holder.PID, Role: role, Version: e.opts.Version, StartedAt: e.opts.StartedAt})
	if err != nil && ctx.Err() == nil {
		e.log.Debug().Err(err).Msg("cannot record this replica")
	}
}

func (e *Elector) noteResult(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err == nil {
		e.lastOK, e.lastErr = e.clock.Now(), nil
	} else {
		e.lastErr = err
	}
}

// tryAcquire takes the lease when it is free; on success it leads.
func (e *Elector) tryAcquire(ctx context.Context) {
	sent := e.clock.Now()
	// As in renew: an acquisition already sent finishes, so Stop knows whether it leads.
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.opTimeout())
	l, ok, err := e.opts.Store.LeaseAcquire(opCtx, e.opts.Holder, e.ttl)
	cancel()
	e.noteResult(err)
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn().Err(err).Msg("cannot check the leader lease; retrying")
		}
		return
	}
	if !ok {
		e.seen(ctx, e.role())
		return
	}
	leadCtx, leadStop := context.WithCancel(ctx)
	e.mu.Lock()
	e.term, e.renewedAt, e.leadStop = l.Term, sent, leadStop
	e.mu.Unlock()
	e.log.Info().Int64("term", l.Term).Time("expires_at", l.ExpiresAt).Dur("ttl", e.ttl).Msg("elected leader")
	e.seen(ctx, e.role())
	if e.opts.OnElected != nil {
		e.opts.OnElected(leadCtx, l.Term)
	}
}

// renew extends the lease; it demotes on a refusal, and on a failure past the local deadline.
func (e *Elector) renew(ctx context.Context) {
	e.mu.Lock()
	term, deadline := e.term, e.renewedAt.Add(e.ttl)
	e.mu.Unlock()
	now := e.clock.Now()
	if !now.Before(deadline) {
		e.stepDown(term, "lease deadline passed without renewal")
		return
	}
	// Stop cancels ctx; a renewal already sent is let finish (within its timeout) rather than
	// abandoned, so that it cannot commit on the server after Stop resigned and revive the lease.
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(deadline.Sub(now), e.opTimeout()))
	_, err := e.opts.Store.LeaseRenew(opCtx, e.opts.Holder.DaemonID, term, e.ttl)
	cancel()
	e.noteResult(err)
	switch {
	case err == nil:
		e.mu.Lock()
		e.renewedAt = now
		e.mu.Unlock()
		e.seen(ctx, e.role())
	case errors.Is(err, history.ErrFenced):
		e.stepDown(term, "lease taken by another replica")
	case ctx.Err() != nil:
	default:
		e.log.Warn().Err(err).Int64("term", term).Time("deadline", deadline).Msg("cannot renew the leader lease; retrying until the deadline")
		if !e.clock.Now().Before(deadline) {
			e.stepDown(term, "lease deadline passed without renewal")
		}
	}
}

// stepDown stops leading: the leader's context ends, then OnDemoted stops its work.
func (e *Elector) stepDown(term int64, reason string) {
	e.mu.Lock()
	if e.term != term || term == 0 {
		e.mu.Unlock()
		return
	}
	e.term = 0
	stop := e.leadStop
	e.leadStop = nil
	e.mu.Unlock()
	e.log.Warn().Int64("term", term).Str("reason", reason).Msg("no longer leader")
	stop()
	if e.opts.OnDemoted != nil {
		e.opts.OnDemoted()
	}
}

// nextWait is how long to wait before the next renewal or poll: TTL/3, but never past a
// leader's deadline.
func (e *Elector) nextWait() time.Duration {
	d := e.interval()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.term != 0 {
		if left := e.renewedAt.Add(e.ttl).Sub(e.clock.Now()); left < d {
			d = max(left, 0)
		}
	}
	return d
}

func (e *Elector) loop(ctx context.Context) {
	for {
		t := e.clock.NewTimer(e.nextWait())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-e.demote:
			t.Stop()
			e.stepDown(e.Term(), "a write of the leader was fenced")
			continue
		case <-e.wake:
			t.Stop()
		case <-t.Chan():
		}
		if e.Term() != 0 {
			e.renew(ctx)
		} else {
			e.tryAcquire(ctx)
		}
	}
}

// listen wakes a standby as soon as the leader resigns. The connection is re-made after a
// failure; polling covers the gap.
func (e *Elector) listen(ctx context.Context) {
	for {
		poke := func() {
			select {
			case e.wake <- struct{}{}:
			default:
			}
		}
		// Once listening, check the lease again: a resignation before the LISTEN was missed.
		err := e.opts.Store.Listen(ctx, []string{history.LeaseChannel}, poke, func(string, string) { poke() })
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			e.log.Debug().Err(err).Msg("lease notifications interrupted; polling meanwhile")
		}
		t := e.clock.NewTimer(e.interval())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.Chan():
		}
	}
}

// Stop ends the election: a leader stops its work (OnDemoted) while it keeps its lease renewed,
// then resigns it so a standby takes over at once; the replicas row is marked stopped. It is
// idempotent and safe before Start.
func (e *Elector) Stop() {
	e.stopOnce.Do(func() {
		if !e.life.Stop() {
			return
		}

		term := e.Term()
		if term != 0 {
			e.handOver(term)
		}
		ctx, cancel := context.WithTimeout(context.Background(), e.opTimeout())
		e.seen(ctx, history.RoleStopped)
		cancel()
		e.mu.Lock()
		e.stopped = true
		e.mu.Unlock()
	})
}

// handOver stops the leader's work, renewing the lease meanwhile, then resigns it.
func (e *Elector) handOver(term int64) {
	e.mu.Lock()
	stop := e.leadStop
	e.leadStop = nil
	e.mu.Unlock()
	stop()
	workDone := make(chan struct{})
	go func() {
		defer close(workDone)
		if e.opts.OnDemoted != nil {
			e.opts.OnDemoted()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lost := false
	defer func() {
		e.mu.Lock()
		e.term = 0
		e.mu.Unlock()
	}()
	for {
		if lost {
			<-workDone
			return
		}
		t := e.clock.NewTimer(e.nextWait())
		select {
		case <-workDone:
			t.Stop()
			opCtx, cancel := context.WithTimeout(ctx, e.opTimeout())
			resigned, err := e.opts.Store.LeaseResign(opCtx, e.opts.Holder.DaemonID, term)
			cancel()
			switch {
			case err != nil:
				e.log.Warn().Err(err).Int64("term", term).Msg("cannot resign the leader lease; it lapses after its TTL")
			case resigned:
				e.log.Info().Int64("term", term).Msg("resigned the leader lease")
			}
			return
		case <-t.Chan():
			if e.clock.Since(e.renewedAtCopy()) >= e.ttl {
				lost = true
				e.log.Warn().Int64("term", term).Msg("lease deadline passed while stopping; writes of this term may be fenced")
				continue
			}
			opCtx, cancel := context.WithTimeout(ctx, e.opTimeout())
			sent := e.clock.Now()
			_, err := e.opts.Store.LeaseRenew(opCtx, e.opts.Holder.DaemonID, term, e.ttl)
			cancel()
			if err == nil {
				e.mu.Lock()
				e.renewedAt = sent
				e.mu.Unlock()
			} else if errors.Is(err, history.ErrFenced) {
				lost = true
				e.log.Warn().Int64("term", term).Msg("lease taken by another replica while stopping")
			}
		}
	}
}

func (e *Elector) renewedAtCopy() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.renewedAt
}
