package quota

import (
	"context"
	"fmt"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/policy"
)

// TestGatesOfTwoAccountsCountTheirOwnImages: a Gate per account, each with its account's client,
// judges a fire against its account's images only, prunes through its own hook, signs every call
// with its account, and refuses to judge another account's policy.
func TestGatesOfTwoAccountsCountTheirOwnImages(t *testing.T) {
	t.Parallel()
	const partnerID, partnerKey = "AKIDpartner0001", "partner-secret-key"
	e := newEnv(t, false, cvmsim.Options{ImageQuota: 3, Accounts: []cvmsim.Account{
		{SecretID: cvmsim.DefaultSecretID, SecretKey: cvmsim.DefaultSecretKey}, {SecretID: partnerID, SecretKey: partnerKey}}})
	partner, err := cvm.New(cvm.Config{Endpoint: e.sim.URL(), Credential: common.NewCredential(partnerID, partnerKey), Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(partner.Close)
	// prod's quota is full; partner holds one image.
	for i := range 3 {
		e.sim.AddImage(cvmsim.Image{Name: fmt.Sprintf("prod-%d", i), Region: region})
	}
	e.sim.AddImage(cvmsim.Image{Name: "partner-0", Region: region, Account: partnerID})

	pruned := map[string]int{}
	prune := func(account string) func(context.Context, string) (int, error) {
		return func(context.Context, string) (int, error) { pruned[account]++; return 0, nil }
	}
	prodGate := NewGate(Options{CVM: e.client, Account: "prod", Clock: e.clk, Logger: zerolog.Nop(), Prune: prune("prod")})
	partnerGate := NewGate(Options{CVM: partner, Account: "partner", Clock: e.clk, Logger: zerolog.Nop(), Prune: prune("partner")})
	web := &policy.Policy{Name: "web", Region: region, Account: "prod"}
	db := &policy.Policy{Name: "db", Region: region, Account: "partner"}

	refused, err := prodGate.Check(e.ctx, web, []string{"ins-a0000001"})
	require.NoError(t, err)
	require.Contains(t, refused, "ins-a0000001", "prod's three images fill its quota")
	refused, err = partnerGate.Check(e.ctx, db, []string{"ins-b0000001", "ins-b0000002"})
	require.NoError(t, err)
	require.Empty(t, refused, "partner's one image leaves room for two")
	require.Equal(t, map[string]int{"prod": 1}, pruned, "only the gate short of room pruned, with its own hook")

	// Each gate read its account's quota and counted its account's images, with its keys.
	type call struct{ action, secretID string }
	var calls []call
	for _, c := range e.sim.Calls() {
		require.Empty(t, c.Code)
		calls = append(calls, call{c.Action, c.SecretID})
	}
	require.Equal(t, []call{
		{cvmsim.ActionDescribeImageQuota, cvmsim.DefaultSecretID}, {cvmsim.ActionDescribeImages, cvmsim.DefaultSecretID},
		{cvmsim.ActionDescribeImageQuota, partnerID}, {cvmsim.ActionDescribeImages, partnerID},
	}, calls)

	// Another account's policy is not judged (nothing read, nothing refused), nor pruned for.
	before := len(e.sim.Calls())
	refused, err = prodGate.Check(e.ctx, db, []string{"ins-b0000001"})
	require.ErrorIs(t, err, ErrOtherAccount)
	require.Nil(t, refused)
	require.False(t, prodGate.OnQuotaExceeded(e.ctx, db))
	require.Len(t, e.sim.Calls(), before)
	require.Equal(t, map[string]int{"prod": 1}, pruned)
}
