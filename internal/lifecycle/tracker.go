package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/startstop"
)

// Tracker defaults and limits.
const (
	// DefaultPollInterval is how often the Tracker polls when PollInterval is zero.
	DefaultPollInterval = 30 * time.Second
	// MaxPollBackoff bounds the poll delay after consecutive failed polls (unless the poll
	// interval itself is longer).
	MaxPollBackoff = 5 * time.Minute
	// MissingPolls is how many consecutive polls an image may be unknown to the API before its
	// run fails with CodeImageNotFound.
	MissingPolls = 3
	// BatchSize is the most image ids one DescribeImages call asks about.
	BatchSize = 100
)

// describeRetry is how a failed DescribeImages call is retried within a poll: from 200 ms,
// doubling with jitter up to 2 s, at most five tries and never past half a poll interval (set
// per Tracker), so a question that keeps failing is left for the next poll in time.
var describeRetry = backoff.Policy{Initial: 200 * time.Millisecond, Max: 2 * time.Second, Attempts: 5}

// Error codes the Tracker records on the runs it fails.
const (
	// CodeCreateFailed: the image ended in state CREATEFAILED.
	CodeCreateFailed = "CREATEFAILED"
	// CodeTimeout: the image was still being made when the policy's image.timeout had passed
	// since the run started.
	CodeTimeout = "Timeout"
	// CodeImageNotFound: the API did not know the run's image (by id, or by exact name when the
	// CreateImage answer had no ImageId) in MissingPolls consecutive polls.
	CodeImageNotFound = "ImageNotFound"
)

// historyTimeout bounds one history read or write, in real time: it guards against a hung
// database and decides no behaviour a test would control with the clock.
const historyTimeout = 10 * time.Second

// Errors of WaitTerminal.
var (
	// ErrNotRunning: the Tracker was not started, or has stopped.
	ErrNotRunning = errors.New("completion tracker is not running")
	// ErrStopped: the Tracker stopped while the caller waited.
	ErrStopped = errors.New("completion tracker stopped")
	// ErrOtherAccount: the run waited for is of another account than the Tracker's
	// (TrackerOptions.Account), whose Tracker follows it.
	ErrOtherAccount = errors.New("run of another account")
)

// TrackerOptions configures a Tracker. History and CVM are required.
type TrackerOptions struct {
	History TrackerHistory
	// CVM is the client DescribeImages is called with: signed by Account's credentials when
	// Account is set.
	CVM TrackerCVM
	// Account, when set, is the account (image_runs.account, docs/policies.md "Accounts") whose
	// runs this Tracker follows; the runs of other accounts are their own Trackers'. Empty
	// follows every run (one client for all).
	Account string
	// Pace is waited on before every DescribeImages call; nil means no pacing (tests). The
	// daemon passes the DescribePace() of the scheduler of the same account.
	Pace Pace
	// Config returns the policies in effect now, for image.timeout; nil, or a policy no longer
	// loaded, means policy.DefaultImageTimeout.
	Config func() *policy.Config
	// Clock decides polls, backoff, timeouts and finish times; nil means the real clock.
	Clock clockwork.Clock
	// Logger is used as given: the caller sets its component field.
	Logger zerolog.Logger
	// PollInterval is the delay between polls; 0 means DefaultPollInterval.
	PollInterval time.Duration
	// OnAvailable is called once per run this Tracker marks available, after the run is recorded
	// and before WaitTerminal hears of it, from the poll loop (so keep it bounded: the next poll
	// waits for it). The daemon runs the policy's retention here.
	OnAvailable func(ctx context.Context, run history.Run)
	// OnTerminal is called once per run this Tracker moves to available or failed (metrics); it
	// must not block. Nil means none.
	OnTerminal func(run history.Run)
}

// Tracker follows every run in status requested until it is terminal (see the package comment).
//
// Each poll loads the requested runs from history, groups them by region, and asks
// DescribeImages about up to BatchSize image ids per call; runs without an image id (the
// CreateImage answer had none, as in the seed) are looked up together per policy and slot by
// imager's tags, 100 per page, comparing names exactly (and by the image-name filter, one run at
// a time, when that missed them). NORMAL makes the run available (size and finish time) and calls OnAvailable;
// CREATEFAILED fails it with CodeCreateFailed; an image still being made after the policy's
// image.timeout since the run started fails it with CodeTimeout; an image the API does not
// know for MissingPolls consecutive polls fails it with CodeImageNotFound.
//
// image_attempts gets one DescribeImages row per run for the call that observed the run's
// terminal state (or found its image id by name), and one per run of its batch for every
// DescribeImages call that failed. Polls that change nothing are not recorded: a run followed
// for hours would otherwise collect hundreds of identical rows.
//
// A failed DescribeImages call is retried on its own, paced, with a short backoff (describeRetry);
// a question that still fails skips only its runs, which the next poll asks about again. A poll
// fails as a whole only when history cannot be read or most of its questions went unanswered;
// each consecutive failed poll doubles the delay up to MaxPollBackoff, while polls in which most
// calls succeed keep the interval.
//
// The only state kept in memory is a cache of what PostgreSQL already says, plus the count of
// polls that missed an image (which starts over after a restart).
type Tracker struct {
	hist       TrackerHistory
	cvm        TrackerCVM
	account    string
	pace       Pace
	config     func() *policy.Config
	clock      clockwork.Clock
	log        zerolog.Logger
	interval   time.Duration
	onAvail    func(ctx context.Context, run history.Run)
	onTerminal func(run history.Run)
	retry      backoff.Policy
	jitter     *backoff.Jitter

	kick chan struct{} // one slot: poll now

	mu       sync.Mutex
	running  bool
	waiters  map[*waiter]struct{}
	inFlight map[int64]bool // runs whose terminal state the loop is recording and announcing

	// Owned by the poll loop.
	finished map[int64]bool // runs recorded terminal here (the write may still sit in a spool)
	missing  map[int64]int  // consecutive polls that did not find the run's image
	attempts map[int64]int  // last attempt number this Tracker used per run

	life startstop.Life // the poll loop

	// afterPoll, when set (tests), is called after every poll with its result and the delay
	// before the next one.
	afterPoll func(pollResult, time.Duration)
}

// NewTracker returns a Tracker that is not yet running.
func NewTracker(opts TrackerOptions) *Tracker {
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	return &Tracker{
		hist:       opts.History,
		cvm:        opts.CVM,
		account:    opts.Account,
		pace:       opts.Pace,
		config:     opts.Config,
		clock:      opts.Clock,
		log:        opts.Logger, // the caller tags it with component
		interval:   opts.PollInterval,
		onAvail:    opts.OnAvailable,
		onTerminal: opts.OnTerminal,
		retry:      retryFor(opts.PollInterval),
		jitter:     backoff.NewJitter(nil),
		kick:       make(chan struct{}, 1),
		waiters:    map[*waiter]struct{}{},
		inFlight:   map[int64]bool{},
		finished:   map[int64]bool{},
		missing:    map[int64]int{},
		attempts:   map[int64]int{},
	}
}

// Start starts the poll loop; the first poll runs at once. Cancelling ctx ends the loop as Stop
// does; call Stop in every case to wait for it.
func (t *Tracker) Start(ctx context.Context) error {
	if t.hist == nil || t.cvm == nil {
		return errors.New("completion tracker: history and CVM client are required")
	}
	ctx, err := t.life.Start(ctx)
	if err != nil {
		return fmt.Errorf("completion tracker: %w", err)
	}
	t.mu.Lock()
	t.running = true
	t.mu.Unlock()
	t.life.Go(func() { t.loop(ctx) })
	t.log.Info().Int64("poll_interval_ms", t.interval.Milliseconds()).Msg("completion tracker started")
	return nil
}

// Stop ends the poll loop (cancelling a poll in progress) and waits for it; callers of
// WaitTerminal get ErrStopped. It is idempotent and safe to call before Start.
func (t *Tracker) Stop() {
	if t.life.Stop() {
		t.log.Info().Msg("completion tracker stopped")
	}
}

// Kick asks for a poll now instead of at the end of the current delay. Kicks that arrive while
// one is pending collapse into one poll.
func (t *Tracker) Kick() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// loop polls until ctx ends.
func (t *Tracker) loop(ctx context.Context) {
	defer t.closeWaiters(ErrStopped)
	failures := 0
	for {
		res := t.poll(ctx)
		if ctx.Err() != nil {
			return
		}
		if res.failed() {
			failures++
		} else {
			failures = 0
		}
		delay := pollDelay(t.interval, failures)
		if failures > 0 {
			t.log.Warn().Int("consecutive_failures", failures).Int64("next_poll_in_ms", delay.Milliseconds()).
				Msg("poll failed; retrying with backoff")
		}
		if t.afterPoll != nil {
			t.afterPoll(res, delay)
		}
		timer := t.clock.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-t.kick:
			timer.Stop()
		case <-timer.Chan():
		}
	}
}

// pollDelay is the delay before the next poll after failures consecutive failed polls: the
// interval, doubled per failure, at most MaxPollBackoff (or the interval when that is longer).
func pollDelay(interval time.Duration, failures int) time.Duration {
	limit := max(MaxPollBackoff, interval)
	d := interval
	for i := 0; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// retryFor is describeRetry bounded by half the poll interval.
func retryFor(interval time.Duration) backoff.Policy {
	p := describeRetry
	p.MaxElapsed = interval / 2
	return p
}

// imageTimeout is how long a run's image may take: its policy's image.timeout, or the default.
func (t *Tracker) imageTimeout(policyName string) time.Duration {
	if t.config != nil {
		if cfg := t.config(); cfg != nil {
			if p := cfg.Policy(policyName); p != nil && p.Image.Timeout > 0 {
				return p.Image.Timeout
			}
		}
	}
	return policy.DefaultImageTimeout
}

// writeContext bounds one history write. Writes do not end with the loop's context: an outcome
// observed during shutdown is still recorded.
func writeContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), historyTimeout)
}
