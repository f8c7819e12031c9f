package tat

import (
	"context"
	"encoding/base64"
	"slices"
	"time"

	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"

	"github.com/imager-dev/imager/internal/cvm"
)

// Limits of RunCommand and DescribeInvocationTasks.
const (
	// MaxContentBytes is the most bytes Content may have once base64-encoded.
	MaxContentBytes = 64 * 1024
	// MaxInstances is the most InstanceIds one RunCommand takes.
	MaxInstances = 200
	// MaxTimeout is the longest command Timeout.
	MaxTimeout = 86400 * time.Second
	// MaxCommandNameLen is the CommandName limit in bytes.
	MaxCommandNameLen = 60
	// MaxLimit is the largest page of DescribeInvocationTasks and DescribeAutomationAgentStatus.
	MaxLimit = 100
)

// Command types RunCommand accepts from imager.
const (
	CommandTypeShell      = "SHELL"
	CommandTypePowerShell = "POWERSHELL"
)

// Task statuses (TaskStatus). SUCCESS, FAILED (exit code not 0), TIMEOUT, TASK_TIMEOUT (the
// agent went silent), DELIVER_FAILED, START_FAILED, CANCELLED and TERMINATED are final.
const (
	TaskPending        = "PENDING"
	TaskDelivering     = "DELIVERING"
	TaskDeliverDelayed = "DELIVER_DELAYED"
	TaskDeliverFailed  = "DELIVER_FAILED"
	TaskStartFailed    = "START_FAILED"
	TaskRunning        = "RUNNING"
	TaskSuccess        = "SUCCESS"
	TaskFailed         = "FAILED"
	TaskTimeout        = "TIMEOUT"
	TaskTaskTimeout    = "TASK_TIMEOUT"
	TaskCancelling     = "CANCELLING"
	TaskCancelled      = "CANCELLED"
	TaskTerminated     = "TERMINATED"
)

// Final reports whether a task in status will not change any more.
func Final(status string) bool {
	switch status {
	case TaskSuccess, TaskFailed, TaskTimeout, TaskTaskTimeout, TaskDeliverFailed, TaskStartFailed,
		TaskCancelled, TaskTerminated:
		return true
	}
	return false
}

// Agent statuses, as DescribeAutomationAgentStatus reports them.
const (
	AgentStatusOnline  = "Online"
	AgentStatusOffline = "Offline"
)

// Client calls the TAT API through a CVM client. It is safe for concurrent use.
type Client struct {
	cvm *cvm.Client
}

// New returns a TAT client that sends every call through c (its credential, endpoint override,
// timeout, transport, logger and OnCall).
func New(c *cvm.Client) *Client {
	return &Client{cvm: c}
}

// RunCommandInput runs one command on instances. Optional parameters are sent only when set.
type RunCommandInput struct {
	InstanceIDs []string // 1 to MaxInstances, each once
	// Content is the script as it should run; the client base64-encodes it (at most
	// MaxContentBytes encoded).
	Content     string
	CommandType string        // CommandTypeShell (the API's default when empty) or CommandTypePowerShell
	Timeout     time.Duration // whole seconds, 1s to MaxTimeout; 0: the API's default (60s)
	Username    string        // empty: the API's default (root, or System on Windows)
	// WorkingDirectory: empty means the API's default (/root for SHELL).
	WorkingDirectory string
	CommandName      string // at most MaxCommandNameLen bytes; shown in the console
}

// RunCommandOutput is an accepted RunCommand: one invocation with one task per instance.
type RunCommandOutput struct {
	CommandID    string // "cmd-..."
	InvocationID string // "inv-..."
	RequestID    string
}

// runCommandRequest carries the RunCommand parameters imager sends.
type runCommandRequest struct {
	*tchttp.BaseRequest

	Content          *string  `json:"Content,omitempty" name:"Content"`
	InstanceIds      []string `json:"InstanceIds,omitempty" name:"InstanceIds"`
	CommandType      *string  `json:"CommandType,omitempty" name:"CommandType"`
	Timeout          *uint64  `json:"Timeout,omitempty" name:"Timeout"`
	Username         *string  `json:"Username,omitempty" name:"Username"`
	WorkingDirectory *string  `json:"WorkingDirectory,omitempty" name:"WorkingDirectory"`
	CommandName      *string  `json:"CommandName,omitempty" name:"CommandName"`
}

// runCommandResponse holds the RunCommand fields imager reads.
type runCommandResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		CommandId    *string `json:"CommandId"`
		InvocationId *string `json:"InvocationId"`
		RequestId    *string `json:"RequestId"`
	} `json:"Response"`
}

// RunCommand runs in.Content on every instance of in.InstanceIDs in region. The API refuses the
// whole call when one instance cannot take it: AgentOffline codes for an agent not installed or not
// online, ResourceUnavailable.InstanceStateNotRunning for an instance that is not RUNNING. Input the
// API would refuse for certain is refused here, before anything is sent. An answer without an
// InvocationId is a BadResponse (ambiguous: the command may be running).
func (c *Client) RunCommand(ctx context.Context, region string, in RunCommandInput) (RunCommandOutput, error) {
	encoded := base64.StdEncoding.EncodeToString([]byte(in.Content))
	if err := checkRunCommand(in, len(encoded)); err != nil {
		return RunCommandOutput{}, err
	}
	req := &runCommandRequest{
		BaseRequest: cvm.NewRequest(Service, ActionRunCommand),
		Content:     &encoded,
		InstanceIds: in.InstanceIDs,
	}
	req.CommandType = optional(in.CommandType)
	if in.Timeout > 0 {
		secs := uint64(in.Timeout / time.Second)
		req.Timeout = &secs
	}
	req.Username = optional(in.Username)
	req.WorkingDirectory = optional(in.WorkingDirectory)
	req.CommandName = optional(in.CommandName)

	resp := &runCommandResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.cvm.Call(ctx, Service, region, ActionRunCommand, req, resp); err != nil {
		return RunCommandOutput{}, err
	}
	if resp.Response == nil {
		return RunCommandOutput{}, cvm.BadResponse(ActionRunCommand, "response has no Response object", "")
	}
	out := RunCommandOutput{
		CommandID:    deref(resp.Response.CommandId),
		InvocationID: deref(resp.Response.InvocationId),
		RequestID:    deref(resp.Response.RequestId),
	}
	if out.InvocationID == "" {
		return RunCommandOutput{}, cvm.BadResponse(ActionRunCommand, "response has no InvocationId", out.RequestID)
	}
	return out, nil
}

// checkRunCommand refuses RunCommand input the API would refuse for certain; encodedLen is the
// length of the base64 Content.
func checkRunCommand(in RunCommandInput, encodedLen int) error {
	switch {
	case in.Content == "":
		return cvm.InvalidInput(ActionRunCommand, "Content is required")
	case encodedLen > MaxContentBytes:
		return cvm.InvalidInput(ActionRunCommand, "Content is %d bytes once base64-encoded, at most %d are allowed", encodedLen, MaxContentBytes)
	case len(in.InstanceIDs) == 0:
		return cvm.InvalidInput(ActionRunCommand, "no instance ids")
	case len(in.InstanceIDs) > MaxInstances:
		return cvm.InvalidInput(ActionRunCommand, "%d instance ids, at most %d are allowed", len(in.InstanceIDs), MaxInstances)
	case in.CommandType != "" && in.CommandType != CommandTypeShell && in.CommandType != CommandTypePowerShell:
		return cvm.InvalidInput(ActionRunCommand, "CommandType %q is not %s or %s", in.CommandType, CommandTypeShell, CommandTypePowerShell)
	case in.Timeout < 0 || in.Timeout > MaxTimeout || in.Timeout%time.Second != 0:
		return cvm.InvalidInput(ActionRunCommand, "Timeout %s is not a whole number of seconds from 1s to %s", in.Timeout, MaxTimeout)
	case len(in.CommandName) > MaxCommandNameLen:
		return cvm.InvalidInput(ActionRunCommand, "CommandName is %d bytes long, at most %d are allowed", len(in.CommandName), MaxCommandNameLen)
	}
	for i, id := range in.InstanceIDs {
		if id == "" {
			return cvm.InvalidInput(ActionRunCommand, "instance id %d is empty", i)
		}
		if slices.Contains(in.InstanceIDs[:i], id) {
			return cvm.InvalidInput(ActionRunCommand, "instance id %s is given twice", id)
		}
	}
	return nil
}

// DescribeInvocationTasksInput selects tasks by TaskIDs, or by InvocationID and/or InstanceID
// (sent as the invocation-id and instance-id filters), not both ways. Limit at most MaxLimit (0:
// the API's default of 20).
type DescribeInvocationTasksInput struct {
	TaskIDs      []string
	InvocationID string
	InstanceID   string
	Offset       int
	Limit        int
}

// Task is one invocation task: one command on one instance.
type Task struct {
	InvocationID string
	TaskID       string // "invt-..."
	CommandID    string
	InstanceID   string
	Status       string // Task* constants; Final tells whether it will change
	// ExitCode is the command's exit code when Status is SUCCESS or FAILED and the API gave one;
	// nil otherwise (still running, timed out, never started).
	ExitCode *int
	// Output is the command's output, decoded from base64 (the API keeps at most 24 KB). When the
	// API's text is not base64 it is kept as is.
	Output    string
	Dropped   int       // bytes of output the API cut
	StartTime time.Time // zero until the task started (or when the API's time did not parse)
	EndTime   time.Time // zero until the task ended
	ErrorInfo string    // the API's reason for a task that failed to deliver, start or finish
}

// DescribeInvocationTasksOutput is one page of tasks.
type DescribeInvocationTasksOutput struct {
	Tasks      []Task
	TotalCount int
	RequestID  string
}

// filter is one Filters entry of a TAT Describe call.
type filter struct {
	Name   string   `json:"Name" name:"Name"`
	Values []string `json:"Values" name:"Values"`
}

// describeInvocationTasksRequest carries the DescribeInvocationTasks parameters imager sends.
// HideOutput is always sent false: the API's default hides the output.
type describeInvocationTasksRequest struct {
	*tchttp.BaseRequest

	InvocationTaskIds []string `json:"InvocationTaskIds,omitempty" name:"InvocationTaskIds"`
	Filters           []filter `json:"Filters,omitempty" name:"Filters"`
	Limit             *uint64  `json:"Limit,omitempty" name:"Limit"`
	Offset            *uint64  `json:"Offset,omitempty" name:"Offset"`
	HideOutput        *bool    `json:"HideOutput" name:"HideOutput"`
}

// describeInvocationTasksResponse holds the DescribeInvocationTasks fields imager reads; the rest
// is ignored so that additions to the API never break parsing.
type describeInvocationTasksResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		TotalCount        *int64 `json:"TotalCount"`
		InvocationTaskSet []struct {
			InvocationId     *string `json:"InvocationId"`
			InvocationTaskId *string `json:"InvocationTaskId"`
			CommandId        *string `json:"CommandId"`
			TaskStatus       *string `json:"TaskStatus"`
			InstanceId       *string `json:"InstanceId"`
			TaskResult       *struct {
				ExitCode *int64  `json:"ExitCode"`
				Output   *string `json:"Output"`
				Dropped  *int64  `json:"Dropped"`
			} `json:"TaskResult"`
			StartTime *string `json:"StartTime"`
			EndTime   *string `json:"EndTime"`
			ErrorInfo *string `json:"ErrorInfo"`
		} `json:"InvocationTaskSet"`
		RequestId *string `json:"RequestId"`
	} `json:"Response"`
}

// DescribeInvocationTasks returns one page of tasks with their output.
func (c *Client) DescribeInvocationTasks(ctx context.Context, region string, in DescribeInvocationTasksInput) (DescribeInvocationTasksOutput, error) {
	byFilter := in.InvocationID != "" || in.InstanceID != ""
	switch {
	case len(in.TaskIDs) > 0 && byFilter:
		return DescribeInvocationTasksOutput{}, cvm.InvalidInput(ActionDescribeInvocationTasks, "TaskIDs and InvocationID/InstanceID cannot be used together")
	case len(in.TaskIDs) == 0 && !byFilter:
		return DescribeInvocationTasksOutput{}, cvm.InvalidInput(ActionDescribeInvocationTasks, "TaskIDs, InvocationID or InstanceID is required")
	case len(in.TaskIDs) > MaxLimit:
		return DescribeInvocationTasksOutput{}, cvm.InvalidInput(ActionDescribeInvocationTasks, "%d task ids, at most %d are allowed", len(in.TaskIDs), MaxLimit)
	case in.Offset < 0:
		return DescribeInvocationTasksOutput{}, cvm.InvalidInput(ActionDescribeInvocationTasks, "Offset %d is negative", in.Offset)
	case in.Limit < 0 || in.Limit > MaxLimit:
		return DescribeInvocationTasksOutput{}, cvm.InvalidInput(ActionDescribeInvocationTasks, "Limit %d is outside 0..%d", in.Limit, MaxLimit)
	}
	hide := false
	req := &describeInvocationTasksRequest{
		BaseRequest:       cvm.NewRequest(Service, ActionDescribeInvocationTasks),
		InvocationTaskIds: in.TaskIDs,
		HideOutput:        &hide,
	}
	if in.InvocationID != "" {
		req.Filters = append(req.Filters, filter{Name: "invocation-id", Values: []string{in.InvocationID}})
	}
	if in.InstanceID != "" {
		req.Filters = append(req.Filters, filter{Name: "instance-id", Values: []string{in.InstanceID}})
	}
	req.Offset, req.Limit = page(in.Offset, in.Limit)

	resp := &describeInvocationTasksResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.cvm.Call(ctx, Service, region, ActionDescribeInvocationTasks, req, resp); err != nil {
		return DescribeInvocationTasksOutput{}, err
	}
	if resp.Response == nil {
		return DescribeInvocationTasksOutput{}, cvm.BadResponse(ActionDescribeInvocationTasks, "response has no Response object", "")
	}
	out := DescribeInvocationTasksOutput{
		TotalCount: int(derefInt(resp.Response.TotalCount)),
		RequestID:  deref(resp.Response.RequestId),
		Tasks:      make([]Task, 0, len(resp.Response.InvocationTaskSet)),
	}
	for _, src := range resp.Response.InvocationTaskSet {
		t := Task{
			InvocationID: deref(src.InvocationId),
			TaskID:       deref(src.InvocationTaskId),
			CommandID:    deref(src.CommandId),
			InstanceID:   deref(src.InstanceId),
			Status:       deref(src.TaskStatus),
			StartTime:    parseTime(deref(src.StartTime)),
			EndTime:      parseTime(deref(src.EndTime)),
			ErrorInfo:    deref(src.ErrorInfo),
		}
		if r := src.TaskResult; r != nil {
			t.Output = decodeOutput(deref(r.Output))
			t.Dropped = int(derefInt(r.Dropped))
			if r.ExitCode != nil && (t.Status == TaskSuccess || t.Status == TaskFailed) {
				code := int(*r.ExitCode)
				t.ExitCode = &code
			}
		}
		out.Tasks = append(out.Tasks, t)
	}
	return out, nil
}

// describeAutomationAgentStatusRequest carries the DescribeAutomationAgentStatus parameters.
type describeAutomationAgentStatusRequest struct {
	*tchttp.BaseRequest

	InstanceIds []string `json:"InstanceIds,omitempty" name:"InstanceIds"`
	Limit       *uint64  `json:"Limit,omitempty" name:"Limit"`
}

// describeAutomationAgentStatusResponse holds the fields imager reads.
type describeAutomationAgentStatusResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		AutomationAgentSet []struct {
			InstanceId  *string `json:"InstanceId"`
			AgentStatus *string `json:"AgentStatus"`
		} `json:"AutomationAgentSet"`
		TotalCount *int64  `json:"TotalCount"`
		RequestId  *string `json:"RequestId"`
	} `json:"Response"`
}

// AgentStatusOutput maps each instance the API reported to its agent's status (AgentStatusOnline
// or AgentStatusOffline). An instance absent from Agents has no agent the API knows of (not
// installed, or an unknown instance).
type AgentStatusOutput struct {
	Agents    map[string]string
	RequestID string
}

// DescribeAutomationAgentStatus returns the agent status of up to MaxLimit instances of region, in
// one page.
func (c *Client) DescribeAutomationAgentStatus(ctx context.Context, region string, instanceIDs []string) (AgentStatusOutput, error) {
	switch {
	case len(instanceIDs) == 0:
		return AgentStatusOutput{}, cvm.InvalidInput(ActionDescribeAutomationAgentStatus, "no instance ids")
	case len(instanceIDs) > MaxLimit:
		return AgentStatusOutput{}, cvm.InvalidInput(ActionDescribeAutomationAgentStatus, "%d instance ids, at most %d are allowed", len(instanceIDs), MaxLimit)
	case slices.Contains(instanceIDs, ""):
		return AgentStatusOutput{}, cvm.InvalidInput(ActionDescribeAutomationAgentStatus, "an instance id is empty")
	}
	limit := uint64(MaxLimit)
	req := &describeAutomationAgentStatusRequest{
		BaseRequest: cvm.NewRequest(Service, ActionDescribeAutomationAgentStatus),
		InstanceIds: instanceIDs,
		Limit:       &limit,
	}
	resp := &describeAutomationAgentStatusResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.cvm.Call(ctx, Service, region, ActionDescribeAutomationAgentStatus, req, resp); err != nil {
		return AgentStatusOutput{}, err
	}
	if resp.Response == nil {
		return AgentStatusOutput{}, cvm.BadResponse(ActionDescribeAutomationAgentStatus, "response has no Response object", "")
	}
	out := AgentStatusOutput{Agents: map[string]string{}, RequestID: deref(resp.Response.RequestId)}
	for _, a := range resp.Response.AutomationAgentSet {
		if id := deref(a.InstanceId); id != "" {
			out.Agents[id] = deref(a.AgentStatus)
		}
	}
	return out, nil
}

// decodeOutput decodes the API's base64 output; text that is not base64 is kept as is.
func decodeOutput(s string) string {
	if s == "" {
		return ""
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return string(b)
	}
	return s
}

// parseTime parses an API timestamp; empty or unparseable gives the zero time ("unknown").
func parseTime(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, err := cvm.ParseAPITime(s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// page returns Offset and Limit as sent: nil when zero, so the API's defaults apply.
func page(offset, limit int) (o, l *uint64) {
	if offset > 0 {
		v := uint64(offset)
		o = &v
	}
	if limit > 0 {
		v := uint64(limit)
		l = &v
	}
	return o, l
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func derefInt(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// RequestID methods let cvm.Client.Call log the RequestId of successful calls.

func (r *runCommandResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}

func (r *describeInvocationTasksResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}

func (r *describeAutomationAgentStatusResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}
