package history_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// accountOf reads a run's account column as the database holds it.
func accountOf(t *testing.T, s *history.Store, table string, id int64) string {
	t.Helper()
	var a string
	require.NoError(t, s.Pool().QueryRow(context.Background(), `SELECT account FROM `+table+` WHERE id = $1`, id).Scan(&a))
	return a
}

func TestClaimsRecordTheAccount(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)

	prod := claimParams("web", "ins-11111111", slot)
	prod.Account = "prod"
	none := claimParams("web", "ins-22222222", slot) // a caller that names no account
	partner := claimParams("db", "ins-33333333", slot)
	partner.Account = "partner"
	partner.Status, partner.ErrorCode, partner.ErrorMessage = history.StatusSkipped, "PreviousImageInProgress", "busy"
	runs, claimed, err := s.RunsClaimFire(ctx, []history.RunClaimParams{prod, none, partner})
	require.NoError(t, err)
	require.Equal(t, []bool{true, true, true}, claimed)
	want := []string{"prod", policy.DefaultAccount, "partner"}
	for i, r := range runs {
		require.Equal(t, want[i], r.Account, "the claim answers with the account written")
		require.Equal(t, want[i], accountOf(t, s, "image_runs", r.ID))
		got, err := s.RunGet(ctx, r.ID)
		require.NoError(t, err)
		require.Equal(t, got, r, "the claim's run is the row as the database holds it, account included")
	}

	// The single claim writes it too, and a slot claimed before keeps the account it has.
	one := claimParams("web", "ins-44444444", slot)
	one.Account = "partner"
	r, created, err := s.RunClaim(ctx, one)
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, "partner", r.Account)
	again := one
	again.Account = "prod"
	r2, created, err := s.RunClaim(ctx, again)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, "partner", r2.Account)
	runs, claimed, err = s.RunsClaimFire(ctx, []history.RunClaimParams{again})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, claimed)
	require.Equal(t, "partner", runs[0].Account)

	r3, created, err := s.RunClaim(ctx, claimParams("web", "ins-55555555", slot))
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, policy.DefaultAccount, r3.Account)
}

func TestAccountListings(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	claimIn := func(account, pol, inst string, at time.Time) history.Run {
		p := claimParams(pol, inst, at)
		p.Account = account
		r, created, err := s.RunClaim(ctx, p)
		require.NoError(t, err)
		require.True(t, created)
		return r
	}
	// Requested runs of two accounts (one policy moved from prod to partner between its slots).
	a1 := claimIn("prod", "web", "ins-aaaaaaaa", slot)
	b1 := claimIn("partner", "web", "ins-aaaaaaaa", slot.Add(time.Hour))
	a2 := claimIn("prod", "db", "ins-bbbbbbbb", slot.Add(2*time.Hour))
	d1 := claimIn("", "db", "ins-cccccccc", slot.Add(3*time.Hour))
	for i, r := range []history.Run{a1, b1, a2, d1} {
		require.NoError(t, s.RunRequested(ctx, r.ID, "img-acct000"+string(rune('0'+i)), "req"))
	}

	of := func(account string, limit int) []int64 {
		runs, err := s.RunsRequestedOf(ctx, account, limit)
		require.NoError(t, err)
		for _, r := range runs {
			if account != "" {
				require.Equal(t, account, r.Account)
			}
		}
		return runIDs(runs)
	}
	require.Equal(t, []int64{a1.ID, a2.ID}, of("prod", 0))
	require.Equal(t, []int64{a1.ID}, of("prod", 1))
	require.Equal(t, []int64{b1.ID}, of("partner", 0))
	require.Equal(t, []int64{d1.ID}, of(policy.DefaultAccount, 0))
	require.Equal(t, []int64{a1.ID, b1.ID, a2.ID, d1.ID}, of("", 0), "no account: every account's runs")
	require.Empty(t, of("nobody", 0))
	all, err := s.RunsRequested(ctx, 0)
	require.NoError(t, err)
	require.Equal(t, []int64{a1.ID, b1.ID, a2.ID, d1.ID}, runIDs(all))

	// Retainable runs and open deletions of one policy, per account.
	for _, r := range []history.Run{a1, b1} {
		require.NoError(t, s.RunAvailable(ctx, r.ID, ptr[int64](20), "", r.ScheduledAt.Add(time.Minute)))
	}
	retain := func(account string) []int64 {
		runs, err := s.RunsRetainableOf(ctx, account, "web", "")
		require.NoError(t, err)
		return runIDs(runs)
	}
	require.Equal(t, []int64{a1.ID}, retain("prod"))
	require.Equal(t, []int64{b1.ID}, retain("partner"))
	require.Equal(t, []int64{b1.ID, a1.ID}, retain(""), "newest slot first over every account")
	old, err := s.RunsRetainable(ctx, "web", "ins-aaaaaaaa")
	require.NoError(t, err)
	require.Equal(t, []int64{b1.ID, a1.ID}, runIDs(old))

	a1, err = s.RunGet(ctx, a1.ID)
	require.NoError(t, err)
	b1, err = s.RunGet(ctx, b1.ID)
	require.NoError(t, err)
	delA, created, err := s.DeletionInsert(ctx, history.Deletion{ImageID: a1.ImageID, ImageName: a1.ImageName, Policy: "web",
		InstanceID: a1.InstanceID, Region: a1.Region, RunID: a1.ID, Reason: "keep_last 1", RequestedAt: slot, Account: "prod"})
	require.NoError(t, err)
	require.True(t, created)
	delB, created, err := s.DeletionInsert(ctx, history.Deletion{ImageID: b1.ImageID, ImageName: b1.ImageName, Policy: "web",
		InstanceID: b1.InstanceID, Region: b1.Region, RunID: b1.ID, Reason: "keep_last 1", RequestedAt: slot.Add(time.Second)})
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, "prod", accountOf(t, s, "image_deletions", delA))
	require.Equal(t, policy.DefaultAccount, accountOf(t, s, "image_deletions", delB), "no account given: the default one")
	got, err := s.DeletionGet(ctx, delA)
	require.NoError(t, err)
	require.Equal(t, "prod", got.Account)

	open := func(account string) []int64 {
		ds, err := s.DeletionsOpenOf(ctx, account, "web", "")
		require.NoError(t, err)
		ids := []int64{}
		for _, d := range ds {
			ids = append(ids, d.ID)
		}
		return ids
	}
	require.Equal(t, []int64{delA}, open("prod"))
	require.Equal(t, []int64{delB}, open(policy.DefaultAccount))
	require.Empty(t, open("partner"))
	require.Equal(t, []int64{delA, delB}, open(""))
}
