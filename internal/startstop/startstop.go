// Package startstop is the start and stop of imager's long-running components (the elector, the
// scheduler, the completion tracker, the notifier, the history spool's replay loop): one Start,
// goroutines that Stop cancels and waits for, a Stop that is idempotent and safe before Start.
// riverqueue/river's startstop package is the model. Components embed a Life and keep only what
// is theirs (a grace period, a hand-over, a last replay) around its calls.
package startstop

import (
	"context"
	"errors"
	"sync"
)

// ErrStarted is returned by Start on a Life that is running, or that has stopped and may not
// start again.
var ErrStarted = errors.New("already started")

// Life is the running state of one component. The zero value is ready to Start.
type Life struct {
	// Restartable lets Start be called again once Stop has returned (a notifier stopped when
	// leadership is lost starts again at the next term). Set it before the first Start.
	Restartable bool

	mu      sync.Mutex
	running bool
	stopped bool // stopped and not restartable
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	done    chan struct{}
}

// Start marks the Life running and returns the context its goroutines run under: cancelled by
// Stop, or when ctx ends. It fails with ErrStarted when the Life is running, or has stopped and
// is not Restartable.
func (l *Life) Start(ctx context.Context) (context.Context, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running || l.stopped {
		return nil, ErrStarted
	}
	l.running = true
	ctx, l.cancel = context.WithCancel(ctx)
	l.done = make(chan struct{})
	return ctx, nil
}

// Go runs f in a goroutine that Stop waits for. Call it only between Start and Stop.
func (l *Life) Go(f func()) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		f()
	}()
}

// Cancel cancels the goroutines' context without waiting for them and reports whether the Life
// was running: the first step of a Stop that waits its own way (Done, with a grace period).
// Cancelling twice is harmless.
func (l *Life) Cancel() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.running {
		return false
	}
	l.cancel()
	return true
}

// Done is closed once the goroutines started with Go have all returned after a Cancel or Stop
// (nil before the first Start).
func (l *Life) Done() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done == nil {
		return nil
	}
	done := l.done
	go func() {
		l.wg.Wait()
		l.closeDone(done)
	}()
	return done
}

// Stop cancels the goroutines, waits for them and reports whether the Life was running. It is
// idempotent and safe before Start (a Life that is not Restartable cannot start after it);
// Stops at once wait for the same goroutines.
func (l *Life) Stop() bool {
	l.mu.Lock()
	if !l.running {
		l.stopped = l.stopped || !l.Restartable
		l.mu.Unlock()
		return false
	}
	l.cancel()
	done := l.done
	l.mu.Unlock()

	l.wg.Wait()
	l.closeDone(done)

	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.running || l.done != done {
		return false // another Stop finished first
	}
	l.running = false
	l.stopped = !l.Restartable
	return true
}

// Running reports whether the Life is between Start and the end of Stop.
func (l *Life) Running() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.running
}

func (l *Life) closeDone(done chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-done:
	default:
		close(done)
	}
}
