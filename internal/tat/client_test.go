package tat_test

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
	"github.com/imager-dev/imager/internal/tat"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const region = "ap-guangzhou"

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code    string
		class   cvm.Class
		offline bool
	}{
		{"ResourceUnavailable.AgentStatusNotOnline", cvm.ClassPermanent, true},
		{"ResourceUnavailable.AgentNotInstalled", cvm.ClassPermanent, true},
		{"ResourceUnavailable.InstanceStateNotRunning", cvm.ClassPermanent, false},
		{"ResourceNotFound.InstanceNotFound", cvm.ClassPermanent, false},
		{"InvalidParameterValue.InvalidContent", cvm.ClassPermanent, false},
		{"InvalidParameterValue.LimitExceeded", cvm.ClassPermanent, false},
		{"InvalidParameterValue.InvalidImageState", cvm.ClassPermanent, false}, // busy for CVM, not a TAT code
		{"LimitExceeded", cvm.ClassThrottled, false},
		{"RequestLimitExceeded", cvm.ClassThrottled, false},
		{"RequestLimitExceeded.UinLimitExceeded", cvm.ClassThrottled, false},
		{"InternalError", cvm.ClassTransient, false},
		{"FailedOperation.CVMError", cvm.ClassTransient, false},
		{cvm.CodeTimeout, cvm.ClassTransient, false},
		{cvm.CodeNetworkError, cvm.ClassTransient, false},
		{cvm.CodeInvalidInput, cvm.ClassPermanent, false},
		{"MissingParameter", cvm.ClassPermanent, false},
		{"SomethingNew", cvm.ClassPermanent, false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.class, tat.Classify(tt.code), tt.code)
		require.Equal(t, tt.offline, tat.AgentOffline(tt.code), tt.code)
	}
}

func TestFinal(t *testing.T) {
	t.Parallel()
	for _, s := range []string{tat.TaskSuccess, tat.TaskFailed, tat.TaskTimeout, tat.TaskTaskTimeout, tat.TaskDeliverFailed,
		tat.TaskStartFailed, tat.TaskCancelled, tat.TaskTerminated} {
		require.True(t, tat.Final(s), s)
	}
	for _, s := range []string{tat.TaskPending, tat.TaskDelivering, tat.TaskDeliverDelayed, tat.TaskRunning, tat.TaskCancelling, ""} {
		require.False(t, tat.Final(s), s)
	}
}

func TestRunCommandAgainstTheSimulator(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim, client := simtest.Start(t, cvmsim.Options{})
	sim.AddInstance(cvmsim.Instance{ID: "ins-web00001", Region: region})
	sim.AddInstance(cvmsim.Instance{ID: "ins-web00002", Region: region})
	var calls []string
	sim.SetCommandResult(func(id, _ string) cvmsim.CommandOutcome {
		calls = append(calls, id) // under the simulator's lock; read after the call returns
		if id == "ins-web00002" {
			return cvmsim.CommandOutcome{Status: cvmsim.TaskFailed, ExitCode: 1, Output: "ünïcode\x00bytes"}
		}
		return cvmsim.CommandOutcome{Output: "ok"}
	})
	tc := tat.New(client)
	script := "#!/bin/sh\nfsfreeze -f /data\n"
	out, err := tc.RunCommand(ctx, region, tat.RunCommandInput{InstanceIDs: []string{"ins-web00001", "ins-web00002"},
		Content: script, CommandType: tat.CommandTypeShell, Timeout: 2 * time.Minute, Username: "root",
		WorkingDirectory: "/tmp", CommandName: "imager-pre"})
	require.NoError(t, err)
	require.NotEmpty(t, out.RequestID)
	call := sim.Calls()[0] // takes the simulator's lock: the hook's writes are visible after it
	require.Equal(t, []string{"ins-web00001", "ins-web00002"}, calls)
	require.Equal(t, tat.ActionRunCommand, call.Action)
	require.Equal(t, map[string]any{"Content": base64.StdEncoding.EncodeToString([]byte(script)),
		"InstanceIds": []any{"ins-web00001", "ins-web00002"}, "CommandType": "SHELL", "Timeout": float64(120),
		"Username": "root", "WorkingDirectory": "/tmp", "CommandName": "imager-pre"}, call.Params)
	require.Equal(t, script, sim.Tasks()[0].Content)

	page, err := tc.DescribeInvocationTasks(ctx, region, tat.DescribeInvocationTasksInput{InvocationID: out.InvocationID, Limit: 1})
	require.NoError(t, err)
	require.Equal(t, 2, page.TotalCount)
	require.Len(t, page.Tasks, 1)
	next, err := tc.DescribeInvocationTasks(ctx, region, tat.DescribeInvocationTasksInput{InvocationID: out.InvocationID, Offset: 1, Limit: 1})
	require.NoError(t, err)
	require.Len(t, next.Tasks, 1)
	failed := next.Tasks[0]
	require.Equal(t, "ins-web00002", failed.InstanceID)
	require.Equal(t, out.InvocationID, failed.InvocationID)
	require.Equal(t, out.CommandID, failed.CommandID)
	require.Equal(t, tat.TaskFailed, failed.Status)
	require.Equal(t, 1, *failed.ExitCode)
	require.Equal(t, "ünïcode\x00bytes", failed.Output)
	require.Equal(t, map[string]any{"Filters": []any{map[string]any{"Name": "invocation-id", "Values": []any{out.InvocationID}}},
		"Offset": float64(1), "Limit": float64(1), "HideOutput": false}, sim.Calls()[2].Params)
}

func TestInputRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	sim, client := simtest.Start(t, cvmsim.Options{})
	tc := tat.New(client)
	ok := tat.RunCommandInput{InstanceIDs: []string{"ins-1"}, Content: "true"}
	many := make([]string, 201)
	for i := range many {
		many[i] = "ins-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	tests := map[string]func() error{
		"no content": func() error { in := ok; in.Content = ""; _, err := tc.RunCommand(t.Context(), region, in); return err },
		"content over 64 KB encoded": func() error {
			in := ok
			in.Content = strings.Repeat("x", 48*1024+1)
			_, err := tc.RunCommand(t.Context(), region, in)
			return err
		},
		"no instances": func() error {
			in := ok
			in.InstanceIDs = nil
			_, err := tc.RunCommand(t.Context(), region, in)
			return err
		},
		"201 instances": func() error {
			in := ok
			in.InstanceIDs = many
			_, err := tc.RunCommand(t.Context(), region, in)
			return err
		},
		"same instance": func() error {
			in := ok
			in.InstanceIDs = []string{"ins-1", "ins-1"}
			_, err := tc.RunCommand(t.Context(), region, in)
			return err
		},
		"BAT": func() error {
			in := ok
			in.CommandType = "BAT"
			_, err := tc.RunCommand(t.Context(), region, in)
			return err
		},
		"timeout 1.5s": func() error {
			in := ok
			in.Timeout = 1500 * time.Millisecond
			_, err := tc.RunCommand(t.Context(), region, in)
			return err
		},
		"timeout 25h": func() error {
			in := ok
			in.Timeout = 25 * time.Hour
			_, err := tc.RunCommand(t.Context(), region, in)
			return err
		},
		"long name": func() error {
			in := ok
			in.CommandName = strings.Repeat("n", 61)
			_, err := tc.RunCommand(t.Context(), region, in)
			return err
		},
		"tasks by nothing": func() error {
			_, err := tc.DescribeInvocationTasks(t.Context(), region, tat.DescribeInvocationTasksInput{})
			return err
		},
		"tasks by ids and filter": func() error {
			_, err := tc.DescribeInvocationTasks(t.Context(), region, tat.DescribeInvocationTasksInput{TaskIDs: []string{"invt-1"}, InstanceID: "ins-1"})
			return err
		},
		"tasks limit 101": func() error {
			_, err := tc.DescribeInvocationTasks(t.Context(), region, tat.DescribeInvocationTasksInput{InvocationID: "inv-1", Limit: 101})
			return err
		},
		"agents of nothing": func() error {
			_, err := tc.DescribeAutomationAgentStatus(t.Context(), region, nil)
			return err
		},
	}
	for name, run := range tests {
		ae, ok := cvm.AsAPIError(run())
		require.True(t, ok, name)
		require.Equal(t, cvm.CodeInvalidInput, ae.Code, name)
		require.Equal(t, cvm.ClassPermanent, ae.Class, name)
	}
	require.Empty(t, sim.Calls())

	// 48 KiB of script is 64 KiB encoded: the limit itself passes the client.
	in := ok
	in.Content = strings.Repeat("x", 48*1024)
	_, err := tc.RunCommand(t.Context(), region, in)
	ae, _ := cvm.AsAPIError(err)
	require.Equal(t, "ResourceNotFound.InstanceNotFound", ae.Code, "sent, and refused by the API for the unknown instance")
}

// The tolerant parsing of DescribeInvocationTasks, against hand-written answers.
func TestDescribeInvocationTasksResponseShapes(t *testing.T) {
	t.Parallel()
	body := `{"Response":{"TotalCount":4,"InvocationTaskSet":[
		{"InvocationId":"inv-1","InvocationTaskId":"invt-1","TaskStatus":"SUCCESS","InstanceId":"ins-1",
		 "TaskResult":{"ExitCode":0,"Output":"` + base64.StdEncoding.EncodeToString([]byte("done")) + `","Dropped":0},
		 "StartTime":"2025-03-01T02:00:00Z","EndTime":"2025-03-01 10:00:05","ErrorInfo":"","New":{"x":1}},
		{"InvocationTaskId":"invt-2","TaskStatus":"TIMEOUT","InstanceId":"ins-2","TaskResult":{"ExitCode":0,"Output":"","Dropped":7},
		 "StartTime":"2025-03-01T02:00:00Z","EndTime":null,"ErrorInfo":"timed out"},
		{"InvocationTaskId":"invt-3","TaskStatus":"RUNNING","InstanceId":"ins-3","TaskResult":null,"StartTime":"garbage"},
		{"InvocationTaskId":"invt-4","TaskStatus":"FAILED","InstanceId":"ins-4","TaskResult":{"ExitCode":null,"Output":"not base64!"}}
	],"RequestId":"req-1"}}`
	headers := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		headers <- r.Header.Clone()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	client, err := cvm.New(cvm.Config{Endpoint: srv.URL, Credential: common.NewCredential("AKIDx", "secret"), Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(client.Close)
	out, err := tat.New(client).DescribeInvocationTasks(t.Context(), region, tat.DescribeInvocationTasksInput{InvocationID: "inv-1"})
	require.NoError(t, err)
	h := <-headers
	require.Equal(t, tat.APIVersion, h.Get("X-TC-Version"))
	require.Equal(t, tat.ActionDescribeInvocationTasks, h.Get("X-TC-Action"))
	require.Contains(t, h.Get("Authorization"), "/tat/tc3_request")
	zero := 0
	require.Equal(t, tat.DescribeInvocationTasksOutput{TotalCount: 4, RequestID: "req-1", Tasks: []tat.Task{
		{InvocationID: "inv-1", TaskID: "invt-1", InstanceID: "ins-1", Status: "SUCCESS", ExitCode: &zero, Output: "done",
			StartTime: time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC), EndTime: time.Date(2025, 3, 1, 2, 0, 5, 0, time.UTC)},
		{TaskID: "invt-2", InstanceID: "ins-2", Status: "TIMEOUT", Dropped: 7,
			StartTime: time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC), ErrorInfo: "timed out"},
		{TaskID: "invt-3", InstanceID: "ins-3", Status: "RUNNING"},
		{TaskID: "invt-4", InstanceID: "ins-4", Status: "FAILED", Output: "not base64!"},
	}}, out)
}
