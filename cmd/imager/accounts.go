package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	tccommon "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/accounts"
	"github.com/imager-dev/imager/internal/copies"
	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/hooks"
	"github.com/imager-dev/imager/internal/lifecycle"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/quota"
	"github.com/imager-dev/imager/internal/restore"
	"github.com/imager-dev/imager/internal/retention"
	"github.com/imager-dev/imager/internal/scheduler"
	"github.com/imager-dev/imager/internal/targets"
	"github.com/imager-dev/imager/internal/tat"
)

// Each account of the policy file (docs/policies.md "Accounts") has its own client, signed with
// its credentials, and its own paces, so two accounts fire in parallel at full rate each. The
// daemon opens the clients once; the leader's work runs one scheduler, tracker, pruner, quota gate
// and target resolver per account, over the one history, spool, copier and notifier
// (docs/design.md "Accounts").

// accountClient is one account's client and the paces every leader term shares.
type accountClient struct {
	account *policy.Account
	client  *cvm.Client
	// describePace is the account's one DescribeImages pace: crash recovery, completion tracking,
	// retention, the copier and the quota gate stay under its api.describe_images_rate together.
	describePace *pace.Limiter
	// deletePace is the account's one DeleteImages pace (retention and the copies' retention).
	deletePace *pace.Limiter
	// tat runs commands on the account's instances (hooks, restore tests' checks), through client;
	// tatPace is the account's one pace for every TAT call (hooks.DefaultRate, TAT's limit).
	tat     *tat.Client
	tatPace *pace.Limiter
	// launchPace spaces the restore tests' RunInstances, DescribeInstancesStatus and
	// TerminateInstances calls of the account (10 per second together, each action's limit).
	launchPace *pace.Limiter
}

// restorePace is the pace of a restore test's API action: the account's TAT pace for TAT, its
// launch pace for the instance calls.
func (ac *accountClient) restorePace(action string) restore.Pace {
	switch action {
	case tat.ActionRunCommand, tat.ActionDescribeInvocationTasks, tat.ActionDescribeAutomationAgentStatus:
		return ac.tatPace
	}
	return ac.launchPace
}

// configAccounts is cfg's accounts in file order: the one default account without an accounts:
// block.
func configAccounts(cfg *policy.Config) []*policy.Account {
	if len(cfg.Accounts) > 0 {
		return cfg.Accounts
	}
	return []*policy.Account{cfg.Account(policy.DefaultAccount)}
}

// accountCredential signs a's calls: cred (a test's or the demo's simulator key) for an account
// on the default chain when cred is set, else what accounts.Credential makes of a.
func accountCredential(a *policy.Account, cred tccommon.CredentialIface) (tccommon.CredentialIface, error) {
	if cred != nil && a.DefaultChain() {
		return cred, nil
	}
	return accounts.Credential(a, os.Getenv)
}

// openAccounts builds each account's client and paces. An error names the account (and, for an
// account of the accounts: block, its file, line and field) but no secret.
func (d *daemon) openAccounts(onCall func(action, code string, elapsed time.Duration)) error {
	d.accounts = map[string]*accountClient{}
	for _, a := range configAccounts(d.dc.cfg) {
		client, err := newAccountClient(d.dc.opts, a, d.dc.credential, d.log, onCall)
		if err != nil {
			return err
		}
		d.accounts[a.Name] = &accountClient{account: a, client: client,
			describePace: pace.New(d.clock, a.API.DescribeImagesRate, pace.Options{}),
			deletePace:   pace.New(d.clock, retention.DefaultDeleteRate, pace.Options{}),
			tat:          tat.New(client),
			tatPace:      pace.New(d.clock, hooks.DefaultRate, pace.Options{}),
			launchPace:   pace.New(d.clock, 10, pace.Options{})}
	}
	return nil
}

// accountOf returns the client of account, or nil. With one account it answers for every name:
// rows written before the file named its account say "default".
func (d *daemon) accountOf(account string) *accountClient {
	if ac, ok := d.accounts[account]; ok {
		return ac
	}
	if len(d.accounts) == 1 {
		for _, ac := range d.accounts {
			return ac
		}
	}
	return nil
}

// sameAccounts refuses a reload that changes the accounts' names or credential sources: their
// clients are opened once, at start. Their api: blocks may change.
func sameAccounts(loaded, next *policy.Config) error {
	key := func(cfg *policy.Config) []string {
		var out []string
		for _, a := range configAccounts(cfg) {
			role := ""
			if a.Role != nil {
				role = fmt.Sprintf("%s/%s/%s", a.Role.ARN, a.Role.SessionName, a.Role.Duration)
			}
			out = append(out, strings.Join([]string{a.Name, a.SecretIDEnv, a.SecretKeyEnv, a.Profile, role}, "\x00"))
		}
		return out
	}
	if slices.Equal(key(loaded), key(next)) {
		return nil
	}
	names := func(cfg *policy.Config) string {
		var out []string
		for _, a := range configAccounts(cfg) {
			out = append(out, a.Name)
		}
		return strings.Join(out, ", ")
	}
	return fmt.Errorf("accounts: the accounts or their credentials changed (loaded: %s; file: %s); restart imager to apply them",
		names(loaded), names(next))
}

// accountWork is one account's part of the leader's work.
type accountWork struct {
	name    string // the account (policy.Account.Name)
	sched   *scheduler.Scheduler
	tracker *lifecycle.Tracker
	pruner  *retention.Pruner
	tester  *restore.Tester // the account's restore tests (docs/restore-tests.md)
}

// servedAccount is the Options.Account of account name's components when the file has accounts
// accounts: "" with one (it serves every row, including those written before the file named its
// account), else the account's name.
func servedAccount(accounts int, name string) string {
	if accounts == 1 {
		return ""
	}
	return name
}

// buildAccount builds account a's scheduler, tracker, pruner, quota gate and target resolver.
func (d *daemon) buildAccount(w *leaderWork, a *policy.Account, store *history.Store, log zerolog.Logger) (*accountWork, error) {
	ac := d.accounts[a.Name]
	if ac == nil {
		return nil, fmt.Errorf("account %s has no client (accounts are opened at start; restart imager to add one)", a.Name)
	}
	serves := servedAccount(len(d.accounts), a.Name)
	log = log.With().Str("account", a.Name).Logger()
	u := &accountWork{name: a.Name}
	liveConfig := d.cfg.Load
	u.pruner = retention.NewPruner(retention.Options{
		CVM: ac.client, History: store, DescribePace: ac.describePace, DeletePace: ac.deletePace,
		Config: liveConfig, Account: serves,
		Clock: d.clock, Logger: log.With().Str("component", "retention").Logger(),
	})
	gate := quota.NewGate(quota.Options{
		CVM: ac.client, Pace: ac.describePace, Clock: d.clock, Prune: u.pruner.PruneRegion, Account: serves,
		Logger: log.With().Str("component", "quota").Logger(),
	})
	resolver := targets.NewResolver(targets.Options{
		CVM: ac.client, Clock: d.clock, Logger: log.With().Str("component", "targets").Logger(),
	})
	var err error
	u.sched, err = scheduler.New(scheduler.Options{
		Config:        d.cfg.Load(),
		Live:          &d.cfg,
		Account:       serves,
		CVM:           ac.client,
		History:       w.recorder,
		Clock:         d.clock,
		Logger:        log.With().Str("component", "scheduler").Logger(),
		DaemonID:      d.daemonID,
		APIDryRun:     d.dc.opts.apiDryRun,
		ShutdownGrace: d.dc.opts.shutdownGrace,
		DisableCron:   d.dc.noCron,
		DescribePace:  ac.describePace,
		TAT:           ac.tat,
		TATPace:       ac.tatPace,
		OnHookFrozen: func(policy string, frozen time.Duration) {
			if d.met != nil {
				d.met.ObserveHookFrozen(policy, frozen)
			}
		},
		ResolveTargets:   resolver.Resolve,
		ResolveDataDisks: resolver.DataDisks,
		BeforeFire:       gate.Check,
		BeforeFireBatch:  resolver.Prime,
		OnQuotaExceeded:  gate.OnQuotaExceeded,
		OnFenced:         d.elector.Demote,
		OnOutcome: func(o scheduler.Outcome) {
			if d.met != nil {
				d.met.ObserveRun(o.Policy, string(o.Status))
			}
		},
		OnPaceWait: func(wait time.Duration) {
			if d.met != nil {
				d.met.ObservePaceWait(wait)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("account %s: %w", a.Name, err)
	}
	u.tester = restore.New(restore.Options{
		History:  store,
		Account:  a.Name,
		CVM:      ac.client,
		TAT:      ac.tat,
		Config:   liveConfig,
		Pace:     ac.restorePace,
		Clock:    d.clock,
		Logger:   log.With().Str("component", "restore").Logger(),
		OnFenced: d.elector.Demote,
	})
	u.tracker = lifecycle.NewTracker(lifecycle.TrackerOptions{
		History:      fencedTracker{TrackerHistory: lifecycle.RecorderHistory(w.recorder), onFenced: d.elector.Demote},
		CVM:          ac.client,
		Pace:         ac.describePace,
		Account:      serves,
		Config:       liveConfig,
		Clock:        d.clock,
		Logger:       log.With().Str("component", "tracker").Logger(),
		PollInterval: d.dc.pollInterval,
		OnTerminal: func(r history.Run) {
			if d.met != nil {
				d.met.ObserveRun(r.Policy, string(r.Status))
			}
		},
		OnAvailable: func(ctx context.Context, r history.Run) {
			w.copier.Kick()
			if _, err := u.pruner.PruneInstance(ctx, r.Policy, r.InstanceID); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Str("policy", r.Policy).Str("instance", r.InstanceID).
					Msg("retention pass failed; its deletions are retried at the next pass")
			}
		},
	})
	return u, nil
}

// newCopier builds the copier: one for every account, with each account's client and paces (its
// SyncImages pace is the copier's own, per account, so CreateImage never waits for a copy).
func (d *daemon) newCopier(store *history.Store, log zerolog.Logger) *copies.Copier {
	return copies.New(copies.Options{
		History: store,
		CVM: func(account string) copies.CVM {
			if ac := d.accountOf(account); ac != nil {
				return ac.client
			}
			return nil
		},
		Config: d.cfg.Load,
		DescribePace: func(account string) copies.Pace {
			if ac := d.accountOf(account); ac != nil {
				return ac.describePace
			}
			return nil
		},
		DeletePace: func(account string) copies.Pace {
			if ac := d.accountOf(account); ac != nil {
				return ac.deletePace
			}
			return nil
		},
		Clock:        d.clock,
		Logger:       log.With().Str("component", "copier").Logger(),
		PollInterval: d.dc.pollInterval,
	})
}

// unitOf returns the part of the leader's work that serves policy name's account; for a policy
// cfg does not have, the first (whose scheduler says which policies it knows).
func (w *leaderWork) unitOf(cfg *policy.Config, name string) (*accountWork, error) {
	p := cfg.Policy(name)
	if p == nil {
		return w.units[0], nil
	}
	account := p.Account
	if account == "" {
		account = policy.DefaultAccount
	}
	for _, u := range w.units {
		if u.name == account || len(w.units) == 1 {
			return u, nil
		}
	}
	return nil, fmt.Errorf("policy %q: account %q has no scheduler (accounts are opened at start; restart imager)", name, account)
}

// runOnce fires policy name now through its account's scheduler.
func (w *leaderWork) runOnce(ctx context.Context, cfg *policy.Config, name string, instances []string) ([]scheduler.Outcome, error) {
	u, err := w.unitOf(cfg, name)
	if err != nil {
		return nil, err
	}
	return u.sched.RunOnce(ctx, name, instances)
}

// runOnceAt fires policy name at slot through its account's scheduler.
func (w *leaderWork) runOnceAt(ctx context.Context, cfg *policy.Config, name string, instances []string, slot time.Time) ([]scheduler.Outcome, error) {
	u, err := w.unitOf(cfg, name)
	if err != nil {
		return nil, err
	}
	return u.sched.RunOnceAt(ctx, name, instances, slot)
}

// waitTerminal follows the accepted runs of outs, each with its account's tracker, until each is
// available or failed, and returns them by id.
func (w *leaderWork) waitTerminal(ctx context.Context, cfg *policy.Config, outs []scheduler.Outcome) (map[int64]history.Run, error) {
	byUnit := map[*accountWork][]int64{}
	for _, o := range outs {
		if o.Status != history.StatusRequested {
			continue
		}
		u, err := w.unitOf(cfg, o.Policy)
		if err != nil {
			return nil, err
		}
		byUnit[u] = append(byUnit[u], o.RunID)
	}
	final := map[int64]history.Run{}
	for u, ids := range byUnit {
		u.tracker.Kick()
		got, err := u.tracker.WaitTerminal(ctx, ids)
		if err != nil {
			return nil, err
		}
		for id, r := range got {
			final[id] = r
		}
	}
	return final, nil
}

// queueDepth is the slots waiting in every account's pool.
func (w *leaderWork) queueDepth() int {
	n := 0
	for _, u := range w.units {
		n += u.sched.QueueDepth()
	}
	return n
}
