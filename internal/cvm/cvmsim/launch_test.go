package cvmsim_test

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
	"github.com/imager-dev/imager/internal/tat"
)

const region = "ap-guangzhou"

// fakeSim starts a simulator on a fake clock with opts, an image img-restore1 NORMAL in region,
// and the CVM and TAT clients pointed at it.
func fakeSim(t *testing.T, opts cvmsim.Options) (*cvmsim.Server, *clockwork.FakeClock, *cvm.Client, *tat.Client) {
	t.Helper()
	clock := clockwork.NewFakeClockAt(time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC))
	opts.Clock = clock
	opts.MaxClockSkew = -1
	sim, client := simtest.Start(t, opts)
	sim.AddImage(cvmsim.Image{ID: "img-restore1", Name: "web-1-nightly", Region: region})
	return sim, clock, client, tat.New(client)
}

func launchInput(token string) cvm.RunInstancesInput {
	return cvm.RunInstancesInput{ImageID: "img-restore1", Zone: "ap-guangzhou-3", InstanceType: "S5.MEDIUM4",
		VpcID: "vpc-1", SubnetID: "subnet-1", SecurityGroupIDs: []string{"sg-1"}, InstanceName: "restore-test",
		ClientToken: token, Tags: []cvm.Tag{{Key: "imager:restore-test", Value: "web-1"}}}
}

func states(t *testing.T, c *cvm.Client, ids ...string) map[string]string {
	t.Helper()
	out, err := c.DescribeInstancesStatus(context.Background(), region, ids)
	require.NoError(t, err)
	return out.States
}

func TestLaunchLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim, clock, client, tc := fakeSim(t, cvmsim.Options{LaunchReadyAfter: 30 * time.Second,
		AgentOnlineAfter: 20 * time.Second, TerminateAfter: 10 * time.Second})
	start := clock.Now()

	out, err := client.RunInstances(ctx, region, launchInput("restore-web-1-20250301"))
	require.NoError(t, err)
	require.Len(t, out.InstanceIDs, 1)
	require.NotEmpty(t, out.RequestID)
	id := out.InstanceIDs[0]
	require.Regexp(t, `^ins-[a-z0-9]{8}$`, id)
	require.Equal(t, map[string]string{id: cvm.InstanceStatePending}, states(t, client, id))

	// PENDING: no command, no termination yet (busy).
	_, err = tc.RunCommand(ctx, region, tat.RunCommandInput{InstanceIDs: []string{id}, Content: "true"})
	ae, _ := cvm.AsAPIError(err)
	require.Equal(t, "ResourceUnavailable.InstanceStateNotRunning", ae.Code)
	_, err = client.TerminateInstances(ctx, region, []string{id})
	ae, _ = cvm.AsAPIError(err)
	require.Equal(t, "UnsupportedOperation.InstanceStatePending", ae.Code)
	require.Equal(t, cvm.ClassBusy, ae.Class)

	clock.Advance(29 * time.Second)
	require.Equal(t, cvm.InstanceStatePending, states(t, client, id)[id])
	clock.Advance(time.Second)
	require.Equal(t, cvm.InstanceStateRunning, states(t, client, id)[id])

	// RUNNING, agent not yet online.
	agents, err := tc.DescribeAutomationAgentStatus(ctx, region, []string{id})
	require.NoError(t, err)
	require.Equal(t, map[string]string{id: tat.AgentStatusOffline}, agents.Agents)
	_, err = tc.RunCommand(ctx, region, tat.RunCommandInput{InstanceIDs: []string{id}, Content: "true"})
	ae, _ = cvm.AsAPIError(err)
	require.True(t, tat.AgentOffline(ae.Code), ae.Code)
	require.Equal(t, tat.CodeAgentStatusNotOnline, ae.Code)

	clock.Advance(20 * time.Second)
	agents, err = tc.DescribeAutomationAgentStatus(ctx, region, []string{id})
	require.NoError(t, err)
	require.Equal(t, map[string]string{id: tat.AgentStatusOnline}, agents.Agents)

	// DescribeInstances shows what was launched.
	page, err := client.DescribeInstances(ctx, region, cvm.DescribeInstancesInput{InstanceIDs: []string{id}})
	require.NoError(t, err)
	require.Equal(t, []cvm.Instance{{ID: id, Name: "restore-test", Zone: "ap-guangzhou-3", State: "RUNNING",
		Tags: []cvm.Tag{{Key: "imager:restore-test", Value: "web-1"}}}}, page.Instances)

	_, err = client.TerminateInstances(ctx, region, []string{id})
	require.NoError(t, err)
	require.Equal(t, cvm.InstanceStateTerminating, states(t, client, id)[id])
	_, err = client.TerminateInstances(ctx, region, []string{id})
	ae, _ = cvm.AsAPIError(err)
	require.Equal(t, "UnsupportedOperation.InstanceStateTerminating", ae.Code)
	clock.Advance(10 * time.Second)
	require.Empty(t, states(t, client, id))
	_, err = client.TerminateInstances(ctx, region, []string{id})
	ae, _ = cvm.AsAPIError(err)
	require.Equal(t, "InvalidInstanceId.NotFound", ae.Code)
	require.Equal(t, cvm.ClassPermanent, ae.Class)

	launches := sim.LaunchedInstances()
	require.Len(t, launches, 1)
	l := launches[0]
	require.Equal(t, cvmsim.Launch{InstanceID: id, Account: cvmsim.DefaultSecretID, Region: region, Zone: "ap-guangzhou-3",
		ImageID: "img-restore1", InstanceType: "S5.MEDIUM4", Name: "restore-test", ChargeType: "POSTPAID_BY_HOUR",
		ClientToken: "restore-web-1-20250301", VpcID: "vpc-1", SubnetID: "subnet-1", SecurityGroupIDs: []string{"sg-1"},
		Tags: map[string]string{"imager:restore-test": "web-1"}, LaunchedAt: start, RunningAt: start.Add(30 * time.Second),
		TerminatedAt: start.Add(50 * time.Second), GoneAt: start.Add(60 * time.Second)}, l)
	require.Empty(t, sim.Instances())
}

func TestRunInstancesClientTokenIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim, _, client, _ := fakeSim(t, cvmsim.Options{})
	first, err := client.RunInstances(ctx, region, launchInput("tok-1"))
	require.NoError(t, err)
	again, err := client.RunInstances(ctx, region, launchInput("tok-1"))
	require.NoError(t, err)
	require.Equal(t, first.InstanceIDs, again.InstanceIDs)
	require.NotEqual(t, first.RequestID, again.RequestID)
	require.Len(t, sim.LaunchedInstances(), 1, "the same token launches once")

	other, err := client.RunInstances(ctx, region, launchInput("tok-2"))
	require.NoError(t, err)
	require.NotEqual(t, first.InstanceIDs, other.InstanceIDs)
	noToken, err := client.RunInstances(ctx, region, launchInput(""))
	require.NoError(t, err)
	require.Len(t, noToken.InstanceIDs, 1)
	require.Len(t, sim.LaunchedInstances(), 3)

	// A token is the account's in one region: the same token elsewhere launches anew.
	sim.AddImage(cvmsim.Image{ID: "img-shanghai", Name: "x", Region: "ap-shanghai"})
	in := launchInput("tok-1")
	in.ImageID, in.Zone = "img-shanghai", "ap-shanghai-2"
	sh, err := client.RunInstances(ctx, "ap-shanghai", in)
	require.NoError(t, err)
	require.NotEqual(t, first.InstanceIDs, sh.InstanceIDs)
}

func TestRunInstancesErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(*cvmsim.Server)
		edit  func(*cvm.RunInstancesInput)
		code  string
		class cvm.Class
	}{
		{name: "unknown image", edit: func(in *cvm.RunInstancesInput) { in.ImageID = "img-nothere" },
			code: "InvalidImageId.NotFound", class: cvm.ClassPermanent},
		{name: "image in another region", setup: func(s *cvmsim.Server) {
			s.AddImage(cvmsim.Image{ID: "img-elsewhere", Name: "e", Region: "ap-shanghai"})
		}, edit: func(in *cvm.RunInstancesInput) { in.ImageID = "img-elsewhere" }, code: "InvalidImageId.NotFound", class: cvm.ClassPermanent},
		{name: "image not NORMAL yet", setup: func(s *cvmsim.Server) {
			s.AddImage(cvmsim.Image{ID: "img-creating", Name: "c", Region: region, State: cvmsim.ImageStateSyncing})
		}, edit: func(in *cvm.RunInstancesInput) { in.ImageID = "img-creating" }, code: "InvalidParameterValue.InvalidImageState", class: cvm.ClassBusy},
		{name: "malformed image id", edit: func(in *cvm.RunInstancesInput) { in.ImageID = "web-1" }, code: "InvalidImageId.Malformed"},
		{name: "zone of another region", edit: func(in *cvm.RunInstancesInput) { in.Zone = "ap-shanghai-2" }, code: "InvalidZone.MismatchRegion"},
		{name: "malformed instance type", edit: func(in *cvm.RunInstancesInput) { in.InstanceType = "big" }, code: "InvalidInstanceType.Malformed"},
		{name: "quota", setup: func(s *cvmsim.Server) {
			s.SetInstanceQuota(1)
			s.AddInstance(cvmsim.Instance{ID: "ins-existing", Region: region})
		},
			code: "LimitExceeded.InstanceQuota", class: cvm.ClassPermanent},
		{name: "dry run", edit: func(in *cvm.RunInstancesInput) { in.DryRun = true }, code: "DryRunOperation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sim, _, client, _ := fakeSim(t, cvmsim.Options{})
			if tt.setup != nil {
				tt.setup(sim)
			}
			in := launchInput("tok")
			if tt.edit != nil {
				tt.edit(&in)
			}
			_, err := client.RunInstances(context.Background(), region, in)
			ae, ok := cvm.AsAPIError(err)
			require.True(t, ok, "%v", err)
			require.Equal(t, tt.code, ae.Code)
			require.Equal(t, tt.class, ae.Class)
			require.NotEmpty(t, ae.RequestID)
			require.Empty(t, sim.LaunchedInstances())
		})
	}
}

func TestFailNextLaunches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim, clock, client, _ := fakeSim(t, cvmsim.Options{LaunchReadyAfter: time.Minute})
	sim.FailNextLaunches(1)
	failed, err := client.RunInstances(ctx, region, launchInput("a"))
	require.NoError(t, err)
	ok, err := client.RunInstances(ctx, region, launchInput("b"))
	require.NoError(t, err)
	clock.Advance(time.Minute)
	f, o := failed.InstanceIDs[0], ok.InstanceIDs[0]
	require.Equal(t, map[string]string{f: cvm.InstanceStateLaunchFailed, o: cvm.InstanceStateRunning}, states(t, client, f, o, "ins-unknown1"))
	// A LAUNCH_FAILED instance can be destroyed.
	_, err = client.TerminateInstances(ctx, region, []string{f})
	require.NoError(t, err)
	require.Equal(t, map[string]string{o: cvm.InstanceStateRunning}, states(t, client, f, o))
}

func TestHeldLaunchAndAgent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim, clock, client, tc := fakeSim(t, cvmsim.Options{LaunchReadyAfter: -1, AgentOnlineAfter: -1})
	out, err := client.RunInstances(ctx, region, launchInput("held"))
	require.NoError(t, err)
	id := out.InstanceIDs[0]
	clock.Advance(24 * time.Hour)
	require.Equal(t, cvm.InstanceStatePending, states(t, client, id)[id])
	sim.SetInstanceState(id, "RUNNING")
	clock.Advance(24 * time.Hour)
	agents, err := tc.DescribeAutomationAgentStatus(ctx, region, []string{id})
	require.NoError(t, err)
	require.Equal(t, tat.AgentStatusOffline, agents.Agents[id])
	sim.SetAgentState(id, cvmsim.AgentOnline)
	agents, err = tc.DescribeAutomationAgentStatus(ctx, region, []string{id})
	require.NoError(t, err)
	require.Equal(t, tat.AgentStatusOnline, agents.Agents[id])
	require.Equal(t, clock.Now().Add(-24*time.Hour), sim.LaunchedInstances()[0].RunningAt)
}

func TestLaunchLimits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim, _, client, _ := fakeSim(t, cvmsim.Options{})
	for i := range 11 {
		_, err := client.RunInstances(ctx, region, launchInput(string(rune('a'+i))))
		if i < 10 {
			require.NoError(t, err)
			continue
		}
		ae, _ := cvm.AsAPIError(err)
		require.Equal(t, "RequestLimitExceeded", ae.Code)
	}
	require.Len(t, sim.LaunchedInstances(), 10)
	require.Equal(t, 10, cvmsim.DefaultLimits()[cvmsim.ActionTerminateInstances])
	require.Equal(t, 40, cvmsim.DefaultLimits()[cvmsim.ActionDescribeInstancesStatus])
}
