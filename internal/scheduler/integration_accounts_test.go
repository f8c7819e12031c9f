package scheduler

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/accounts"
	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
)

// twoAccountsYAML has two accounts with key pairs and api: blocks of their own, and a minutely
// policy each.
const twoAccountsYAML = `version: 1
api:
  create_image_rate: 10
  workers: 4
accounts:
  - name: prod
    secret_id_env: PROD_SECRET_ID
    secret_key_env: PROD_SECRET_KEY
    api: {create_image_rate: 2, workers: 1, describe_images_rate: 3}
  - name: partner
    secret_id_env: PARTNER_SECRET_ID
    secret_key_env: PARTNER_SECRET_KEY
    api: {create_image_rate: 4, workers: 2, describe_images_rate: 5}
policies:
  - name: prod-web
    account: prod
    schedule: "* * * * *"
    region: ap-guangzhou
    concurrency: allow
    instances: [ins-prod0001, ins-prod0002, ins-prod0003]
  - name: partner-db
    account: partner
    schedule: "* * * * *"
    region: ap-guangzhou
    concurrency: allow
    instances: [ins-part0001, ins-part0002, ins-part0003, ins-part0004]
`

// TestIntegrationTwoAccountSchedulersInOneProcess runs, in one process on one database and one
// fake clock, a Scheduler per account with a CVM client signed by that account's keys (read from
// the variables the policy file names, as the daemon does): each takes over only its account's
// runs left pending, walks and fires only its account's policy, signs every call with its
// account, claims with its account, and spaces its CreateImage calls by its own pace at its own
// account's rate.
func TestIntegrationTwoAccountSchedulersInOneProcess(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a hang guard only
	defer cancel()
	const (
		prodID, prodKey       = "AKIDprod00000001", "prod-secret-key"
		partnerID, partnerKey = "AKIDpartner00001", "partner-secret-key"
	)
	env := map[string]string{"PROD_SECRET_ID": prodID, "PROD_SECRET_KEY": prodKey,
		"PARTNER_SECRET_ID": partnerID, "PARTNER_SECRET_KEY": partnerKey}
	getenv := func(name string) string { return env[name] }
	now := time.Date(2027, 3, 1, 12, 0, 20, 0, time.UTC)
	clk := clockwork.NewFakeClockAt(now)

	// The simulator keeps the real per-account limits, counted on the same fake clock.
	sim := cvmsim.New(cvmsim.Options{Clock: clk, MaxClockSkew: -1, Logger: zerolog.Nop(),
		Accounts: []cvmsim.Account{{SecretID: prodID, SecretKey: prodKey}, {SecretID: partnerID, SecretKey: partnerKey}}})
	url, err := sim.Start()
	require.NoError(t, err)
	t.Cleanup(sim.Close)
	owner := map[string]string{} // instance -> SecretID of its account
	for _, id := range []string{"ins-prod0001", "ins-prod0002", "ins-prod0003"} {
		sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou", Account: prodID})
		owner[id] = prodID
	}
	for _, id := range []string{"ins-part0001", "ins-part0002", "ins-part0003", "ins-part0004"} {
		sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou", Account: partnerID})
		owner[id] = partnerID
	}

	store, err := history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(store.Close)
	_, err = store.Migrate(ctx)
	require.NoError(t, err)
	cfg, err := policy.LoadBytes("accounts.yaml", []byte(twoAccountsYAML), policy.WithEnv(getenv))
	require.NoError(t, err)

	// The last handled slot is 11:59: at start each walks to 12:00 and fires it. A previous
	// daemon left a run of each policy pending at 11:00.
	slot := now.Truncate(time.Minute)
	require.NoError(t, store.PolicySlotsSet(ctx, map[string]time.Time{"prod-web": slot.Add(-time.Minute), "partner-db": slot.Add(-time.Minute)}))
	leftPending := func(pol, inst, account string) int64 {
		p := history.RunClaimParams{Policy: pol, InstanceID: inst, Region: "ap-guangzhou", ScheduledAt: slot.Add(-time.Hour),
			ImageName: pol + "-" + inst + "-left", DaemonID: "old-daemon", StartedAt: slot.Add(-time.Hour),
			Status: history.StatusPending, Account: account}
		r, claimed, err := store.RunClaim(ctx, p)
		require.NoError(t, err)
		require.True(t, claimed)
		return r.ID
	}
	leftProd := leftPending("prod-web", "ins-prod0001", "prod")
	leftPartner := leftPending("partner-db", "ins-part0001", "partner")

	type side struct {
		s        *Scheduler
		grants   *grantLog
		outcomes chan Outcome
	}
	live := &policy.Live{}
	start := func(account string) *side {
		cred, err := accounts.Credential(cfg.Account(account), getenv)
		require.NoError(t, err)
		client, err := cvm.New(cvm.Config{Endpoint: url, Credential: cred, Logger: zerolog.Nop()})
		require.NoError(t, err)
		t.Cleanup(client.Close)
		sd := &side{grants: &grantLog{}, outcomes: make(chan Outcome, 100)}
		sd.s, err = New(Options{Config: cfg, Live: live, CVM: client, History: store, Clock: clk, Logger: zerolog.Nop(),
			DaemonID: "daemon-" + account, Account: account, Pace: pace.Options{OnGrant: sd.grants.add},
			OnOutcome: func(o Outcome) { sd.outcomes <- o }})
		require.NoError(t, err)
		require.NoError(t, sd.s.Start(ctx))
		t.Cleanup(sd.s.Stop)
		return sd
	}
	prod := start("prod")
	partner := start("partner")
	require.NotSame(t, prod.s.pace, partner.s.pace)

	// Drive the fake clock while anything beyond the two cron timers waits on it (the paces),
	// until every run has its outcome: prod 3 fired and 1 recovered, partner 4 and 1.
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			bctx, bcancel := context.WithCancel(ctx)
			res := make(chan error, 1)
			go func() { res <- clk.BlockUntilContext(bctx, 3) }()
			select {
			case err := <-res:
				bcancel()
				if err != nil {
					return
				}
				clk.Advance(20 * time.Millisecond)
			case <-done:
				bcancel()
				<-res
				return
			}
		}
	})
	collect := func(sd *side, n int) []Outcome {
		var out []Outcome
		for len(out) < n {
			select {
			case o := <-sd.outcomes:
				out = append(out, o)
			case <-ctx.Done():
				t.Fatalf("%d of %d outcomes before the guard: %+v", len(out), n, out)
			}
		}
		return out
	}
	prodOut := collect(prod, 4)
	partnerOut := collect(partner, 5)
	close(done)
	wg.Wait()
	require.Less(t, clk.Now(), slot.Add(time.Minute), "the next slot never came due")

	for _, o := range append(prodOut, partnerOut...) {
		require.Equal(t, history.StatusRequested, o.Status, "%+v", o)
	}
	// History: each account's runs, claimed or taken over by its own scheduler.
	runs, err := store.RunsRecent(ctx, time.Time{}, 0)
	require.NoError(t, err)
	require.Len(t, runs, 9)
	for _, r := range runs {
		require.Equal(t, history.StatusRequested, r.Status, "%+v", r)
		switch r.Policy {
		case "prod-web":
			require.Equal(t, "prod", r.Account)
			require.Equal(t, "daemon-prod", r.DaemonID)
		case "partner-db":
			require.Equal(t, "partner", r.Account)
			require.Equal(t, "daemon-partner", r.DaemonID)
		default:
			t.Fatalf("unexpected run %+v", r)
		}
	}
	for _, id := range []int64{leftProd, leftPartner} {
		r, err := store.RunGet(ctx, id)
		require.NoError(t, err)
		require.NotEqual(t, "old-daemon", r.DaemonID, "run %d was taken over", id)
	}

	// The API: every call answered, signed by the account that owns what it touches.
	creates := map[string][]string{} // SecretID -> instances imaged
	describes := map[string]int{}
	for _, c := range sim.Calls() {
		require.Empty(t, c.Code, "%s answered %s", c.Action, c.Code)
		switch c.Action {
		case cvmsim.ActionCreateImage:
			inst := c.Params["InstanceId"].(string)
			require.Equal(t, owner[inst], c.SecretID, "CreateImage of %s", inst)
			creates[c.SecretID] = append(creates[c.SecretID], inst)
		case cvmsim.ActionDescribeImages: // the recovered runs' look-ups by name
			describes[c.SecretID]++
		}
	}
	require.ElementsMatch(t, []string{"ins-prod0001", "ins-prod0001", "ins-prod0002", "ins-prod0003"}, creates[prodID])
	require.ElementsMatch(t, []string{"ins-part0001", "ins-part0001", "ins-part0002", "ins-part0003", "ins-part0004"}, creates[partnerID])
	require.Positive(t, describes[prodID])
	require.Positive(t, describes[partnerID])
	require.LessOrEqual(t, sim.MaxInAnySecondFor(prodID, cvmsim.ActionCreateImage), cvmsim.DefaultLimits()[cvmsim.ActionCreateImage])

	// Each pace granted exactly its scheduler's calls, at its own account's rate.
	prodGrants, partnerGrants := prod.grants.Grants(), partner.grants.Grants()
	require.Len(t, prodGrants, 4)
	require.Len(t, partnerGrants, 5)
	require.Equal(t, 2, pace.MaxInAnySecond(prodGrants), "prod's pace keeps to prod's rate of 2")
	require.LessOrEqual(t, pace.MaxInAnySecond(partnerGrants), 4)
	require.Greater(t, pace.MaxInAnySecond(partnerGrants), 2, "partner's pace is not held to prod's rate")
}
