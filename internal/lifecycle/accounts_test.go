package lifecycle

import (
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
)

// The partner account of the two-account tests; the first account is the simulator's default key
// pair, which e.client signs with.
const (
	partnerID  = "AKIDpartner0001"
	partnerKey = "partner-secret-key"
)

// partnerClient is a client of e's simulator signed with the partner account's keys.
func (e *env) partnerClient() *cvm.Client {
	e.t.Helper()
	c, err := cvm.New(cvm.Config{Endpoint: e.sim.URL(), Credential: common.NewCredential(partnerID, partnerKey), Logger: zerolog.Nop()})
	require.NoError(e.t, err)
	e.t.Cleanup(c.Close)
	return c
}

// requestedIn is requested for an instance of the account whose keys sign client, its run
// claimed with account.
func (e *env) requestedIn(client *cvm.Client, secretID, account, policyName string) history.Run {
	e.t.Helper()
	e.seq++
	inst := fmt.Sprintf("ins-ac%06d", e.seq)
	e.sim.AddInstance(cvmsim.Instance{ID: inst, Region: region, Account: secretID})
	name := fmt.Sprintf("%s-%s-20260301-1200", policyName, inst)
	out, err := client.CreateImage(e.ctx, region, cvm.CreateImageInput{InstanceID: inst, ImageName: name})
	require.NoError(e.t, err)
	r, claimed, err := e.store.RunClaim(e.ctx, history.RunClaimParams{
		Policy: policyName, InstanceID: inst, Region: region, ScheduledAt: t0, ImageName: name,
		DaemonID: "test", StartedAt: e.clk.Now(), Status: history.StatusPending, Account: account,
	})
	require.NoError(e.t, err)
	require.True(e.t, claimed)
	require.NoError(e.t, e.store.RunRequested(e.ctx, r.ID, out.ImageID, out.RequestID))
	return e.run(r.ID)
}

// TestTrackersOfTwoAccountsFollowOnlyTheirRuns: a Tracker per account, each with its account's
// client, follows only the runs of its account; each DescribeImages is signed by the account
// whose runs it asks about.
func TestTrackersOfTwoAccountsFollowOnlyTheirRuns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageReadyAfter: 10 * time.Second, Accounts: []cvmsim.Account{
		{SecretID: cvmsim.DefaultSecretID, SecretKey: cvmsim.DefaultSecretKey}, {SecretID: partnerID, SecretKey: partnerKey}}})
	partner := e.partnerClient()
	prodRuns := []history.Run{e.requestedIn(e.client, cvmsim.DefaultSecretID, "prod", "web"), e.requestedIn(e.client, cvmsim.DefaultSecretID, "prod", "web")}
	partnerRun := e.requestedIn(partner, partnerID, "partner", "db")
	e.sim.ResetCalls()

	prodTr := e.newTracker(func(o *TrackerOptions) { o.Account = "prod" })
	prodTr.start()
	p := prodTr.next()
	require.Equal(t, 2, p.res.runs, "the prod tracker reads only prod's requested runs")
	require.Zero(t, p.res.terminal)

	// A wait for a run another account's tracker follows is refused at once.
	_, err := prodTr.WaitTerminal(e.ctx, []int64{partnerRun.ID})
	require.ErrorIs(t, err, ErrOtherAccount)

	prodTr.advance(DefaultPollInterval)
	p = prodTr.next()
	require.Equal(t, 2, p.res.terminal)
	for _, r := range prodRuns {
		require.Equal(t, history.StatusAvailable, e.run(r.ID).Status)
	}
	require.Equal(t, history.StatusRequested, e.run(partnerRun.ID).Status, "prod's tracker leaves partner's run alone")
	calls := e.describeCalls()
	require.NotEmpty(t, calls)
	for _, c := range calls {
		require.Equal(t, cvmsim.DefaultSecretID, c.SecretID)
		require.Empty(t, c.Code)
	}

	e.sim.ResetCalls()
	partnerTr := e.newTracker(func(o *TrackerOptions) { o.Account = "partner"; o.CVM = partner })
	partnerTr.start()
	p = partnerTr.next()
	require.Equal(t, 1, p.res.runs)
	require.Equal(t, 1, p.res.terminal)
	got := e.run(partnerRun.ID)
	require.Equal(t, history.StatusAvailable, got.Status)
	require.Equal(t, "partner", got.Account)
	calls = e.describeCalls()
	require.NotEmpty(t, calls)
	for _, c := range calls {
		require.Equal(t, partnerID, c.SecretID)
		require.Empty(t, c.Code)
	}
	done, err := partnerTr.WaitTerminal(e.ctx, []int64{partnerRun.ID})
	require.NoError(t, err)
	require.Equal(t, history.StatusAvailable, done[partnerRun.ID].Status)
}
