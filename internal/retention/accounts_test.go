package retention_test

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/retention"
)

// The second account of the two-account tests; the first is the simulator's default key pair.
const (
	partnerID  = "AKIDpartner0001"
	partnerKey = "partner-secret-key"
)

// fireIn is fire for an image made with client (signed by account) and claimed under account.
func (e *env) fireIn(client *cvm.Client, account string, pol *policy.Policy, instance string, slot time.Time) history.Run {
	e.t.Helper()
	name := policy.ImageName(pol, instance, slot, 0)
	run, claimed, err := e.store.RunClaim(e.ctx, history.RunClaimParams{Policy: pol.Name, InstanceID: instance,
		Region: pol.Region, ScheduledAt: slot, ImageName: name, DaemonID: "test", StartedAt: slot,
		Status: history.StatusPending, Account: account})
	require.NoError(e.t, err)
	require.True(e.t, claimed)
	tags := policy.ImageTags(pol, instance, slot)
	var in []cvm.Tag
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		in = append(in, cvm.Tag{Key: k, Value: tags[k]})
	}
	out, err := client.CreateImage(e.ctx, pol.Region, cvm.CreateImageInput{InstanceID: instance, ImageName: name, Tags: in})
	require.NoError(e.t, err)
	require.NoError(e.t, e.store.RunRequested(e.ctx, run.ID, out.ImageID, out.RequestID))
	e.sim.CompleteAll()
	require.NoError(e.t, e.store.RunAvailable(e.ctx, run.ID, nil, "", slot.Add(20*time.Minute)))
	run, err = e.store.RunGet(e.ctx, run.ID)
	require.NoError(e.t, err)
	return run
}

// TestPrunersOfTwoAccountsWeighOnlyTheirImages: a Pruner per account, each with its account's
// client, weighs and deletes only the images made with its account, records its deletions under
// it, and signs every call with it. A policy moved from one account to the other keeps the
// images it made before pruned by the first account.
func TestPrunersOfTwoAccountsWeighOnlyTheirImages(t *testing.T) {
	t.Parallel()
	// The simulator holds two accounts; e.client signs with the first (prod).
	accounts := []cvmsim.Account{{SecretID: cvmsim.DefaultSecretID, SecretKey: cvmsim.DefaultSecretKey}, {SecretID: partnerID, SecretKey: partnerKey}}
	e := newEnvWith(t, cvmsim.Options{Accounts: accounts})
	partner, err := cvm.New(cvm.Config{Endpoint: e.sim.URL(), Credential: common.NewCredential(partnerID, partnerKey), Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(partner.Close)

	keep1 := &policy.Retention{KeepLast: 1, MinKeep: 1}
	web := webPolicy("web", guangzhou, keep1)
	web.Account = "prod"
	db := webPolicy("db", guangzhou, keep1)
	db.Account = "partner"
	e.cfg.Policies = []*policy.Policy{web, db}
	e.cfg.Accounts = []*policy.Account{{Name: "prod", API: policy.DefaultAPI()}, {Name: "partner", API: policy.DefaultAPI()}}
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-prod0001", Region: guangzhou})
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-part0001", Region: guangzhou, Account: partnerID})
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-part0002", Region: guangzhou, Account: partnerID})

	var webProd, dbPartner, webPartner []history.Run
	for i := 2; i >= 0; i-- {
		slot := time.Date(2026, 11, 10, 3, 0, 0, 0, time.UTC).Add(-time.Duration(i) * day)
		webProd = append(webProd, e.fireIn(e.client, "prod", web, "ins-prod0001", slot))
		dbPartner = append(dbPartner, e.fireIn(partner, "partner", db, "ins-part0001", slot))
		// web was partner's policy before: these images are partner's.
		webPartner = append(webPartner, e.fireIn(partner, "partner", web, "ins-part0002", slot.Add(-10*day)))
	}
	// An open deletion of one of partner's web images, decided before the move: prod's client
	// cannot see the image, so prod's pruner must not close it as gone.
	openID, _, err := e.store.DeletionInsert(e.ctx, history.Deletion{ImageID: webPartner[0].ImageID, ImageName: webPartner[0].ImageName,
		Policy: "web", InstanceID: "ins-part0002", Region: guangzhou, RunID: webPartner[0].ID, Reason: "keep_last 1",
		RequestedAt: t0.Add(-time.Hour), Account: "partner"})
	require.NoError(t, err)
	e.sim.ResetCalls()

	newPruner := func(account string, client *cvm.Client) *retention.Pruner {
		return retention.NewPruner(retention.Options{CVM: client, History: e.store, Account: account,
			Config: func() *policy.Config { return e.cfg }, Clock: e.clk, Logger: zerolog.Nop()})
	}
	prodPruner := newPruner("prod", e.client)
	plan, err := prodPruner.Plan(e.ctx, "")
	require.NoError(t, err)
	require.Len(t, plan, 2)
	for _, d := range plan {
		require.Equal(t, "prod", d.Account)
		require.Equal(t, "ins-prod0001", d.InstanceID)
	}
	n, err := prodPruner.PruneAll(e.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	secretIDs := func() map[string]bool {
		out := map[string]bool{}
		for _, c := range e.sim.Calls() {
			require.Empty(t, c.Code, "%s answered %s", c.Action, c.Code)
			out[c.SecretID] = true
		}
		return out
	}
	require.Equal(t, map[string]bool{cvmsim.DefaultSecretID: true}, secretIDs(), "prod's pruner calls with prod's keys only")

	open, err := e.store.DeletionGet(e.ctx, openID)
	require.NoError(t, err)
	require.Equal(t, history.DeletionPending, open.Status, "another account's open deletion is left to its pruner")

	e.sim.ResetCalls()
	n, err = newPruner("partner", partner).PruneAll(e.ctx)
	require.NoError(t, err)
	require.Equal(t, 4, n, "db's two older images, and web's two older ones made with partner")
	require.Equal(t, map[string]bool{partnerID: true}, secretIDs())

	deleted := map[string]string{} // image id -> account of its deletion row
	for _, d := range deletionsOf(t, e) {
		require.Equal(t, history.DeletionDeleted, d.Status, "%+v", d)
		deleted[d.ImageID] = d.Account
	}
	want := map[string]string{webProd[0].ImageID: "prod", webProd[1].ImageID: "prod",
		dbPartner[0].ImageID: "partner", dbPartner[1].ImageID: "partner",
		webPartner[0].ImageID: "partner", webPartner[1].ImageID: "partner"}
	require.Equal(t, want, deleted)
	var left []string
	for _, img := range e.sim.Images() {
		left = append(left, img.ID)
	}
	require.ElementsMatch(t, []string{webProd[2].ImageID, dbPartner[2].ImageID, webPartner[2].ImageID}, left)
}

// deletionsOf lists every deletion row.
func deletionsOf(t *testing.T, e *env) []history.Deletion {
	t.Helper()
	ds, err := e.store.DeletionsRecent(e.ctx, time.Time{})
	require.NoError(t, err)
	return ds
}
