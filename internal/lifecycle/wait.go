package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/imager-dev/imager/internal/history"
)

// waiter is one WaitTerminal call. Its fields are guarded by Tracker.mu.
type waiter struct {
	want   map[int64]bool
	got    map[int64]history.Run
	err    error
	done   chan struct{}
	closed bool
}

// closeLocked ends the wait. The caller holds Tracker.mu.
func (w *waiter) closeLocked(err error) {
	if w.closed {
		return
	}
	w.closed = true
	w.err = err
	close(w.done)
}

// WaitTerminal returns once every one of runIDs is terminal (available or failed, or any other
// terminal status), with each run as recorded; for a run that became available, after the
// OnAvailable hook has run. Runs already terminal count at once. It is told by the poll loop
// (and kicks it), it does not poll the database itself; runs that another daemon finishes are
// read at the next poll. When ctx ends first it returns the runs that were terminal by then with
// ctx's error; when the Tracker stops, ErrStopped. A run that does not exist is an error wrapping
// history.ErrNotFound; a run still to follow of another account than the Tracker's is an error
// wrapping ErrOtherAccount. The Tracker must be running.
func (t *Tracker) WaitTerminal(ctx context.Context, runIDs []int64) (map[int64]history.Run, error) {
	w := &waiter{want: map[int64]bool{}, got: map[int64]history.Run{}, done: make(chan struct{})}
	for _, id := range runIDs {
		w.want[id] = true
	}
	if len(w.want) == 0 {
		return w.got, nil
	}
	t.mu.Lock()
	if !t.running {
		t.mu.Unlock()
		return nil, ErrNotRunning
	}
	t.waiters[w] = struct{}{}
	t.mu.Unlock()
	defer t.removeWaiter(w)

	// Registered first, read second: a run the loop finishes meanwhile is told either way.
	for id := range maps.Clone(w.want) {
		r, err := t.hist.RunGet(ctx, id)
		switch {
		case errors.Is(err, history.ErrNotFound):
			return nil, fmt.Errorf("wait for run %d: %w", id, err)
		case err != nil:
			if ctx.Err() != nil {
				return t.waitResult(w, fmt.Errorf("wait for runs: %w", ctx.Err()))
			}
			// The database is away: the poll loop reads it again.
		case r.Status.Terminal():
			t.deliverUnlessInFlight(r)
		case t.account != "" && r.Account != t.account:
			return nil, fmt.Errorf("wait for run %d: it is followed by the tracker of account %s, not %s: %w",
				id, r.Account, t.account, ErrOtherAccount)
		}
	}
	t.Kick()
	select {
	case <-w.done:
		return t.waitResult(w, nil)
	case <-ctx.Done():
		return t.waitResult(w, fmt.Errorf("wait for runs: %w", ctx.Err()))
	}
}

// waitResult returns what w received, and its error or err.
func (t *Tracker) waitResult(w *waiter, err error) (map[int64]history.Run, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w.err != nil {
		err = w.err
	}
	return maps.Clone(w.got), err
}

func (t *Tracker) removeWaiter(w *waiter) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.waiters, w)
}

// deliver tells the waiters that r is terminal.
func (t *Tracker) deliver(r history.Run) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.deliverLocked(r)
}

// deliverUnlessInFlight is deliver for a terminal run read by WaitTerminal: a run the loop is
// still announcing (its OnAvailable hook may be running) is left for the loop to tell.
func (t *Tracker) deliverUnlessInFlight(r history.Run) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.inFlight[r.ID] {
		t.deliverLocked(r)
	}
}

func (t *Tracker) deliverLocked(r history.Run) {
	for w := range t.waiters {
		if !w.want[r.ID] {
			continue
		}
		delete(w.want, r.ID)
		w.got[r.ID] = r
		if len(w.want) == 0 {
			w.closeLocked(nil)
		}
	}
}

func (t *Tracker) setInFlight(runID int64, on bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if on {
		t.inFlight[runID] = true
	} else {
		delete(t.inFlight, runID)
	}
}

// closeWaiters ends every wait with err; the Tracker takes no more.
func (t *Tracker) closeWaiters(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.running = false
	for w := range t.waiters {
		w.closeLocked(err)
	}
}

// checkWaiters reads the runs waited for that this poll did not load as requested: they were
// pending (still being sent) or were finished by someone else.
func (t *Tracker) checkWaiters(ctx context.Context, live map[int64]bool) {
	t.mu.Lock()
	var ids []int64
	seen := map[int64]bool{}
	for w := range t.waiters {
		for id := range w.want {
			if !live[id] && !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	t.mu.Unlock()
	for _, id := range ids {
		rctx, cancel := context.WithTimeout(ctx, historyTimeout)
		r, err := t.hist.RunGet(rctx, id)
		cancel()
		switch {
		case errors.Is(err, history.ErrNotFound):
			t.failWaitersOf(id, fmt.Errorf("wait for run %d: %w", id, err))
		case err != nil:
			t.log.Warn().Err(err).Int64("run_id", id).Msg("cannot read a run waited for")
		case r.Status.Terminal():
			t.deliver(r)
		}
	}
}

// failWaitersOf ends the waits for runID with err.
func (t *Tracker) failWaitersOf(runID int64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for w := range t.waiters {
		if w.want[runID] {
			w.closeLocked(err)
		}
	}
}
