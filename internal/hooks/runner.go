// Package hooks runs a policy's hook commands (docs/policies.md "Hooks") on instances through TAT:
// one RunCommand per up to 200 instances, paced at the account's TAT rate, then
// DescribeInvocationTasks until every task has a final status, telling the caller each
// instance's outcome as soon as it is known. It keeps no state between runs and writes no history:
// the scheduler records each command in hook_runs and decides what an outcome means for the image.
package hooks

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/tat"
)

// DefaultRate is TAT's limit of calls per second per account (RunCommand,
// DescribeInvocationTasks and DescribeAutomationAgentStatus each; one pace holds all of them).
const DefaultRate = 20

// DefaultPollInterval is how often a runner asks TAT for the tasks still running.
const DefaultPollInterval = 2 * time.Second

// lostAfter is how long past its command's timeout a task may stay without a final status before
// the runner gives up on it (TAT ends a task at its timeout; an agent that went silent is
// TASK_TIMEOUT some time later).
const lostAfter = 2 * time.Minute

// sendTries bounds the RunCommand calls for one batch that TAT throttles or fails transiently.
const sendTries = 4

// TAT is what the runner needs from the TAT API. *tat.Client implements it.
type TAT interface {
	RunCommand(ctx context.Context, region string, in tat.RunCommandInput) (tat.RunCommandOutput, error)
	DescribeInvocationTasks(ctx context.Context, region string, in tat.DescribeInvocationTasksInput) (tat.DescribeInvocationTasksOutput, error)
	DescribeAutomationAgentStatus(ctx context.Context, region string, instanceIDs []string) (tat.AgentStatusOutput, error)
}

var _ TAT = (*tat.Client)(nil)

// Status is how a command ended on one instance; the values are hook_runs.status's final ones.
type Status string

// Statuses of a Result.
const (
	StatusSuccess      Status = "success"       // the task ended SUCCESS
	StatusFailed       Status = "failed"        // the task ended FAILED, or another final status that is not a timeout
	StatusTimeout      Status = "timeout"       // the task ran past its timeout (TIMEOUT, TASK_TIMEOUT), or never ended
	StatusAgentOffline Status = "agent_offline" // the agent is not online or not installed: the command was not sent
	StatusError        Status = "error"         // TAT refused the command: it was not sent
)

// Command is one hook command to run on instances of one region.
type Command struct {
	Region           string
	Name             string // CommandName, shown in the console (at most 60 bytes)
	Content          string
	CommandType      string
	Timeout          time.Duration
	Username         string
	WorkingDirectory string
	// Poll is how often this command's unfinished tasks are asked for; 0 is the Runner's
	// PollInterval. A pre hook polls more often: an instance stays frozen until its end is seen.
	Poll time.Duration
}

// Result is the end of a command on one instance.
type Result struct {
	InstanceID   string
	Status       Status
	InvocationID string
	TaskID       string
	TaskStatus   string // as TAT reported it; empty when the command was not sent
	ExitCode     *int
	Output       string
	// Code is the API's error code when the command was not sent (StatusAgentOffline: the agent
	// code; StatusError), empty otherwise; Message says what happened in words.
	Code      string
	Message   string
	StartedAt time.Time // zero when unknown
	// FinishedAt is when the task ended (TAT's time), or when the runner learnt the outcome.
	FinishedAt time.Time
}

// Handler receives a run's progress. Both are called from the goroutine of Run, one at a time.
type Handler struct {
	// Invoked is told that TAT took the command for instances as invocationID, at at. Nil: none.
	Invoked func(instances []string, invocationID string, at time.Time)
	// Done is told each instance's outcome once, as soon as it is known.
	Done func(Result)
}

// Options configures a Runner. TAT is required.
type Options struct {
	TAT TAT
	// Pace spaces every TAT call of the account; nil makes one of DefaultRate.
	Pace *pace.Limiter
	// Clock decides the polls and backoffs; nil is the real clock.
	Clock clockwork.Clock
	// PollInterval is how often unfinished tasks are asked for; 0 is DefaultPollInterval.
	PollInterval time.Duration
	Logger       zerolog.Logger
}

// Runner runs hook commands through TAT for one account. It is safe for concurrent use.
type Runner struct {
	tat   TAT
	pace  *pace.Limiter
	clock clockwork.Clock
	poll  time.Duration
	log   zerolog.Logger
}

// New returns a Runner.
func New(opts Options) *Runner {
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Pace == nil {
		opts.Pace = pace.New(opts.Clock, DefaultRate, pace.Options{})
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	return &Runner{tat: opts.TAT, pace: opts.Pace, clock: opts.Clock, poll: opts.PollInterval, log: opts.Logger}
}

// invocation is one accepted RunCommand whose tasks are followed.
type invocation struct {
	id       string
	sentAt   time.Time
	waiting  map[string]bool // instances without an outcome yet
	giveUpAt time.Time
}

// Run runs cmd on every instance (each once), in RunCommands of up to tat.MaxInstances, and
// follows their tasks until each instance has its outcome (h.Done) or ctx ends. RunCommand refuses
// the whole call for one instance that cannot take it: an instance whose agent is offline is told
// StatusAgentOffline and the call is sent again without it; one that is not RUNNING or not found
// makes the runner send to each instance alone, so only that one is told StatusError. It returns when every instance has its outcome, or when ctx
// ends: instances not told by then may or may not run the command.
func (r *Runner) Run(ctx context.Context, cmd Command, instances []string, h Handler) {
	var open []*invocation
	for batch := range slices.Chunk(slices.Clone(instances), tat.MaxInstances) {
		open = append(open, r.send(ctx, cmd, batch, h)...)
		if ctx.Err() != nil {
			return
		}
	}
	r.follow(ctx, cmd, open, h)
}

// send runs cmd on batch and returns the invocations TAT took; instances it did not take get
// their outcome.
func (r *Runner) send(ctx context.Context, cmd Command, batch []string, h Handler) []*invocation {
	var open []*invocation
	for try := 1; len(batch) > 0; try++ {
		if err := r.pace.Wait(ctx); err != nil {
			return open
		}
		start := r.clock.Now()
		out, err := r.tat.RunCommand(ctx, cmd.Region, tat.RunCommandInput{
			InstanceIDs: batch, Content: cmd.Content, CommandType: cmd.CommandType, Timeout: cmd.Timeout,
			Username: cmd.Username, WorkingDirectory: cmd.WorkingDirectory, CommandName: cmd.Name,
		})
		r.pace.Observe(r.clock.Since(start))
		if err == nil {
			now := r.clock.Now()
			if h.Invoked != nil {
				h.Invoked(batch, out.InvocationID, now)
			}
			inv := &invocation{id: out.InvocationID, sentAt: now, waiting: map[string]bool{},
				giveUpAt: now.Add(cmd.Timeout + lostAfter)}
			for _, id := range batch {
				inv.waiting[id] = true
			}
			return append(open, inv)
		}
		if ctx.Err() != nil {
			return open
		}
		ae := cvm.ClassifyError(tat.ActionRunCommand, err)
		switch {
		case tat.AgentOffline(ae.Code) && len(batch) == 1:
			r.notSent(h, batch, StatusAgentOffline, ae)
			return open
		case tat.AgentOffline(ae.Code):
			// The call names one instance whose agent cannot take it; find every such one, then
			// send again without them (one by one if the agents look online now).
			offline := r.offline(ctx, cmd.Region, batch, ae)
			if len(offline) == 0 {
				for _, id := range batch {
					open = append(open, r.send(ctx, cmd, []string{id}, h)...)
				}
				return open
			}
			batch = slices.DeleteFunc(batch, func(id string) bool { return offline[id] != nil })
			for id, e := range offline {
				r.notSent(h, []string{id}, StatusAgentOffline, e)
			}
			try = 0
			continue
		case instanceRefused(ae.Code) && len(batch) > 1:
			// One instance the call names cannot take it (stopped, gone): every other one still
			// gets the command, each alone.
			for _, id := range batch {
				open = append(open, r.send(ctx, cmd, []string{id}, h)...)
			}
			return open
		case (ae.Class == cvm.ClassThrottled || ae.Class == cvm.ClassTransient) && try < sendTries:
			if ae.Class == cvm.ClassThrottled {
				r.pace.Throttle()
			}
			r.log.Warn().Str("region", cmd.Region).Str("error_code", ae.Code).Str("request_id", ae.RequestID).
				Int("instances", len(batch)).Int("try", try).Msg("RunCommand failed; retrying")
			if !r.sleep(ctx, time.Duration(try)*time.Second) {
				return open
			}
			continue
		}
		r.notSent(h, batch, StatusError, ae)
		return open
	}
	return open
}

// instanceRefused reports whether code refuses a RunCommand because of one of its instances,
// other than its agent: not RUNNING, not found, or a malformed id.
func instanceRefused(code string) bool {
	switch code {
	case tat.CodeInstanceStateNotRunning, "ResourceNotFound.InstanceNotFound", "InvalidParameterValue.InvalidInstanceId":
		return true
	}
	return false
}

// offline returns the instances of batch whose agent is not online, each with the error that says
// so, per DescribeAutomationAgentStatus (none when it cannot tell).
func (r *Runner) offline(ctx context.Context, region string, batch []string, cause *cvm.APIError) map[string]*cvm.APIError {
	out := map[string]*cvm.APIError{}
	for part := range slices.Chunk(batch, tat.MaxLimit) {
		if err := r.pace.Wait(ctx); err != nil {
			return out
		}
		st, err := r.tat.DescribeAutomationAgentStatus(ctx, region, part)
		if err != nil {
			r.log.Warn().Err(err).Str("region", region).Msg("cannot read the TAT agents' status; sending to each instance alone")
			return map[string]*cvm.APIError{}
		}
		for _, id := range part {
			switch st.Agents[id] {
			case tat.AgentStatusOnline:
			case "":
				out[id] = &cvm.APIError{Action: cause.Action, Code: tat.CodeAgentNotInstalled, Class: cause.Class,
					Message: fmt.Sprintf("the TAT agent is not installed on instance %s", id), RequestID: st.RequestID}
			default:
				out[id] = &cvm.APIError{Action: cause.Action, Code: tat.CodeAgentStatusNotOnline, Class: cause.Class,
					Message: fmt.Sprintf("the TAT agent of instance %s is %s", id, st.Agents[id]), RequestID: st.RequestID}
			}
		}
	}
	return out
}

// notSent tells instances that the command was not sent to them.
func (r *Runner) notSent(h Handler, instances []string, st Status, ae *cvm.APIError) {
	now := r.clock.Now()
	for _, id := range instances {
		h.Done(Result{InstanceID: id, Status: st, Code: ae.Code, Message: ae.Message, FinishedAt: now})
	}
}

// follow polls the invocations' tasks until every instance has its outcome or ctx ends.
func (r *Runner) follow(ctx context.Context, cmd Command, open []*invocation, h Handler) {
	poll := r.poll
	if cmd.Poll > 0 {
		poll = cmd.Poll
	}
	for len(open) > 0 {
		if !r.sleep(ctx, poll) {
			return
		}
		for _, inv := range open {
			r.pollInvocation(ctx, cmd, inv, h)
			if ctx.Err() != nil {
				return
			}
		}
		open = slices.DeleteFunc(open, func(inv *invocation) bool { return len(inv.waiting) == 0 })
	}
}

// pollInvocation reads inv's tasks and tells the instances whose task ended; those past
// giveUpAt end as timed out.
func (r *Runner) pollInvocation(ctx context.Context, cmd Command, inv *invocation, h Handler) {
	for offset := 0; ; {
		if err := r.pace.Wait(ctx); err != nil {
			return
		}
		out, err := r.tat.DescribeInvocationTasks(ctx, cmd.Region, tat.DescribeInvocationTasksInput{
			InvocationID: inv.id, Offset: offset, Limit: tat.MaxLimit})
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn().Err(err).Str("invocation_id", inv.id).Msg("cannot read the hook's tasks; asking again at the next poll")
			}
			break
		}
		for _, t := range out.Tasks {
			if !inv.waiting[t.InstanceID] || !tat.Final(t.Status) {
				continue
			}
			delete(inv.waiting, t.InstanceID)
			h.Done(taskResult(t, r.clock.Now()))
		}
		offset += len(out.Tasks)
		if len(out.Tasks) == 0 || offset >= out.TotalCount {
			break
		}
	}
	if len(inv.waiting) == 0 || r.clock.Now().Before(inv.giveUpAt) {
		return
	}
	now := r.clock.Now()
	for _, id := range slices.Sorted(maps.Keys(inv.waiting)) {
		delete(inv.waiting, id)
		h.Done(Result{InstanceID: id, Status: StatusTimeout, InvocationID: inv.id, FinishedAt: now,
			Message: fmt.Sprintf("TAT reported no final status %s after the command's timeout", lostAfter)})
	}
}

// taskResult is the outcome of a final task; seen is when the runner read it.
func taskResult(t tat.Task, seen time.Time) Result {
	res := Result{InstanceID: t.InstanceID, InvocationID: t.InvocationID, TaskID: t.TaskID, TaskStatus: t.Status,
		ExitCode: t.ExitCode, Output: t.Output, StartedAt: t.StartTime, FinishedAt: t.EndTime}
	if res.FinishedAt.IsZero() {
		res.FinishedAt = seen
	}
	switch t.Status {
	case tat.TaskSuccess:
		res.Status = StatusSuccess
	case tat.TaskTimeout, tat.TaskTaskTimeout:
		res.Status = StatusTimeout
		res.Message = "the command ran past its timeout"
	default:
		res.Status = StatusFailed
		res.Message = "task ended " + t.Status
		if t.ExitCode != nil {
			res.Message = fmt.Sprintf("the command exited %d", *t.ExitCode)
		}
	}
	if t.ErrorInfo != "" && res.Status != StatusSuccess {
		res.Message += ": " + strings.TrimSpace(t.ErrorInfo)
	}
	return res
}

// sleep waits d on the clock; false when ctx ended first.
func (r *Runner) sleep(ctx context.Context, d time.Duration) bool {
	t := r.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		return true
	case <-ctx.Done():
		return false
	}
}
