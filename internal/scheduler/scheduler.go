// Package scheduler turns policies into CreateImage calls: it fires each policy on its schedule,
// makes one run per (policy, instance, slot), and sends the runs' calls through one worker pool
// and one pace shared by every policy, with retries by error class, recording every slot and
// every call in history.
//
// A Scheduler may serve one account of the policy file (Options.Account, docs/policies.md
// "Accounts"): it then fires only that account's policies, with that account's api: settings
// (CreateImage rate, workers, retries, DescribeImages rate) and its own worker pool and paces, so
// a daemon runs one Scheduler per account, each with a CVM client signed by that account, and
// the accounts never wait on each other.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/hooks"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/startstop"
)

// DefaultShutdownGrace is how long Stop lets in-flight calls finish.
const DefaultShutdownGrace = 30 * time.Second

// historyTimeout bounds one history write, in real time: it guards against a hung database, it
// decides no behaviour a test would control with the clock.
const historyTimeout = 10 * time.Second

// claimConcurrency is how many claims write at once (Scheduler.claimTurn).
const claimConcurrency = 2

// maxSkippedSlots bounds the walk over slots that passed while the daemon could not fire.
const maxSkippedSlots = 100000

// maxMissedSlots is how many passed slots of one policy get missed rows at one walk; beyond it one
// summary line is logged (docs/design.md "Missed slots and outages").
const maxMissedSlots = 100

// Options configures a Scheduler. Config, CVM and History are required.
type Options struct {
	// Account, when set, is the account (policy.Account.Name) this scheduler serves: it fires
	// only the policies whose account it is, takes its rates, workers and retries from that
	// account's api: block (Config.Account(Account).API) instead of the top-level one, and at
	// start takes over only the unfinished runs made with that account. CVM must then be signed
	// with that account's credentials. Empty serves every policy with the top-level api: block
	// (tests and tools with one client). Every claim records its policy's account either way.
	Account string
	// Config is the policy config to start with. Live, when set, is the one config pointer the
	// daemon shares with the scheduler (New stores Config in it); nil makes one.
	Config  *policy.Config
	Live    *policy.Live
	CVM     CVM
	History History
	// Clock decides every wait, fire and backoff; nil means the real clock.
	Clock  clockwork.Clock
	Logger zerolog.Logger
	// DaemonID is recorded on every run this daemon claims; empty means hostname-pid.
	DaemonID string
	// APIDryRun sends every CreateImage with DryRun set: the API checks it and creates nothing.
	APIDryRun bool
	// Rand draws backoff jitter; nil means a randomly seeded source. It is used under a lock.
	Rand *rand.Rand
	// OnQuotaExceeded is called when CreateImage answers ImageQuotaLimitExceeded; returning true
	// (after freeing room, e.g. by retention) retries the run once. Nil means the run fails.
	OnQuotaExceeded func(ctx context.Context, p *policy.Policy) (retry bool)
	// ResolveTargets returns, at every fire of every policy (scheduled and RunOnce), the full list
	// of the policy's target instances now: its listed instances and its `select:` matches. An
	// instance in skipped (a listed instance that no longer exists) gets a run in status skipped
	// with error_code InvalidInstanceId.NotFound, the reason as error_message, and is not sent. On an error only p.Instances are
	// targeted. Nil means only p.Instances are targeted (a select is logged as unresolved).
	ResolveTargets func(ctx context.Context, p *policy.Policy) (targets []string, skipped map[string]string, err error)
	// BeforeFire is called at every fire (scheduled and RunOnce) of an enabled policy with the
	// instances about to be claimed and sent, before any is claimed. Each instance in refused is
	// claimed as failed with error code ImageQuotaLimitExceeded and the reason as error_message,
	// and is not sent; one error line is logged per fire that refuses anything. On an error
	// nothing is refused (a warning is logged). Nil refuses nothing. It is the image quota check
	// (lifecycle.QuotaGate.Check).
	BeforeFire func(ctx context.Context, p *policy.Policy, instances []string) (refused map[string]string, err error)
	// ResolveDataDisks returns the data disk ids of an instance for `image.data_disks: all`.
	// Nil means such runs fail with code DataDisksUnresolved.
	ResolveDataDisks func(ctx context.Context, p *policy.Policy, instanceID string) ([]string, error)
	// ShutdownGrace is how long Stop lets in-flight calls finish before cancelling them; 0 means
	// DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// Pace tunes the CreateImage and DescribeImages paces; zero means the defaults.
	Pace pace.Options
	// DescribePace, when set, is the DescribeImages pace to use, so that components built
	// before the scheduler (the quota gate, the completion tracker, retention) can share it; its
	// rate is set to api.describe_images_rate now and at every Reload. Nil makes one.
	DescribePace *pace.Limiter
	// DisableCron runs the pool without firing any schedule: `imager once` fires only what it
	// is asked to, while a daemon on the same database keeps the schedules.
	DisableCron bool
	// BeforeFireBatch is called once per cron batch (the policies due at one instant, and the
	// slots caught up at start) with every due policy, before their targets are resolved, so
	// their listed instances can be checked together. Nil does nothing.
	BeforeFireBatch func(ctx context.Context, policies []*policy.Policy)
	// OnFenced is called once when a history write answers history.ErrFenced: this process's
	// leadership term is no longer current. The scheduler has already stopped sending (no new
	// CreateImage) when it is called; it runs on a scheduler goroutine, so it must not block
	// nor call Stop itself (signal the leadership loop instead). Nil only logs.
	OnFenced func()
	// OnOutcome is called once per run outcome this scheduler decides (requested, failed,
	// skipped, missed, or left pending), for metrics; it must not block. Nil means none.
	OnOutcome func(o Outcome)
	// OnPaceWait is told how long each CreateImage waited on the pace (metrics). Nil means none.
	OnPaceWait func(d time.Duration)
	// TAT runs the policies' hooks (docs/policies.md "Hooks"), signed like CVM by this
	// scheduler's account. Nil: the runs of a policy with hooks fail with PreHookFailed (or are
	// imaged without them under on_pre_failure: continue).
	TAT hooks.TAT
	// TATPace spaces this account's TAT calls (shared with whatever else calls TAT for the
	// account); nil makes one of hooks.DefaultRate.
	TATPace *pace.Limiter
	// HookPollInterval is how often the hooks' tasks are polled; 0 is hooks.DefaultPollInterval.
	HookPollInterval time.Duration
	// OnHookFrozen is told, per instance, how long it stayed between the end of its pre hook and
	// the start of its post hook (metrics); it must not block. Nil means none.
	OnHookFrozen func(policy string, frozen time.Duration)
	// MissedReason returns the error_message of the missed rows recorded at start for slots that
	// passed before this scheduler ran (e.g. "slot passed while no imager leader was running").
	// Nil means that message.
	MissedReason func(p *policy.Policy, slot time.Time) string
}

// Scheduler fires policies and runs their CreateImage calls. Create it with New, run it with
// Start, and end it with Stop.
type Scheduler struct {
	opts         Options
	cvm          CVM
	hist         History
	clock        clockwork.Clock
	log          zerolog.Logger
	daemonID     string
	workers      int
	cfg          *policy.Live
	apiMu        sync.Mutex
	lastAPI      policy.API    // the api: settings of the last config that had the account
	pace         *pace.Limiter // CreateImage
	describePace *pace.Limiter // DescribeImages

	hooks *hooks.Runner // nil without Options.TAT
	posts postQueue     // post hooks to send (hooks.go)

	jitter *backoff.Jitter
	budget *backoff.Budget // transient CreateImage failures, across every run (retryOrFail)

	fencedOnce sync.Once
	fenced     atomic.Bool
	dbDownAt   atomic.Int64 // unix nanoseconds of the first failed claim write of an outage; 0: reachable

	mu        sync.Mutex
	queue     jobQueue
	started   bool
	stopping  bool // no new work is dispatched; queued and returned jobs become leftovers
	stopped   bool // leftovers recorded
	leftovers []*job

	wake   chan struct{} // one slot: the queue changed
	reload chan struct{} // one slot: the config changed
	idle   chan struct{} // one token per idle worker
	work   chan *job     // dispatcher → workers

	baseCtx    context.Context // Start's context without its cancellation: history writes
	stopCtx    context.Context // cancelled when stopping (run.Cancel): no new fires, dispatches or calls
	callCtx    context.Context // cancelled at the end of the shutdown grace: in-flight calls
	callCancel context.CancelFunc

	life sync.Mutex     // serialises Start and the beginning of Stop
	run  startstop.Life // the workers, the dispatcher, the cron loop and the claims they start
	// claimTurn lets claimConcurrency claims write at once: claims are CPU work of PostgreSQL, and
	// fires side by side past that only slow the first one (docs/design.md "Fire latency").
	claimTurn chan struct{}
	stopOnce  sync.Once
}

// New checks opts and returns a Scheduler that is not yet running.
func New(opts Options) (*Scheduler, error) {
	if opts.Config == nil {
		return nil, errors.New("scheduler: no policy config")
	}
	if opts.CVM == nil || opts.History == nil {
		return nil, errors.New("scheduler: CVM client and history store are required")
	}
	if err := CheckConfig(opts.Config); err != nil {
		return nil, err
	}
	api, ok := accountAPI(opts.Config, opts.Account)
	if !ok {
		return nil, fmt.Errorf("scheduler: account %q is not in the policy config (accounts: %s)", opts.Account, accountNames(opts.Config))
	}
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.DaemonID == "" {
		host, err := os.Hostname()
		if err != nil {
			host = "imager"
		}
		opts.DaemonID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if opts.Rand == nil {
		opts.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = DefaultShutdownGrace
	}
	s := &Scheduler{
		opts:         opts,
		cvm:          opts.CVM,
		hist:         opts.History,
		claimTurn:    make(chan struct{}, claimConcurrency),
		clock:        opts.Clock,
		log:          opts.Logger, // the caller tags it with component
		daemonID:     opts.DaemonID,
		workers:      api.Workers,
		pace:         pace.New(opts.Clock, api.CreateImageRate, opts.Pace),
		describePace: opts.DescribePace,
		lastAPI:      api,
		jitter:       backoff.NewJitter(opts.Rand),
		budget:       backoff.NewBudget(opts.Clock, backoff.BudgetOptions{}),
		baseCtx:      context.Background(),
		wake:         make(chan struct{}, 1),
		reload:       make(chan struct{}, 1),
		idle:         make(chan struct{}, api.Workers),
		work:         make(chan *job, api.Workers),
		posts:        postQueue{wake: make(chan struct{}, 1)},
	}
	if opts.TAT != nil {
		s.hooks = hooks.New(hooks.Options{TAT: opts.TAT, Pace: opts.TATPace, Clock: opts.Clock,
			PollInterval: opts.HookPollInterval, Logger: opts.Logger})
	}
	// A Start whose recovery failed may be tried again; started and stopping keep it to one run.
	s.run.Restartable = true
	if s.describePace == nil {
		dp := opts.Pace
		dp.OnGrant = nil // OnGrant audits the CreateImage pace only
		s.describePace = pace.New(opts.Clock, describeRate(api), dp)
	} else {
		s.describePace.SetRate(describeRate(api))
	}
	s.cfg = opts.Live
	if s.cfg == nil {
		s.cfg = &policy.Live{}
	}
	s.cfg.Store(opts.Config)
	return s, nil
}

func checkAPI(api policy.API) error {
	if api.CreateImageRate < 1 {
		return fmt.Errorf("scheduler: create_image_rate must be at least 1, not %d", api.CreateImageRate)
	}
	if api.Workers < 1 {
		return fmt.Errorf("scheduler: workers must be at least 1, not %d", api.Workers)
	}
	return nil
}

func describeRate(api policy.API) int {
	if api.DescribeImagesRate < 1 {
		return 20
	}
	return api.DescribeImagesRate
}

// Start takes over the runs a previous daemon left pending, then starts the workers, the
// dispatcher and the cron loop. Cancelling ctx stops firing and dispatching as Stop does, but only
// Stop records what did not finish and waits for the goroutines: call Stop in every case.
func (s *Scheduler) Start(ctx context.Context) error {
	s.life.Lock()
	defer s.life.Unlock()
	s.mu.Lock()
	if s.started || s.stopping {
		s.mu.Unlock()
		return errors.New("scheduler: already started or stopped")
	}
	s.started = true
	s.mu.Unlock()

	s.baseCtx = context.WithoutCancel(ctx)
	runCtx, err := s.run.Start(ctx)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	s.stopCtx = runCtx
	s.callCtx, s.callCancel = context.WithCancel(s.baseCtx)

	hooked, err := s.recoverRuns(ctx)
	if err != nil {
		s.run.Stop()
		s.callCancel()
		s.mu.Lock()
		s.started = false
		s.mu.Unlock()
		return err
	}

	// The posts a previous daemon left first: only then do recovered runs get new pre hooks (a
	// fresh pre row must not be taken for one left without its post).
	s.repairPosts(ctx)
	for _, jobs := range hooked {
		s.sendFire(jobs, false)
	}

	for range s.workers {
		s.idle <- struct{}{}
		s.run.Go(s.worker)
	}
	s.run.Go(s.dispatch)
	s.run.Go(s.postLoop)
	if !s.opts.DisableCron {
		s.run.Go(s.cronLoop)
	}
	s.log.Info().Int("workers", s.workers).Int("create_image_rate", s.api().CreateImageRate).
		Int("policies", len(s.policies(s.cfg.Load()))).Str("daemon_id", s.daemonID).Msg("scheduler started")
	return nil
}

// recoverRuns queues every run left pending by a previous daemon (crashed or cut off between
// the call and the database write), after taking them over under this daemon's term (a fenced
// write: a replica that is no longer leader touches nothing). Each first looks its image up by
// exact name and adopts it when found; otherwise it is sent again under its recorded name, so a
// slot never gets a second image. The runs of policies with hooks are returned, by policy, for
// Start to send through their pre hooks (sendFire) once the missing posts are repaired: a slot a
// stopped leader left before its wave's pre hook (e.g. on SIGTERM) is then imaged frozen, and a
// run whose pre hook an earlier daemon ran is sent without a second one (runPreWave).
func (s *Scheduler) recoverRuns(ctx context.Context) (map[*policy.Policy][]*job, error) {
	runs, err := s.hist.RunsUnfinished(ctx)
	if err != nil {
		return nil, fmt.Errorf("recover unfinished runs: %w", err)
	}
	if s.opts.Account != "" {
		// Another account's runs are that account's scheduler's: only its credentials find
		// their images. (Read once at start, so filtered here rather than in SQL.)
		runs = slices.DeleteFunc(runs, func(r history.Run) bool { return r.Account != s.opts.Account })
	}
	var ids []int64
	for _, r := range runs {
		if r.Status == history.StatusPending { // requested runs are followed to completion elsewhere
			ids = append(ids, r.ID)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	if _, err := s.hist.RunsTakeOver(ctx, ids, s.daemonID); err != nil {
		if errors.Is(err, history.ErrFenced) {
			s.onFenced(err)
		}
		return nil, fmt.Errorf("take over unfinished runs: %w", err)
	}
	now := s.clock.Now()
	n := 0
	hooked := map[*policy.Policy][]*job{}
	for _, r := range runs {
		if r.Status != history.StatusPending {
			continue
		}
		p := s.policyByName(r.Policy)
		j := &job{
			policy:      p,
			region:      r.Region,
			instance:    r.InstanceID,
			slot:        r.ScheduledAt,
			run:         r,
			claimed:     true,
			name:        r.ImageName,
			attemptBase: r.Attempts,
			ambiguous:   true, // the previous daemon may have sent it
			recovered:   true,
			lookupFirst: true,
			deadline:    later(r.ScheduledAt.Add(startWindow(p)), now.Add(startWindow(p))),
		}
		n++
		if p != nil && p.Hooks != nil {
			hooked[p] = append(hooked[p], j)
			continue
		}
		s.enqueue(j, now)
	}
	s.log.Info().Int("runs", n).Msg("recovering runs left pending")
	return hooked, nil
}

// startWindow is p's start window; the default one for a policy no longer loaded.
func startWindow(p *policy.Policy) time.Duration {
	if p == nil || p.StartWindow <= 0 {
		return policy.DefaultStartWindow
	}
	return p.StartWindow
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Stop stops firing and dispatching, lets in-flight calls finish within the shutdown grace
// (then cancels them), records what did not finish, and waits for every goroutine. Claimed runs
// never sent are recorded as missed; runs waiting to retry fail with code Shutdown; a call cut off
// by the grace deadline, or made ambiguous by a network error, leaves its run pending for the next
// start to reconcile by name. A slot whose rows could not be written at all did not move its
// policy's last handled slot, so the next start's walk records it. A fenced scheduler writes
// nothing: the new leader reconciles. Stop is idempotent and safe to call before Start.
func (s *Scheduler) Stop() {
	s.stopOnce.Do(func() {
		s.life.Lock() // a Start in progress finishes first
		s.mu.Lock()
		s.stopping = true
		started := s.started
		s.mu.Unlock()
		s.life.Unlock()
		if !started {
			return
		}
		s.run.Cancel()
		done := s.run.Done()
		grace := s.clock.NewTimer(s.opts.ShutdownGrace)
		select {
		case <-done:
		case <-grace.Chan():
			s.log.Warn().Int64("grace_ms", s.opts.ShutdownGrace.Milliseconds()).Msg("shutdown grace over; cancelling calls in flight")
			s.callCancel()
			<-done
		}
		grace.Stop()
		s.run.Stop() // every goroutine has returned: this only marks the scheduler stopped
		s.callCancel()
		s.recordLeftovers()
		s.flushPosts()
		s.log.Info().Msg("scheduler stopped")
	})
}

// recordLeftovers records every job that did not finish. Every goroutine has returned.
func (s *Scheduler) recordLeftovers() {
	s.mu.Lock()
	left := append(s.leftovers, s.queue.drain()...)
	s.leftovers = nil
	s.stopped = true
	s.mu.Unlock()
	for len(s.work) > 0 {
		left = append(left, <-s.work)
	}
	if s.fenced.Load() {
		if len(left) > 0 {
			s.log.Warn().Int("runs", len(left)).Msg("fenced: leaving unfinished runs to the new leader")
		}
		for _, j := range left {
			if !isDone(j) {
				s.finish(j, s.outcome(j, history.StatusPending, codeFenced, "leadership lost; the new leader reconciles the run by name"))
			}
		}
		return
	}
	var pending int
	for _, j := range left {
		if !j.claimed {
			s.jobLog(j).Error().Msg("slot was never claimed; the next walk of missed slots records it")
			continue
		}
		// A claimed run not yet accepted stays pending: the next leader (a standby at once, or
		// this process when it starts again) looks its image up by name and sends it if absent,
		// under the same name, so the slot is neither lost nor imaged twice.
		pending++
		msg := "left pending at shutdown; the next leader reconciles it by name"
		if j.lastErr != nil {
			msg = fmt.Sprintf("%s (last error %s: %s)", msg, j.lastErr.Code, j.lastErr.Message)
		}
		s.finish(j, s.outcome(j, history.StatusPending, "", msg))
	}
	if pending > 0 {
		s.log.Warn().Int("runs", pending).Msg("runs left pending at shutdown; the next leader sends or adopts them")
	}
}

// CheckConfig refuses a config the scheduler cannot run (none, or API settings out of range in
// the top-level api: block or in an account's): what a reload checks before it swaps anything in.
func CheckConfig(cfg *policy.Config) error {
	if cfg == nil {
		return errors.New("scheduler: no policy config")
	}
	if err := checkAPI(cfg.API); err != nil {
		return err
	}
	for _, a := range cfg.Accounts {
		if err := checkAPI(a.API); err != nil {
			return fmt.Errorf("account %s: %w", a.Name, err)
		}
	}
	return nil
}

// accountAPI returns the api: settings a scheduler of account uses under cfg: the account's
// (Config.Account; for "", serving every policy, the only account's), else for "" the top-level
// block. ok is false when cfg has no such account.
func accountAPI(cfg *policy.Config, account string) (api policy.API, ok bool) {
	if a := cfg.Account(account); a != nil {
		return a.API, true
	}
	if account == "" {
		return cfg.API, true
	}
	return policy.API{}, false
}

// accountNames lists cfg's account names for messages.
func accountNames(cfg *policy.Config) string {
	if len(cfg.Accounts) == 0 {
		return policy.DefaultAccount
	}
	names := make([]string, len(cfg.Accounts))
	for i, a := range cfg.Accounts {
		names[i] = a.Name
	}
	return strings.Join(names, ", ")
}

// policyAccount is the account p's calls are made with: p.Account, or the default account for a
// hand-built policy that names none (policy.Config.Account answers "" the same way).
func policyAccount(p *policy.Policy) string {
	if p.Account == "" {
		return policy.DefaultAccount
	}
	return p.Account
}

// owns reports whether this scheduler fires p: every policy without Options.Account, else the
// policies of that account.
func (s *Scheduler) owns(p *policy.Policy) bool {
	return s.opts.Account == "" || policyAccount(p) == s.opts.Account
}

// policies returns cfg's policies this scheduler fires, in file order.
func (s *Scheduler) policies(cfg *policy.Config) []*policy.Policy {
	if s.opts.Account == "" {
		return cfg.Policies
	}
	out := make([]*policy.Policy, 0, len(cfg.Policies))
	for _, p := range cfg.Policies {
		if s.owns(p) {
			out = append(out, p)
		}
	}
	return out
}

// api returns the api: settings in effect: those of the current config for this scheduler's
// account, or, when a reload removed the account, the last ones it had (it then owns no policy
// and only finishes the runs it holds).
func (s *Scheduler) api() policy.API {
	if api, ok := accountAPI(s.cfg.Load(), s.opts.Account); ok {
		return api
	}
	s.apiMu.Lock()
	defer s.apiMu.Unlock()
	return s.lastAPI
}

// Account is the account this scheduler serves (Options.Account); empty for every account.
func (s *Scheduler) Account() string { return s.opts.Account }

// Reload swaps in a new policy config (in the Live it shares, if any): schedules are recomputed,
// the paces take the new rates (the account's, with Options.Account). The number of workers is
// fixed at Start; a change takes effect at the next start. A config CheckConfig refuses is
// refused and the running one stays; a daemon checks first and then swaps its Live, so this
// cannot fail for it. A config without this scheduler's account leaves it no policy to fire; it
// keeps its rates and finishes the runs it holds.
func (s *Scheduler) Reload(cfg *policy.Config) error {
	if err := CheckConfig(cfg); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	s.cfg.Store(cfg)
	api, ok := accountAPI(cfg, s.opts.Account)
	if ok {
		s.apiMu.Lock()
		s.lastAPI = api
		s.apiMu.Unlock()
		s.pace.SetRate(api.CreateImageRate)
		s.describePace.SetRate(describeRate(api))
	} else {
		s.log.Warn().Msg("this scheduler's account is no longer configured: none of its policies is fired")
		api = s.api()
	}
	if api.Workers != s.workers {
		s.log.Warn().Int("workers", s.workers).Int("configured_workers", api.Workers).
			Msg("the number of workers changes at the next start")
	}
	s.log.Info().Int("policies", len(s.policies(cfg))).Int("create_image_rate", api.CreateImageRate).
		Msg("policies reloaded")
	s.signal(s.reload)
	return nil
}

// policyByName returns the loaded policy with that name, or nil.
func (s *Scheduler) policyByName(name string) *policy.Policy {
	for _, p := range s.cfg.Load().Policies {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// jobLog is the logger for one run.
func (s *Scheduler) jobLog(j *job) *zerolog.Logger {
	name := j.run.Policy
	if j.policy != nil {
		name = j.policy.Name
	}
	l := s.log.With().Str("policy", name).Str("instance", j.instance).Time("slot", j.slot.UTC()).
		Str("image_name", j.name).Logger()
	return &l
}

// DescribePace is the pace of DescribeImages calls (api.describe_images_rate of the scheduler's
// account). Everything that calls DescribeImages for this account (crash recovery here,
// completion tracking, retention and the quota gate elsewhere) waits on this one limiter, so
// together they stay under the API's limit; another account's components wait on their own.
func (s *Scheduler) DescribePace() *pace.Limiter { return s.describePace }

// Config returns the policy config in effect now (the last one given to New or Reload), for
// components that follow the same policies (completion tracking reads image.timeout).
func (s *Scheduler) Config() *policy.Config { return s.cfg.Load() }

// QueueDepth is the number of runs queued: waiting for a worker, the pace or a retry.
func (s *Scheduler) QueueDepth() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queue.len()
}
