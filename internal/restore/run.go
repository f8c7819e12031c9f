package restore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/tat"
)

// Result is how one restore test of one instance ended.
type Result struct {
	ID                 int64 // restore_tests.id
	Test               string
	Slot               time.Time
	Policy             string
	InstanceID         string // the instance whose image was tested
	ImageID            string
	Region             string
	LaunchedInstanceID string // "" when nothing was launched
	Status             history.RestoreStatus
	ErrorCode          string
	ErrorMessage       string
	ExitCode           *int
	Output             string
	Terminated         bool // the launched instance was terminated (or found gone)
}

// Passed reports whether the check passed.
func (r Result) Passed() bool { return r.Status == history.RestorePassed }

func resultOf(row history.RestoreTest) Result {
	return Result{ID: row.ID, Test: row.Test, Slot: row.Slot, Policy: row.Policy, InstanceID: row.InstanceID,
		ImageID: row.ImageID, Region: row.Region, LaunchedInstanceID: row.LaunchedInstanceID, Status: row.Status,
		ErrorCode: row.ErrorCode, ErrorMessage: row.ErrorMessage, ExitCode: row.ExitCode, Output: row.Output,
		Terminated: row.TerminatedAt != nil}
}

// RunNow runs test name at once (`imager restore-test NAME --now`): it tests the next instance in
// turn, waits for the outcome and returns it. Its slot is the current time, to the second. A test
// the loaded file does not name is ErrUnknownTest; one of another account's policy is
// ErrOtherAccount; a policy without an available image is ErrNoImage. An error says the test
// could not be run or recorded; a test that ran and failed is a Result with its code.
func (t *Tester) RunNow(ctx context.Context, name string) (Result, error) {
	if err := t.check(); err != nil {
		return Result{}, err
	}
	cfg := t.cfg()
	if cfg == nil {
		return Result{}, errors.New("restore test: no policies loaded")
	}
	rt := cfg.RestoreTest(name)
	if rt == nil {
		return Result{}, fmt.Errorf("restore test %q: %w", name, ErrUnknownTest)
	}
	if p := cfg.Policy(rt.Policy); p == nil || accountOf(p) != t.account {
		return Result{}, fmt.Errorf("restore test %s: %w (this tester runs account %s's)", name, ErrOtherAccount, t.account)
	}
	cands, err := t.candidates(ctx, rt)
	if err != nil {
		return Result{}, err
	}
	if len(cands) == 0 {
		return Result{}, fmt.Errorf("restore test %s of policy %s: %w", name, rt.Policy, ErrNoImage)
	}
	return t.runOne(ctx, cfg, rt, t.clock.Now().UTC().Truncate(time.Second), cands[0])
}

func accountOf(p *policy.Policy) string {
	if p.Account == "" {
		return policy.DefaultAccount
	}
	return p.Account
}

// candidates lists the instances rt may test, in turn.
func (t *Tester) candidates(ctx context.Context, rt *policy.RestoreTest) ([]history.RestoreCandidate, error) {
	copyRegion := ""
	if rt.Copy {
		copyRegion = rt.Region
	}
	cands, err := t.hist.RestoreCandidates(ctx, rt.Name, rt.Policy, copyRegion)
	if err != nil {
		return nil, fmt.Errorf("restore test %s: %w", rt.Name, err)
	}
	return cands, nil
}

// runSlot tests the slot's sample of instances, the next ones in turn, at the same time.
func (t *Tester) runSlot(ctx context.Context, cfg *policy.Config, rt *policy.RestoreTest, slot time.Time) {
	log := t.log.With().Str("test", rt.Name).Str("policy", rt.Policy).Time("slot", slot).Logger()
	cands, err := t.candidates(ctx, rt)
	if err != nil {
		log.Error().Err(err).Msg("cannot choose the instances to test; slot skipped")
		return
	}
	if len(cands) == 0 {
		log.Warn().Msg("no instance of the policy has an available image to restore; slot skipped")
		return
	}
	picked := cands[:min(rt.Sample, len(cands))]
	var wg sync.WaitGroup
	for _, c := range picked {
		wg.Go(func() {
			if _, err := t.runOne(ctx, cfg, rt, slot, c); err != nil && ctx.Err() == nil {
				log.Error().Err(err).Str("instance", c.InstanceID).Msg("restore test not run")
			}
		})
	}
	wg.Wait()
}

// runOne tests one instance's image in slot: record, launch, wait, check, record, terminate.
func (t *Tester) runOne(ctx context.Context, cfg *policy.Config, rt *policy.RestoreTest, slot time.Time, c history.RestoreCandidate) (Result, error) {
	start := t.clock.Now()
	hctx, cancel := writeContext(ctx)
	row, created, err := t.hist.RestoreStart(hctx, history.RestoreStartParams{
		Test: rt.Name, Slot: slot, Account: t.account, Policy: rt.Policy, InstanceID: c.InstanceID, Region: rt.Region,
		Zone: rt.Launch.Zone, RunID: c.RunID, CopyID: c.CopyID, ImageID: c.ImageID,
		ClientToken: ClientToken(rt.Name, slot, c.InstanceID), KeepFor: rt.KeepFor, StartedAt: start.UTC(),
	})
	cancel()
	if err != nil {
		return Result{}, fmt.Errorf("record restore test %s of %s: %w", rt.Name, c.InstanceID, err)
	}
	if !created && row.Finished() {
		return resultOf(row), nil // this slot's test of the instance has run already
	}
	if t.isInflight(row.ID) {
		return Result{}, fmt.Errorf("restore test %s of %s in slot %s is running already", rt.Name, c.InstanceID, slot.Format(time.RFC3339))
	}
	t.track(row.ID, true)
	defer t.track(row.ID, false)

	r := &testRun{t: t, rt: rt, row: row, log: t.testLog(row)}
	r.log.Info().Str("image_id", row.ImageID).Str("zone", row.Zone).Msg("restore test started")
	out := r.run(ctx)
	if out.err != nil && errors.Is(out.err, context.Canceled) {
		out = outcome{code: CodeInterrupted, msg: "imager stopped during the test; its instance was terminated"}
	}
	r.finish(ctx, out)
	if r.row.LaunchedInstanceID != "" {
		r.row.TerminatedAt = t.terminate(ctx, r.row, r.row.LaunchedInstanceID)
	}
	res := resultOf(r.row)
	ev := r.log.Info()
	if !res.Passed() {
		ev = r.log.Warn().Str("error_code", res.ErrorCode).Str("error_message", res.ErrorMessage)
	}
	if res.ExitCode != nil {
		ev = ev.Int("exit_code", *res.ExitCode)
	}
	ev.Str("status", string(res.Status)).Str("launched_instance", res.LaunchedInstanceID).Bool("terminated", res.Terminated).
		Int64("elapsed_ms", t.clock.Since(start).Milliseconds()).Msg("restore test ended")
	return res, nil
}

// testLog is the logger of one row's events.
func (t *Tester) testLog(row history.RestoreTest) zerolog.Logger {
	return t.log.With().Int64("restore_test_id", row.ID).Str("test", row.Test).Str("policy", row.Policy).
		Str("instance", row.InstanceID).Str("region", row.Region).Time("slot", row.Slot).Logger()
}

// testRun is one test in progress.
type testRun struct {
	t   *Tester
	rt  *policy.RestoreTest
	row history.RestoreTest
	log zerolog.Logger
}

// outcome is how run ended: passed, or a code; err when the context ended it.
type outcome struct {
	passed bool
	code   string
	msg    string
	task   string
	exit   *int
	output string
	err    error
}

func apiOutcome(ae *cvm.APIError) outcome {
	return outcome{code: ae.Code, msg: fmt.Sprintf("%s: %s", ae.Action, ae.Message)}
}

// run launches the instance, waits for it and its agent, and runs the check.
func (r *testRun) run(ctx context.Context) outcome {
	t := r.t
	id, o := r.launch(ctx)
	if id == "" {
		return o
	}
	launchedAt := t.clock.Now()
	if r.row.LaunchedAt != nil {
		launchedAt = *r.row.LaunchedAt // a leftover row resumed: keep_for counts from its launch
	}
	keepUntil := launchedAt.Add(r.rt.KeepFor)
	setupUntil := keepUntil.Add(-r.rt.Check.Timeout)
	if o := r.waitRunning(ctx, setupUntil); o != nil {
		return *o
	}
	if o := r.waitAgent(ctx, setupUntil); o != nil {
		return *o
	}
	return r.check(ctx, keepUntil, setupUntil)
}

// launch calls RunInstances with the row's ClientToken until it answers (a retry launches
// nothing new) and records the instance. It returns "" and the outcome when nothing was launched.
func (r *testRun) launch(ctx context.Context) (string, outcome) {
	t := r.t
	if r.row.LaunchedInstanceID != "" {
		return r.row.LaunchedInstanceID, outcome{}
	}
	in := cvm.RunInstancesInput{ImageID: r.row.ImageID, Zone: r.rt.Launch.Zone, InstanceType: r.rt.Launch.InstanceType,
		VpcID: r.rt.Launch.VpcID, SubnetID: r.rt.Launch.SubnetID, SecurityGroupIDs: r.rt.Launch.SecurityGroupIDs,
		InstanceName: truncate("imager-restore-"+r.row.Test, cvm.MaxInstanceNameLen), ClientToken: r.row.ClientToken,
		Tags: []cvm.Tag{{Key: TagTest, Value: r.row.Test}, {Key: TagToken, Value: r.row.ClientToken},
			{Key: policy.TagPolicy, Value: r.row.Policy}, {Key: policy.TagInstance, Value: r.row.InstanceID},
			{Key: policy.TagSlot, Value: policy.SlotTag(r.row.Slot)}}}
	giveUp := r.row.StartedAt.Add(r.rt.KeepFor - r.rt.Check.Timeout)
	for attempt := 1; ; attempt++ {
		var out cvm.RunInstancesOutput
		ae := t.call(ctx, cvm.ActionRunInstances, func(ctx context.Context) (string, error) {
			var err error
			out, err = t.cvm.RunInstances(ctx, r.row.Region, in)
			return out.RequestID, err
		})
		if ae == nil {
			id := out.InstanceIDs[0]
			now := t.clock.Now()
			hctx, cancel := writeContext(ctx)
			err := t.hist.RestoreLaunched(hctx, r.row.ID, id, now)
			cancel()
			if err != nil {
				// The instance runs: it is tested and terminated all the same; the sweep finds it by tag.
				r.log.Error().Err(err).Str("launched_instance", id).Msg("cannot record the launched instance")
			}
			r.row.LaunchedInstanceID, r.row.LaunchedAt = id, &now
			r.log.Info().Str("launched_instance", id).Str("request_id", out.RequestID).Int("attempt", attempt).Msg("restore instance launched")
			return id, outcome{}
		}
		if ctx.Err() != nil {
			return "", outcome{err: ctx.Err()}
		}
		retry := ae.Ambiguous() || ae.Class == cvm.ClassThrottled || ae.Class == cvm.ClassTransient || ae.Class == cvm.ClassBusy
		if !retry || !t.clock.Now().Add(t.interval).Before(giveUp) {
			r.log.Warn().Str("error_code", ae.Code).Str("request_id", ae.RequestID).Int("attempt", attempt).Msg("RunInstances refused")
			return "", apiOutcome(ae)
		}
		r.log.Warn().Str("error_code", ae.Code).Int("attempt", attempt).Msg("RunInstances failed; retrying with the same ClientToken")
		if err := t.sleep(ctx, t.interval); err != nil {
			return "", outcome{err: err}
		}
	}
}

// waitRunning polls DescribeInstancesStatus until the instance is RUNNING; LAUNCH_FAILED, or not
// RUNNING by until, is CodeLaunchFailed.
func (r *testRun) waitRunning(ctx context.Context, until time.Time) *outcome {
	t := r.t
	id := r.row.LaunchedInstanceID
	state := "not reported"
	for {
		var out cvm.DescribeInstancesStatusOutput
		ae := t.call(ctx, cvm.ActionDescribeInstancesStatus, func(ctx context.Context) (string, error) {
			var err error
			out, err = t.cvm.DescribeInstancesStatus(ctx, r.row.Region, []string{id})
			return out.RequestID, err
		})
		switch {
		case ctx.Err() != nil:
			return &outcome{err: ctx.Err()}
		case ae != nil:
			r.log.Warn().Str("error_code", ae.Code).Msg("cannot read the instance's state; asked again")
		default:
			if s, ok := out.States[id]; ok {
				state = s
			}
			switch state {
			case cvm.InstanceStateRunning:
				return nil
			case cvm.InstanceStateLaunchFailed:
				return &outcome{code: CodeLaunchFailed, msg: fmt.Sprintf("instance %s ended LAUNCH_FAILED", id)}
			}
		}
		if !t.clock.Now().Before(until) {
			return &outcome{code: CodeLaunchFailed, msg: fmt.Sprintf("instance %s still %s after %s", id, state,
				until.Sub(*r.row.LaunchedAt).Round(time.Second))}
		}
		if err := t.sleep(ctx, min(t.interval, until.Sub(t.clock.Now())+time.Millisecond)); err != nil {
			return &outcome{err: err}
		}
	}
}

// waitAgent polls DescribeAutomationAgentStatus until the instance's TAT agent is Online; not by
// until is CodeAgentOffline.
func (r *testRun) waitAgent(ctx context.Context, until time.Time) *outcome {
	t := r.t
	id := r.row.LaunchedInstanceID
	status := "not installed or not reported"
	for {
		var out tat.AgentStatusOutput
		ae := t.call(ctx, tat.ActionDescribeAutomationAgentStatus, func(ctx context.Context) (string, error) {
			var err error
			out, err = t.tat.DescribeAutomationAgentStatus(ctx, r.row.Region, []string{id})
			return out.RequestID, err
		})
		switch {
		case ctx.Err() != nil:
			return &outcome{err: ctx.Err()}
		case ae != nil:
			r.log.Warn().Str("error_code", ae.Code).Msg("cannot read the TAT agent's status; asked again")
		default:
			if s, ok := out.Agents[id]; ok {
				status = s
			}
			if status == tat.AgentStatusOnline {
				return nil
			}
		}
		if !t.clock.Now().Before(until) {
			return &outcome{code: CodeAgentOffline, msg: fmt.Sprintf("TAT agent of instance %s %s after %s", id, status,
				until.Sub(*r.row.LaunchedAt).Round(time.Second))}
		}
		if err := t.sleep(ctx, min(t.interval, until.Sub(t.clock.Now())+time.Millisecond)); err != nil {
			return &outcome{err: err}
		}
	}
}

// check runs the check command and follows its task until it ends, check.timeout passes (with one
// poll interval for TAT to report) or keepUntil comes.
func (r *testRun) check(ctx context.Context, keepUntil, agentUntil time.Time) outcome {
	t := r.t
	id := r.row.LaunchedInstanceID
	in := tat.RunCommandInput{InstanceIDs: []string{id}, Content: r.rt.Check.Command, CommandType: r.rt.Check.CommandType,
		Timeout: r.rt.Check.Timeout, CommandName: truncate("imager-restore-"+r.row.Test, tat.MaxCommandNameLen)}
	var run tat.RunCommandOutput
	for {
		ae := t.call(ctx, tat.ActionRunCommand, func(ctx context.Context) (string, error) {
			var err error
			run, err = t.tat.RunCommand(ctx, r.row.Region, in)
			return run.RequestID, err
		})
		if ae == nil {
			break
		}
		if ctx.Err() != nil {
			return outcome{err: ctx.Err()}
		}
		switch {
		case tat.AgentOffline(ae.Code) && t.clock.Now().Before(agentUntil):
			// The agent went away between its status and the command: wait for it again.
		case ae.Class == cvm.ClassThrottled || ae.Class == cvm.ClassTransient:
			if !t.clock.Now().Before(agentUntil) {
				return apiOutcome(ae)
			}
		case tat.AgentOffline(ae.Code):
			return outcome{code: CodeAgentOffline, msg: fmt.Sprintf("%s: %s", ae.Code, ae.Message)}
		default:
			// Ambiguous answers are not retried: a second command could run the check twice.
			return apiOutcome(ae)
		}
		r.log.Warn().Str("error_code", ae.Code).Msg("RunCommand refused; asked again")
		if err := t.sleep(ctx, t.interval); err != nil {
			return outcome{err: err}
		}
	}
	started := t.clock.Now()
	hctx, cancel := writeContext(ctx)
	if err := t.hist.RestoreCheckStarted(hctx, r.row.ID, run.InvocationID, ""); err != nil {
		r.log.Error().Err(err).Str("invocation_id", run.InvocationID).Msg("cannot record the check's invocation")
	}
	cancel()
	r.row.Status, r.row.InvocationID = history.RestoreChecking, run.InvocationID
	r.log.Info().Str("invocation_id", run.InvocationID).Str("request_id", run.RequestID).Msg("restore check started")

	until := started.Add(r.rt.Check.Timeout + t.interval)
	if keepUntil.Before(until) {
		until = keepUntil
	}
	var last tat.Task
	for {
		var out tat.DescribeInvocationTasksOutput
		ae := t.call(ctx, tat.ActionDescribeInvocationTasks, func(ctx context.Context) (string, error) {
			var err error
			out, err = t.tat.DescribeInvocationTasks(ctx, r.row.Region, tat.DescribeInvocationTasksInput{
				InvocationID: run.InvocationID, InstanceID: id})
			return out.RequestID, err
		})
		switch {
		case ctx.Err() != nil:
			return outcome{err: ctx.Err()}
		case ae != nil:
			r.log.Warn().Str("error_code", ae.Code).Msg("cannot read the check's task; asked again")
		default:
			for _, task := range out.Tasks {
				if task.InstanceID == id {
					last = task
				}
			}
			if tat.Final(last.Status) {
				return taskOutcome(last)
			}
		}
		if !t.clock.Now().Before(until) {
			status := last.Status
			if status == "" {
				status = "not reported"
			}
			return outcome{code: CodeCheckTimeout, task: last.TaskID, output: last.Output,
				msg: fmt.Sprintf("check still %s after %s (check.timeout %s)", status, t.clock.Since(started).Round(time.Second), r.rt.Check.Timeout)}
		}
		if err := t.sleep(ctx, min(t.interval, until.Sub(t.clock.Now())+time.Millisecond)); err != nil {
			return outcome{err: err}
		}
	}
}

// taskOutcome is the outcome of a check whose task is final.
func taskOutcome(task tat.Task) outcome {
	o := outcome{task: task.TaskID, exit: task.ExitCode, output: task.Output}
	switch task.Status {
	case tat.TaskSuccess:
		o.passed = true
	case tat.TaskTimeout:
		o.code, o.msg = CodeCheckTimeout, "the check did not end within check.timeout"
	case tat.TaskFailed:
		o.code, o.msg = CodeCheckFailed, "the check exited non-zero"
		if task.ExitCode != nil {
			o.msg = fmt.Sprintf("the check exited %d", *task.ExitCode)
		}
	default:
		o.code, o.msg = CodeCheckFailed, fmt.Sprintf("the check's task ended %s", task.Status)
		if task.ErrorInfo != "" {
			o.msg += ": " + task.ErrorInfo
		}
	}
	return o
}

// finish records the outcome (with its event).
func (r *testRun) finish(ctx context.Context, o outcome) {
	t := r.t
	if o.err != nil {
		o = outcome{code: CodeInterrupted, msg: o.err.Error()}
	}
	hctx, cancel := writeContext(ctx)
	defer cancel()
	row, err := t.hist.RestoreFinish(hctx, r.row.ID, history.RestoreOutcome{Passed: o.passed, ErrorCode: o.code,
		ErrorMessage: o.msg, TaskID: o.task, ExitCode: o.exit, Output: o.output, At: t.clock.Now().UTC()})
	if err != nil {
		r.log.Error().Err(err).Str("error_code", o.code).Msg("cannot record the restore test's outcome")
		// Report what happened all the same.
		r.row.Status, r.row.ErrorCode, r.row.ErrorMessage = history.RestorePassed, o.code, o.msg
		if !o.passed {
			r.row.Status = history.RestoreFailed
		}
		r.row.ExitCode, r.row.Output, r.row.TaskID = o.exit, o.output, o.task
		return
	}
	launched, at := r.row.LaunchedInstanceID, r.row.LaunchedAt
	r.row = row
	if r.row.LaunchedInstanceID == "" { // the launch was not recorded: keep what is known
		r.row.LaunchedInstanceID, r.row.LaunchedAt = launched, at
	}
}

// call makes one API call on the action's pace and classifies its error (nil on success).
func (t *Tester) call(ctx context.Context, action string, fn func(ctx context.Context) (requestID string, err error)) *cvm.APIError {
	if err := t.pace(action).Wait(ctx); err != nil {
		return cvm.ClassifyError(action, err)
	}
	_, err := fn(ctx)
	return cvm.ClassifyError(action, err)
}

// sleep waits d on the tester's clock, or until ctx ends.
func (t *Tester) sleep(ctx context.Context, d time.Duration) error {
	timer := t.clock.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.Chan():
		return nil
	}
}

// truncate cuts s to n bytes (names are ASCII: test names are [a-z0-9-]).
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
