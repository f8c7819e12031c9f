package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// nextFire is one policy's next slot.
type nextFire struct {
	p  *policy.Policy
	at time.Time
}

// cronLoop fires policies on their schedules with one clock timer for the earliest next slot
// across every policy. It first catches up the slots that passed since each policy's last handled
// slot (catchUp). Slots are computed from the last instant already handled, so a reload never
// skips a slot that came due while it was applied.
func (s *Scheduler) cronLoop() {
	handled := s.clock.Now()
	s.catchUp(handled)
	fires := s.nextFires(handled)
	warmer, _ := s.hist.(Warmer)
	var warmedFor time.Time // the slot whose connections were warmed
	for {
		var timer clockwork.Timer
		var due <-chan time.Time
		warming := false
		if at, ok := earliest(fires); ok {
			next := at
			// warmAhead before a slot, the claims' connections are opened and prepared, so the
			// fire does not open them (docs/design.md "Fire latency").
			if warmer != nil && !warmedFor.Equal(at) {
				if w := at.Add(-warmAhead); w.After(s.clock.Now()) {
					next, warming = w, true
				} else {
					s.warm(warmer)
					warmedFor = at
				}
			}
			timer = s.clock.NewTimer(next.Sub(s.clock.Now()))
			due = timer.Chan()
		}
		select {
		case <-s.stopCtx.Done():
			stopTimer(timer)
			return
		case <-s.reload:
			stopTimer(timer)
			fires = s.nextFires(handled)
		case <-due:
			if warming {
				at, _ := earliest(fires)
				s.warm(warmer)
				warmedFor = at
				continue
			}
			now := s.clock.Now()
			var batch []nextFire
			var missed []missedSlots
			for i := range fires {
				f := &fires[i]
				if f.at.IsZero() || f.at.After(now) {
					continue
				}
				w := walkSlots(f.p, f.at, now)
				if !w.fire.IsZero() {
					batch = append(batch, nextFire{p: f.p, at: w.fire})
				}
				if len(w.missed) > 0 {
					missed = append(missed, missedSlots{p: f.p, slots: w.missed, beyond: w.beyond, reason: s.loopMissedReason})
				}
				f.at = w.next
				if f.at.IsZero() {
					f.at = f.p.Schedule.Next(w.last)
				}
			}
			s.recordMissedAll(missed)
			s.fireBatch(batch)
			handled = now
		}
	}
}

// warmAhead is how long before a slot the cron loop warms the history's connections.
const warmAhead = time.Second

// warm opens and prepares, in the background, a connection for each fire that may run at once.
func (s *Scheduler) warm(w Warmer) {
	s.run.Go(func() {
		ctx, cancel := context.WithTimeout(s.stopCtx, historyTimeout)
		defer cancel()
		w.WarmConnections(ctx, fireConcurrency+1)
	})
}

// nextFires returns the first slot after t of each policy this scheduler fires.
func (s *Scheduler) nextFires(t time.Time) []nextFire {
	pols := s.policies(s.cfg.Load())
	fires := make([]nextFire, 0, len(pols))
	for _, p := range pols {
		if p.Schedule == nil {
			continue
		}
		fires = append(fires, nextFire{p: p, at: p.Schedule.Next(t)})
	}
	return fires
}

// earliest returns the first slot among fires.
func earliest(fires []nextFire) (time.Time, bool) {
	var at time.Time
	for _, f := range fires {
		if !f.at.IsZero() && (at.IsZero() || f.at.Before(at)) {
			at = f.at
		}
	}
	return at, !at.IsZero()
}

// slotWalk is what a walk over a policy's due slots found.
type slotWalk struct {
	fire   time.Time   // the latest slot still inside the start window; zero when none
	missed []time.Time // the other slots, the latest maxMissedSlots of them, oldest first
	beyond int         // missed slots not in missed (older ones)
	last   time.Time   // the latest slot walked
	next   time.Time   // the slot after last, when the walk reached it (zero otherwise)
}

// walkSlots walks p's slots from first (included) to now: the latest slot whose start window is
// still open is to be fired, every other one is missed.
func walkSlots(p *policy.Policy, first, now time.Time) slotWalk {
	var slots []time.Time
	at := first
	for ; !at.IsZero() && !at.After(now) && len(slots) < maxSkippedSlots; at = p.Schedule.Next(at) {
		slots = append(slots, at)
	}
	var w slotWalk
	if len(slots) == 0 {
		return w
	}
	w.last = slots[len(slots)-1]
	if at.After(now) {
		w.next = at // the walk stopped at it: the first slot after now, computed once
	}
	if now.Before(w.last.Add(startWindow(p))) {
		w.fire = w.last
		slots = slots[:len(slots)-1]
	}
	if len(slots) > maxMissedSlots {
		w.beyond = len(slots) - maxMissedSlots
		slots = slots[len(slots)-maxMissedSlots:]
	}
	w.missed = slots
	return w
}

func stopTimer(t clockwork.Timer) {
	if t != nil {
		t.Stop()
	}
}

// fireConcurrency bounds how many due policies are fired at once. A fire waits for its hooks
// (targets resolved with DescribeInstances, the quota gate) before its slots are queued; firing
// due policies side by side keeps one slow round trip from delaying every policy behind it,
// while the API paces (DescribeInstances, CreateImage) still hold for all of them together.
const fireConcurrency = 8

// fireBatch fires every due (policy, slot) and returns when all are claimed and queued (or
// handed to a claim retry). The BeforeFireBatch hook sees every due policy first.
func (s *Scheduler) fireBatch(batch []nextFire) {
	if len(batch) == 0 {
		return
	}
	if hook := s.opts.BeforeFireBatch; hook != nil {
		ps := make([]*policy.Policy, len(batch))
		for i, f := range batch {
			ps[i] = f.p
		}
		hook(s.stopCtx, ps)
	}
	if len(batch) == 1 {
		s.fireScheduled(batch[0].p, batch[0].at)
		return
	}
	sem := make(chan struct{}, fireConcurrency)
	var wg sync.WaitGroup
	for _, f := range batch {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.fireScheduled(f.p, f.at)
		})
	}
	wg.Wait()
}

// fireScheduled fires p's slot from the cron loop. When its claim cannot be written, the slot is
// kept in memory and retried until its start window closes (then recorded missed) by a goroutine
// of its own, so the cron loop goes on.
func (s *Scheduler) fireScheduled(p *policy.Policy, slot time.Time) {
	if s.stopCtx.Err() != nil {
		return // a fire during shutdown is found again by the next start's walk
	}
	targets, skipped, unresolved := s.targets(s.stopCtx, p, slot)
	jobs := s.fire(s.stopCtx, p, slot, withSkipped(targets, skipped), skipped)
	if len(jobs) == 0 {
		s.recordFireWithoutRuns(p, slot, unresolved)
		return
	}
	err := s.claimJobs(jobs, false)
	if err == nil {
		s.sendFire(jobs, false)
		return
	}
	if errors.Is(err, history.ErrFenced) {
		s.abandon(jobs, err)
		return
	}
	s.log.Warn().Err(err).Str("policy", p.Name).Time("slot", slot.UTC()).Time("window_closes", jobs[0].deadline.UTC()).
		Msg("cannot claim the slot; retrying until its start window closes")
	s.run.Go(func() {
		if s.claimUntilWindow(s.stopCtx, jobs) == nil {
			s.sendFire(jobs, false)
		}
	})
}

// withSkipped returns targets followed by the skipped instances not among them, sorted: the
// order of a fire's runs.
func withSkipped(targets []string, skipped map[string]string) []string {
	order := slices.Clone(targets)
	extra := make([]string, 0, len(skipped))
	for id := range skipped {
		if !slices.Contains(targets, id) {
			extra = append(extra, id)
		}
	}
	slices.Sort(extra)
	return append(order, extra...)
}

// recordFireWithoutRuns records the fire of p's slot that has no target: a success with nothing
// to image, or, when the targets could not be resolved (unresolved), a failure with
// CodeTargetsUnresolved. Either way policy_slots moves to the slot, and a ping gets /start and
// its verdict (docs/notifications.md "Pings").
func (s *Scheduler) recordFireWithoutRuns(p *policy.Policy, slot time.Time, unresolved error) {
	var code, msg string
	if unresolved != nil {
		code, msg = CodeTargetsUnresolved, "cannot resolve the policy's targets, and it has no earlier ones: "+unresolved.Error()
		s.log.Error().Str("policy", p.Name).Time("slot", slot.UTC()).Str("error_code", code).Str("error_message", msg).
			Msg("fire failed: no instance to image")
	} else {
		s.log.Warn().Str("policy", p.Name).Time("slot", slot.UTC()).Msg("the policy has no targets: nothing to image at this slot")
	}
	ctx, cancel := s.historyContext()
	err := s.hist.FireWithoutRuns(ctx, p.Name, slot, code, msg)
	cancel()
	if err != nil && !s.checkFenced(err) {
		s.log.Warn().Err(err).Str("policy", p.Name).Time("slot", slot.UTC()).Msg("cannot record the fire")
	}
}

// fire makes one job per instance of order for p's slot and decides, before anything is written,
// which are not to be sent: every run of a disabled policy (skipped), the instances in skipped
// (skipped, with the reason), those whose previous image is still being made under `concurrency:
// forbid` (skipped, PreviousImageInProgress) and those the BeforeFire hook refuses (failed,
// ImageQuotaLimitExceeded). The caller claims them all at once (claimJobs) and queues the others.
func (s *Scheduler) fire(ctx context.Context, p *policy.Policy, slot time.Time, order []string, skipped map[string]string) []*job {
	s.log.Info().Str("policy", p.Name).Time("slot", slot.UTC()).Strs("targets", order).
		Int("skipped", len(skipped)).Bool("enabled", p.Enabled).Msg("policy fired")
	jobs := make([]*job, 0, len(order))
	var send []*job
	for _, inst := range order {
		j := newJob(p, inst, slot)
		jobs = append(jobs, j)
		reason, skip := skipped[inst]
		switch {
		case !p.Enabled:
			j.plan(history.StatusSkipped, "", msgPolicyDisabled)
		case skip:
			s.jobLog(j).Warn().Str("reason", reason).Msg("target skipped")
			j.plan(history.StatusSkipped, codeTargetGone, reason)
		default:
			send = append(send, j)
		}
	}
	send = s.forbidConcurrent(ctx, p, slot, send)
	s.refuseBeforeFire(ctx, p, slot, send)
	return jobs
}

// forbidConcurrent plans as skipped the jobs whose instance's previous image of the policy is
// still pending or requested, under `concurrency: forbid`, and returns the others.
func (s *Scheduler) forbidConcurrent(ctx context.Context, p *policy.Policy, slot time.Time, send []*job) []*job {
	if p.Concurrency == policy.ConcurrencyAllow || len(send) == 0 {
		return send
	}
	instances := make([]string, len(send))
	for i, j := range send {
		instances[i] = j.instance
	}
	hctx, cancel := context.WithTimeout(ctx, historyTimeout)
	busy, err := s.hist.RunsInProgress(hctx, p.Name, instances, slot)
	cancel()
	if err != nil {
		s.log.Warn().Err(err).Str("policy", p.Name).Time("slot", slot.UTC()).
			Msg("cannot check for images still being made (concurrency: forbid); sending every slot")
		return send
	}
	out := send[:0:0]
	for _, j := range send {
		prev, ok := busy[j.instance]
		if !ok {
			out = append(out, j)
			continue
		}
		msg := fmt.Sprintf("previous image %s (slot %s) is still %s; concurrency: forbid skips this slot",
			prev.ImageName, prev.ScheduledAt.UTC().Format(time.RFC3339), prev.Status)
		s.jobLog(j).Warn().Str("previous_image_name", prev.ImageName).Str("error_code", CodePreviousImageInProgress).
			Msg("previous image still being made; slot skipped")
		j.plan(history.StatusSkipped, CodePreviousImageInProgress, msg)
	}
	return out
}

// refuseBeforeFire asks the BeforeFire hook which of the jobs about to be sent must not be, and
// plans those as failed.
func (s *Scheduler) refuseBeforeFire(ctx context.Context, p *policy.Policy, slot time.Time, send []*job) {
	if s.opts.BeforeFire == nil || len(send) == 0 {
		return
	}
	instances := make([]string, len(send))
	for i, j := range send {
		instances[i] = j.instance
	}
	refused, err := s.opts.BeforeFire(ctx, p, instances)
	if err != nil {
		s.log.Warn().Err(err).Str("policy", p.Name).Time("slot", slot.UTC()).
			Msg("cannot check the fire before sending (image quota); sending every slot")
		return
	}
	var refusedIDs []string
	reason := ""
	for _, j := range send {
		r, ok := refused[j.instance]
		if !ok {
			continue
		}
		if reason == "" {
			reason = r
		}
		refusedIDs = append(refusedIDs, j.instance)
		j.plan(history.StatusFailed, codeQuotaExceeded, r)
	}
	if len(refusedIDs) > 0 {
		s.log.Error().Str("policy", p.Name).Str("region", p.Region).Time("slot", slot.UTC()).
			Str("error_code", codeQuotaExceeded).Strs("refused", refusedIDs).Int("sent", len(send)-len(refusedIDs)).
			Str("reason", reason).Msg("image quota: slots of this fire fail without being sent")
	}
}

// enqueueAll queues the jobs of one fire that are not finished yet, all at once so they keep
// their order. While stopping they are set aside, or refused when refuse is set.
func (s *Scheduler) enqueueAll(jobs []*job, refuse bool) bool {
	now := s.clock.Now()
	s.mu.Lock()
	if s.stopping && refuse {
		s.mu.Unlock()
		return false
	}
	for _, j := range jobs {
		if isDone(j) {
			continue
		}
		if s.stopping {
			s.leftovers = append(s.leftovers, j)
		} else {
			s.queue.push(j, now)
		}
	}
	s.mu.Unlock()
	s.signal(s.wake)
	return true
}

// isDone reports whether j already has its outcome.
func isDone(j *job) bool {
	select {
	case <-j.done:
		return true
	default:
		return false
	}
}

// targets returns the instances p images now, and the listed ones skipped as gone (see
// Options.ResolveTargets). When the targets cannot be resolved (DescribeInstances still failing
// after its retries), the fire falls back on what it knows: the listed instances and the
// instances of the policy's latest slot before `before` (history), less those the API reported
// gone. That is logged at error level, and the resolution error comes back as unresolved, so a
// fire that knows of no instance at all fails (TargetsUnresolved) instead of looking like a fire
// with nothing to do.
func (s *Scheduler) targets(ctx context.Context, p *policy.Policy, before time.Time) (ids []string, skipped map[string]string, unresolved error) {
	if s.opts.ResolveTargets == nil {
		if p.Select != nil {
			s.log.Warn().Str("policy", p.Name).Msg("select is not resolved by this build; only the listed instances are targeted")
		}
		return dedupe(p.Instances), nil, nil
	}
	ids, skipped, err := s.opts.ResolveTargets(ctx, p)
	if err == nil {
		ids = slices.DeleteFunc(dedupe(ids), func(id string) bool { _, skip := skipped[id]; return skip })
		return ids, skipped, nil
	}
	hctx, cancel := context.WithTimeout(ctx, historyTimeout)
	previous, herr := s.hist.PreviousTargets(hctx, p.Name, before)
	cancel()
	if herr != nil {
		s.log.Warn().Err(herr).Str("policy", p.Name).Msg("cannot read the targets of the policy's previous fire")
	}
	ids = dedupe(append(slices.Clone(p.Instances), previous...))
	slices.Sort(ids)
	s.log.Error().Err(err).Str("policy", p.Name).Time("slot", before.UTC()).Int("listed", len(p.Instances)).
		Int("previous_targets", len(previous)).Int("targets", len(ids)).
		Msg("cannot resolve the policy's targets; imaging its listed instances and those of its previous fire")
	return ids, nil, err
}

func dedupe(ids []string) []string {
	seen := make(map[string]bool, len(ids))
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}
