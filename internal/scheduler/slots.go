package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// codeFenced is the outcome code of slots abandoned because leadership was lost before their
// claim: no row is written; the new leader's walk over missed slots records them.
const codeFenced = "Fenced"

// Messages of missed rows.
const (
	msgMissedNoLeader = "slot passed while no imager leader was running"
	msgMissedPaused   = "slot passed while the scheduler could not fire it (the process was paused or the clock jumped)"
	msgMissedDBDown   = "PostgreSQL was unreachable when the slot fell due"
)

// errWindowClosed reports that a slot's claim could not be written before its start window
// closed; its rows were recorded missed instead.
var errWindowClosed = errors.New("start window closed before the slot could be claimed")

// missedWrite retries the write of missed rows until the database is back: they must not be lost.
var missedWrite = backoff.Policy{Initial: 200 * time.Millisecond, Max: 30 * time.Second}

// claimJobs writes every job's row in one transaction (RunsClaimFire): pending for those to send,
// their planned terminal status for the others, which are then finished. A job whose slot was
// claimed before is finished with that row's outcome and not sent, unless retried is set and the
// row is this daemon's own unstarted claim (an earlier try committed but its answer was lost).
func (s *Scheduler) claimJobs(jobs []*job, retried bool) error {
	now := s.clock.Now()
	params := make([]history.RunClaimParams, len(jobs))
	for i, j := range jobs {
		params[i] = history.RunClaimParams{
			Policy:       j.policy.Name,
			InstanceID:   j.instance,
			Region:       j.region,
			ScheduledAt:  j.slot,
			ImageName:    j.name,
			DaemonID:     s.daemonID,
			StartedAt:    now,
			Status:       j.planStatus,
			ErrorCode:    j.planCode,
			ErrorMessage: j.planMessage,
			Account:      policyAccount(j.policy),
			Manual:       j.manual,
		}
	}
	ctx, cancel := s.historyContext()
	s.claimTurn <- struct{}{}
	runs, claimed, err := s.hist.RunsClaimFire(ctx, params)
	<-s.claimTurn
	cancel()
	s.noteDB(err)
	if err != nil {
		return err
	}
	for i, j := range jobs {
		run := runs[i]
		own := retried && !claimed[i] && run.DaemonID == s.daemonID && run.Status == j.planStatus && run.Attempts == 0
		switch {
		case !claimed[i] && !own:
			s.jobLog(j).Info().Str("claimed_by", run.DaemonID).Str("run_status", string(run.Status)).
				Msg("slot already claimed; not sending")
			o := outcomeFromRun(run)
			o.AlreadyClaimed = true
			s.finishQuietly(j, o, j.planStatus == history.StatusMissed)
		case j.planStatus != history.StatusPending:
			j.run, j.claimed = run, true
			s.finishQuietly(j, s.outcome(j, j.planStatus, j.planCode, j.planMessage), j.planStatus == history.StatusMissed)
		default:
			j.run, j.claimed = run, true
			if run.ImageName != "" {
				j.name = run.ImageName
			}
		}
	}
	return nil
}

// finishQuietly is finish without the per-run log line when quiet (missed rows are summarised
// per policy instead).
func (s *Scheduler) finishQuietly(j *job, o Outcome, quiet bool) {
	if !quiet {
		s.finish(j, o)
		return
	}
	j.outcome = o
	if j.done != nil {
		close(j.done)
	}
}

// claimUntilWindow retries claiming jobs (one fire) until it succeeds or the fire's start window
// closes; then the rows are recorded missed, retried until the database takes them. It returns
// nil when the jobs were claimed (the caller queues those to send), errWindowClosed when they
// were recorded missed, ErrFenced, or ctx's error. Every job has its outcome unless it returns nil.
func (s *Scheduler) claimUntilWindow(ctx context.Context, jobs []*job) error {
	deadline := jobs[0].deadline
	p := jobs[0].policy
	bo := asPolicy(s.retry().Transient)
	bo.Attempts, bo.MaxElapsed = 0, 0 // a claim is retried until the window closes, whatever the count
	failures := 1                     // the caller's claim failed
	lastErr := backoff.Retry(ctx, s.clock, bo, func(try int) error {
		failures = try - 1
		err := s.claimJobs(jobs, true)
		if errors.Is(err, history.ErrFenced) {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.AlreadyFailed(1, errors.New("claim not written")), backoff.Deadline(deadline), backoff.WithJitter(s.jitter))
	switch {
	case lastErr == nil:
		s.log.Info().Str("policy", p.Name).Time("slot", jobs[0].slot).Int("failures", failures).Msg("slot claimed after retrying")
		return nil
	case errors.Is(lastErr, history.ErrFenced):
		s.abandon(jobs, lastErr)
		return lastErr
	case ctx.Err() != nil:
		s.unwritten(jobs, ctx.Err())
		return ctx.Err()
	}
	reason := fmt.Sprintf("%s and stayed so until the start window closed (%v)", msgMissedDBDown, lastErr)
	for _, j := range jobs {
		j.plan(history.StatusMissed, CodeMissed, reason)
	}
	s.log.Error().Str("policy", p.Name).Time("slot", jobs[0].slot).Str("error_code", CodeMissed).Int("runs", len(jobs)).
		Msg("start window closed before the slot could be claimed; recording it missed once the database is back")
	if err := s.writeMissed(ctx, jobs); err != nil {
		return err
	}
	return errWindowClosed
}

// writeMissed writes jobs planned missed, retrying until the database takes them, leadership is
// lost or ctx ends.
func (s *Scheduler) writeMissed(ctx context.Context, jobs []*job) error {
	err := backoff.Retry(ctx, s.clock, missedWrite, func(int) error {
		err := s.claimJobs(jobs, true)
		if errors.Is(err, history.ErrFenced) {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.WithJitter(s.jitter), backoff.OnRetry(func(try int, err error, _ time.Duration) {
		if try == 1 {
			s.log.Warn().Err(err).Str("policy", jobs[0].policy.Name).Time("slot", jobs[0].slot).
				Msg("cannot record missed slots yet; retrying until the database is back")
		}
	}))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, history.ErrFenced):
		s.abandon(jobs, err)
		return err
	}
	// Only ctx ends the retries otherwise (missedWrite has no bound).
	s.unwritten(jobs, ctx.Err())
	return ctx.Err()
}

// unwritten finishes the jobs of a fire whose rows could not be written before shutdown. The
// policy's last handled slot did not move, so the next start's walk records the slot.
func (s *Scheduler) unwritten(jobs []*job, cause error) {
	s.log.Error().Str("policy", jobs[0].policy.Name).Time("slot", jobs[0].slot).Int("runs", len(jobs)).
		Msg("stopping before the slot's rows could be written; the next start records it")
	for _, j := range jobs {
		if !isDone(j) {
			s.finish(j, s.outcome(j, j.planStatus, codeHistoryUnavailable, fmt.Sprintf("slot not recorded: %v", cause)))
		}
	}
}

// abandon finishes the jobs of a fire refused by the fence: nothing was written or sent.
func (s *Scheduler) abandon(jobs []*job, err error) {
	s.onFenced(err)
	for _, j := range jobs {
		if !isDone(j) {
			s.finish(j, s.outcome(j, j.planStatus, codeFenced, "leadership lost before the slot was claimed; the new leader records it"))
		}
	}
}

// checkFenced reacts to a history write refused by the fence; it reports whether it was.
func (s *Scheduler) checkFenced(err error) bool {
	if errors.Is(err, history.ErrFenced) {
		s.onFenced(err)
		return true
	}
	return false
}

// onFenced stops sending at once (no new CreateImage, no new fire) and tells the leadership
// component, once.
func (s *Scheduler) onFenced(err error) {
	s.fencedOnce.Do(func() {
		s.fenced.Store(true)
		s.log.Error().Err(err).Msg("leadership term is no longer current: stopping sending at once")
		s.run.Cancel()
		if s.opts.OnFenced != nil {
			s.opts.OnFenced()
		}
	})
}

// Fenced reports whether a history write was refused by the fence (leadership lost).
func (s *Scheduler) Fenced() bool { return s.fenced.Load() }

// noteDB keeps when claim writes started failing because the database is unreachable, so missed
// rows can say so.
func (s *Scheduler) noteDB(err error) {
	switch {
	case err == nil:
		s.dbDownAt.Store(0)
	case errors.Is(err, history.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded):
		s.dbDownAt.CompareAndSwap(0, s.clock.Now().UnixNano())
	}
}

// loopMissedReason is the message of a slot the running cron loop found already past its window.
func (s *Scheduler) loopMissedReason(p *policy.Policy, slot time.Time) string {
	if at := s.dbDownAt.Load(); at != 0 && !time.Unix(0, at).After(slot.Add(startWindow(p))) {
		return msgMissedDBDown
	}
	return msgMissedPaused
}

// startMissedReason is the message of a slot that passed before this scheduler started.
func (s *Scheduler) startMissedReason(p *policy.Policy, slot time.Time) string {
	if s.opts.MissedReason != nil {
		if r := s.opts.MissedReason(p, slot); r != "" {
			return r
		}
	}
	return msgMissedNoLeader
}

// missedSlots are passed slots of one policy to record as missed.
type missedSlots struct {
	p      *policy.Policy
	slots  []time.Time
	beyond int // older missed slots without rows (beyond maxMissedSlots)
	reason func(p *policy.Policy, slot time.Time) string
}

// catchUp walks, for every policy seen before (of this scheduler's account, with
// Options.Account), the slots between its last handled slot and now:
// the latest still inside its start window is fired, every other one is recorded missed. A
// policy never seen has nothing before now.
func (s *Scheduler) catchUp(now time.Time) {
	ctx, cancel := s.historyContext()
	last, err := s.hist.PolicySlots(ctx)
	cancel()
	if err != nil {
		s.checkFenced(err)
		s.log.Error().Err(err).Msg("cannot read the last handled slots; slots that passed before this start are not walked")
		return
	}
	var batch []nextFire
	var missed []missedSlots
	marks := map[string]time.Time{}
	for _, p := range s.policies(s.cfg.Load()) {
		from, seen := last[p.Name]
		if p.Schedule == nil {
			continue
		}
		if !seen {
			// Nothing before now; from here on the policy is seen, so a later downtime
			// before its first fire is walked too.
			if prev := previousSlot(p.Schedule, now); !prev.IsZero() {
				marks[p.Name] = prev
			}
			continue
		}
		first := p.Schedule.Next(from)
		if first.IsZero() || first.After(now) {
			continue
		}
		w := walkSlots(p, first, now)
		if !w.fire.IsZero() {
			batch = append(batch, nextFire{p: p, at: w.fire})
		}
		if len(w.missed) > 0 {
			missed = append(missed, missedSlots{p: p, slots: w.missed, beyond: w.beyond, reason: s.startMissedReason})
		}
	}
	s.markSlots(marks)
	s.recordMissedAll(missed)
	s.fireBatch(batch)
}

// markSlots moves the last handled slot of policies seen for the first time to their latest slot
// before now, in one statement (a first start with thousands of policies). A mark begins no fire.
func (s *Scheduler) markSlots(marks map[string]time.Time) {
	if len(marks) == 0 {
		return
	}
	ctx, cancel := s.historyContext()
	err := s.hist.PolicySlotsSet(ctx, marks)
	cancel()
	if err != nil && !s.checkFenced(err) {
		s.log.Warn().Err(err).Int("policies", len(marks)).Msg("cannot record where new policies start; a downtime before their first fire is not walked")
	}
}

// previousSlot returns the latest slot of sched not after now, or zero when there is none in the
// past five years. It searches back in widening spans, so a minutely schedule costs a few steps
// and a yearly one a few hundred.
func previousSlot(sched policy.Schedule, now time.Time) time.Time {
	const longest = 5 * 366 * 24 * time.Hour
	for span := time.Minute; ; span = min(span*4, longest) {
		var prev time.Time
		for at := sched.Next(now.Add(-span)); !at.IsZero() && !at.After(now); at = sched.Next(at) {
			prev = at
		}
		if !prev.IsZero() || span == longest {
			return prev
		}
	}
}

// recordMissedAll records every policy's missed slots.
func (s *Scheduler) recordMissedAll(all []missedSlots) {
	for _, m := range all {
		if s.stopCtx.Err() != nil {
			return
		}
		s.recordMissed(m)
	}
}

// recordMissed writes a missed row per slot and target instance (targets resolved now). When the
// database cannot take them, a goroutine retries until it does.
func (s *Scheduler) recordMissed(m missedSlots) {
	p := m.p
	first, last := m.slots[0], m.slots[len(m.slots)-1]
	if m.beyond > 0 {
		s.log.Warn().Str("policy", p.Name).Int("missed_slots_without_rows", m.beyond).Time("first_recorded_slot", first).
			Msgf("more than %d slots passed; only the latest %d are recorded missed", maxMissedSlots, maxMissedSlots)
	}
	targets, _, _ := s.targets(s.stopCtx, p, first)
	s.log.Warn().Str("policy", p.Name).Int("slots", len(m.slots)).Time("first_slot", first).Time("last_slot", last).
		Int("targets", len(targets)).Str("error_code", CodeMissed).Str("reason", m.reason(p, last)).Msg("slots missed")
	if len(targets) == 0 {
		s.recordSlotHandled(p, last)
		return
	}
	jobs := make([]*job, 0, len(m.slots)*len(targets))
	for _, slot := range m.slots {
		reason := m.reason(p, slot)
		for _, inst := range targets {
			j := newJob(p, inst, slot)
			j.plan(history.StatusMissed, CodeMissed, reason)
			jobs = append(jobs, j)
		}
	}
	err := s.claimJobs(jobs, false)
	switch {
	case err == nil:
	case errors.Is(err, history.ErrFenced):
		s.abandon(jobs, err)
	default:
		s.run.Go(func() { _ = s.writeMissed(s.stopCtx, jobs) })
	}
}

// recordSlotHandled moves p's last handled slot to slot without a fire (a walk of missed slots
// that found no targets).
func (s *Scheduler) recordSlotHandled(p *policy.Policy, slot time.Time) {
	ctx, cancel := s.historyContext()
	err := s.hist.PolicySlotsSet(ctx, map[string]time.Time{p.Name: slot})
	cancel()
	if err != nil && !s.checkFenced(err) {
		s.log.Warn().Err(err).Str("policy", p.Name).Time("slot", slot.UTC()).Msg("cannot record the last handled slot")
	}
}
