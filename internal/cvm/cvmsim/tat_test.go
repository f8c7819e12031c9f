package cvmsim_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/tat"
)

func tasksOf(t *testing.T, tc *tat.Client, invocationID string) map[string]tat.Task {
	t.Helper()
	out, err := tc.DescribeInvocationTasks(context.Background(), region, tat.DescribeInvocationTasksInput{InvocationID: invocationID})
	require.NoError(t, err)
	require.Equal(t, len(out.Tasks), out.TotalCount)
	m := map[string]tat.Task{}
	for _, task := range out.Tasks {
		m[task.InstanceID] = task
	}
	return m
}

func TestRunCommandScriptedOutcomes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim, clock, _, tc := fakeSim(t, cvmsim.Options{TaskStartAfter: 2 * time.Second})
	for _, id := range []string{"ins-ok000001", "ins-fail0001", "ins-slow0001", "ins-long0001"} {
		sim.AddInstance(cvmsim.Instance{ID: id, Region: region})
	}
	long := strings.Repeat("x", cvmsim.MaxTaskOutputBytes+10)
	sim.SetCommandResult(func(instanceID, _ string) cvmsim.CommandOutcome {
		switch instanceID {
		case "ins-fail0001":
			return cvmsim.CommandOutcome{Status: cvmsim.TaskFailed, ExitCode: 3, Output: "disk busy\n", After: 5 * time.Second}
		case "ins-slow0001":
			return cvmsim.CommandOutcome{Status: cvmsim.TaskSuccess, After: time.Hour} // beyond the Timeout
		case "ins-long0001":
			return cvmsim.CommandOutcome{Output: long}
		}
		return cvmsim.CommandOutcome{Output: "stopped\n", After: 10 * time.Second}
	})
	start := clock.Now()
	out, err := tc.RunCommand(ctx, region, tat.RunCommandInput{
		InstanceIDs: []string{"ins-ok000001", "ins-fail0001", "ins-slow0001", "ins-long0001"},
		Content:     "systemctl stop app && sync", Timeout: 30 * time.Second, CommandName: "imager-pre-hook"})
	require.NoError(t, err)
	require.Regexp(t, `^inv-`, out.InvocationID)
	require.Regexp(t, `^cmd-`, out.CommandID)

	tasks := tasksOf(t, tc, out.InvocationID)
	require.Len(t, tasks, 4)
	for _, task := range tasks {
		require.Equal(t, tat.TaskPending, task.Status)
		require.Nil(t, task.ExitCode)
		require.True(t, task.StartTime.IsZero())
	}
	clock.Advance(2 * time.Second)
	tasks = tasksOf(t, tc, out.InvocationID)
	require.Equal(t, tat.TaskRunning, tasks["ins-ok000001"].Status)
	require.Equal(t, start.Add(2*time.Second), tasks["ins-ok000001"].StartTime)
	require.Equal(t, tat.TaskSuccess, tasks["ins-long0001"].Status)
	require.Equal(t, long[:cvmsim.MaxTaskOutputBytes], tasks["ins-long0001"].Output)
	require.Equal(t, 10, tasks["ins-long0001"].Dropped)

	clock.Advance(10 * time.Second)
	tasks = tasksOf(t, tc, out.InvocationID)
	ok, failed, slow := tasks["ins-ok000001"], tasks["ins-fail0001"], tasks["ins-slow0001"]
	require.Equal(t, tat.TaskSuccess, ok.Status)
	require.Equal(t, 0, *ok.ExitCode)
	require.Equal(t, "stopped\n", ok.Output)
	require.Equal(t, start.Add(12*time.Second), ok.EndTime)
	require.Equal(t, tat.TaskFailed, failed.Status)
	require.Equal(t, 3, *failed.ExitCode)
	require.Equal(t, "disk busy\n", failed.Output)
	require.Equal(t, start.Add(7*time.Second), failed.EndTime)
	require.Equal(t, tat.TaskRunning, slow.Status)

	clock.Advance(20 * time.Second)
	slow = tasksOf(t, tc, out.InvocationID)["ins-slow0001"]
	require.Equal(t, tat.TaskTimeout, slow.Status)
	require.Nil(t, slow.ExitCode, "a TIMEOUT task has no exit code")
	require.NotEmpty(t, slow.ErrorInfo)
	require.Equal(t, start.Add(32*time.Second), slow.EndTime)

	// The simulator's record, for ordering against other calls.
	all := sim.Tasks()
	require.Len(t, all, 4)
	require.Equal(t, "ins-ok000001", all[0].InstanceID)
	require.Equal(t, "systemctl stop app && sync", all[0].Content)
	require.Equal(t, "imager-pre-hook", all[0].CommandName)
	require.Equal(t, "root", all[0].Username)
	require.Equal(t, 30*time.Second, all[0].Timeout)
	require.Equal(t, start, all[0].CreatedAt)
	require.Equal(t, start.Add(2*time.Second), all[0].StartedAt)
	require.Equal(t, start.Add(12*time.Second), all[0].FinishedAt)

	// By task id and by instance; the API hides output unless asked (the client always asks).
	byID, err := tc.DescribeInvocationTasks(ctx, region, tat.DescribeInvocationTasksInput{TaskIDs: []string{ok.TaskID}})
	require.NoError(t, err)
	require.Len(t, byID.Tasks, 1)
	require.Equal(t, ok, byID.Tasks[0])
	byInstance, err := tc.DescribeInvocationTasks(ctx, region, tat.DescribeInvocationTasksInput{InstanceID: "ins-fail0001"})
	require.NoError(t, err)
	require.Equal(t, []tat.Task{failed}, byInstance.Tasks)
	call := sim.Calls()[len(sim.Calls())-1]
	require.Equal(t, false, call.Params["HideOutput"])
}

func TestDefaultCommandSucceedsAtOnce(t *testing.T) {
	t.Parallel()
	sim, clock, _, tc := fakeSim(t, cvmsim.Options{})
	sim.AddInstance(cvmsim.Instance{ID: "ins-web00001", Region: region})
	out, err := tc.RunCommand(context.Background(), region, tat.RunCommandInput{InstanceIDs: []string{"ins-web00001"}, Content: "echo hi"})
	require.NoError(t, err)
	task := tasksOf(t, tc, out.InvocationID)["ins-web00001"]
	require.Equal(t, tat.TaskSuccess, task.Status)
	require.Equal(t, 0, *task.ExitCode)
	require.Equal(t, clock.Now(), task.EndTime)
	require.Equal(t, "SHELL", sim.Tasks()[0].CommandType)
	require.Equal(t, "/root", sim.Tasks()[0].WorkingDirectory)
}

func TestRunCommandRefusals(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		instance cvmsim.Instance
		code     string
		offline  bool
	}{
		{name: "agent offline", instance: cvmsim.Instance{ID: "ins-b0000001", Agent: cvmsim.AgentOffline},
			code: "ResourceUnavailable.AgentStatusNotOnline", offline: true},
		{name: "agent not installed", instance: cvmsim.Instance{ID: "ins-b0000001", Agent: cvmsim.AgentNotInstalled},
			code: "ResourceUnavailable.AgentNotInstalled", offline: true},
		{name: "stopped", instance: cvmsim.Instance{ID: "ins-b0000001", State: "STOPPED"},
			code: "ResourceUnavailable.InstanceStateNotRunning"},
		{name: "unknown instance", instance: cvmsim.Instance{ID: "ins-other001"}, code: "ResourceNotFound.InstanceNotFound"},
		{name: "instance in another region", instance: cvmsim.Instance{ID: "ins-b0000001", Region: "ap-shanghai"},
			code: "ResourceNotFound.InstanceNotFound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sim, _, _, tc := fakeSim(t, cvmsim.Options{})
			sim.AddInstance(cvmsim.Instance{ID: "ins-a0000001", Region: region})
			if tt.instance.Region == "" {
				tt.instance.Region = region
			}
			sim.AddInstance(tt.instance)
			_, err := tc.RunCommand(context.Background(), region, tat.RunCommandInput{
				InstanceIDs: []string{"ins-a0000001", "ins-b0000001"}, Content: "true"})
			ae, ok := cvm.AsAPIError(err)
			require.True(t, ok, "%v", err)
			require.Equal(t, tt.code, ae.Code)
			require.Equal(t, tt.offline, tat.AgentOffline(ae.Code))
			require.Equal(t, cvm.ClassPermanent, ae.Class)
			require.Empty(t, sim.Tasks(), "a refused call runs nothing, not even on the good instance")
		})
	}
}

func TestDescribeAutomationAgentStatus(t *testing.T) {
	t.Parallel()
	sim, _, _, tc := fakeSim(t, cvmsim.Options{})
	sim.AddInstance(cvmsim.Instance{ID: "ins-online01", Region: region})
	sim.AddInstance(cvmsim.Instance{ID: "ins-offline1", Region: region, Agent: cvmsim.AgentOffline})
	sim.AddInstance(cvmsim.Instance{ID: "ins-noagent1", Region: region, Agent: cvmsim.AgentNotInstalled})
	sim.AddInstance(cvmsim.Instance{ID: "ins-stopped1", Region: region, State: "STOPPED"})
	out, err := tc.DescribeAutomationAgentStatus(context.Background(), region,
		[]string{"ins-online01", "ins-offline1", "ins-noagent1", "ins-stopped1", "ins-unknown1"})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"ins-online01": tat.AgentStatusOnline, "ins-offline1": tat.AgentStatusOffline,
		"ins-stopped1": tat.AgentStatusOffline}, out.Agents)
	sim.SetAgentState("ins-offline1", cvmsim.AgentOnline)
	out, err = tc.DescribeAutomationAgentStatus(context.Background(), region, []string{"ins-offline1"})
	require.NoError(t, err)
	require.Equal(t, tat.AgentStatusOnline, out.Agents["ins-offline1"])
}

func TestTATCallsAreSignedForTAT(t *testing.T) {
	t.Parallel()
	sim, _, client, tc := fakeSim(t, cvmsim.Options{})
	sim.AddInstance(cvmsim.Instance{ID: "ins-web00001", Region: region})
	_, err := tc.DescribeAutomationAgentStatus(context.Background(), region, []string{"ins-web00001"})
	require.NoError(t, err)
	// A TAT action sent as a CVM call (scope and version cvm's) does not exist in the CVM API.
	req := cvm.NewRequest(cvm.ServiceCVM, tat.ActionDescribeAutomationAgentStatus)
	err = client.Call(context.Background(), cvm.ServiceCVM, region, tat.ActionDescribeAutomationAgentStatus, req, newEmptyResponse())
	ae, ok := cvm.AsAPIError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, "InvalidAction", ae.Code)
	// And a CVM action signed for TAT does not exist in the TAT API.
	req = cvm.NewRequest(tat.Service, cvm.ActionDescribeImageQuota)
	err = client.Call(context.Background(), tat.Service, region, cvm.ActionDescribeImageQuota, req, newEmptyResponse())
	ae, _ = cvm.AsAPIError(err)
	require.Equal(t, "InvalidAction", ae.Code)
	// The TAT version with the CVM scope is refused.
	req = cvm.NewRequest(cvm.Service{Name: "cvm", Version: cvmsim.TATAPIVersion}, cvm.ActionDescribeImageQuota)
	err = client.Call(context.Background(), cvm.ServiceCVM, region, cvm.ActionDescribeImageQuota, req, newEmptyResponse())
	ae, _ = cvm.AsAPIError(err)
	require.Equal(t, "NoSuchVersion", ae.Code)
}

func TestTATLimits(t *testing.T) {
	t.Parallel()
	sim, _, _, tc := fakeSim(t, cvmsim.Options{})
	sim.AddInstance(cvmsim.Instance{ID: "ins-web00001", Region: region})
	for i := range 21 {
		_, err := tc.RunCommand(context.Background(), region, tat.RunCommandInput{InstanceIDs: []string{"ins-web00001"}, Content: "true"})
		if i < 20 {
			require.NoError(t, err)
			continue
		}
		ae, _ := cvm.AsAPIError(err)
		require.Equal(t, "RequestLimitExceeded", ae.Code)
		require.Equal(t, cvm.ClassThrottled, ae.Class)
	}
	require.Len(t, sim.Tasks(), 20)
	require.Equal(t, 21, sim.MaxInAnySecond(cvmsim.ActionRunCommand), "the refused call is counted too")
}

func newEmptyResponse() *tchttp.CommonResponse { return tchttp.NewCommonResponse() }
