package cvmsim

import (
	"encoding/base64"
	"slices"
	"strings"
	"time"
)

// Task statuses the simulator reports (a CommandResultFunc may name any other final status).
const (
	TaskPending = "PENDING"
	TaskRunning = "RUNNING"
	TaskSuccess = "SUCCESS"
	TaskFailed  = "FAILED"
	TaskTimeout = "TIMEOUT"
)

// Limits of RunCommand and of a task's output.
const (
	MaxCommandContentBytes = 64 * 1024 // Content, base64-encoded
	MaxCommandInstances    = 200
	MaxTaskOutputBytes     = 24 * 1024 // output kept per task; the rest is Dropped
	defaultCommandTimeout  = 60 * time.Second
)

// CommandOutcome is how one RunCommand task ends.
type CommandOutcome struct {
	// Status is the final status: TaskSuccess (if empty), TaskFailed, TaskTimeout, or any other
	// final status of the API (e.g. "START_FAILED").
	Status string
	// ExitCode is the command's exit code, reported for every final status but TIMEOUT.
	ExitCode int
	// Output is what the command printed; the first MaxTaskOutputBytes are kept.
	Output string
	// After is how long the task runs once RUNNING. A task that would run longer than its command's
	// Timeout ends TIMEOUT at the Timeout instead; a TIMEOUT outcome always ends at the Timeout.
	After time.Duration
}

// CommandResultFunc scripts a RunCommand task's outcome from its instance and its decoded Content.
// It is called once per task, when RunCommand accepts the call, with the simulator's lock held:
// it must not call the Server.
type CommandResultFunc func(instanceID, content string) CommandOutcome

// SetCommandResult replaces the script of the outcome of tasks created from now on (nil: every
// command succeeds with exit code 0, no output, at once).
func (s *Server) SetCommandResult(f CommandResultFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmdResult = f
}

// Task is one RunCommand task: one command on one instance, with its times on the simulator's
// clock, so a test can order it against other calls (Call.At, Image.CreatedTime).
type Task struct {
	InvocationID     string
	TaskID           string
	CommandID        string
	InstanceID       string
	Account          string
	Region           string
	Content          string // decoded
	CommandType      string
	CommandName      string
	Username         string
	WorkingDirectory string
	Timeout          time.Duration
	Status           string
	ExitCode         int
	Output           string    // the whole output the script gave, uncut
	CreatedAt        time.Time // when RunCommand accepted it
	StartedAt        time.Time // when it became RUNNING; zero before
	FinishedAt       time.Time // when it reached its final status; zero before
}

// simTask is a Task with its schedule and scripted end.
type simTask struct {
	Task
	startAt time.Time
	endAt   time.Time
	outcome CommandOutcome
}

// Tasks returns every RunCommand task, in creation order, with states advanced to Clock.Now.
func (s *Server) Tasks() []Task {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceTasks(s.clock.Now())
	out := make([]Task, 0, len(s.tasks))
	for _, t := range s.tasks {
		out = append(out, t.Task)
	}
	return out
}

// advanceTasks moves tasks from PENDING to RUNNING to their final status as their times come.
func (s *Server) advanceTasks(now time.Time) {
	for id, t := range s.activeTasks {
		if t.Status == TaskPending && !now.Before(t.startAt) {
			t.Status = TaskRunning
			t.StartedAt = t.startAt
		}
		if t.Status == TaskRunning && !now.Before(t.endAt) {
			t.Status = t.outcome.Status
			t.ExitCode = t.outcome.ExitCode
			t.Output = t.outcome.Output
			t.FinishedAt = t.endAt
			delete(s.activeTasks, id)
		}
	}
}

// agentStatus is what DescribeAutomationAgentStatus reports for an instance: "" when it has no
// agent (not installed), Online only while the instance is RUNNING.
func agentStatus(in *simInstance) string {
	switch {
	case in.Agent == AgentNotInstalled:
		return ""
	case in.Agent == AgentOnline && in.State == InstanceStateRunning:
		return AgentOnline
	}
	return AgentOffline
}

var commandTypes = []string{"SHELL", "POWERSHELL", "BAT"}

// runCommand creates one invocation with a task per instance (see the package comment).
func (s *Server) runCommand(account, region string, p params, now time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown("Content", "InstanceIds", "CommandType", "WorkingDirectory", "Timeout", "Username",
		"CommandName", "Description", "SaveCommand", "EnableParameter", "DefaultParameters", "Parameters",
		"OutputCOSBucketUrl", "OutputCOSKeyPrefix", "Tags"); aerr != nil {
		return nil, aerr
	}
	encoded, _, aerr := p.str("Content")
	if aerr != nil {
		return nil, aerr
	}
	ids, _, aerr := p.strList("InstanceIds")
	if aerr != nil {
		return nil, aerr
	}
	cmdType, _, aerr := p.str("CommandType")
	if aerr != nil {
		return nil, aerr
	}
	workdir, _, aerr := p.str("WorkingDirectory")
	if aerr != nil {
		return nil, aerr
	}
	username, _, aerr := p.str("Username")
	if aerr != nil {
		return nil, aerr
	}
	name, _, aerr := p.str("CommandName")
	if aerr != nil {
		return nil, aerr
	}
	timeoutSecs, aerr := p.integer("Timeout", int(defaultCommandTimeout/time.Second))
	if aerr != nil {
		return nil, aerr
	}

	switch {
	case encoded == "":
		return nil, errf("MissingParameter", "The request is missing a required parameter `Content`.")
	case len(ids) == 0:
		return nil, errf("MissingParameter", "The request is missing a required parameter `InstanceIds`.")
	case len(encoded) > MaxCommandContentBytes:
		return nil, errf("InvalidParameterValue.InvalidContent", "`Content` is longer than 64 KB once base64-encoded.")
	case len(ids) > MaxCommandInstances:
		return nil, errf("InvalidParameterValue.LimitExceeded", "At most %d `InstanceIds` are allowed per request.", MaxCommandInstances)
	case cmdType != "" && !slices.Contains(commandTypes, cmdType):
		return nil, errf("InvalidParameterValue", "`CommandType` `%s` is not one of %s.", cmdType, strings.Join(commandTypes, ", "))
	case timeoutSecs < 1 || timeoutSecs > 86400:
		return nil, errf("InvalidParameterValue.Range", "`Timeout` must be from 1 to 86400 seconds.")
	case len(name) > 60:
		return nil, errf("InvalidParameterValue.InvalidCommandName", "`CommandName` is longer than 60 bytes.")
	}
	content, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, errf("InvalidParameterValue.InvalidContent", "`Content` is not base64.")
	}
	for i, id := range ids {
		if !strings.HasPrefix(id, "ins-") || slices.Contains(ids[:i], id) {
			return nil, errf("InvalidParameterValue.InvalidInstanceId", "The instance id `%s` is malformed or repeated.", id)
		}
	}
	targets := make([]*simInstance, 0, len(ids))
	for _, id := range ids {
		in, ok := s.instances[id]
		if !ok || in.Account != account || in.Region != region {
			return nil, errf("ResourceNotFound.InstanceNotFound", "The instance `%s` is not found.", id)
		}
		if in.State != InstanceStateRunning {
			return nil, errf("ResourceUnavailable.InstanceStateNotRunning", "The instance `%s` is %s, not RUNNING.", id, in.State)
		}
		switch agentStatus(in) {
		case "":
			return nil, errf("ResourceUnavailable.AgentNotInstalled", "The TAT agent is not installed on instance `%s`.", id)
		case AgentOffline:
			return nil, errf("ResourceUnavailable.AgentStatusNotOnline", "The TAT agent of instance `%s` is not online.", id)
		}
		targets = append(targets, in)
	}

	if cmdType == "" {
		cmdType = "SHELL"
	}
	if username == "" {
		username = "root"
	}
	if workdir == "" && cmdType == "SHELL" {
		workdir = "/root"
	}
	timeout := time.Duration(timeoutSecs) * time.Second
	commandID, invocationID := newResourceID("cmd-"), newResourceID("inv-")
	for _, in := range targets {
		outcome := CommandOutcome{Status: TaskSuccess}
		if s.cmdResult != nil {
			outcome = s.cmdResult(in.ID, string(content))
		}
		if outcome.Status == "" {
			outcome.Status = TaskSuccess
		}
		t := &simTask{Task: Task{
			InvocationID: invocationID, TaskID: newResourceID("invt-"), CommandID: commandID,
			InstanceID: in.ID, Account: account, Region: region, Content: string(content),
			CommandType: cmdType, CommandName: name, Username: username, WorkingDirectory: workdir,
			Timeout: timeout, Status: TaskPending, CreatedAt: now,
		}}
		t.startAt = now.Add(s.taskStart)
		if outcome.Status == TaskTimeout || outcome.After > timeout {
			outcome.Status, outcome.After = TaskTimeout, timeout
		}
		t.endAt = t.startAt.Add(max(0, outcome.After))
		t.outcome = outcome
		s.tasks = append(s.tasks, t)
		s.activeTasks[t.TaskID] = t
	}
	return map[string]any{"CommandId": commandID, "InvocationId": invocationID}, nil
}

// tatFilters reads Filters with TAT's error code for an unknown filter.
func tatFilters(p params, known ...string) ([]filter, *apiError) {
	fs, _, aerr := p.filters(func(name string) bool { return slices.Contains(known, name) })
	if aerr != nil && aerr.Code == "InvalidFilter" {
		aerr.Code = "InvalidParameterValue.InvalidFilter"
	}
	return fs, aerr
}

// describeInvocationTasks answers tasks by InvocationTaskIds or Filters, oldest first.
func (s *Server) describeInvocationTasks(account, region string, p params, _ time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown("InvocationTaskIds", "Filters", "Limit", "Offset", "HideOutput"); aerr != nil {
		return nil, aerr
	}
	ids, _, aerr := p.strList("InvocationTaskIds")
	if aerr != nil {
		return nil, aerr
	}
	filters, aerr := tatFilters(p, "invocation-task-id", "invocation-id", "instance-id", "command-id")
	if aerr != nil {
		return nil, aerr
	}
	hide := true // the API's default
	if _, ok := p["HideOutput"]; ok {
		if hide, aerr = p.boolean("HideOutput"); aerr != nil {
			return nil, aerr
		}
	}
	offset, limit, aerr := p.page()
	if aerr != nil {
		return nil, aerr
	}
	if len(ids) > 0 && len(filters) > 0 {
		return nil, errf("InvalidParameter.ConflictParameter", "`InvocationTaskIds` and `Filters` cannot be given together.")
	}
	if len(ids) > 100 {
		return nil, errf("InvalidParameterValue.LimitExceeded", "At most 100 `InvocationTaskIds` are allowed per request.")
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, "invt-") {
			return nil, errf("InvalidParameterValue.InvalidInvocationTaskId", "The invocation task id `%s` is malformed.", id)
		}
	}
	for _, f := range filters {
		if f.name == "instance-id" && slices.ContainsFunc(f.values, func(v string) bool { return !strings.HasPrefix(v, "ins-") }) {
			return nil, errf("InvalidParameterValue.InvalidInstanceId", "A value of filter `instance-id` is malformed.")
		}
	}
	var matched []*simTask
	for _, t := range s.tasks {
		if t.Account != account || t.Region != region {
			continue
		}
		if len(ids) > 0 {
			if slices.Contains(ids, t.TaskID) {
				matched = append(matched, t)
			}
			continue
		}
		if taskMatches(t, filters) {
			matched = append(matched, t)
		}
	}
	lo, hi := pageOf(len(matched), offset, limit)
	set := make([]map[string]any, 0, hi-lo)
	for _, t := range matched[lo:hi] {
		set = append(set, taskJSON(t, hide))
	}
	return map[string]any{"InvocationTaskSet": set, "TotalCount": len(matched)}, nil
}

func taskMatches(t *simTask, filters []filter) bool {
	for _, f := range filters {
		var v string
		switch f.name {
		case "invocation-task-id":
			v = t.TaskID
		case "invocation-id":
			v = t.InvocationID
		case "instance-id":
			v = t.InstanceID
		case "command-id":
			v = t.CommandID
		}
		if !slices.Contains(f.values, v) {
			return false
		}
	}
	return true
}

// apiTime renders a time as TAT does, null when zero.
func apiTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(time.RFC3339)
}

func taskJSON(t *simTask, hideOutput bool) map[string]any {
	output, dropped := t.Output, 0
	if len(output) > MaxTaskOutputBytes {
		output, dropped = output[:MaxTaskOutputBytes], len(output)-MaxTaskOutputBytes
	}
	encoded := base64.StdEncoding.EncodeToString([]byte(output))
	if hideOutput {
		encoded = ""
	}
	exitCode := t.ExitCode
	if t.Status == TaskTimeout {
		exitCode = 0 // unknown; the API's zero value
	}
	errorInfo := ""
	if t.Status == TaskTimeout {
		errorInfo = "The command did not finish within its timeout."
	}
	updated := t.CreatedAt
	for _, u := range []time.Time{t.StartedAt, t.FinishedAt} {
		if u.After(updated) {
			updated = u
		}
	}
	return map[string]any{
		"InvocationId":     t.InvocationID,
		"InvocationTaskId": t.TaskID,
		"CommandId":        t.CommandID,
		"TaskStatus":       t.Status,
		"InstanceId":       t.InstanceID,
		"TaskResult": map[string]any{
			"ExitCode":                 exitCode,
			"Output":                   encoded,
			"ExecStartTime":            apiTime(t.StartedAt),
			"ExecEndTime":              apiTime(t.FinishedAt),
			"Dropped":                  dropped,
			"OutputUrl":                "",
			"OutputUploadCOSErrorInfo": "",
		},
		"StartTime":        apiTime(t.StartedAt),
		"EndTime":          apiTime(t.FinishedAt),
		"CreatedTime":      apiTime(t.CreatedAt),
		"UpdatedTime":      apiTime(updated),
		"ErrorInfo":        errorInfo,
		"InvocationSource": "USER",
		"CommandName":      t.CommandName,
	}
}

// describeAutomationAgentStatus answers the agents of the account's instances in region: those
// named by InstanceIds or the filters, instances without an agent (or unknown) absent.
func (s *Server) describeAutomationAgentStatus(account, region string, p params, now time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown("InstanceIds", "Filters", "Limit", "Offset"); aerr != nil {
		return nil, aerr
	}
	ids, _, aerr := p.strList("InstanceIds")
	if aerr != nil {
		return nil, aerr
	}
	filters, aerr := tatFilters(p, "agent-status", "environment", "instance-id")
	if aerr != nil {
		return nil, aerr
	}
	offset, limit, aerr := p.page()
	if aerr != nil {
		return nil, aerr
	}
	if len(ids) > 0 && len(filters) > 0 {
		return nil, errf("InvalidParameter.ConflictParameter", "`InstanceIds` and `Filters` cannot be given together.")
	}
	if len(ids) > 100 {
		return nil, errf("InvalidParameterValue.LimitExceeded", "At most 100 `InstanceIds` are allowed per request.")
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, "ins-") {
			return nil, errf("InvalidParameterValue.InvalidInstanceId", "The instance id `%s` is malformed.", id)
		}
	}
	type agent struct {
		id, status string
	}
	var matched []agent
	for _, id := range s.instOrder {
		in := s.instances[id]
		status := agentStatus(in)
		if in.Account != account || in.Region != region || status == "" {
			continue
		}
		if len(ids) > 0 && !slices.Contains(ids, id) {
			continue
		}
		keep := true
		for _, f := range filters {
			switch f.name {
			case "agent-status":
				keep = keep && slices.Contains(f.values, status)
			case "environment":
				keep = keep && slices.Contains(f.values, "Linux")
			case "instance-id":
				keep = keep && slices.Contains(f.values, id)
			}
		}
		if keep {
			matched = append(matched, agent{id, status})
		}
	}
	lo, hi := pageOf(len(matched), offset, limit)
	set := make([]map[string]any, 0, hi-lo)
	for _, a := range matched[lo:hi] {
		heartbeat := any(nil)
		if a.status == AgentOnline {
			heartbeat = apiTime(now)
		}
		set = append(set, map[string]any{
			"InstanceId":        a.id,
			"Version":           "1.1.8",
			"LastHeartbeatTime": heartbeat,
			"AgentStatus":       a.status,
			"Environment":       "Linux",
			"SupportFeatures":   []string{"SHELL"},
		})
	}
	return map[string]any{"AutomationAgentSet": set, "TotalCount": len(matched)}, nil
}
