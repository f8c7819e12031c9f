package scheduler

import (
	"context"
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
// across every policy. Slots are computed from the last instant already handled, so a reload
// never skips a slot that came due while it was applied.
func (s *Scheduler) cronLoop() {
	defer s.wg.Done()
	handled := s.clock.Now()
	fires := s.nextFires(handled)
	for {
		var timer clockwork.Timer
		var due <-chan time.Time
		if at, ok := earliest(fires); ok {
			timer = s.clock.NewTimer(at.Sub(s.clock.Now()))
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
			now := s.clock.Now()
			var batch []nextFire
			for i := range fires {
				f := &fires[i]
				if f.at.IsZero() || f.at.After(now) {
					continue
				}
				slot, passed := latestDue(f.p.Schedule, f.at, now)
				if passed > 0 {
					s.log.Warn().Str("policy", f.p.Name).Time("slot", slot).Int("slots_passed", passed).
						Msg("slots passed while the daemon could not fire; firing only the latest")
				}
				batch = append(batch, nextFire{p: f.p, at: slot})
				f.at = f.p.Schedule.Next(slot)
			}
			s.fireBatch(batch)
			handled = now
		}
	}
}

// nextFires returns each policy's first slot after t.
func (s *Scheduler) nextFires(t time.Time) []nextFire {
	cfg := s.cfg.Load()
	fires := make([]nextFire, 0, len(cfg.Policies))
	for _, p := range cfg.Policies {
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

// latestDue walks from the due slot first to the last slot not after now; passed counts the slots
// walked over.
func latestDue(sched policy.Schedule, first, now time.Time) (slot time.Time, passed int) {
	slot = first
	for passed < maxSkippedSlots {
		next := sched.Next(slot)
		if next.IsZero() || next.After(now) {
			break
		}
		slot = next
		passed++
	}
	return slot, passed
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

// fireBatch fires every due (policy, slot) and returns when all are queued.
func (s *Scheduler) fireBatch(batch []nextFire) {
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

// fireScheduled fires p's slot from the cron loop.
func (s *Scheduler) fireScheduled(p *policy.Policy, slot time.Time) {
	targets, skipped := s.targets(s.stopCtx, p)
	jobs := s.fire(s.stopCtx, p, slot, withSkipped(targets, skipped), skipped)
	// A fire during shutdown is set aside and recorded as missed by Stop.
	s.enqueueAll(jobs, false)
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

// fire makes one job per instance of order for p's slot. Runs that are not to be sent are
// claimed in their terminal status at once and their jobs come back finished: every run of a
// disabled policy (skipped), the instances in skipped (skipped, with the reason), and those the
// BeforeFire hook refuses (failed, ImageQuotaLimitExceeded). The caller queues the others.
func (s *Scheduler) fire(ctx context.Context, p *policy.Policy, slot time.Time, order []string, skipped map[string]string) []*job {
	s.log.Info().Str("policy", p.Name).Time("slot", slot).Strs("targets", order).
		Int("skipped", len(skipped)).Bool("enabled", p.Enabled).Msg("policy fired")
	jobs := make([]*job, 0, len(order))
	var send []*job
	for _, inst := range order {
		j := newJob(p, inst, slot)
		jobs = append(jobs, j)
		reason, skip := skipped[inst]
		switch {
		case !p.Enabled:
			s.claimTerminal(j, history.StatusSkipped, "", msgPolicyDisabled)
		case skip:
			s.jobLog(j).Warn().Str("reason", reason).Msg("target skipped")
			s.claimTerminal(j, history.StatusSkipped, codeTargetGone, reason)
		default:
			send = append(send, j)
		}
	}
	s.refuseBeforeFire(ctx, p, slot, send)
	return jobs
}

// refuseBeforeFire asks the BeforeFire hook which of the jobs about to be sent must not be, and
// records those as failed.
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
		s.log.Warn().Err(err).Str("policy", p.Name).Time("slot", slot).
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
		s.claimTerminal(j, history.StatusFailed, codeQuotaExceeded, r)
	}
	if len(refusedIDs) > 0 {
		s.log.Error().Str("policy", p.Name).Str("region", p.Region).Time("slot", slot).
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

// targets returns the instances p fires on now, and those to record as skipped with the reason.
func (s *Scheduler) targets(ctx context.Context, p *policy.Policy) ([]string, map[string]string) {
	if s.opts.ResolveTargets == nil {
		if p.Select != nil {
			s.log.Warn().Str("policy", p.Name).Msg("select is not resolved by this build; only the listed instances are targeted")
		}
		return dedupe(p.Instances), nil
	}
	ids, skipped, err := s.opts.ResolveTargets(ctx, p)
	if err != nil {
		s.log.Error().Err(err).Str("policy", p.Name).
			Msg("cannot resolve the policy's targets; only the listed instances are targeted")
		return dedupe(p.Instances), nil
	}
	ids = slices.DeleteFunc(dedupe(ids), func(id string) bool { _, skip := skipped[id]; return skip })
	return ids, skipped
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

// claimTerminal records a slot that a rule decided not to send (status skipped, missed, or
// failed with code).
func (s *Scheduler) claimTerminal(j *job, status history.Status, code, message string) {
	now := s.clock.Now()
	ctx, cancel := s.historyContext()
	run, claimed, err := s.hist.RunClaim(ctx, history.RunClaimParams{
		Policy:       j.policy.Name,
		InstanceID:   j.instance,
		Region:       j.region,
		ScheduledAt:  j.slot,
		ImageName:    j.name,
		DaemonID:     s.daemonID,
		StartedAt:    now,
		Status:       status,
		ErrorCode:    code,
		ErrorMessage: message,
	})
	cancel()
	switch {
	case err != nil:
		s.jobLog(j).Error().Err(err).Str("status", string(status)).Msg("cannot record the slot")
		if code == "" {
			code = codeHistoryUnavailable
		}
		s.finish(j, s.outcome(j, status, code, message))
	case !claimed:
		o := outcomeFromRun(run)
		o.AlreadyClaimed = true
		s.finish(j, o)
	default:
		j.run, j.claimed = run, true
		s.finish(j, s.outcome(j, status, code, message))
	}
}
