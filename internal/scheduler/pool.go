package scheduler

import (
	"context"
	"fmt"
	"time"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// job is one run: one (policy, instance, slot). It is owned by one goroutine at a time: the
// queue (under Scheduler.mu), a worker, or Stop once every worker has returned.
type job struct {
	policy   *policy.Policy // nil only for a recovered run whose policy is no longer loaded
	region   string
	instance string
	slot     time.Time
	manual   bool // fired by RunOnce: its slot is not a schedule slot (policy_slots stays)

	ready time.Time // when the job may run next
	rank  uint64    // order among due jobs: set when first queued, kept by retries

	run         history.Run // the claimed row; ID is 0 until claimed
	claimed     bool
	name        string    // the image name the next CreateImage sends
	calls       int       // API calls made for the run by this daemon
	attemptBase int       // attempts recorded before this daemon took the run over
	sent        bool      // at least one CreateImage was sent by this daemon
	firstCall   time.Time // when the first CreateImage was sent (busy backoff's MaxElapsed)
	failures    [cvm.ClassQuota + 1]int
	lookupFails int       // failed DescribeImages look-ups
	deadline    time.Time // the slot's start window closes: no transient retry starts later
	ambiguous   bool      // a call may have created the image without telling us
	recovered   bool      // taken over from history at start
	lookupFirst bool      // look the name up before the next CreateImage
	renames     int
	quotaRetry  bool
	lastErr     *cvm.APIError

	// What the fire decided for the slot before claiming it: pending (send), or a terminal
	// status with its code and message (skipped, failed by a rule, missed).
	planStatus  history.Status
	planCode    string
	planMessage string

	hook *jobHook // the hooks of a policy with hooks: (hooks.go); nil otherwise

	done    chan struct{} // closed once outcome is set
	outcome Outcome
}

func newJob(p *policy.Policy, instance string, slot time.Time) *job {
	return &job{
		policy:   p,
		region:   p.Region,
		instance: instance,
		slot:     slot,
		name:     policy.ImageName(p, instance, slot, 0),
		deadline: slot.Add(startWindow(p)),
		done:     make(chan struct{}),

		planStatus: history.StatusPending,
	}
}

// plan records what the fire decided for j instead of sending it.
func (j *job) plan(status history.Status, code, message string) {
	j.planStatus, j.planCode, j.planMessage = status, code, message
}

// enqueue queues j to run at ready. While the scheduler stops, j is set aside for Stop to record.
func (s *Scheduler) enqueue(j *job, ready time.Time) {
	s.mu.Lock()
	if s.stopping {
		s.leftovers = append(s.leftovers, j)
		s.mu.Unlock()
		return
	}
	s.queue.push(j, ready)
	s.mu.Unlock()
	s.signal(s.wake)
}

// leave sets j aside because the scheduler is stopping.
func (s *Scheduler) leave(j *job) {
	s.mu.Lock()
	s.leftovers = append(s.leftovers, j)
	s.mu.Unlock()
}

// signal wakes the goroutine waiting on a one-slot channel, without blocking.
func (s *Scheduler) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// dispatch hands ready jobs to idle workers, earliest first. It holds an idle worker before it
// takes a job, so a job is only removed from the queue when a worker can run it at once; jobs that
// wait for a retry stay queued and a clock timer wakes the dispatcher when the first is due.
func (s *Scheduler) dispatch() {
	for {
		select {
		case <-s.idle:
		case <-s.stopCtx.Done():
			return
		}
		j := s.nextReady()
		if j == nil {
			return
		}
		s.work <- j // never blocks: capacity is the number of workers and we hold an idle one
	}
}

// nextReady waits for a due job (see jobQueue); nil when the scheduler stops.
func (s *Scheduler) nextReady() *job {
	for {
		s.mu.Lock()
		j, wait := s.queue.next(s.clock.Now())
		s.mu.Unlock()
		if j != nil {
			return j
		}
		if wait <= 0 {
			select {
			case <-s.wake:
			case <-s.stopCtx.Done():
				return nil
			}
			continue
		}
		t := s.clock.NewTimer(wait)
		select {
		case <-t.Chan():
		case <-s.wake:
		case <-s.stopCtx.Done():
			t.Stop()
			return nil
		}
		t.Stop()
	}
}

// worker runs jobs from the dispatcher until the scheduler stops.
func (s *Scheduler) worker() {
	for {
		select {
		case <-s.stopCtx.Done():
			return
		case j := <-s.work:
			s.runJob(j)
			s.idle <- struct{}{} // never blocks: at most one token per worker
		}
	}
}

// runJob takes one step of a run: claim, look-up, one paced CreateImage, and the decision on its
// answer. A run that must retry goes back to the queue; it does not hold the worker.
func (s *Scheduler) runJob(j *job) {
	if j.hook != nil && j.hook.waves != nil {
		j.hook.waves.taken(j.hook) // the fire's next wave of pre hooks may start (hooks.go)
	}
	if s.stopCtx.Err() != nil {
		s.leave(j)
		return
	}
	if !j.claimed {
		// Fires claim every slot before queueing it; this is a bug, not an outage.
		s.jobLog(j).Error().Msg("unclaimed slot reached a worker; not sending")
		s.finish(j, s.outcome(j, history.StatusPending, codeHistoryUnavailable, "slot was not claimed"))
		return
	}
	if j.lookupFirst {
		if !s.lookUpOwnImage(j) {
			return
		}
	}
	if j.policy == nil {
		s.fail(j, codePolicyNotFound, fmt.Sprintf("policy %s is no longer loaded; the run was not resent", j.run.Policy))
		return
	}
	in, ok := s.createImageInput(j)
	if !ok {
		return
	}
	waitFrom := s.clock.Now()
	err := s.pace.Wait(s.stopCtx)
	if s.opts.OnPaceWait != nil {
		s.opts.OnPaceWait(s.clock.Since(waitFrom))
	}
	if err != nil || s.fenced.Load() {
		s.leave(j)
		return
	}
	s.createImage(j, in)
}

// createImageInput builds the request for j; false when the run failed instead.
func (s *Scheduler) createImageInput(j *job) (cvm.CreateImageInput, bool) {
	p := j.policy
	in := cvm.CreateImageInput{
		InstanceID:       j.instance,
		ImageName:        j.name,
		ImageDescription: policy.ImageDescription(p, j.instance, j.slot),
		ForcePoweroff:    p.Image.ForcePoweroff,
		Sysprep:          p.Image.Sysprep,
		Reboot:           p.Image.Reboot,
		DataDiskIDs:      p.Image.DataDisks.IDs,
		Tags:             sortedTags(policy.ImageTags(p, j.instance, j.slot)),
		DryRun:           s.opts.APIDryRun,
	}
	if p.Image.DataDisks.All {
		if s.opts.ResolveDataDisks == nil {
			s.fail(j, codeDataDisksUnresolved, "image.data_disks: all is not supported by this build")
			return in, false
		}
		ids, err := s.opts.ResolveDataDisks(s.stopCtx, p, j.instance)
		if err != nil {
			s.fail(j, codeDataDisksUnresolved, fmt.Sprintf("resolve data disks of %s: %v", j.instance, err))
			return in, false
		}
		in.DataDiskIDs = ids
	}
	return in, true
}

// createImage sends one CreateImage and acts on the answer.
func (s *Scheduler) createImage(j *job, in cvm.CreateImageInput) {
	start := s.clock.Now()
	if !j.sent {
		j.firstCall = start
	}
	out, err := s.cvm.CreateImage(s.callCtx, j.region, in)
	elapsed := s.clock.Since(start)
	j.sent = true
	s.pace.Observe(elapsed) // the round trip's spread widens the pace's spacing
	ae, ambiguous := asAPIError("CreateImage", err)
	s.budget.Record(ae != nil && ae.Class == cvm.ClassTransient)
	requestID := out.RequestID
	if ae != nil {
		requestID = ae.RequestID
	}
	s.recordAttempt(j, "CreateImage", start, elapsed, requestID, ae)

	if ae == nil {
		if s.opts.APIDryRun {
			s.jobLog(j).Warn().Str("request_id", out.RequestID).
				Msg("the API accepted a dry-run CreateImage as a real request")
		}
		s.requested(j, out.ImageID, out.RequestID)
		return
	}
	j.lastErr = ae
	if ambiguous {
		j.ambiguous = true
	}
	if s.callCtx.Err() != nil {
		// Cut off by the shutdown grace deadline: the API may have acted, so the run stays
		// pending and the next start reconciles it by name.
		j.ambiguous = true
		s.leave(j)
		return
	}
	if s.opts.APIDryRun && ae.Code == codeDryRunOperation {
		s.finishRun(j, history.StatusSkipped, "", msgAPIDryRun)
		return
	}
	s.decide(j, ae)
}

// requested records an accepted CreateImage.
func (s *Scheduler) requested(j *job, imageID, requestID string) {
	ctx, cancel := s.historyContext()
	err := s.hist.RunRequested(ctx, j.run.ID, imageID, requestID)
	cancel()
	if err != nil {
		s.checkFenced(err)
		// The run stays pending in history; the next start finds the image by name.
		s.jobLog(j).Error().Err(err).Str("image_id", imageID).Str("request_id", requestID).
			Msg("cannot record the accepted CreateImage")
	}
	o := s.outcome(j, history.StatusRequested, "", "")
	o.ImageID, o.RequestID = imageID, requestID
	s.finish(j, o)
}

// fail records a run as failed with the API's (or imager's) code and message.
func (s *Scheduler) fail(j *job, code, message string) {
	s.finishRun(j, history.StatusFailed, code, message)
}

// finishRun moves a claimed run to a terminal status in history and completes the job.
func (s *Scheduler) finishRun(j *job, status history.Status, code, message string) {
	ctx, cancel := s.historyContext()
	err := s.hist.RunFinish(ctx, history.RunFinishParams{
		RunID:        j.run.ID,
		Status:       status,
		ErrorCode:    code,
		ErrorMessage: message,
		FinishedAt:   s.clock.Now(),
	})
	cancel()
	if err != nil {
		s.checkFenced(err)
		s.jobLog(j).Error().Err(err).Str("status", string(status)).Str("error_code", code).
			Msg("cannot record the run's end")
	}
	s.finish(j, s.outcome(j, status, code, message))
}

// finish completes j for this stage: logs the outcome and wakes whoever waits for it.
func (s *Scheduler) finish(j *job, o Outcome) {
	j.outcome = o
	s.queuePost(j)
	if s.opts.OnOutcome != nil && !o.AlreadyClaimed {
		s.opts.OnOutcome(o)
	}
	ev := s.log.Info()
	switch {
	case o.Status == history.StatusFailed:
		ev = s.log.Warn()
	case o.Status == history.StatusPending && !o.AlreadyClaimed:
		ev = s.log.Warn()
	}
	ev.Str("policy", o.Policy).Str("instance", o.InstanceID).Time("slot", o.Slot.UTC()).
		Str("image_name", o.ImageName).Str("image_id", o.ImageID).Str("request_id", o.RequestID).
		Str("status", string(o.Status)).Str("error_code", o.ErrorCode).Str("error_message", o.ErrorMessage).
		Int("attempts", o.Attempts).Msg("run outcome")
	if j.done != nil {
		close(j.done)
	}
}

// recordAttempt writes one API call made for j to history.
func (s *Scheduler) recordAttempt(j *job, action string, start time.Time, elapsed time.Duration, requestID string, ae *cvm.APIError) {
	j.calls++
	a := history.Attempt{
		RunID:     j.run.ID,
		Attempt:   j.attemptBase + j.calls,
		Action:    action,
		StartedAt: start,
		Duration:  elapsed,
		RequestID: requestID,
	}
	if ae != nil {
		a.ErrorCode, a.ErrorMessage = ae.Code, ae.Message
	}
	ctx, cancel := s.historyContext()
	err := s.hist.AttemptInsert(ctx, a)
	cancel()
	if err != nil {
		s.checkFenced(err)
		s.jobLog(j).Error().Err(err).Str("action", action).Int("attempt", a.Attempt).
			Str("request_id", requestID).Msg("cannot record the API call")
	}
}

// outcome describes j's run in the given state.
func (s *Scheduler) outcome(j *job, status history.Status, code, message string) Outcome {
	o := Outcome{
		Policy:       j.run.Policy,
		InstanceID:   j.instance,
		Slot:         j.slot,
		RunID:        j.run.ID,
		ImageName:    j.name,
		Status:       status,
		ErrorCode:    code,
		ErrorMessage: message,
		Attempts:     j.attemptBase + j.calls,
	}
	if j.policy != nil {
		o.Policy = j.policy.Name
	}
	return o
}

// historyContext bounds one history write. Writes use the daemon's context without its
// cancellation, so the outcome of a call finished during shutdown is still recorded.
func (s *Scheduler) historyContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.baseCtx, historyTimeout)
}

// asAPIError returns err as the CVM client's classified error (cvm.ClassifyError): an error the
// client did not classify counts as transient and ambiguous, since the request may have reached
// the API.
func asAPIError(action string, err error) (ae *cvm.APIError, ambiguous bool) {
	ae = cvm.ClassifyError(action, err)
	if ae == nil {
		return nil, false
	}
	return ae, ae.Ambiguous()
}
