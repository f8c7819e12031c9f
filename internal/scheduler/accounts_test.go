package scheduler

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// accountsConfig is testConfig with two accounts, each with api: settings of its own (other
// than the top-level block's).
func accountsConfig(policies ...*policy.Policy) *policy.Config {
	cfg := testConfig(10, 4, policies...)
	cfg.Accounts = []*policy.Account{
		{Name: "prod", API: policy.API{CreateImageRate: 3, DescribeImagesRate: 5, Workers: 2, Retry: testRetry}},
		{Name: "partner", API: policy.API{CreateImageRate: 7, DescribeImagesRate: 9, Workers: 1, Retry: testRetry}},
	}
	return cfg
}

// of sets p's account.
func of(account string, p *policy.Policy) *policy.Policy {
	p.Account = account
	return p
}

func withAccount(account string) func(*Options) {
	return func(o *Options) { o.Account = account }
}

func TestAccountSchedulerTakesItsAccountsAPI(t *testing.T) {
	t.Parallel()
	cfg := accountsConfig(of("prod", testPolicy("web", "ins-a0000001")), of("partner", testPolicy("db", "ins-b0000001")))

	_, err := New(Options{Config: cfg, CVM: newFakeCVM(nil), History: &fakeHistory{}, Account: "nobody"})
	require.ErrorContains(t, err, `account "nobody" is not in the policy config (accounts: prod, partner)`)

	prod := newHarness(t, cfg, withAccount("prod")).s
	partner := newHarness(t, cfg, withAccount("partner")).s
	all := newHarness(t, cfg).s
	require.Equal(t, "prod", prod.Account())
	require.Equal(t, 2, prod.workers)
	require.Equal(t, 1, partner.workers)
	require.Equal(t, 4, all.workers, "no account: the top-level api block")
	require.NotSame(t, prod.pace, partner.pace, "each account has its own CreateImage pace")
	require.NotSame(t, prod.describePace, partner.describePace, "and its own DescribeImages pace")
	// Rate is the configured rate less the pace's jitter margin (at most pace.DefaultMaxMargin).
	require.InDelta(t, 3, prod.pace.Rate(), 0.2)
	require.InDelta(t, 7, partner.pace.Rate(), 0.4)
	require.InDelta(t, 10, all.pace.Rate(), 0.5)
	require.InDelta(t, 5, prod.describePace.Rate(), 0.3)
	require.InDelta(t, 9, partner.describePace.Rate(), 0.5)
	require.Equal(t, testRetry, prod.retry())

	// A reload takes the account's new settings; a config without the account keeps them, and
	// leaves the scheduler no policy to fire.
	next := accountsConfig(of("prod", testPolicy("web", "ins-a0000001")))
	next.Accounts[0].API.CreateImageRate = 1
	next.Accounts[0].API.Retry.Duplicate = 7
	require.NoError(t, prod.Reload(next))
	require.InDelta(t, 1, prod.pace.Rate(), 0.1)
	require.Equal(t, 7, prod.retry().Duplicate)
	require.InDelta(t, 7, partner.pace.Rate(), 0.4, "another account's scheduler is not touched")
	without := testConfig(10, 4, testPolicy("web", "ins-a0000001"))
	without.Accounts = []*policy.Account{{Name: "other", API: without.API}}
	require.NoError(t, prod.Reload(without))
	require.InDelta(t, 1, prod.pace.Rate(), 0.1)
	require.Equal(t, 7, prod.retry().Duplicate)
	require.Empty(t, prod.policyNames())

	// CheckConfig checks every account's api block.
	bad := accountsConfig()
	bad.Accounts[1].API.Workers = 0
	require.ErrorContains(t, CheckConfig(bad), "account partner: scheduler: workers must be at least 1")
	require.Error(t, prod.Reload(bad))
}

func TestAccountSchedulerRunOnceRefusesAnotherAccountsPolicy(t *testing.T) {
	t.Parallel()
	cfg := accountsConfig(of("prod", testPolicy("web", "ins-a0000001")), of("partner", testPolicy("db", "ins-b0000001")),
		testPolicy("legacy", "ins-c0000001")) // names no account: the default one
	h := newHarness(t, cfg, withAccount("prod"))
	h.start()

	_, err := h.s.RunOnce(h.ctx, "db", nil)
	require.ErrorIs(t, err, ErrOtherAccount)
	require.ErrorContains(t, err, "policy db uses account partner; this scheduler fires the policies of account prod")
	_, err = h.s.RunOnce(h.ctx, "legacy", nil)
	require.ErrorIs(t, err, ErrOtherAccount)
	require.ErrorContains(t, err, "uses account default")
	runs, _, _ := h.hist.snapshot()
	require.Empty(t, runs)
	require.Empty(t, h.cvm.calls)

	out := h.once(100*time.Millisecond, "web")
	require.Len(t, out, 1)
	require.Equal(t, history.StatusRequested, out[0].Status)
	run := h.runByInstance("web", "ins-a0000001")
	require.Equal(t, "prod", run.Account)
}

func TestSchedulerWithoutAccountClaimsWithEachPolicysAccount(t *testing.T) {
	t.Parallel()
	cfg := accountsConfig(of("prod", testPolicy("web", "ins-a0000001")), of("partner", testPolicy("db", "ins-b0000001")))
	cfg.Policies = append(cfg.Policies, testPolicy("legacy", "ins-c0000001"))
	h := newHarness(t, cfg)
	h.start()
	for _, name := range []string{"web", "db", "legacy"} {
		require.Len(t, h.once(100*time.Millisecond, name), 1)
	}
	require.Equal(t, "prod", h.runByInstance("web", "ins-a0000001").Account)
	require.Equal(t, "partner", h.runByInstance("db", "ins-b0000001").Account)
	require.Equal(t, policy.DefaultAccount, h.runByInstance("legacy", "ins-c0000001").Account)
}

func TestAccountSchedulerRecoversOnlyItsAccountsRuns(t *testing.T) {
	t.Parallel()
	cfg := accountsConfig(of("prod", testPolicy("web", "ins-a0000001")), of("partner", testPolicy("db", "ins-b0000001")))
	h := newHarness(t, cfg, withAccount("prod"))
	slot := t0.Add(-10 * time.Minute)
	left := func(pol, inst, account string) int64 {
		return h.hist.seed(history.Run{Policy: pol, InstanceID: inst, Region: "ap-guangzhou", ScheduledAt: slot, StartedAt: slot,
			Status: history.StatusPending, ImageName: pol + "-" + inst, DaemonID: "old-daemon", Account: account})
	}
	mine := left("web", "ins-a0000001", "prod")
	theirs := left("db", "ins-b0000001", "partner")
	// A run of web made when the policy was still partner's is partner's to reconcile: only
	// partner's credentials find its image.
	moved := left("web", "ins-a0000002", "partner")
	h.start()
	require.NoError(t, h.hist.waitFor(h.ctx, func(runs []history.Run) bool { return runs[mine-1].Status == history.StatusRequested }))

	h.hist.mu.Lock()
	takenOver := h.hist.takenOver
	h.hist.mu.Unlock()
	require.Equal(t, []int64{mine}, takenOver)
	runs, _, _ := h.hist.snapshot()
	require.Equal(t, "test-daemon", runs[mine-1].DaemonID)
	for _, id := range []int64{theirs, moved} {
		require.Equal(t, history.StatusPending, runs[id-1].Status)
		require.Equal(t, "old-daemon", runs[id-1].DaemonID)
	}
	for _, c := range h.cvm.calls {
		if c.Action == "CreateImage" {
			require.Equal(t, "ins-a0000001", c.Create.InstanceID)
		}
	}
}

// TestTwoAccountSchedulersFireOnlyTheirPolicies runs a scheduler per account on one history and
// one fake clock, each with its own CVM client: the catch-up walk and the cron loop of each fire
// only its account's policies, through its own client.
func TestTwoAccountSchedulersFireOnlyTheirPolicies(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a hang guard only
	defer cancel()
	clk := clockwork.NewFakeClockAt(t0)
	web := scheduled(t, of("prod", testPolicy("web", "ins-a0000001")), "* * * * *")
	db := scheduled(t, of("partner", testPolicy("db", "ins-b0000001")), "* * * * *")
	cfg := accountsConfig(web, db)
	hist := &fakeHistory{lastSlots: map[string]time.Time{"web": t0.Add(-3 * time.Minute), "db": t0.Add(-3 * time.Minute)}}
	live := &policy.Live{}
	start := func(account string) (*Scheduler, *fakeCVM) {
		c := newFakeCVM(clk)
		s, err := New(Options{Config: cfg, Live: live, CVM: c, History: hist, Clock: clk, Logger: zerolog.Nop(),
			DaemonID: "daemon-" + account, Account: account, Rand: rand.New(rand.NewPCG(1, 2))})
		require.NoError(t, err)
		require.NoError(t, s.Start(ctx))
		t.Cleanup(s.Stop)
		return s, c
	}
	_, prodCVM := start("prod")
	_, partnerCVM := start("partner")

	// requestedAt waits until both policies have a requested run at slot, then until both cron
	// loops wait for their next slot again (two clock timers: the fire is over).
	requestedAt := func(slot time.Time) {
		require.NoError(t, hist.waitFor(ctx, func(runs []history.Run) bool {
			n := 0
			for _, r := range runs {
				if r.ScheduledAt.Equal(slot) && r.Status == history.StatusRequested {
					n++
				}
			}
			return n == 2
		}))
		require.NoError(t, clk.BlockUntilContext(ctx, 2))
	}
	// At start each walks its own policy: t0-2m and t0-1m missed, t0 fired.
	requestedAt(t0)
	clk.Advance(time.Minute)
	requestedAt(t0.Add(time.Minute))

	runs, _, _ := hist.snapshot()
	require.Len(t, runs, 8)
	for _, r := range runs {
		switch r.Policy {
		case "web":
			require.Equal(t, "prod", r.Account)
			require.Equal(t, "daemon-prod", r.DaemonID, "claimed by prod's scheduler")
		case "db":
			require.Equal(t, "partner", r.Account)
			require.Equal(t, "daemon-partner", r.DaemonID, "claimed by partner's scheduler")
		default:
			t.Fatalf("unexpected run %+v", r)
		}
	}
	instances := func(c *fakeCVM) []string {
		c.mu.Lock()
		defer c.mu.Unlock()
		var out []string
		for _, call := range c.calls {
			require.Equal(t, "CreateImage", call.Action)
			out = append(out, call.Create.InstanceID)
		}
		return out
	}
	require.Equal(t, []string{"ins-a0000001", "ins-a0000001"}, instances(prodCVM), "prod's client images only prod's policy")
	require.Equal(t, []string{"ins-b0000001", "ins-b0000001"}, instances(partnerCVM), "partner's client images only partner's policy")
}
