package backoff

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jonboulle/clockwork"
)

// ErrInterrupted is returned by Retry, wrapped with ctx's error and the last try's, when ctx
// ended while it waited before a retry.
var ErrInterrupted = errors.New("retry interrupted")

// permanentError marks an error that is not worth another try (Permanent).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth another try: Retry returns err (without the mark) at once.
// Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// afterError asks for a given wait before the next try (After).
type afterError struct {
	err  error
	wait time.Duration
}

func (e *afterError) Error() string { return e.err.Error() }
func (e *afterError) Unwrap() error { return e.err }

// After marks err as worth another try after wait instead of the policy's delay: for callers
// whose wait depends on the error (its class's configured backoff). The policy still decides
// whether there is another try, and a deadline still cuts the wait. After(nil, d) is nil.
func After(err error, wait time.Duration) error {
	if err == nil {
		return nil
	}
	return &afterError{err: err, wait: max(wait, 0)}
}

// Option tunes one Retry.
type Option func(*retryOptions)

type retryOptions struct {
	deadline time.Time
	jitter   *Jitter
	onRetry  func(try int, err error, wait time.Duration)
	failed   int
	failErr  error
}

// Deadline bounds Retry by a time as well: no try is planned to start after deadline (a slot's
// start window). The zero time means none.
func Deadline(deadline time.Time) Option {
	return func(o *retryOptions) { o.deadline = deadline }
}

// WithJitter draws the delays from j; without it every delay is the middle of its range.
func WithJitter(j *Jitter) Option {
	return func(o *retryOptions) { o.jitter = j }
}

// OnRetry is told of every failed try that Retry follows with another, before the wait: the try's
// number, its error (without Permanent's or After's mark; AlreadyFailed's for a try the caller
// made) and the wait. Callers log with it; each try's own record (history's attempts) is
// fn's to write, since fn knows the call.
func OnRetry(f func(try int, err error, wait time.Duration)) Option {
	return func(o *retryOptions) { o.onRetry = f }
}

// AlreadyFailed resumes a retry the caller began: n tries already failed (the caller made
// them), the last with err, so Retry waits the policy's delay after the n-th failure before its
// first call of fn, whose try number is then n+1. Should the policy stop before that call, Retry
// returns err. Elapsed time (MaxElapsed) counts from Retry's start.
func AlreadyFailed(n int, err error) Option {
	return func(o *retryOptions) { o.failed, o.failErr = max(n, 0), err }
}

// Retry calls fn(try), try counting from 1, until it returns nil, and returns nil. Between tries
// it waits on clock, or until ctx ends. It stops with fn's last error (unwrapped from Permanent
// and After) when that error is Permanent, when ctx ended during the try (a call cut off by
// shutdown is not retried), or when p says stop: after p.Attempts tries, once p.MaxElapsed has
// passed since the first try, or when the next try would start after the Deadline option's time
// (waits are cut to end at MaxElapsed and at the deadline, see Policy.Until). When ctx ends while
// it waits, it returns ErrInterrupted wrapped with ctx's error and the last try's.
//
// fn makes one try: typically it waits on the action's pace, makes the call and records it, and
// marks errors that no retry can fix Permanent. Every wait is one clock timer, so tests move a
// fake clock through the retries.
func Retry(ctx context.Context, clock clockwork.Clock, p Policy, fn func(try int) error, opts ...Option) error {
	var o retryOptions
	for _, opt := range opts {
		opt(&o)
	}
	first := clock.Now()
	last := o.failErr
	for try := o.failed + 1; ; try++ {
		if try > 1 {
			n := try - 1 // failures so far
			now := clock.Now()
			d, ok := p.Until(n, now.Sub(first), now, o.deadline, o.jitter)
			if !ok {
				return unmark(last)
			}
			var ae *afterError
			if errors.As(last, &ae) {
				d = ae.wait
				if !o.deadline.IsZero() {
					d = min(d, o.deadline.Sub(now))
				}
			}
			if o.onRetry != nil {
				o.onRetry(n, unmark(last), d)
			}
			if err := wait(ctx, clock, d); err != nil {
				if last == nil {
					return fmt.Errorf("%w: %w", ErrInterrupted, err)
				}
				return fmt.Errorf("%w: %w (last try: %w)", ErrInterrupted, err, unmark(last))
			}
		}
		last = fn(try)
		if last == nil {
			return nil
		}
		var pe *permanentError
		if errors.As(last, &pe) || ctx.Err() != nil {
			return unmark(last)
		}
	}
}

// unmark returns err without Permanent's or After's mark.
func unmark(err error) error {
	switch e := err.(type) {
	case *permanentError:
		return e.err
	case *afterError:
		return e.err
	}
	return err
}

// wait waits d on clock, or until ctx ends.
func wait(ctx context.Context, clock clockwork.Clock, d time.Duration) error {
	t := clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.Chan():
		return nil
	}
}
