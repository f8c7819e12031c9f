// Package copies copies every available image of a policy with copy_to to the other regions it
// names (SyncImages), follows each copy until it is NORMAL, and prunes the copies in each region by
// that copy_to entry's retention. Its state lives in PostgreSQL (image_copies, internal/history
// copies.go), so it resumes after a restart or a change of leader.
//
// A Copier runs on the leader, in a goroutine and on paces of its own: SyncImages calls never
// wait behind CreateImage calls, nor CreateImage behind them. Each pass:
//
//   - resolves the copies left requested: a copy whose last call was refused (retry_at) is called
//     again once retry_at has passed; a copy whose last call has no known outcome (a crash between
//     the call and its record, an ambiguous error) is first looked up by its exact name in its
//     destination, and SyncImages is called again only if it is not there: an image is copied at
//     most once per region;
//   - starts the copies due (history.Store.CopiesDue): one SyncImages call per run, one image per
//     call, with every region missing a copy, the rows written requested before the call and the
//     answer's ids after it;
//   - follows the copies syncing with DescribeImages per region, by ids (100 per call), until they
//     are NORMAL (available), fail (a FAILED state, unknown for MissingPolls passes) or time out
//     (the policy's image.timeout from the first request);
//   - prunes the copies of each (policy, instance) that had one become available, and every copy
//     once per RetentionInterval.
package copies

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/startstop"
)

// Defaults and limits of a Copier.
const (
	// DefaultSyncRate is the SyncImages pace of one account: the API allows 10 calls per second.
	DefaultSyncRate = 10
	// DefaultDeleteRate is the DeleteImages pace of one account when Options leaves it to the
	// copier (the API limit).
	DefaultDeleteRate = 10
	// DefaultPollInterval is the time between passes when nothing is due sooner.
	DefaultPollInterval = 30 * time.Second
	// DefaultRetentionInterval is how often every copy_to region's copies are weighed by their
	// retention (max_age deletes copies that no new copy pushes out).
	DefaultRetentionInterval = time.Hour
	// MissingPolls is how many passes in a row a syncing copy may be unknown to DescribeImages
	// before it fails with CodeImageNotFound.
	MissingPolls = 3
	// DueBatch is the most runs one pass starts copies of.
	DueBatch = 100
	// quotaGateEvery: a quota gate of one (account, region) prunes at most once in this time; a
	// fire's worth of copies hitting the quota together prunes once.
	quotaGateEvery = time.Minute
	// maxCallsPerRun bounds the SyncImages calls one run gets in one pass (calls again after an
	// ambiguous answer, without a refused region, one region at a time).
	maxCallsPerRun = 8
	// historyTimeout bounds one history write; writes outlive the pass's context so a call that
	// was made is recorded, even during shutdown.
	historyTimeout = 10 * time.Second
)

// Error codes the copier records on the copies it fails.
const (
	CodeTimeout       = "Timeout"       // not available within the policy's image.timeout of the first request
	CodeImageNotFound = "ImageNotFound" // a syncing copy unknown to DescribeImages for MissingPolls passes
)

// CVM is what the copier needs from one account's CVM API. *cvm.Client implements it.
type CVM interface {
	SyncImages(ctx context.Context, region string, in cvm.SyncImagesInput) (cvm.SyncImagesOutput, error)
	DescribeImages(ctx context.Context, region string, in cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error)
	DeleteImages(ctx context.Context, region string, imageIDs []string, deleteSnapshots bool) (requestID string, err error)
}

// History is what the copier needs from history. *history.Store implements it.
type History interface {
	CopiesDue(ctx context.Context, wants []history.CopyWant, limit int) ([]history.CopyDue, error)
	CopyRequested(ctx context.Context, runID int64, regions []string, at time.Time) ([]history.Copy, int, error)
	CopyAnswered(ctx context.Context, id int64, imageID, requestID string) error
	CopyCallFailed(ctx context.Context, ids []int64, code, message, requestID string, retryAt *time.Time) error
	CopyAvailable(ctx context.Context, id int64, imageID string, at time.Time) error
	CopyFailed(ctx context.Context, id int64, code, message string, at time.Time) error
	CopiesPending(ctx context.Context, limit int) ([]history.Copy, error)
	CopiesRetainable(ctx context.Context, policy, instanceID, region string) ([]history.Copy, error)
	CopyDeletionsOpen(ctx context.Context, policy, instanceID, region string) ([]history.Deletion, error)
	CopyDeletionInsert(ctx context.Context, copyID int64, reason string, at time.Time) (int64, bool, error)
	DeletionFinish(ctx context.Context, id int64, status history.DeletionStatus, requestID, errCode, errMsg string, at time.Time) error
	AttemptInsert(ctx context.Context, a history.Attempt) error
}

var _ History = (*history.Store)(nil)

// Pace spaces the calls of one API action of one account (*pace.Limiter). When it also has
// Throttle() and Observe(time.Duration) (a *pace.Limiter has both), it is told of
// RequestLimitExceeded answers and of each call's round trip.
type Pace interface {
	Wait(ctx context.Context) error
}

type (
	throttler interface{ Throttle() }
	observer  interface{ Observe(time.Duration) }
)

// Options configures a Copier. History, CVM and Config are required.
type Options struct {
	History History
	// CVM returns the client of an account (policy.DefaultAccount without an accounts: block);
	// nil for an account it does not know: that account's copies wait.
	CVM func(account string) CVM
	// Config returns the live policies (reloads swap it); it is read at every pass.
	Config func() *policy.Config
	// SyncPace returns the SyncImages pace of an account; nil means one *pace.Limiter per account
	// at DefaultSyncRate, the copier's own: CreateImage's pace never waits for a copy.
	SyncPace func(account string) Pace
	// DescribePace returns the DescribeImages pace of an account; share the daemon's so every
	// caller stays under the API limit together. Nil means one per account at the account's
	// api.describe_images_rate.
	DescribePace func(account string) Pace
	// DeletePace returns the DeleteImages pace of an account; share retention's. Nil means one
	// per account at DefaultDeleteRate.
	DeletePace func(account string) Pace
	// Clock decides passes, retries, timeouts and the times recorded; nil means the real clock.
	Clock clockwork.Clock
	// Logger is used as given: the caller sets its component field.
	Logger zerolog.Logger
	// PollInterval is the longest time between passes; 0 means DefaultPollInterval.
	PollInterval time.Duration
	// RetentionInterval is the time between retention passes over every copy; 0 means
	// DefaultRetentionInterval.
	RetentionInterval time.Duration
}

// Copier copies images to the regions of their policy's copy_to (see the package comment).
type Copier struct {
	hist      History
	clients   func(account string) CVM
	config    func() *policy.Config
	syncPace  func(account string) Pace
	descPace  func(account string) Pace
	delPace   func(account string) Pace
	clock     clockwork.Clock
	log       zerolog.Logger
	interval  time.Duration
	retention time.Duration
	jitter    *backoff.Jitter

	kick chan struct{}
	life startstop.Life

	// Owned by the pass (one at a time).
	passMu        sync.Mutex
	missing       map[int64]int            // syncing copies not found, in passes in a row
	gates         map[gateKey]time.Time    // last quota gate per (account, region)
	lastRetention time.Time                // last retention pass over every copy
	paces         map[string]*pace.Limiter // the copier's own paces, by action/account

	// afterPass, when set (tests), is called after every pass of the loop.
	afterPass func(passResult, time.Duration)
}

type gateKey struct{ account, region string }

// New returns a Copier that is not running.
func New(opts Options) *Copier {
	c := &Copier{
		hist:      opts.History,
		clients:   opts.CVM,
		config:    opts.Config,
		clock:     opts.Clock,
		log:       opts.Logger, // the caller tags it with component
		interval:  opts.PollInterval,
		retention: opts.RetentionInterval,
		jitter:    backoff.NewJitter(nil),
		kick:      make(chan struct{}, 1),
		missing:   map[int64]int{},
		gates:     map[gateKey]time.Time{},
		paces:     map[string]*pace.Limiter{},
	}
	if c.clock == nil {
		c.clock = clockwork.NewRealClock()
	}
	if c.interval <= 0 {
		c.interval = DefaultPollInterval
	}
	if c.retention <= 0 {
		c.retention = DefaultRetentionInterval
	}
	c.syncPace = opts.SyncPace
	if c.syncPace == nil {
		c.syncPace = func(account string) Pace { return c.ownPace("SyncImages/"+account, DefaultSyncRate) }
	}
	c.descPace = opts.DescribePace
	if c.descPace == nil {
		c.descPace = func(account string) Pace {
			return c.ownPace("DescribeImages/"+account, c.describeRate(account))
		}
	}
	c.delPace = opts.DeletePace
	if c.delPace == nil {
		c.delPace = func(account string) Pace { return c.ownPace("DeleteImages/"+account, DefaultDeleteRate) }
	}
	return c
}

// ownPace returns the copier's own pace of key (one per action and account), made on first use on
// the real clock: the API counts its limits in real seconds. Called from the pass only.
func (c *Copier) ownPace(key string, perSecond int) Pace {
	p := c.paces[key]
	if p == nil {
		p = pace.New(nil, perSecond, pace.Options{})
		c.paces[key] = p
	}
	return p
}

// describeRate is the account's api.describe_images_rate, or the default.
func (c *Copier) describeRate(account string) int {
	if cfg := c.cfg(); cfg != nil {
		for _, a := range cfg.Accounts {
			if a != nil && a.Name == account && a.API.DescribeImagesRate > 0 {
				return a.API.DescribeImagesRate
			}
		}
		if cfg.API.DescribeImagesRate > 0 {
			return cfg.API.DescribeImagesRate
		}
	}
	return policy.DefaultDescribeImagesRate
}

// Start starts the pass loop; the first pass runs at once. Call Stop to end it.
func (c *Copier) Start(ctx context.Context) error {
	if c.hist == nil || c.clients == nil || c.config == nil {
		return errors.New("copier: history, CVM clients and config are required")
	}
	ctx, err := c.life.Start(ctx)
	if err != nil {
		return fmt.Errorf("copier: %w", err)
	}
	c.life.Go(func() { c.loop(ctx) })
	c.log.Info().Int64("poll_interval_ms", c.interval.Milliseconds()).Msg("copier started")
	return nil
}

// Stop ends the pass loop (cancelling a pass in progress: its calls made are still recorded) and
// waits for it. It is idempotent and safe before Start.
func (c *Copier) Stop() {
	if c.life.Stop() {
		c.log.Info().Msg("copier stopped")
	}
}

// Kick asks for a pass now (a run just became available); kicks while one is pending collapse.
func (c *Copier) Kick() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// loop runs passes until ctx ends.
func (c *Copier) loop(ctx context.Context) {
	failures := 0
	for {
		res := c.pass(ctx)
		if ctx.Err() != nil {
			return
		}
		if res.err != nil {
			failures++
			c.log.Warn().Err(res.err).Int("consecutive_failures", failures).Msg("copy pass failed")
		} else {
			failures = 0
		}
		delay := c.delay(res, failures)
		if c.afterPass != nil {
			c.afterPass(res, delay)
		}
		timer := c.clock.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-c.kick:
			timer.Stop()
		case <-timer.Chan():
		}
	}
}

// delay is the wait before the next pass: the poll interval (doubled per failed pass, up to ten
// times it), or less when a refused call is due again sooner.
func (c *Copier) delay(res passResult, failures int) time.Duration {
	d := c.interval
	for i := 0; i < failures && d < 10*c.interval; i++ {
		d *= 2
	}
	if !res.nextRetry.IsZero() {
		d = min(d, max(res.nextRetry.Sub(c.clock.Now()), 0))
	}
	return d
}

// passResult is what one pass did.
type passResult struct {
	calls     int       // SyncImages calls made
	available int       // copies that became available
	failed    int       // copies that failed
	deleted   int       // copies deleted by retention
	nextRetry time.Time // earliest retry_at of a copy left waiting; zero when none
	err       error     // what kept the pass from doing its work (history unreadable, ...)
}

func (r *passResult) retryAt(t time.Time) {
	if r.nextRetry.IsZero() || t.Before(r.nextRetry) {
		r.nextRetry = t
	}
}

// pass does one round of work: resolve and call the requested copies, start the due ones, follow
// the syncing ones, prune.
func (c *Copier) pass(ctx context.Context) passResult {
	c.passMu.Lock()
	defer c.passMu.Unlock()
	var res passResult
	cfg := c.cfg()
	if cfg == nil {
		res.err = errors.New("no policies loaded")
		return res
	}
	pending, err := c.hist.CopiesPending(ctx, 0)
	if err != nil {
		res.err = err
		return res
	}
	touched := map[pairRegion]bool{} // pairs with a copy that became available: prune them
	var requested, syncing []history.Copy
	for _, cp := range pending {
		if cp.Status == history.CopyStatusRequested && cp.ImageID == "" {
			requested = append(requested, cp)
		} else {
			syncing = append(syncing, cp)
		}
	}
	c.resolve(ctx, cfg, requested, &res)
	if ctx.Err() != nil {
		return res
	}
	c.startDue(ctx, cfg, &res)
	if ctx.Err() != nil {
		return res
	}
	// Copies answered above are followed from the next pass: their destination has just begun.
	c.track(ctx, cfg, syncing, touched, &res)
	if ctx.Err() != nil {
		return res
	}
	now := c.clock.Now()
	if c.lastRetention.IsZero() || !now.Before(c.lastRetention.Add(c.retention)) {
		c.lastRetention = now
		c.pruneAll(ctx, cfg, &res)
	} else {
		for _, k := range sortedPairs(touched) {
			c.prunePair(ctx, cfg, k, &res)
		}
	}
	return res
}

// cfg returns the live config, or nil.
func (c *Copier) cfg() *policy.Config {
	if c.config == nil {
		return nil
	}
	return c.config()
}

// wants lists, per policy with copy_to, the regions its images go to.
func wants(cfg *policy.Config) []history.CopyWant {
	var out []history.CopyWant
	for _, p := range cfg.Policies {
		if len(p.CopyTo) == 0 {
			continue
		}
		w := history.CopyWant{Policy: p.Name}
		for _, t := range p.CopyTo {
			if t.Region != p.Region && !slices.Contains(w.Regions, t.Region) {
				w.Regions = append(w.Regions, t.Region)
			}
		}
		out = append(out, w)
	}
	return out
}

// imageTimeout is how long a copy may take from its first request: its policy's image.timeout,
// or the default.
func imageTimeout(cfg *policy.Config, policyName string) time.Duration {
	if p := cfg.Policy(policyName); p != nil && p.Image.Timeout > 0 {
		return p.Image.Timeout
	}
	return policy.DefaultImageTimeout
}

// accountOf is the account a policy's calls are made with.
func accountOf(p *policy.Policy) string {
	if p.Account == "" {
		return policy.DefaultAccount
	}
	return p.Account
}

// writeContext bounds one history write; it does not end with the pass.
func writeContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), historyTimeout)
}

// throttle slows pace after a RequestLimitExceeded; observe feeds it a round trip.
func throttle(p Pace, ae *cvm.APIError) {
	if t, ok := p.(throttler); ok && ae != nil && ae.Class == cvm.ClassThrottled {
		t.Throttle()
	}
}

func observe(p Pace, rtt time.Duration) {
	if o, ok := p.(observer); ok {
		o.Observe(rtt)
	}
}
