package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/imager-dev/imager/internal/history"
)

// Outcome is where one run of a RunOnce stands once this stage is over for it: requested,
// failed, skipped or missed — or pending when its image could not be checked, or when the slot
// was already claimed by another run that is still going.
type Outcome struct {
	Policy       string
	InstanceID   string
	Slot         time.Time
	RunID        int64 // 0 when no row could be written
	ImageName    string
	ImageID      string // empty until known (the API may answer without it)
	RequestID    string // of the accepted CreateImage
	Status       history.Status
	ErrorCode    string
	ErrorMessage string
	Attempts     int // API calls made for the run by this daemon (and recorded before it)
	// AlreadyClaimed is set when the slot's row existed before this run (another daemon or an
	// earlier run of the same second): nothing was sent and the fields describe that row.
	AlreadyClaimed bool
}

// Succeeded reports whether the run's CreateImage was accepted (or its image adopted).
func (o Outcome) Succeeded() bool {
	return o.Status == history.StatusRequested || o.Status == history.StatusAvailable
}

func outcomeFromRun(r history.Run) Outcome {
	return Outcome{
		Policy:       r.Policy,
		InstanceID:   r.InstanceID,
		Slot:         r.ScheduledAt,
		RunID:        r.ID,
		ImageName:    r.ImageName,
		ImageID:      r.ImageID,
		RequestID:    r.RequestID,
		Status:       r.Status,
		ErrorCode:    r.ErrorCode,
		ErrorMessage: r.ErrorMessage,
		Attempts:     r.Attempts,
	}
}

// ErrOtherAccount is RunOnce's error for a policy of another account than the scheduler's
// (Options.Account): that account's scheduler fires it.
var ErrOtherAccount = errors.New("policy of another account")

// RunOnce fires one policy now, through exactly the path of a scheduled fire (same pool, pace,
// retries, ResolveTargets and BeforeFire hooks, and history), with the current instant truncated
// to the second (UTC) as the slot. It targets the given instances, which must be targets of the
// policy (or instances ResolveTargets skips), or all of its targets when none are given, and
// returns once every run has an outcome, in the order of the targets. The scheduler must be
// started, and serve the policy's account (ErrOtherAccount otherwise). If ctx ends first, RunOnce
// returns its error and the runs go on.
func (s *Scheduler) RunOnce(ctx context.Context, policyName string, instances []string) ([]Outcome, error) {
	return s.RunOnceAt(ctx, policyName, instances, s.clock.Now())
}

// RunOnceAt is RunOnce for a given slot (truncated to the second, UTC): it backfills a slot the
// daemon never ran. A slot already claimed is not sent again; its outcome is the recorded one.
func (s *Scheduler) RunOnceAt(ctx context.Context, policyName string, instances []string, slot time.Time) ([]Outcome, error) {
	p := s.policyByName(policyName)
	if p == nil {
		return nil, fmt.Errorf("unknown policy %q (known: %s)", policyName, strings.Join(s.policyNames(), ", "))
	}
	if !s.owns(p) {
		return nil, fmt.Errorf("policy %s uses account %s; this scheduler fires the policies of account %s: %w",
			p.Name, policyAccount(p), s.opts.Account, ErrOtherAccount)
	}
	s.mu.Lock()
	running := s.started && !s.stopping
	s.mu.Unlock()
	if !running {
		return nil, errors.New("scheduler is not running")
	}

	slot = slot.UTC().Truncate(time.Second)
	targets, skipped, unresolved := s.targets(ctx, p, slot)
	order := withSkipped(targets, skipped)
	if len(instances) > 0 {
		for _, id := range instances {
			if _, skip := skipped[id]; !skip && !slices.Contains(targets, id) {
				return nil, fmt.Errorf("instance %s is not a target of policy %s", id, p.Name)
			}
		}
		order = dedupe(instances)
	}
	if len(order) == 0 && unresolved != nil {
		return nil, fmt.Errorf("policy %s: cannot resolve its targets, and it has no earlier ones: %w", p.Name, unresolved)
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("policy %s has no targets", p.Name)
	}

	jobs := s.fire(ctx, p, slot, order, skipped)
	// A backfilled slot (RunOnceAt) gets its start window from now: it was asked for now.
	now := s.clock.Now()
	for _, j := range jobs {
		j.deadline = later(j.deadline, now.Add(startWindow(p)))
		j.manual = true
	}
	if err := s.claimJobs(jobs, false); err != nil {
		if errors.Is(err, history.ErrFenced) {
			s.abandon(jobs, err)
			return nil, fmt.Errorf("run policy %s: %w", p.Name, err)
		}
		s.log.Warn().Err(err).Str("policy", p.Name).Time("slot", slot.UTC()).Msg("cannot claim the slot; retrying until its start window closes")
		switch err := s.claimUntilWindow(ctx, jobs); {
		case errors.Is(err, history.ErrFenced):
			return nil, fmt.Errorf("run policy %s: %w", p.Name, err)
		case err != nil && !errors.Is(err, errWindowClosed):
			return nil, fmt.Errorf("run policy %s: %w", p.Name, err)
		}
	}
	if !s.sendFire(jobs, true) {
		return nil, errors.New("scheduler is stopping")
	}
	outcomes := make([]Outcome, 0, len(jobs))
	for _, j := range jobs {
		select {
		case <-j.done:
			outcomes = append(outcomes, j.outcome)
		case <-ctx.Done():
			return nil, fmt.Errorf("run policy %s: %w", p.Name, ctx.Err())
		}
	}
	return outcomes, nil
}

// policyNames lists the names of the loaded policies this scheduler fires.
func (s *Scheduler) policyNames() []string {
	pols := s.policies(s.cfg.Load())
	names := make([]string, 0, len(pols))
	for _, p := range pols {
		names = append(names, p.Name)
	}
	return names
}
