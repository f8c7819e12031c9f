package cvmsim

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
)

var (
	accountA = Account{SecretID: "AKIDaccountA", SecretKey: "key-of-account-a"}
	accountB = Account{SecretID: "AKIDaccountB", SecretKey: "key-of-account-b"}
)

// callAs is call signed by acct, in region.
func callAs(t *testing.T, s *Server, acct Account, region, action string, params map[string]any) (map[string]any, error) {
	t.Helper()
	return send(t.Context(), commonClient(t, s, region, acct.SecretID, acct.SecretKey), action, params)
}

func TestAccountsOwnTheirResources(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{Accounts: []Account{accountA, accountB}})
	require.Equal(t, []string{accountA.SecretID, accountB.SecretID}, s.Accounts())
	s.AddInstance(Instance{ID: "ins-ofaaaaaa", Region: testRegion}) // the first account's
	s.AddInstance(Instance{ID: "ins-ofbbbbbb", Region: testRegion, Account: accountB.SecretID})
	s.AddImage(Image{ID: "img-ofbbbbbb", Name: "shared-name", Region: testRegion, Account: accountB.SecretID})

	// Each account sees its own instances and images only.
	resp, err := callAs(t, s, accountA, testRegion, ActionDescribeInstances, nil)
	require.NoError(t, err)
	require.EqualValues(t, 1, resp["TotalCount"])
	require.Equal(t, "ins-ofaaaaaa", resp["InstanceSet"].([]any)[0].(map[string]any)["InstanceId"])
	resp, err = callAs(t, s, accountA, testRegion, ActionDescribeImages, nil)
	require.NoError(t, err)
	require.EqualValues(t, 0, resp["TotalCount"])
	resp, err = callAs(t, s, accountB, testRegion, ActionDescribeImages, nil)
	require.NoError(t, err)
	require.EqualValues(t, 1, resp["TotalCount"])

	// Neither can act on the other's resources; names are per account.
	_, err = callAs(t, s, accountA, testRegion, ActionCreateImage, createParams("ins-ofbbbbbb", "x"))
	require.Equal(t, "InvalidInstanceId.NotFound", code(t, err))
	_, err = callAs(t, s, accountA, testRegion, ActionDeleteImages, map[string]any{"ImageIds": []any{"img-ofbbbbbb"}})
	require.Equal(t, "InvalidImageId.NotFound", code(t, err))
	_, err = callAs(t, s, accountA, testRegion, ActionSyncImages, syncParams("img-ofbbbbbb", "ap-shanghai"))
	require.Equal(t, "InvalidImageId.NotFound", code(t, err))
	resp, err = callAs(t, s, accountA, testRegion, ActionCreateImage, createParams("ins-ofaaaaaa", "shared-name"))
	require.NoError(t, err, "another account's image of that name is no duplicate")
	idA := resp["ImageId"].(string)

	// B copies its image; the copy is B's.
	resp, err = callAs(t, s, accountB, testRegion, ActionSyncImages, syncParams("img-ofbbbbbb", "ap-shanghai"))
	require.NoError(t, err)
	ids, _ := imageSet(t, resp)
	resp, err = callAs(t, s, accountA, "ap-shanghai", ActionDescribeImages, nil)
	require.NoError(t, err)
	require.EqualValues(t, 0, resp["TotalCount"])

	owners := map[string]string{}
	for _, img := range s.Images() {
		owners[img.ID] = img.Account
	}
	require.Equal(t, map[string]string{"img-ofbbbbbb": accountB.SecretID, idA: accountA.SecretID,
		ids["ap-shanghai"]: accountB.SecretID}, owners)
	for _, in := range s.Instances() {
		require.Equal(t, map[string]string{"ins-ofaaaaaa": accountA.SecretID, "ins-ofbbbbbb": accountB.SecretID}[in.ID], in.Account)
	}
}

func TestAccountsHaveTheirOwnQuota(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{Accounts: []Account{accountA, accountB}, ImageQuota: 1})
	s.AddImage(Image{Name: "a", Region: "ap-shanghai"})
	s.AddImage(Image{ID: "img-ofbbbbbb", Name: "b", Region: testRegion, Account: accountB.SecretID})
	_, err := callAs(t, s, accountB, testRegion, ActionSyncImages, syncParams("img-ofbbbbbb", "ap-shanghai"))
	require.NoError(t, err, "A's image in ap-shanghai does not use B's quota")
	s.AddImage(Image{ID: "img-ofbbbbb2", Name: "b2", Region: "ap-beijing", Account: accountB.SecretID})
	_, err = callAs(t, s, accountB, "ap-beijing", ActionSyncImages, syncParams("img-ofbbbbb2", "ap-shanghai"))
	require.Equal(t, "ImageQuotaLimitExceeded", code(t, err))
}

func TestAccountsHaveTheirOwnLimits(t *testing.T) {
	t.Parallel()
	// A frozen clock puts every call in the same instant.
	clock := clockwork.NewFakeClockAt(time.Now())
	s := startSim(t, Options{Clock: clock, Accounts: []Account{accountA, accountB}})
	for _, acct := range []Account{accountA, accountB} {
		for i := range 11 {
			s.AddInstance(Instance{ID: fmt.Sprintf("ins-%s%02d", strings.ToLower(acct.SecretID[4:12]), i), Account: acct.SecretID})
		}
	}
	var wg sync.WaitGroup
	errs := map[string][]error{accountA.SecretID: make([]error, 11), accountB.SecretID: make([]error, 11)}
	for _, acct := range []Account{accountA, accountB} {
		c := commonClient(t, s, testRegion, acct.SecretID, acct.SecretKey)
		for i := range 11 {
			wg.Go(func() {
				_, errs[acct.SecretID][i] = send(t.Context(), c, ActionCreateImage,
					createParams(fmt.Sprintf("ins-%s%02d", strings.ToLower(acct.SecretID[4:12]), i), fmt.Sprintf("n-%d", i)))
			})
		}
	}
	wg.Wait()
	for id, list := range errs {
		accepted := 0
		for _, err := range list {
			if c := code(t, err); c == "" {
				accepted++
			} else {
				require.Equal(t, "RequestLimitExceeded", c)
			}
		}
		require.Equal(t, 10, accepted, "each account makes 10 CreateImage calls in one second: %s", id)
		require.Equal(t, 11, s.MaxInAnySecondFor(id, ActionCreateImage))
	}
	require.Equal(t, 11, s.MaxInAnySecond(ActionCreateImage), "the busiest account, not the sum")
	require.Equal(t, 0, s.MaxInAnySecondFor("AKIDnobody", ActionCreateImage))
	require.Len(t, s.Images(), 20)

	// Every call names its account and region, never a key.
	for _, c := range s.Calls() {
		require.Contains(t, []string{accountA.SecretID, accountB.SecretID}, c.SecretID)
		require.Equal(t, testRegion, c.Region)
		require.NotContains(t, fmt.Sprintf("%+v", c), "key-of-account")
	}
}

func TestAccountsSignWithTheirOwnKey(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{Accounts: []Account{accountA, accountB}})
	_, err := callAs(t, s, Account{SecretID: accountA.SecretID, SecretKey: accountB.SecretKey}, testRegion, ActionDescribeImageQuota, nil)
	require.Equal(t, "AuthFailure.SignatureFailure", code(t, err))
	require.Equal(t, accountA.SecretID, lastCall(t, s).SecretID, "the SecretID sent is recorded even when the signature fails")
	_, err = callAs(t, s, Account{SecretID: DefaultSecretID, SecretKey: DefaultSecretKey}, testRegion, ActionDescribeImageQuota, nil)
	require.Equal(t, "AuthFailure.SecretIdNotFound", code(t, err), "the default pair is not accepted when Accounts is set")
	for _, acct := range []Account{accountA, accountB} {
		_, err = callAs(t, s, acct, testRegion, ActionDescribeImageQuota, nil)
		require.NoError(t, err)
	}
}

func TestAccountMisconfigurationPanics(t *testing.T) {
	t.Parallel()
	require.PanicsWithValue(t, "cvmsim: New: set either Options.Accounts or Options.SecretID/SecretKey, not both", func() {
		New(Options{SecretID: "AKIDx", Accounts: []Account{accountA}})
	})
	require.Panics(t, func() { New(Options{Accounts: []Account{accountA, accountA}}) })
	require.Panics(t, func() { New(Options{Accounts: []Account{{SecretID: "AKIDx"}}}) })
	s := New(Options{Accounts: []Account{accountA}})
	defer s.Close()
	require.PanicsWithValue(t, "cvmsim: AddInstance: unknown account AKIDnobody", func() {
		s.AddInstance(Instance{ID: "ins-x", Account: "AKIDnobody"})
	})
	require.PanicsWithValue(t, "cvmsim: AddImage: unknown account AKIDnobody", func() {
		s.AddImage(Image{Account: "AKIDnobody"})
	})
	require.Empty(t, s.Instances())
	require.Empty(t, s.Images())
}
