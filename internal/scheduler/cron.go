package scheduler

import (
	"context"
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
				s.fireScheduled(f.p, slot)
				f.at = f.p.Schedule.Next(slot)
			}
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

// fireScheduled fires p's slot from the cron loop.
func (s *Scheduler) fireScheduled(p *policy.Policy, slot time.Time) {
	jobs := s.fire(p, slot, s.targets(s.stopCtx, p))
	// A fire during shutdown is set aside and recorded as missed by Stop.
	s.enqueueAll(jobs, false)
}

// fire makes one job per target for p's slot. A disabled policy's jobs are recorded as skipped at
// once and come back finished; the others must be queued by the caller.
func (s *Scheduler) fire(p *policy.Policy, slot time.Time, targets []string) []*job {
	s.log.Info().Str("policy", p.Name).Time("slot", slot).Strs("targets", targets).
		Bool("enabled", p.Enabled).Msg("policy fired")
	jobs := make([]*job, 0, len(targets))
	for _, inst := range targets {
		j := newJob(p, inst, slot)
		if !p.Enabled {
			s.claimTerminal(j, history.StatusSkipped, msgPolicyDisabled)
		}
		jobs = append(jobs, j)
	}
	return jobs
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

// targets returns the instances p fires on now.
func (s *Scheduler) targets(ctx context.Context, p *policy.Policy) []string {
	if p.Select != nil {
		if s.opts.ResolveTargets == nil {
			s.log.Warn().Str("policy", p.Name).Msg("select is not resolved by this build; only the listed instances are targeted")
		} else {
			ids, err := s.opts.ResolveTargets(ctx, p)
			if err == nil {
				return dedupe(ids)
			}
			s.log.Error().Err(err).Str("policy", p.Name).
				Msg("cannot resolve the policy's select; only the listed instances are targeted")
		}
	}
	return dedupe(p.Instances)
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

// claimTerminal records a slot that a rule decided not to send (status skipped or missed).
func (s *Scheduler) claimTerminal(j *job, status history.Status, message string) {
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
		ErrorMessage: message,
	})
	cancel()
	switch {
	case err != nil:
		s.jobLog(j).Error().Err(err).Str("status", string(status)).Msg("cannot record the slot")
		s.finish(j, s.outcome(j, status, codeHistoryUnavailable, message))
	case !claimed:
		o := outcomeFromRun(run)
		o.AlreadyClaimed = true
		s.finish(j, o)
	default:
		j.run, j.claimed = run, true
		s.finish(j, s.outcome(j, status, "", message))
	}
}
