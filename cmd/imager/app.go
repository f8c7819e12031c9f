package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	tccommon "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/copies"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/leader"
	"github.com/imager-dev/imager/internal/lifecycle"
	"github.com/imager-dev/imager/internal/metrics"
	"github.com/imager-dev/imager/internal/notify"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/scheduler"
	"github.com/imager-dev/imager/internal/web"
)

// retentionSweepEvery is how often the leader runs a retention pass over every policy, so that
// max_age also ages out images of instances that no longer get new images (left a selector).
const retentionSweepEvery = 6 * time.Hour

// fireRequestPollEvery is how often the leader looks for fire requests of imager once besides
// their NOTIFY (a notification lost with a connection is picked up here).
const fireRequestPollEvery = 2 * time.Second

// daemon is the wiring shared by run, once and demo. Every process opens history, the metrics
// server, the CVM client and the leader elector; only while it holds the leader lease does it
// run the leader's work (leaderWork: spool, scheduler, tracker, copier, retention, fire requests), all
// of it writing under its term. cmd/imager tests drive the same wiring end to end.
type daemon struct {
	log      zerolog.Logger
	clock    clockwork.Clock
	dc       daemonConfig
	store    *history.Store
	elector  *leader.Elector
	metrics  *metrics.Server // nil without --listen
	daemonID string
	cfg      policy.Live // the one config pointer: the scheduler, retention and the status page read it
	// accounts holds each account's client and paces, by account name, across terms.
	accounts map[string]*accountClient
	// notifier delivers webhooks and pings from the outbox; it runs only on the leader.
	notifier *notify.Notifier
	// met is nil without --listen.
	met *metrics.Metrics
	// loadedAt is when the running policies were loaded (the status page).
	loadedAt atomic.Pointer[time.Time]

	// elected is closed when this process first starts leading (imager once waits on it).
	elected     chan struct{}
	electedOnce sync.Once

	mu       sync.Mutex // guards work
	work     *leaderWork
	recorder atomic.Pointer[history.Recorder] // the leader's, for the spool gauge
	lastErr  atomic.Value                     // string: why the leader's work could not start
}

// leaderWork is what the leader runs under one term.
type leaderWork struct {
	term     int64
	recorder *history.Recorder
	units    []*accountWork // one per account, in the file's order
	copier   *copies.Copier
	notifier *notify.Notifier
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// daemonConfig is everything a daemon needs beyond its policies.
type daemonConfig struct {
	opts         options
	cfg          *policy.Config
	credential   tccommon.CredentialIface // nil: the SDK's default chain
	clock        clockwork.Clock
	noCron       bool          // once: fire only what is asked, never the schedules
	pollInterval time.Duration // completion tracking; 0 = lifecycle.DefaultPollInterval
}

// openDaemon opens every dependency in the order that gives the clearest error first: database,
// migrations, credentials, then the elector. Nothing is started.
func openDaemon(ctx context.Context, dc daemonConfig, log zerolog.Logger) (*daemon, error) {
	if err := dc.opts.checkWebConfig(); err != nil {
		return nil, err
	}
	store, err := history.Open(ctx, dc.opts.databaseURL, log.With().Str("component", "history").Logger())
	if err != nil {
		return nil, err
	}
	hostname, _ := os.Hostname()
	d := &daemon{log: log, store: store, clock: dc.clock, dc: dc, elected: make(chan struct{}),
		daemonID: fmt.Sprintf("%s/%d/%d", hostname, os.Getpid(), time.Now().UnixNano())}
	if d.clock == nil {
		d.clock = clockwork.NewRealClock()
	}
	d.cfg.Store(dc.cfg)
	applied, err := store.Migrate(ctx)
	if err != nil {
		d.close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if len(applied) > 0 {
		log.Info().Strs("applied", applied).Msg("database migrated")
	}
	d.elector, err = leader.New(leader.Options{
		Store:     store,
		Holder:    history.LeaseHolder{DaemonID: d.daemonID, Host: hostname, PID: os.Getpid()},
		Version:   version,
		Once:      dc.noCron,
		TTL:       dc.opts.leaseTTL,
		Clock:     d.clock,
		Logger:    log.With().Str("component", "leader").Logger(),
		OnElected: d.startWork,
		OnDemoted: d.stopWork,
	})
	if err != nil {
		d.close()
		return nil, err
	}
	now := d.clock.Now()
	d.loadedAt.Store(&now)
	if d.notifier, err = notify.New(dc.cfg, notify.Options{Store: store, LookupEnv: os.LookupEnv,
		Log: log.With().Str("component", "notify").Logger(), UserAgent: "imager/" + version}); err != nil {
		d.close()
		return nil, fmt.Errorf("notify: %w", err)
	}
	var onCall func(action, code string, elapsed time.Duration)
	if dc.opts.listen != "" {
		mo := metrics.HistoryOptions(store)
		mo.QueueDepth = func() int {
			if w := d.leading(); w != nil {
				return w.queueDepth()
			}
			return 0
		}
		mo.Version, mo.Commit = version, commit
		mo.Page = web.Handler(web.Options{
			Leader: func() bool { return d.elector.Term() != 0 },
			Ping:   func(ctx context.Context) error { return store.Pool().Ping(ctx) },
			Policies: func() (*policy.Config, time.Time) {
				at := d.loadedAt.Load()
				return d.cfg.Load(), *at
			},
			History: store,
			Clock:   d.clock,
			Logger:  log.With().Str("component", "web").Logger(),
		})
		mo.SpoolPending = func() int {
			if r := d.recorder.Load(); r != nil {
				return r.Pending()
			}
			return 0
		}
		mo.Health = func(ctx context.Context) error { return store.Pool().Ping(ctx) }
		mo.Ready = d.ready
		mo.DaemonID = d.daemonID
		mo.Leading = func() bool { return d.elector.Term() != 0 }
		mo.Logger = log.With().Str("component", "metrics").Logger()
		m := metrics.New(mo)
		if d.metrics, err = metrics.ListenWeb(dc.opts.listen, dc.opts.webConfig, m, log.With().Str("component", "metrics").Logger()); err != nil {
			d.close()
			return nil, fmt.Errorf("--listen: %w", err)
		}
		onCall = m.ObserveCall
		d.met = m
		m.SetConfigReload(true, now)
	}
	if err := d.openAccounts(onCall); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

// ready is /readyz: the database answers, the policies are loaded, and this process is either
// the leader with its work running or a standby that checks the lease.
func (d *daemon) ready(ctx context.Context) error {
	if err := d.store.Pool().Ping(ctx); err != nil {
		return fmt.Errorf("database unreachable: %w", err)
	}
	if d.cfg.Load() == nil {
		return errors.New("no policies loaded")
	}
	if err := d.elector.Healthy(); err != nil {
		return err
	}
	if d.elector.Term() != 0 {
		d.mu.Lock()
		running := d.work != nil
		d.mu.Unlock()
		if !running {
			msg, _ := d.lastErr.Load().(string)
			return fmt.Errorf("leader but its work is not running: %s", msg)
		}
	}
	return nil
}

// start serves the metrics and joins the election; when this process wins (now or later) the
// leader's work starts under its term.
func (d *daemon) start(ctx context.Context) error {
	if d.metrics != nil {
		d.metrics.Start()
		wc := d.metrics.WebConfig()
		d.log.Info().Str("listen", d.metrics.Addr()).Bool("tls", wc.TLS).Bool("basic_auth", wc.BasicAuth).
			Msg("serving /metrics, /healthz and /readyz")
	}
	return d.elector.Start(ctx)
}

// leading returns the leader's work, or nil when this process does not lead.
func (d *daemon) leading() *leaderWork {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.work
}

// startWork builds and starts the leader's work under term (the elector's OnElected). A failure
// gives the lease up: another replica may do better.
func (d *daemon) startWork(ctx context.Context, term int64) {
	w, err := d.buildWork(term)
	if err == nil {
		err = d.runWork(ctx, w)
	}
	if err != nil {
		d.lastErr.Store(err.Error())
		d.log.Error().Err(err).Int64("term", term).Msg("cannot start the leader's work; stepping down")
		d.elector.Demote()
		return
	}
	d.mu.Lock()
	d.work = w
	d.mu.Unlock()
	d.log.Info().Int64("term", term).Msg("leading: firing schedules, tracking images, pruning")
	d.electedOnce.Do(func() { close(d.elected) })
}

// stopWork stops the leader's work (the elector's OnDemoted, and shutdown): no new fires, calls
// in flight finish within the shutdown grace, what is left is recorded (writes of a term that is
// over are refused by the database).
func (d *daemon) stopWork() {
	d.mu.Lock()
	w := d.work
	d.work = nil
	d.mu.Unlock()
	if w == nil {
		return
	}
	d.log.Info().Int64("term", w.term).Msg("stopping the leader's work")
	w.stop(d.log)
	d.recorder.CompareAndSwap(w.recorder, nil)
}

// fencedTracker is the completion tracker's history: the recorder, and a demotion as soon as a
// write is refused as fenced (another replica holds the lease). The scheduler tells the same
// through its OnFenced hook.
type fencedTracker struct {
	lifecycle.TrackerHistory
	onFenced func()
}

func (t fencedTracker) check(err error) error {
	if errors.Is(err, history.ErrFenced) {
		t.onFenced()
	}
	return err
}

func (t fencedTracker) RunAvailable(ctx context.Context, id int64, size *int64, imageID string, at time.Time) error {
	return t.check(t.TrackerHistory.RunAvailable(ctx, id, size, imageID, at))
}
func (t fencedTracker) RunSetImageID(ctx context.Context, id int64, imageID string) error {
	return t.check(t.TrackerHistory.RunSetImageID(ctx, id, imageID))
}
func (t fencedTracker) RunFinish(ctx context.Context, p history.RunFinishParams) error {
	return t.check(t.TrackerHistory.RunFinish(ctx, p))
}

var _ lifecycle.TrackerHistory = fencedTracker{}

// buildWork opens the spool and builds the leader's components, every write fenced by term:
// the copier, and each account's scheduler, tracker and pruner.
func (d *daemon) buildWork(term int64) (*leaderWork, error) {
	log := d.log.With().Int64("term", term).Logger()
	store := d.store.WithTerm(term)
	rec, err := history.NewRecorder(store, d.dc.opts.spoolDir, log.With().Str("component", "spool").Logger())
	if err != nil {
		return nil, fmt.Errorf("--spool-dir: %w", err)
	}
	w := &leaderWork{term: term, recorder: rec, notifier: d.notifier}
	w.copier = d.newCopier(store, log)
	for _, a := range configAccounts(d.cfg.Load()) {
		u, err := d.buildAccount(w, a, store, log)
		if err != nil {
			_ = rec.Close()
			return nil, err
		}
		w.units = append(w.units, u)
	}
	return w, nil
}

// runWork starts the spool replayer, the scheduler, completion tracking, the periodic retention
// sweep, the history prune and the service of fire requests of imager once. ctx ends when leadership does.
func (d *daemon) runWork(ctx context.Context, w *leaderWork) error {
	fail := func(err error) error {
		w.stop(d.log)
		d.recorder.CompareAndSwap(w.recorder, nil)
		return err
	}
	if err := w.recorder.Start(ctx); err != nil {
		return fail(err)
	}
	d.recorder.Store(w.recorder)
	for _, u := range w.units {
		if err := u.sched.Start(ctx); err != nil {
			return fail(err)
		}
		if err := u.tracker.Start(ctx); err != nil {
			return fail(err)
		}
	}
	if err := w.copier.Start(ctx); err != nil {
		return fail(err)
	}
	// The policies table first: the coverage views join it, and the notifier's first pass
	// evaluates rpo_breaches at once.
	d.syncPolicies(ctx, w.units[0].sched.Config())
	if err := d.notifier.Start(ctx); err != nil {
		return fail(err)
	}
	// The restore testers after the policies table: their candidates come from the coverage
	// view. Each starts with its sweep of what earlier leaders left running.
	for _, u := range w.units {
		if err := u.tester.Start(ctx); err != nil {
			return fail(err)
		}
	}
	ctx, w.cancel = context.WithCancel(ctx)
	w.wg.Go(func() { d.sweepRetention(ctx, w) })
	w.wg.Go(func() { d.pruneHistoryLoop(ctx, w) })
	// imager once serves fire requests too while it holds the lease: another once may be waiting.
	w.wg.Go(func() { d.serveFireRequests(ctx, w) })
	return nil
}

// stop ends the work in reverse order; safe on partly started work.
func (w *leaderWork) stop(log zerolog.Logger) {
	if w.cancel != nil {
		w.cancel()
	}
	for _, u := range w.units {
		u.sched.Stop()
	}
	w.wg.Wait()
	if w.notifier != nil {
		w.notifier.Stop()
	}
	w.copier.Stop()
	for _, u := range w.units {
		u.tester.Stop()
		u.tracker.Stop()
	}
	if err := w.recorder.Close(); err != nil {
		log.Error().Err(err).Msg("closing the history spool")
	}
}

// sweepRetention runs a retention pass over every policy every retentionSweepEvery.
func (d *daemon) sweepRetention(ctx context.Context, w *leaderWork) {
	for {
		t := d.clock.NewTimer(retentionSweepEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.Chan():
		}
		for _, u := range w.units {
			if n, err := u.pruner.PruneAll(ctx); err != nil && ctx.Err() == nil {
				d.log.Warn().Err(err).Str("account", u.name).Int("deleted", n).Msg("periodic retention pass failed; retried at the next pass")
			} else if n > 0 {
				d.log.Info().Str("account", u.name).Int("deleted", n).Msg("periodic retention pass")
			}
		}
	}
}

// serveFireRequests takes the fire requests of imager once (NOTIFY, and a poll as fallback) and
// fires each through the leader's own pool and pace. It does not wait for the images: once
// follows them in the database.
func (d *daemon) serveFireRequests(ctx context.Context, w *leaderWork) {
	store := d.store.WithTerm(w.term)
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	var fires sync.WaitGroup
	defer fires.Wait()
	fires.Go(func() {
		for ctx.Err() == nil {
			err := d.store.Listen(ctx, []string{history.FireRequestChannel}, poke, func(string, string) { poke() })
			if err != nil && ctx.Err() == nil {
				d.log.Debug().Err(err).Msg("fire request notifications interrupted; polling meanwhile")
			}
			t := d.clock.NewTimer(fireRequestPollEvery)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.Chan():
			}
		}
	})
	for {
		for {
			opCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			f, ok, err := store.FireRequestTake(opCtx, d.daemonID)
			cancel()
			if errors.Is(err, history.ErrFenced) {
				d.elector.Demote()
				return
			}
			if err != nil {
				if ctx.Err() == nil {
					d.log.Warn().Err(err).Msg("cannot read fire requests; retrying")
				}
				break
			}
			if !ok {
				break
			}
			fires.Go(func() { d.fireRequest(ctx, store, w, f) })
		}
		t := d.clock.NewTimer(fireRequestPollEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-wake:
			t.Stop()
		case <-t.Chan():
		}
	}
}

// fireRequest fires one request and records that it is done (or why it failed).
func (d *daemon) fireRequest(ctx context.Context, store *history.Store, w *leaderWork, f history.FireRequest) {
	log := d.log.With().Int64("fire_request", f.ID).Str("policy", f.Policy).Str("requested_by", f.RequestedBy).Logger()
	log.Info().Strs("instances", f.Instances).Time("slot", f.Slot).Msg("firing at the request of imager once")
	_, err := w.runOnceAt(ctx, d.cfg.Load(), f.Policy, f.Instances, f.Slot)
	if ctx.Err() != nil {
		return // leadership ended: the next leader takes the request over
	}
	msg := ""
	if err != nil {
		msg = err.Error()
		log.Warn().Err(err).Msg("fire request failed")
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := store.FireRequestFinish(opCtx, f.ID, msg); err != nil {
		log.Warn().Err(err).Msg("cannot mark the fire request finished")
	}
}

// reload swaps in new policies, all or nothing: everything that can fail (the scheduler's check,
// the notify settings resolved from the environment) is done first, and only then is the one
// config pointer swapped and what derives from it applied. A failed reload leaves every component
// on the old config.
func (d *daemon) reload(cfg *policy.Config) (err error) {
	defer func() {
		if d.met != nil {
			d.met.SetConfigReload(err == nil, d.clock.Now())
		}
	}()
	if err := scheduler.CheckConfig(cfg); err != nil {
		return err
	}
	if err := sameAccounts(d.cfg.Load(), cfg); err != nil {
		return err
	}
	notify, err := d.notifier.Resolve(cfg)
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}

	d.cfg.Store(cfg)
	d.notifier.Apply(notify)
	now := d.clock.Now()
	d.loadedAt.Store(&now)
	if w := d.leading(); w != nil {
		for _, u := range w.units {
			if err := u.sched.Reload(cfg); err != nil { // checked above: it only applies
				return err
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		d.syncPolicies(ctx, cfg)
		cancel()
		for _, u := range w.units {
			u.tester.Kick() // its pass syncs restore_test_configs and takes the new schedules
		}
	}
	return nil
}

// syncPolicies records the loaded policies in the policies table (the leader's view is the one
// SQL sees); a failure is logged and retried at the next load or election.
func (d *daemon) syncPolicies(ctx context.Context, cfg *policy.Config) {
	now := d.clock.Now()
	if _, err := d.store.PoliciesSync(ctx, history.PolicyRows(cfg, now), now); err != nil {
		d.log.Warn().Err(err).Msg("cannot record the loaded policies in the policies table")
	}
}

// close stops what was started, in reverse order: the elector stops the leader's work (renewing
// the lease meanwhile) and resigns; safe on a partly opened daemon.
func (d *daemon) close() {
	if d.elector != nil {
		d.elector.Stop()
	}
	d.stopWork()
	for _, ac := range d.accounts {
		ac.client.Close()
	}
	if d.metrics != nil {
		d.metrics.Stop()
	}
	if d.store != nil {
		d.store.Close()
	}
}
