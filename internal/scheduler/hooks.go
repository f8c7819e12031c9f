package scheduler

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/hooks"
	"github.com/imager-dev/imager/internal/policy"
)

// Hooks (docs/policies.md "Hooks"): a fire of a policy with a hooks: block runs its pre command on
// the fire's instances through TAT before any of their CreateImage calls, and queues each instance
// for its CreateImage as soon as its pre task ends SUCCESS. Every instance whose pre command may
// have run gets the post command once its run ends (CreateImage accepted, or failed for good) or
// is abandoned (Stop, fencing); a crash between the two is repaired at the next Start. Every
// command is a hook_runs row written before the RunCommand that carries it.

// Error codes of runs a pre hook kept from being imaged (and of their hook_runs rows).
const (
	// CodePreHookFailed: the pre command failed (exit code not 0, or TAT could not run it).
	CodePreHookFailed = "PreHookFailed"
	// CodePreHookTimeout: the pre command ran past its timeout.
	CodePreHookTimeout = "PreHookTimeout"
	// CodeAgentOffline: the instance's TAT agent was not online or not installed.
	CodeAgentOffline = "AgentOffline"
	// Codes of hook_runs rows of post hooks that did not succeed (a post hook never fails a run).
	codePostHookFailed  = "PostHookFailed"
	codePostHookTimeout = "PostHookTimeout"
)

// prePoll is how often a pre hook's tasks are polled: its instance stays frozen from the task's
// end until imager has seen it, sent the CreateImage and started the post.
const prePoll = 250 * time.Millisecond

// jobHook is the hooks' state of one job whose policy has hooks. It is owned with its job.
type jobHook struct {
	preID  int64     // hook_runs id of the pre hook
	ran    bool      // the pre command may have run: the post is due when the job ends
	preEnd time.Time // when the pre task ended (zero while unknown)
	posted bool      // the post is queued

	waves   *preWaves // the fire's waves; counted is guarded by waves.mu
	counted bool      // the job left the queue for a worker (preWaves.taken)
}

// preWaves paces a fire's pre hooks to its CreateImage pace, so that no instance waits frozen
// behind the whole fire: the pre command goes to one wave of instances at a time (half a second
// of CreateImage calls: api.create_image_rate/2 instances), and the next wave's pre starts once at
// most half a wave of the fire's CreateImage calls is still queued. An instance then waits well
// under a second between the end of its pre and its CreateImage (docs/policies.md "Hooks").
type preWaves struct {
	mu     sync.Mutex
	queued int           // jobs queued for CreateImage after their pre, not yet taken by a worker
	moved  chan struct{} // one slot: a job was taken
}

func newPreWaves() *preWaves { return &preWaves{moved: make(chan struct{}, 1)} }

// queue counts a job about to be queued for its CreateImage after its pre hook; nil counts
// nothing.
func (w *preWaves) queue() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.queued++
	w.mu.Unlock()
}

// taken is told that a worker took j from the queue (each job counts once, retries do not).
func (w *preWaves) taken(h *jobHook) {
	w.mu.Lock()
	if !h.counted {
		h.counted = true
		w.queued--
	}
	w.mu.Unlock()
	select {
	case w.moved <- struct{}{}:
	default:
	}
}

// wait returns once at most limit of the fire's jobs are queued, or false when ctx ends first.
func (w *preWaves) wait(ctx context.Context, limit int) bool {
	for {
		w.mu.Lock()
		n := w.queued
		w.mu.Unlock()
		if n <= limit {
			return true
		}
		select {
		case <-w.moved:
		case <-ctx.Done():
			return false
		}
	}
}

// postReq is one post command to send.
type postReq struct {
	policy   *policy.Policy
	runID    int64
	region   string
	instance string
	preEnd   time.Time // zero: unknown (the frozen time is not measured)
}

// postQueue holds the post commands due, for the post loop (or Stop) to send.
type postQueue struct {
	mu   sync.Mutex
	reqs []postReq
	wake chan struct{} // one slot
}

func (q *postQueue) push(r postReq) {
	q.mu.Lock()
	q.reqs = append(q.reqs, r)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *postQueue) take() []postReq {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.reqs
	q.reqs = nil
	return out
}

// sendFire queues a claimed fire's jobs that are still to send: at once, or, for a policy with
// hooks, after their pre hook (runPreHooks, in a goroutine of the scheduler). While stopping they
// are set aside, or refused when refuse is set (RunOnce).
func (s *Scheduler) sendFire(jobs []*job, refuse bool) bool {
	p := jobs[0].policy
	if p == nil || p.Hooks == nil {
		return s.enqueueAll(jobs, refuse)
	}
	var send []*job
	for _, j := range jobs {
		if !isDone(j) {
			send = append(send, j)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.stopping && refuse:
		return false
	case s.stopping:
		s.leftovers = append(s.leftovers, send...)
		return true
	case len(send) > 0:
		// Under s.mu while not stopping: Stop has not begun to wait for the goroutines.
		s.run.Go(func() { s.runPreHooks(p, send) })
	}
	return true
}

// hookCommand is c as the runner sends it on p's instances.
func hookCommand(p *policy.Policy, phase history.HookPhase, c *policy.HookCommand) hooks.Command {
	cmd := hooks.Command{Region: p.Region, Name: "imager-" + string(phase) + "-" + p.Name, Content: c.Command,
		CommandType: c.CommandType, Timeout: c.Timeout, Username: p.Hooks.User, WorkingDirectory: p.Hooks.WorkingDirectory}
	if phase == history.HookPre {
		cmd.Poll = prePoll
	}
	return cmd
}

// runPreHooks runs p's pre command on the jobs' instances in waves (preWaves): one wave of
// api.create_image_rate/2 instances at a time, the next once the fire's queue is down to half a
// wave. Jobs of waves not started when the scheduler stops or is fenced are
// set aside unhooked (their rows stay pending for the next leader).
func (s *Scheduler) runPreHooks(p *policy.Policy, jobs []*job) {
	if s.hooks == nil {
		for _, j := range jobs {
			s.preDone(p, j, hooks.Result{InstanceID: j.instance, Status: hooks.StatusError, Code: "TATUnavailable",
				Message: "this scheduler has no TAT client: the hooks cannot run", FinishedAt: s.clock.Now()})
		}
		return
	}
	size := max(1, s.api().CreateImageRate/2)
	waves := newPreWaves()
	for start := 0; start < len(jobs); start += size {
		if start > 0 && !waves.wait(s.stopCtx, size/2) {
			for _, j := range jobs[start:] {
				s.leave(j)
			}
			return
		}
		end := min(start+size, len(jobs))
		if !s.runPreWave(p, jobs[start:end], waves) {
			for _, j := range jobs[end:] {
				s.leave(j)
			}
			return
		}
	}
}

// runPreWave records and runs p's pre command on one wave's instances, and acts on each outcome
// as it comes (preDone). Jobs whose outcome is not known when the scheduler stops are set aside
// with their pre hook closed; their post is sent by Stop. It reports false when the rows could
// not be written because the scheduler is fenced (the wave's jobs are set aside).
func (s *Scheduler) runPreWave(p *policy.Policy, jobs []*job, waves *preWaves) bool {
	ids := make([]int64, len(jobs))
	for i, j := range jobs {
		ids[i] = j.run.ID
	}
	ctx, cancel := s.historyContext()
	rows, err := s.hist.HookRunsRequest(ctx, history.HookPre, ids, s.clock.Now())
	cancel()
	if err != nil {
		if s.checkFenced(err) {
			for _, j := range jobs {
				s.leave(j)
			}
			return false
		}
		s.log.Error().Err(err).Str("policy", p.Name).Int("runs", len(jobs)).Msg("cannot record the pre hooks; not sending them")
		for _, j := range jobs {
			s.preDone(p, j, hooks.Result{InstanceID: j.instance, Status: hooks.StatusError, Code: codeHistoryUnavailable,
				Message: fmt.Sprintf("cannot record the pre hook: %v", err), FinishedAt: s.clock.Now()})
		}
		return true
	}
	byRun := make(map[int64]history.HookRun, len(rows))
	for _, r := range rows {
		byRun[r.RunID] = r
	}
	byInstance := make(map[string]*job, len(jobs))
	var instances []string
	for _, j := range jobs {
		row, ok := byRun[j.run.ID]
		if !ok {
			// The run has a pre hook already (a claim retried after its answer was lost): it is
			// not run twice.
			s.jobLog(j).Warn().Msg("the run's pre hook was recorded before; sending CreateImage without it")
			s.enqueue(j, s.clock.Now())
			continue
		}
		j.hook = &jobHook{preID: row.ID, ran: true, waves: waves}
		byInstance[j.instance] = j
		instances = append(instances, j.instance)
	}
	if len(instances) == 0 {
		return true
	}
	rowIDs := func(insts []string) []int64 {
		out := make([]int64, 0, len(insts))
		for _, id := range insts {
			if j := byInstance[id]; j != nil {
				out = append(out, j.hook.preID)
			}
		}
		return out
	}
	told := map[string]bool{}
	s.hooks.Run(s.stopCtx, hookCommand(p, history.HookPre, &p.Hooks.Pre), instances, hooks.Handler{
		Invoked: func(insts []string, invocationID string, _ time.Time) { s.hooksInvoked(rowIDs(insts), invocationID) },
		Done: func(res hooks.Result) {
			j := byInstance[res.InstanceID]
			if j == nil || told[res.InstanceID] {
				return
			}
			told[res.InstanceID] = true
			s.preDone(p, j, res)
		},
	})
	for _, id := range instances {
		if told[id] {
			continue
		}
		j := byInstance[id]
		s.finishHook(j.hook.preID, history.HookPre, hooks.Result{InstanceID: id, Status: hooks.StatusFailed,
			Message: "the scheduler stopped before the pre hook's outcome was known", FinishedAt: s.clock.Now()})
		s.leave(j)
	}
	return true
}

// preDone acts on the outcome of j's pre hook: record it; on SUCCESS queue the CreateImage at once;
// otherwise fail the run (on_pre_failure: fail) or queue it anyway (continue).
func (s *Scheduler) preDone(p *policy.Policy, j *job, res hooks.Result) {
	if j.hook != nil {
		s.finishHook(j.hook.preID, history.HookPre, res)
		if res.Status == hooks.StatusAgentOffline || res.Status == hooks.StatusError {
			j.hook.ran = false // the command was not sent: nothing to undo
		} else {
			j.hook.preEnd = res.FinishedAt
		}
		if res.Status == hooks.StatusSuccess {
			j.hook.waves.queue()
			s.enqueue(j, s.clock.Now())
			return
		}
	}
	code, msg := runHookFailure(res)
	if p.Hooks.OnPreFailure == policy.HookContinue {
		s.jobLog(j).Warn().Str("error_code", code).Str("error_message", msg).
			Msg("pre hook did not succeed; imaging the instance anyway (on_pre_failure: continue)")
		if j.hook != nil {
			j.hook.waves.queue()
		}
		s.enqueue(j, s.clock.Now())
		return
	}
	s.fail(j, code, msg)
}

// runHookFailure is the run's error code and message for a pre hook that did not succeed.
func runHookFailure(res hooks.Result) (code, msg string) {
	switch res.Status {
	case hooks.StatusTimeout:
		return CodePreHookTimeout, "pre hook: " + res.Message
	case hooks.StatusAgentOffline:
		return CodeAgentOffline, fmt.Sprintf("pre hook not sent: %s: %s", res.Code, res.Message)
	case hooks.StatusError:
		return CodePreHookFailed, fmt.Sprintf("pre hook not sent: %s: %s", res.Code, res.Message)
	}
	return CodePreHookFailed, "pre hook: " + res.Message
}

// hookRowFailure is the hook_runs error code and message of an outcome (empty for success).
func hookRowFailure(phase history.HookPhase, res hooks.Result) (code, msg string) {
	failed, timeout := CodePreHookFailed, CodePreHookTimeout
	if phase == history.HookPost {
		failed, timeout = codePostHookFailed, codePostHookTimeout
	}
	switch res.Status {
	case hooks.StatusSuccess:
		return "", ""
	case hooks.StatusTimeout:
		return timeout, res.Message
	case hooks.StatusAgentOffline:
		return CodeAgentOffline, fmt.Sprintf("%s: %s", res.Code, res.Message)
	case hooks.StatusError:
		return res.Code, res.Message
	}
	return failed, res.Message
}

// hooksInvoked records that TAT took the command of hooks ids.
func (s *Scheduler) hooksInvoked(ids []int64, invocationID string) {
	if len(ids) == 0 {
		return
	}
	ctx, cancel := s.historyContext()
	err := s.hist.HookRunsInvoked(ctx, ids, invocationID)
	cancel()
	if err != nil && !s.checkFenced(err) {
		s.log.Error().Err(err).Str("invocation_id", invocationID).Int("hooks", len(ids)).Msg("cannot record the hook's invocation")
	}
}

// finishHook records the end of hook id.
func (s *Scheduler) finishHook(id int64, phase history.HookPhase, res hooks.Result) {
	code, msg := hookRowFailure(phase, res)
	if code == "" && res.Status != hooks.StatusSuccess {
		code = CodePreHookFailed
		if phase == history.HookPost {
			code = codePostHookFailed
		}
	}
	ctx, cancel := s.historyContext()
	_, err := s.hist.HookRunFinish(ctx, history.HookResult{ID: id, Status: history.HookStatus(res.Status), TaskID: res.TaskID,
		TaskStatus: res.TaskStatus, ExitCode: res.ExitCode, Output: res.Output, ErrorCode: code, ErrorMessage: msg,
		StartedAt: res.StartedAt, FinishedAt: res.FinishedAt})
	cancel()
	if err != nil && !s.checkFenced(err) {
		s.log.Error().Err(err).Int64("hook_run_id", id).Str("phase", string(phase)).Str("instance", res.InstanceID).
			Msg("cannot record the hook's end")
	}
	if res.Status != hooks.StatusSuccess {
		s.log.Warn().Int64("hook_run_id", id).Str("phase", string(phase)).Str("instance", res.InstanceID).
			Str("invocation_id", res.InvocationID).Str("task_status", res.TaskStatus).Str("error_code", code).
			Str("error_message", msg).Msg("hook did not succeed")
	}
}

// queuePost queues j's post command when its pre command may have run and it is not queued yet.
// finish calls it for every job that ends, so a run that is answered, fails for good or is
// abandoned thaws its instance.
func (s *Scheduler) queuePost(j *job) {
	if j.hook == nil || !j.hook.ran || j.hook.posted || j.policy == nil {
		return
	}
	j.hook.posted = true
	s.posts.push(postReq{policy: j.policy, runID: j.run.ID, region: j.region, instance: j.instance, preEnd: j.hook.preEnd})
}

// postLoop sends the post commands queued, each batch in a goroutine of its own so that one batch
// waiting for its tasks does not hold the next, until the scheduler stops (Stop sends the rest).
func (s *Scheduler) postLoop() {
	for {
		select {
		case <-s.stopCtx.Done():
			return
		case <-s.posts.wake:
		}
		for _, group := range groupPosts(s.posts.take()) {
			// Post commands are not cut short by Stop: they get the shutdown grace.
			s.run.Go(func() { s.sendPosts(s.callCtx, group) })
		}
	}
}

// groupPosts splits reqs into batches of one policy with each instance once, in order.
func groupPosts(reqs []postReq) [][]postReq {
	var out [][]postReq
	for _, r := range reqs {
		placed := false
		for i, g := range out {
			if g[0].policy != r.policy {
				continue
			}
			dup := false
			for _, o := range g {
				dup = dup || o.instance == r.instance
			}
			if !dup {
				out[i] = append(g, r)
				placed = true
				break
			}
		}
		if !placed {
			out = append(out, []postReq{r})
		}
	}
	return out
}

// sendPosts records and runs the post command of one policy on reqs' instances. A post whose row
// cannot be written is sent all the same (thawing the instance matters more than the row; the next
// start may send it again); a run that has its post row already is not sent again.
func (s *Scheduler) sendPosts(ctx context.Context, reqs []postReq) {
	p := reqs[0].policy
	if p.Hooks == nil || p.Hooks.Post == nil || s.hooks == nil {
		return
	}
	ids := make([]int64, len(reqs))
	for i, r := range reqs {
		ids[i] = r.runID
	}
	hctx, cancel := s.historyContext()
	rows, err := s.hist.HookRunsRequest(hctx, history.HookPost, ids, s.clock.Now())
	cancel()
	rowOf := map[string]int64{}
	send := reqs
	if err != nil {
		s.checkFenced(err)
		s.log.Error().Err(err).Str("policy", p.Name).Int("runs", len(reqs)).Msg("cannot record the post hooks; sending them all the same")
	} else {
		byRun := map[int64]int64{}
		for _, r := range rows {
			byRun[r.RunID] = r.ID
		}
		send = send[:0:0]
		for _, r := range reqs {
			if id, ok := byRun[r.runID]; ok {
				rowOf[r.instance] = id
				send = append(send, r)
			}
		}
	}
	if len(send) == 0 {
		return
	}
	byInstance := map[string]postReq{}
	instances := make([]string, len(send))
	for i, r := range send {
		byInstance[r.instance] = r
		instances[i] = r.instance
	}
	invoked := map[string]time.Time{}
	s.hooks.Run(ctx, hookCommand(p, history.HookPost, p.Hooks.Post), instances, hooks.Handler{
		Invoked: func(insts []string, invocationID string, at time.Time) {
			var ids []int64
			for _, id := range insts {
				invoked[id] = at
				if rid, ok := rowOf[id]; ok {
					ids = append(ids, rid)
				}
			}
			s.hooksInvoked(ids, invocationID)
		},
		Done: func(res hooks.Result) {
			r := byInstance[res.InstanceID]
			if id, ok := rowOf[res.InstanceID]; ok {
				s.finishHook(id, history.HookPost, res)
			}
			start := res.StartedAt
			if start.IsZero() {
				start = invoked[res.InstanceID]
			}
			if s.opts.OnHookFrozen != nil && !r.preEnd.IsZero() && !start.IsZero() && res.Status != hooks.StatusAgentOffline && res.Status != hooks.StatusError {
				s.opts.OnHookFrozen(p.Name, max(0, start.Sub(r.preEnd)))
			}
		},
	})
}

// flushPosts sends the post commands still queued once every goroutine has returned (Stop),
// within the shutdown grace.
func (s *Scheduler) flushPosts() {
	groups := groupPosts(s.posts.take())
	if len(groups) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(s.baseCtx)
	t := s.clock.AfterFunc(s.opts.ShutdownGrace, cancel)
	defer func() {
		t.Stop()
		cancel()
	}()
	n := 0
	for _, g := range groups {
		n += len(g)
	}
	s.log.Info().Int("instances", n).Msg("sending the post hooks of runs left at shutdown")
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Go(func() { s.sendPosts(ctx, g) })
	}
	wg.Wait()
}

// repairPosts queues, at start, the post command of every pre hook of this scheduler's account
// that has none (a daemon stopped between the two), and closes those pre hooks still open.
func (s *Scheduler) repairPosts(ctx context.Context) {
	due, err := s.hist.HookRunsPostDue(ctx, s.opts.Account)
	if err != nil {
		s.checkFenced(err)
		s.log.Error().Err(err).Msg("cannot list pre hooks without their post; they are not repaired at this start")
		return
	}
	n := 0
	for _, h := range due {
		if !h.Status.Final() {
			s.finishHook(h.ID, history.HookPre, hooks.Result{InstanceID: h.InstanceID, Status: hooks.StatusFailed,
				InvocationID: h.InvocationID, FinishedAt: s.clock.Now(),
				Message: "the daemon that sent the pre hook stopped before its outcome was known"})
		}
		p := s.policyByName(h.Policy)
		if p == nil || p.Hooks == nil || p.Hooks.Post == nil {
			s.log.Warn().Str("policy", h.Policy).Str("instance", h.InstanceID).Int64("hook_run_id", h.ID).
				Msg("a pre hook has no post, and the policy no longer has a post hook to send")
			continue
		}
		req := postReq{policy: p, runID: h.RunID, region: h.Region, instance: h.InstanceID}
		if h.FinishedAt != nil && h.Status.Final() {
			req.preEnd = *h.FinishedAt
		}
		s.posts.push(req)
		n++
	}
	if n > 0 {
		s.log.Warn().Int("hooks", n).Msg("sending the post hooks a previous daemon left unsent")
	}
}
