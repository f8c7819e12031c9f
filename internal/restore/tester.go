// Package restore runs scheduled restore tests (docs/restore-tests.md): on a test's schedule it
// launches an instance from the latest available image of a policy (or of its copy in a copy_to
// region), waits for it to be RUNNING and for its TAT agent, runs the test's check command on it
// through TAT, records the outcome in history (restore_tests, with restore_failed and
// restore_recovered in the notification outbox) and terminates the instance, always.
//
// A Tester runs on the leader, one per account, in a goroutine of its own, like the copier
// (internal/copies). Every test is recorded before anything is launched: the restore_tests row
// carries the RunInstances ClientToken, derived from the test, the slot and the instance, so a
// retry of the call never launches a second instance. Every launched instance carries imager's
// restore tags (TagTest, TagToken), so an instance whose answer was lost is still found.
//
// Nothing is left running: each test terminates its instance when it ends, at the latest
// keep_for after launch; and Sweep, run first when the Tester starts (on every leadership gain),
// terminates the instances of tests no live process finishes and fails their rows (CodeInterrupted).
package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/startstop"
	"github.com/imager-dev/imager/internal/tat"
)

// Error codes a restore test records besides the API's own.
const (
	CodeLaunchFailed  = "LaunchFailed"  // the instance ended LAUNCH_FAILED, or was not RUNNING in time
	CodeAgentOffline  = "AgentOffline"  // its TAT agent was not online in time
	CodeCheckFailed   = "CheckFailed"   // the check exited non-zero (or its task failed to run)
	CodeCheckTimeout  = "CheckTimeout"  // the check did not end within check.timeout
	CodeTimeout       = "Timeout"       // the test ran past keep_for (the instance was terminated)
	CodeInterrupted   = "Interrupted"   // the process running the test stopped first; the sweep ended it
	CodeImageNotFound = "ImageNotFound" // the image was gone when launched
)

// Tags every instance a restore test launches carries, beside imager-policy, imager-instance and
// imager-slot (policy.TagPolicy, ...).
const (
	TagTest  = "imager-restore-test"  // the test's name
	TagToken = "imager-restore-token" // the row's ClientToken (history.Store.RestoreByToken)
)

// Defaults of a Tester.
const (
	// DefaultPollInterval is the time between status polls of a running test, and the longest
	// time between passes of the loop (config changes, terminations to retry).
	DefaultPollInterval = 10 * time.Second
	// DefaultCatchUp is how late a slot may still start: a slot missed while no leader ran is
	// tested if the tester starts within this time of it.
	DefaultCatchUp = time.Hour
	// terminateAttempts bounds the TerminateInstances calls of one termination; what is left is
	// retried at the next pass.
	terminateAttempts = 5
	// historyTimeout bounds one history write; writes outlive the test's context so what was done
	// is recorded, even during shutdown.
	historyTimeout = 10 * time.Second
	// callTimeout bounds one API call that must happen whatever the test's context (terminations).
	callTimeout = 30 * time.Second
)

// API rates of the calls a tester makes per account (the API's limits).
var apiRates = map[string]int{
	cvm.ActionRunInstances:                  10,
	cvm.ActionTerminateInstances:            10,
	cvm.ActionDescribeInstancesStatus:       20, // half the API's 40/s: DescribeInstances shares it
	cvm.ActionDescribeInstances:             20,
	tat.ActionRunCommand:                    20,
	tat.ActionDescribeInvocationTasks:       20,
	tat.ActionDescribeAutomationAgentStatus: 20,
}

// ErrOtherAccount: RunNow was asked for a test whose policy runs with another account.
var ErrOtherAccount = errors.New("restore test of another account")

// ErrUnknownTest: RunNow was asked for a test the loaded file does not name.
var ErrUnknownTest = errors.New("no such restore test")

// ErrNoImage: the test's policy has no instance with an available image to restore.
var ErrNoImage = errors.New("no available image to restore")

// CVM is what a tester needs from one account's CVM API. *cvm.Client implements it.
type CVM interface {
	RunInstances(ctx context.Context, region string, in cvm.RunInstancesInput) (cvm.RunInstancesOutput, error)
	TerminateInstances(ctx context.Context, region string, instanceIDs []string) (string, error)
	DescribeInstancesStatus(ctx context.Context, region string, instanceIDs []string) (cvm.DescribeInstancesStatusOutput, error)
	DescribeInstances(ctx context.Context, region string, in cvm.DescribeInstancesInput) (cvm.DescribeInstancesOutput, error)
}

var _ CVM = (*cvm.Client)(nil)

// TAT is what a tester needs from one account's TAT API. *tat.Client implements it.
type TAT interface {
	RunCommand(ctx context.Context, region string, in tat.RunCommandInput) (tat.RunCommandOutput, error)
	DescribeInvocationTasks(ctx context.Context, region string, in tat.DescribeInvocationTasksInput) (tat.DescribeInvocationTasksOutput, error)
	DescribeAutomationAgentStatus(ctx context.Context, region string, instanceIDs []string) (tat.AgentStatusOutput, error)
}

var _ TAT = (*tat.Client)(nil)

// History is what a tester needs from history. *history.Store implements it (use the store of
// the leadership term, Store.WithTerm, so a deposed leader's writes are refused).
type History interface {
	RestoreConfigsSync(ctx context.Context, cfgs []history.RestoreConfig, at time.Time) error
	RestoreCandidates(ctx context.Context, test, policy, copyRegion string) ([]history.RestoreCandidate, error)
	RestoreStart(ctx context.Context, p history.RestoreStartParams) (history.RestoreTest, bool, error)
	RestoreLaunched(ctx context.Context, id int64, launchedID string, at time.Time) error
	RestoreCheckStarted(ctx context.Context, id int64, invocationID, taskID string) error
	RestoreFinish(ctx context.Context, id int64, o history.RestoreOutcome) (history.RestoreTest, error)
	RestoreTerminated(ctx context.Context, id int64, at time.Time) error
	RestoresOpen(ctx context.Context, account string) ([]history.RestoreTest, error)
	RestoreByToken(ctx context.Context, token string) (history.RestoreTest, error)
	RestoresOf(ctx context.Context, test string, limit int) ([]history.RestoreTest, error)
	CoverageList(ctx context.Context, policy, instanceID string, overdueOnly bool) ([]history.Coverage, error)
}

var _ History = (*history.Store)(nil)

// Pace spaces the calls of one API action of one account (*pace.Limiter).
type Pace interface {
	Wait(ctx context.Context) error
}

// Options configures a Tester. History, Account, CVM, TAT and Config are required.
type Options struct {
	History History
	// Account is the account whose tests this tester runs (the account of each test's policy);
	// CVM and TAT are that account's clients.
	Account string
	CVM     CVM
	TAT     TAT
	// Config returns the live policies (reloads swap it); it is read at every pass.
	Config func() *policy.Config
	// Pace returns the pace of an API action (cvm.Action*, tat.Action*) of the account; share
	// the daemon's where it has one. Nil means the tester's own, at the API's rates.
	Pace func(action string) Pace
	// Clock decides schedules, waits, keep_for and the times recorded; nil means the real clock.
	Clock clockwork.Clock
	// Logger is used as given: the caller sets its component and account fields.
	Logger zerolog.Logger
	// OnFenced, when set, is called when a history write is refused because the leadership term
	// of History is over (history.ErrFenced): the daemon demotes itself.
	OnFenced func()
	// PollInterval is the time between status polls of a running test; 0 means DefaultPollInterval.
	PollInterval time.Duration
	// CatchUp is how late a slot may still start; 0 means DefaultCatchUp.
	CatchUp time.Duration
}

// Tester runs the restore tests of one account (see the package comment).
type Tester struct {
	hist     History
	account  string
	cvm      CVM
	tat      TAT
	config   func() *policy.Config
	pace     func(action string) Pace
	clock    clockwork.Clock
	log      zerolog.Logger
	interval time.Duration
	catchUp  time.Duration

	kick chan struct{}
	life startstop.Life

	mu       sync.Mutex
	inflight map[int64]bool     // rows a test of this process is running
	running  map[string]bool    // tests with a slot in progress in this process
	next     map[string]slotKey // the next slot of each test, for the spec it was computed from
	synced   *policy.Config     // the config restore_test_configs was last synced from
	started  time.Time          // when Start was called: rows started since are this process's
	paces    map[string]*pace.Limiter

	// afterPass, when set (tests), is called after every pass of the loop; afterSweep after the
	// sweep that starts it.
	afterPass  func()
	afterSweep func(SweepResult, error)
}

type slotKey struct {
	spec string
	at   time.Time
}

// New returns a Tester that is not running.
func New(opts Options) *Tester {
	t := &Tester{
		hist:     opts.History,
		account:  opts.Account,
		cvm:      opts.CVM,
		tat:      opts.TAT,
		config:   opts.Config,
		pace:     opts.Pace,
		clock:    opts.Clock,
		log:      opts.Logger,
		interval: opts.PollInterval,
		catchUp:  opts.CatchUp,
		kick:     make(chan struct{}, 1),
		inflight: map[int64]bool{},
		running:  map[string]bool{},
		next:     map[string]slotKey{},
		paces:    map[string]*pace.Limiter{},
	}
	if t.clock == nil {
		t.clock = clockwork.NewRealClock()
	}
	if t.interval <= 0 {
		t.interval = DefaultPollInterval
	}
	if t.catchUp <= 0 {
		t.catchUp = DefaultCatchUp
	}
	if t.account == "" {
		t.account = policy.DefaultAccount
	}
	if t.pace == nil {
		t.pace = t.ownPace
	}
	if opts.OnFenced != nil && t.hist != nil {
		t.hist = fencedHistory{History: t.hist, onFenced: opts.OnFenced}
	}
	return t
}

// fencedHistory tells onFenced of every write refused by the fence.
type fencedHistory struct {
	History
	onFenced func()
}

func (h fencedHistory) check(err error) error {
	if errors.Is(err, history.ErrFenced) {
		h.onFenced()
	}
	return err
}

func (h fencedHistory) RestoreStart(ctx context.Context, p history.RestoreStartParams) (history.RestoreTest, bool, error) {
	r, created, err := h.History.RestoreStart(ctx, p)
	return r, created, h.check(err)
}

func (h fencedHistory) RestoreLaunched(ctx context.Context, id int64, launchedID string, at time.Time) error {
	return h.check(h.History.RestoreLaunched(ctx, id, launchedID, at))
}

func (h fencedHistory) RestoreCheckStarted(ctx context.Context, id int64, invocationID, taskID string) error {
	return h.check(h.History.RestoreCheckStarted(ctx, id, invocationID, taskID))
}

func (h fencedHistory) RestoreFinish(ctx context.Context, id int64, o history.RestoreOutcome) (history.RestoreTest, error) {
	r, err := h.History.RestoreFinish(ctx, id, o)
	return r, h.check(err)
}

func (h fencedHistory) RestoreTerminated(ctx context.Context, id int64, at time.Time) error {
	return h.check(h.History.RestoreTerminated(ctx, id, at))
}

// ownPace is the tester's own pace of an action, on the real clock: the API counts its limits in
// real seconds.
func (t *Tester) ownPace(action string) Pace {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.paces[action]
	if p == nil {
		rate := apiRates[action]
		if rate == 0 {
			rate = 10
		}
		p = pace.New(nil, rate, pace.Options{})
		t.paces[action] = p
	}
	return p
}

func (t *Tester) check() error {
	if t.hist == nil || t.cvm == nil || t.tat == nil || t.config == nil {
		return errors.New("restore tester: history, CVM and TAT clients and config are required")
	}
	return nil
}

// Start sweeps what earlier processes left (Sweep), then runs the tests of the account on their
// schedules until Stop. Call it when the process becomes leader.
func (t *Tester) Start(ctx context.Context) error {
	if err := t.check(); err != nil {
		return err
	}
	ctx, err := t.life.Start(ctx)
	if err != nil {
		return fmt.Errorf("restore tester: %w", err)
	}
	t.mu.Lock()
	t.started = t.clock.Now()
	t.mu.Unlock()
	t.life.Go(func() {
		res, err := t.Sweep(ctx)
		if err != nil && ctx.Err() == nil {
			t.log.Error().Err(err).Msg("restore sweep failed; retried at every pass")
		}
		if t.afterSweep != nil {
			t.afterSweep(res, err)
		}
		t.loop(ctx)
	})
	t.log.Info().Int64("poll_interval_ms", t.interval.Milliseconds()).Msg("restore tester started")
	return nil
}

// Stop ends the loop and the tests in progress (each terminates its instance before it returns,
// with a bounded wait of its own) and waits for them. It is idempotent and safe before Start.
func (t *Tester) Stop() {
	if t.life.Stop() {
		t.log.Info().Msg("restore tester stopped")
	}
}

// Kick asks for a pass now (the config was reloaded); kicks while one is pending collapse.
func (t *Tester) Kick() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// loop starts each test's slots as they come, and between them retries what is left to
// terminate.
func (t *Tester) loop(ctx context.Context) {
	for {
		wait := t.pass(ctx)
		if ctx.Err() != nil {
			return
		}
		if t.afterPass != nil {
			t.afterPass()
		}
		timer := t.clock.NewTimer(wait)
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

// pass syncs restore_test_configs when the config changed, starts the slots due, and terminates
// instances left behind. It returns the wait before the next pass.
func (t *Tester) pass(ctx context.Context) time.Duration {
	cfg := t.cfg()
	if cfg == nil {
		return t.interval
	}
	now := t.clock.Now()
	t.syncConfigs(ctx, cfg, now)
	wait := t.interval
	for _, rt := range cfg.RestoreTestsOf(t.account) {
		if rt.Schedule == nil {
			continue
		}
		slot := t.nextSlot(ctx, rt, now)
		if slot.IsZero() {
			continue
		}
		if slot.After(now) {
			wait = min(wait, slot.Sub(now))
			continue
		}
		t.mu.Lock()
		busy := t.running[rt.Name]
		if !busy {
			t.running[rt.Name] = true
		}
		t.next[rt.Name] = slotKey{spec: rt.ScheduleSpec, at: rt.Schedule.Next(slot)}
		t.mu.Unlock()
		if busy {
			t.log.Warn().Str("test", rt.Name).Time("slot", slot).Msg("restore test still running its previous slot; slot skipped")
			continue
		}
		t.life.Go(func() {
			defer func() {
				t.mu.Lock()
				delete(t.running, rt.Name)
				t.mu.Unlock()
				t.Kick()
			}()
			t.runSlot(ctx, cfg, rt, slot)
		})
	}
	t.reap(ctx)
	return wait
}

// nextSlot is the test's next slot: computed once per schedule spec, from the newest slot it has
// rows of, or from CatchUp before now (so a slot missed while no leader ran starts late).
func (t *Tester) nextSlot(ctx context.Context, rt *policy.RestoreTest, now time.Time) time.Time {
	t.mu.Lock()
	k, ok := t.next[rt.Name]
	t.mu.Unlock()
	if ok && k.spec == rt.ScheduleSpec {
		return k.at
	}
	from := now.Add(-t.catchUp)
	if rows, err := t.hist.RestoresOf(ctx, rt.Name, 1); err != nil {
		t.log.Warn().Err(err).Str("test", rt.Name).Msg("cannot read the test's last slot; not scheduling it this pass")
		return time.Time{}
	} else if len(rows) > 0 && !rows[0].Slot.Before(from) {
		from = rows[0].Slot
	}
	next := rt.Schedule.Next(from)
	t.mu.Lock()
	t.next[rt.Name] = slotKey{spec: rt.ScheduleSpec, at: next}
	t.mu.Unlock()
	return next
}

func (t *Tester) cfg() *policy.Config {
	if t.config == nil {
		return nil
	}
	return t.config()
}

// syncConfigs records the loaded tests in restore_test_configs once per config (SyncConfigs).
func (t *Tester) syncConfigs(ctx context.Context, cfg *policy.Config, now time.Time) {
	t.mu.Lock()
	same := t.synced == cfg
	t.mu.Unlock()
	if same {
		return
	}
	if err := SyncConfigs(ctx, t.hist, cfg, now); err != nil {
		t.log.Warn().Err(err).Msg("cannot record the loaded restore tests; retried at the next pass")
		return
	}
	t.mu.Lock()
	t.synced = cfg
	t.mu.Unlock()
}

// ConfigHistory is what SyncConfigs needs from history. *history.Store implements it.
type ConfigHistory interface {
	RestoreConfigsSync(ctx context.Context, cfgs []history.RestoreConfig, at time.Time) error
	CoverageList(ctx context.Context, policy, instanceID string, overdueOnly bool) ([]history.Coverage, error)
}

// SyncConfigs records every restore test of cfg (all accounts) in restore_test_configs at now, and
// marks the tests it no longer names removed. A test's overdue time is twice the time it takes to
// test every instance of its policy in turn: one schedule interval per sample of the instances
// (those the policy lists, or those the coverage view knows for a policy that selects by tag).
// Call it when the policies are loaded or reloaded; a Tester also calls it at its first pass
// after each change.
func SyncConfigs(ctx context.Context, h ConfigHistory, cfg *policy.Config, now time.Time) error {
	rows := make([]history.RestoreConfig, 0, len(cfg.RestoreTests))
	for _, rt := range cfg.RestoreTests {
		n := 0
		if p := cfg.Policy(rt.Policy); p != nil && p.Select == nil {
			n = len(p.Instances)
		} else {
			cov, err := h.CoverageList(ctx, rt.Policy, "", false)
			if err != nil {
				return fmt.Errorf("count the instances of %s: %w", rt.Policy, err)
			}
			n = len(cov)
		}
		turn, ok := rt.TurnInterval(n, now)
		if !ok {
			turn = 24 * time.Hour // a schedule without two slots: any positive time will do
		}
		rows = append(rows, history.RestoreConfig{Name: rt.Name, Policy: rt.Policy, Overdue: 2 * turn})
	}
	return h.RestoreConfigsSync(ctx, rows, now)
}

// ClientToken is the RunInstances ClientToken of one (test, slot, instance): the same for every
// retry, and distinct across tests, slots and instances (ASCII, within cvm.MaxClientTokenLen).
func ClientToken(test string, slot time.Time, instanceID string) string {
	sum := sha256.Sum256([]byte(test + "\x00" + slot.UTC().Format(time.RFC3339Nano) + "\x00" + instanceID))
	return "imager-restore-" + hex.EncodeToString(sum[:])[:40]
}

// writeContext bounds one history write; it does not end with the test.
func writeContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), historyTimeout)
}

// track marks row id as run by this process (true) or no longer (false).
func (t *Tester) track(id int64, on bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if on {
		t.inflight[id] = true
	} else {
		delete(t.inflight, id)
	}
}

func (t *Tester) isInflight(id int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.inflight[id]
}

// testsByName indexes the account's loaded tests.
func testsByName(cfg *policy.Config, account string) map[string]*policy.RestoreTest {
	out := map[string]*policy.RestoreTest{}
	if cfg == nil {
		return out
	}
	for _, rt := range cfg.RestoreTestsOf(account) {
		out[rt.Name] = rt
	}
	return out
}

// regionsOf lists the regions of the account's loaded tests, sorted.
func regionsOf(cfg *policy.Config, account string) []string {
	var out []string
	for _, rt := range testsByName(cfg, account) {
		if !slices.Contains(out, rt.Region) {
			out = append(out, rt.Region)
		}
	}
	slices.Sort(out)
	return out
}
