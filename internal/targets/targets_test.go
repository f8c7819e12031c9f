package targets_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/targets"
)

// The simulator and the HTTP client start goroutines; every test closes both.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const region = "ap-guangzhou"

// countingPace lets every call through and counts them.
type countingPace struct{ n atomic.Int64 }

func (p *countingPace) Wait(ctx context.Context) error {
	p.n.Add(1)
	return ctx.Err()
}

type env struct {
	sim    *cvmsim.Server
	client *cvm.Client
	pace   *countingPace
	r      *targets.Resolver
}

// newEnv starts a simulator (no limits: these tests count calls, not pace) and a resolver on the
// real CVM client. clock times the resolver's backoffs (nil: real clock).
func newEnv(t *testing.T, clock clockwork.Clock) *env {
	t.Helper()
	sim, client := simtest.Start(t, cvmsim.Options{Logger: zerolog.Nop(), Limits: map[string]int{cvmsim.ActionDescribeInstances: 0}})
	pace := &countingPace{}
	r := targets.NewResolver(targets.Options{CVM: client, Pace: pace, Clock: clock, Logger: zerolog.Nop()})
	return &env{sim: sim, client: client, pace: pace, r: r}
}

// describeCalls returns the DescribeInstances calls the simulator received.
func (e *env) describeCalls() []cvmsim.Call {
	var out []cvmsim.Call
	for _, c := range e.sim.Calls() {
		if c.Action == cvmsim.ActionDescribeInstances {
			out = append(out, c)
		}
	}
	return out
}

func selectPolicy(sel *policy.Selector, instances ...string) *policy.Policy {
	return &policy.Policy{Name: "web-nightly", Region: region, Location: time.UTC, Instances: instances, Select: sel, Enabled: true}
}

func TestResolveTagSelectorAcrossPages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, nil)

	// 300 instances in the region with mixed tags and zones, and look-alikes that must not match.
	zones := []string{"ap-guangzhou-3", "ap-guangzhou-4", "ap-guangzhou-6"}
	var want []string
	for i := range 300 {
		in := cvmsim.Instance{
			ID:     fmt.Sprintf("ins-t%07d", i),
			Region: region,
			Zone:   zones[i%3],
			Tags:   map[string]string{"env": "prod", "tier": "web", "team": fmt.Sprint(i % 4)},
		}
		if i%5 == 0 {
			in.Tags["env"] = "dev"
		}
		if i%7 == 0 {
			in.Tags["tier"] = "db"
		}
		if i%11 == 0 {
			delete(in.Tags, "tier")
		}
		e.sim.AddInstance(in)
		if i%5 != 0 && i%7 != 0 && i%11 != 0 && in.Zone != "ap-guangzhou-6" && i != 1 {
			want = append(want, in.ID)
		}
	}
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-prodlike", Region: region, Zone: zones[0],
		Tags: map[string]string{"env": "production", "tier": "web"}})
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-shanghai", Region: "ap-shanghai", Zone: "ap-shanghai-2",
		Tags: map[string]string{"env": "prod", "tier": "web"}})
	// A listed instance outside the selector, and a listed one that is gone.
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-listed01", Region: region, Zone: "ap-guangzhou-6"})
	want = append(want, "ins-listed01")
	slices.Sort(want)
	require.Greater(t, len(want), 100, "the selection spans two pages")

	sel := &policy.Selector{
		Tags:    map[string]string{"env": "prod", "tier": "web"},
		Zones:   []string{"ap-guangzhou-3", "ap-guangzhou-4"},
		Exclude: []string{"ins-t0000001"},
	}
	got, skipped, err := e.r.Resolve(ctx, selectPolicy(sel, "ins-listed01", "ins-gone0001"))
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.Equal(t, map[string]string{"ins-gone0001": targets.ReasonGone}, skipped)

	calls := e.describeCalls()
	require.Len(t, calls, 3, "one by id, two pages by filter")
	require.Equal(t, []any{"ins-listed01", "ins-gone0001"}, calls[0].Params["InstanceIds"])
	var offsets []any
	for _, c := range calls[1:] {
		require.Equal(t, float64(100), c.Params["Limit"])
		require.ElementsMatch(t, []any{
			map[string]any{"Name": "tag:env", "Values": []any{"prod"}},
			map[string]any{"Name": "tag:tier", "Values": []any{"web"}},
			map[string]any{"Name": "zone", "Values": []any{"ap-guangzhou-3", "ap-guangzhou-4"}},
		}, c.Params["Filters"])
		offsets = append(offsets, c.Params["Offset"])
	}
	require.Equal(t, []any{nil, float64(100)}, offsets)
	require.Equal(t, int64(len(calls)), e.pace.n.Load(), "every call waits on the pace")

	// A new matching instance is picked up at the next resolution, a removed one drops out.
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-newweb01", Region: region, Zone: zones[1],
		Tags: map[string]string{"env": "prod", "tier": "web"}})
	e.sim.RemoveInstance(want[0])
	got, _, err = e.r.Resolve(ctx, selectPolicy(sel))
	require.NoError(t, err)
	require.Contains(t, got, "ins-newweb01")
	require.NotContains(t, got, want[0])
	require.NotContains(t, got, "ins-listed01", "only listed, and no longer listed")
}

func TestResolveListedInstances(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, nil)
	var listed, want []string
	gone := map[string]string{}
	for i := range 130 {
		id := fmt.Sprintf("ins-l%07d", i)
		listed = append(listed, id)
		if i%10 == 3 {
			gone[id] = targets.ReasonGone
			continue
		}
		e.sim.AddInstance(cvmsim.Instance{ID: id, Region: region})
		want = append(want, id)
	}
	// Listed twice: resolved once. An instance of another region is not there either.
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-shanghai", Region: "ap-shanghai"})
	gone["ins-shanghai"] = targets.ReasonGone
	listed = append(listed, listed[0], "ins-shanghai")

	got, skipped, err := e.r.Resolve(ctx, selectPolicy(nil, listed...))
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.Equal(t, gone, skipped)
	calls := e.describeCalls()
	require.Len(t, calls, 2, "131 distinct ids in batches of 100")
	require.Len(t, calls[0].Params["InstanceIds"], 100)
	require.Len(t, calls[1].Params["InstanceIds"], 31)
	for _, c := range calls {
		require.NotContains(t, c.Params, "Filters")
	}

	// Nothing gone: skipped is nil.
	_, skipped, err = e.r.Resolve(ctx, selectPolicy(nil, want[:3]...))
	require.NoError(t, err)
	require.Nil(t, skipped)
}

func TestResolveBeyondTheFilterLimits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, nil)
	// Eleven tag keys and seven zones: more than 10 filters and 5 values allow in one request.
	tags := map[string]string{}
	for i := range 11 {
		tags[fmt.Sprintf("k%02d", i)] = "v"
	}
	var zones []string
	for i := range 7 {
		zones = append(zones, fmt.Sprintf("ap-guangzhou-%d", i+1))
	}
	mk := func(id, zone string, drop string) {
		in := cvmsim.Instance{ID: id, Region: region, Zone: zone, Tags: map[string]string{}}
		for k, v := range tags {
			if k != drop {
				in.Tags[k] = v
			}
		}
		e.sim.AddInstance(in)
	}
	mk("ins-zone0001", zones[0], "")
	mk("ins-zone0007", zones[6], "")         // in the second group of zones
	mk("ins-lastkey1", zones[1], "k10")      // lacks the key that did not fit in the filters
	mk("ins-firstky1", zones[1], "k00")      // lacks a filtered key
	mk("ins-nozone01", "ap-guangzhou-8", "") // outside the zones

	got, skipped, err := e.r.Resolve(ctx, selectPolicy(&policy.Selector{Tags: tags, Zones: zones}))
	require.NoError(t, err)
	require.Nil(t, skipped)
	require.Equal(t, []string{"ins-zone0001", "ins-zone0007"}, got)

	calls := e.describeCalls()
	require.Len(t, calls, 2, "one request per group of five zones")
	for _, c := range calls {
		require.Empty(t, c.Code, "the simulator accepted the request")
		filters := c.Params["Filters"].([]any)
		require.Len(t, filters, 10)
		for _, f := range filters {
			require.LessOrEqual(t, len(f.(map[string]any)["Values"].([]any)), 5)
		}
	}
}

func TestResolveRetriesTransientErrors(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clk := clockwork.NewFakeClock()
	e := newEnv(t, clk)
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-web00001", Region: region, Tags: map[string]string{"env": "prod"}})
	e.sim.QueueErrors(cvmsim.ActionDescribeInstances, "InternalError", "RequestLimitExceeded")
	p := selectPolicy(&policy.Selector{Tags: map[string]string{"env": "prod"}})

	type result struct {
		got []string
		err error
	}
	done := make(chan result, 1)
	go func() {
		got, _, err := e.r.Resolve(ctx, p)
		done <- result{got, err}
	}()
	for range 2 { // two backoffs on the fake clock
		require.NoError(t, clk.BlockUntilContext(ctx, 1))
		clk.Advance(time.Minute)
	}
	res := <-done
	require.NoError(t, res.err)
	require.Equal(t, []string{"ins-web00001"}, res.got)
	require.Len(t, e.describeCalls(), 3)

	// A permanent error is not retried and fails the resolution with the API's error.
	e.sim.QueueErrors(cvmsim.ActionDescribeInstances, "UnauthorizedOperation")
	_, _, err := e.r.Resolve(ctx, p)
	ae, ok := cvm.AsAPIError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, "UnauthorizedOperation", ae.Code)
	require.Contains(t, err.Error(), "resolve select of web-nightly")
	require.Len(t, e.describeCalls(), 4)

	// Three transient errors in a row: given up after three calls.
	e.sim.QueueErrors(cvmsim.ActionDescribeInstances, "InternalError", "InternalError", "InternalError")
	go func() {
		got, _, err := e.r.Resolve(ctx, p)
		done <- result{got, err}
	}()
	for range 2 {
		require.NoError(t, clk.BlockUntilContext(ctx, 1))
		clk.Advance(time.Minute)
	}
	res = <-done
	ae, ok = cvm.AsAPIError(res.err)
	require.True(t, ok, "%v", res.err)
	require.Equal(t, "InternalError", ae.Code)
	require.Len(t, e.describeCalls(), 7)
}

func TestResolveStopsWithTheContext(t *testing.T) {
	t.Parallel()
	e := newEnv(t, clockwork.NewFakeClock())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err := e.r.Resolve(ctx, selectPolicy(nil, "ins-web00001"))
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, e.describeCalls())
}

func TestDataDisks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, nil)
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-db000001", Region: region, DataDiskIDs: []string{"disk-data0001", "disk-data0002"}})
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-web00001", Region: region})

	all := selectPolicy(nil)
	all.Image.DataDisks = policy.DataDisks{All: true}
	listed := selectPolicy(nil)
	listed.Image.DataDisks = policy.DataDisks{IDs: []string{"disk-data0002"}}
	none := selectPolicy(nil)

	tests := []struct {
		name     string
		p        *policy.Policy
		instance string
		want     []string
		calls    int
		err      string
	}{
		{"all: every data disk", all, "ins-db000001", []string{"disk-data0001", "disk-data0002"}, 1, ""},
		{"all: an instance without data disks", all, "ins-web00001", nil, 1, ""},
		{"all: a gone instance", all, "ins-gone0001", nil, 1, "data disks of ins-gone0001: " + targets.ReasonGone},
		{"a list is used as is", listed, "ins-db000001", []string{"disk-data0002"}, 0, ""},
		{"no data disks", none, "ins-db000001", nil, 0, ""},
	}
	for _, tc := range tests {
		before := len(e.describeCalls())
		got, err := e.r.DataDisks(ctx, tc.p, tc.instance)
		if tc.err != "" {
			require.EqualError(t, err, tc.err, tc.name)
		} else {
			require.NoError(t, err, tc.name)
		}
		require.Equal(t, tc.want, got, tc.name)
		require.Len(t, e.describeCalls(), before+tc.calls, tc.name)
	}

	// The answer is not shared with the policy: changing it changes nothing there.
	got, err := e.r.DataDisks(ctx, listed, "ins-db000001")
	require.NoError(t, err)
	got[0] = "disk-changed1"
	require.Equal(t, []string{"disk-data0002"}, listed.Image.DataDisks.IDs)

	// Errors from the API keep their class.
	e.sim.QueueErrors(cvmsim.ActionDescribeInstances, "UnauthorizedOperation")
	_, err = e.r.DataDisks(ctx, all, "ins-db000001")
	var ae *cvm.APIError
	require.True(t, errors.As(err, &ae))
	require.Equal(t, cvm.ClassPermanent, ae.Class)
}

func TestDefaultPaceIsUsed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-web00001", Region: region})
	r := targets.NewResolver(targets.Options{CVM: e.client, Logger: zerolog.Nop()})
	ctx, cancel := context.WithCancel(context.Background())
	got, _, err := r.Resolve(ctx, selectPolicy(nil, "ins-web00001"))
	require.NoError(t, err)
	require.Equal(t, []string{"ins-web00001"}, got)
	cancel()
	// The pace's wait honours the context: nothing is sent once it is done.
	_, _, err = r.Resolve(ctx, selectPolicy(nil, "ins-web00001"))
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, e.describeCalls(), 1)
}

// TestPrimeChecksListedInstancesInBatchesAcrossPolicies: a fire of 1,000 policies of 3 listed
// instances each checks all 3,000 instances in 30 DescribeInstances calls, and the policies'
// Resolve calls then make none for them, until the answers are PrimeTTL old.
func TestPrimeChecksListedInstancesInBatchesAcrossPolicies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := clockwork.NewFakeClock()
	e := newEnv(t, clk)

	var policies []*policy.Policy
	for i := range 1000 {
		var ids []string
		for j := range 3 {
			id := fmt.Sprintf("ins-p%04d%03d", i, j)
			ids = append(ids, id)
			if !(i%100 == 0 && j == 2) { // every 100th policy lists one instance that is gone
				e.sim.AddInstance(cvmsim.Instance{ID: id, Region: region, Zone: "ap-guangzhou-3"})
			}
		}
		p := selectPolicy(nil, ids...)
		p.Name = fmt.Sprintf("p%04d", i)
		policies = append(policies, p)
	}

	e.r.Prime(ctx, policies)
	calls := e.describeCalls()
	require.Len(t, calls, 30)
	for _, c := range calls {
		require.Len(t, c.Params["InstanceIds"].([]any), 100)
	}

	for i, p := range policies {
		got, skipped, err := e.r.Resolve(ctx, p)
		require.NoError(t, err)
		if i%100 == 0 {
			require.Equal(t, p.Instances[:2], got)
			require.Equal(t, map[string]string{p.Instances[2]: targets.ReasonGone}, skipped)
		} else {
			require.Equal(t, p.Instances, got)
			require.Nil(t, skipped)
		}
	}
	require.Len(t, e.describeCalls(), 30, "Resolve made no call for primed instances")

	// Past the TTL, Resolve asks again: the next fire sees the account as it is then.
	clk.Advance(targets.PrimeTTL)
	_, _, err := e.r.Resolve(ctx, policies[1])
	require.NoError(t, err)
	require.Len(t, e.describeCalls(), 31)
}

// TestPrimeFailureLeavesResolveToAsk: a batch Prime cannot check is asked again by Resolve.
func TestPrimeFailureLeavesResolveToAsk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, clockwork.NewFakeClock())
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-a0000001", Region: region, Zone: "ap-guangzhou-3"})
	e.sim.QueueErrors(cvmsim.ActionDescribeInstances, "AuthFailure.SignatureFailure")
	p := selectPolicy(nil, "ins-a0000001")
	e.r.Prime(ctx, []*policy.Policy{p})
	require.Len(t, e.describeCalls(), 1)
	got, _, err := e.r.Resolve(ctx, p)
	require.NoError(t, err)
	require.Equal(t, []string{"ins-a0000001"}, got)
	require.Len(t, e.describeCalls(), 2)
}
