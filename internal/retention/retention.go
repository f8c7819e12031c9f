// Package retention prunes the images imager made, per policy and instance, by the policy's
// `retention:` rules (docs/policies.md "Retention"), and records every deletion in history.
//
// A retention pass for (policy, instance) weighs the runs of that policy and instance that are
// available and have an image imager has not deleted yet. Every one is cross-checked with
// DescribeImages: only an image that exists, is NORMAL and whose imager tags name this policy,
// this instance and this slot (tags and history agree) is weighed, and only those count as kept.
// Of them the newest and the first max(min_keep, 1) are always kept; keep_last N deletes the ones
// beyond the N newest and max_age the ones whose slot is older than now−max_age. An image that
// fails any check is never deleted.
//
// Each deletion is one DeleteImages call for one image (a failure touches one image), recorded
// before the call (image_deletions, pending), after it (image_attempts with its RequestId) and
// when it ends (deleted, or failed with the code). A failed deletion is retried at the next pass
// that still finds it justified.
//
// A Pruner may serve one account of the policy file (Options.Account, docs/policies.md
// "Accounts"): it then weighs only the images made with that account (image_runs.account), by
// the rules of the policy that made them, and deletes them with that account's client; a daemon
// runs one per account. The images are the account's, not the policy's: a policy moved to another
// account keeps the images it made before pruned by the first account's Pruner.
package retention

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
)

// Default paces when Options leaves them nil: DeleteImages at its API limit of 10 calls per
// second; DescribeImages at api.describe_images_rate (policy.DefaultDescribeImagesRate if unset).
// They are paces of their own (*pace.Limiter) on the real clock, as the API counts its limit in
// real seconds; Options.Clock times backoffs and ages.
const DefaultDeleteRate = 10

// Sentinel errors of Plan and PrunePolicy.
var (
	// ErrUnknownPolicy: no policy of that name is configured.
	ErrUnknownPolicy = errors.New("no such policy")
	// ErrNoRetention: the policy has no retention block, so none of its images is ever pruned.
	ErrNoRetention = errors.New("policy has no retention")
)

// CVM is what the pruner needs from the CVM API. *cvm.Client implements it.
type CVM interface {
	DescribeImages(ctx context.Context, region string, in cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error)
	DeleteImages(ctx context.Context, region string, imageIDs []string, deleteSnapshots bool) (requestID string, err error)
}

// History is what the pruner needs from the history store. *history.Store implements it.
type History interface {
	// RunsRetainableOf lists the available runs of a policy (one instance, or all for "") made
	// with account (every account for "") whose image is not deleted yet, by instance and newest
	// slot first.
	RunsRetainableOf(ctx context.Context, account, policy, instanceID string) ([]history.Run, error)
	// DeletionsOpenOf lists the pending and failed deletions of a policy (one instance, or all)
	// of account (every account for "").
	DeletionsOpenOf(ctx context.Context, account, policy, instanceID string) ([]history.Deletion, error)
	// DeletionInsert records a decision to delete, or returns the image's existing row.
	DeletionInsert(ctx context.Context, d history.Deletion) (id int64, created bool, err error)
	// DeletionGet reads one deletion.
	DeletionGet(ctx context.Context, id int64) (history.Deletion, error)
	// DeletionFinish records the outcome of a DeleteImages call.
	DeletionFinish(ctx context.Context, id int64, status history.DeletionStatus, requestID, errCode, errMsg string, at time.Time) error
	// AttemptInsert records one API call.
	AttemptInsert(ctx context.Context, a history.Attempt) error
}

var (
	_ CVM     = (*cvm.Client)(nil)
	_ History = (*history.Store)(nil)
)

// Pace spaces the calls of one API action (*pace.Limiter). Wait blocks until one call may be
// sent. When the Pace also has Throttle() and Observe(time.Duration) methods (a *pace.Limiter
// has both), they are told of RequestLimitExceeded answers and of each call's round trip.
type Pace interface {
	Wait(ctx context.Context) error
}

// throttler and observer are the optional parts of a Pace.
type (
	throttler interface{ Throttle() }
	observer  interface{ Observe(time.Duration) }
)

// Options configures a Pruner. CVM, History and Config are required.
type Options struct {
	// CVM is the client DescribeImages and DeleteImages are called with: signed by Account's
	// credentials when Account is set.
	CVM     CVM
	History History
	// Account, when set, is the account (policy.Account.Name) this Pruner serves: every pass
	// weighs only the runs made with that account (image_runs.account) and their open deletions,
	// and records its deletions under it (image_deletions.account). Its rates and retries are the
	// account's api: block. Empty weighs every run, recording each deletion under the account of
	// the run that made the image.
	Account string
	// DescribePace spaces DescribeImages calls; share the daemon's (the scheduler's DescribePace)
	// so every caller stays under the API limit together. Nil means a pace of its own.
	DescribePace Pace
	// DeletePace spaces DeleteImages calls; nil means a pace of its own at DefaultDeleteRate.
	DeletePace Pace
	// Config returns the live policies (reloads swap it); it is read at every pass.
	Config func() *policy.Config
	// Clock decides ages (max_age) and times backoffs; nil means the real clock.
	Clock clockwork.Clock
	// Logger is used as given: the caller sets its component field.
	Logger zerolog.Logger
}

// Decision is one image a pass deletes, or would delete (Plan), and why.
type Decision struct {
	Policy          string
	InstanceID      string
	Region          string
	ImageID         string
	ImageName       string
	RunID           int64     // the run that made the image
	Slot            time.Time // the run's slot (UTC)
	Account         string    // the account of the run that made the image, which deletes it
	Reason          string    // e.g. "keep_last 2: 3rd newest available image"
	DeleteSnapshots bool      // DeleteImages is sent with DeleteBindedSnap
	// DeletionID is the image_deletions row of an earlier decision that is retried (pending, or
	// failed before); 0 for a new decision.
	DeletionID int64

	attempts int  // calls already recorded for DeletionID
	gone     bool // DeletionID's image no longer exists: the row is closed without a call
}

// Pruner runs retention passes. It is safe for concurrent use; passes that delete run one at a
// time, so a pass after an image became available and a quota pass never weigh the same images
// at once. It starts no goroutines.
type Pruner struct {
	cvm          CVM
	hist         History
	account      string
	describePace Pace
	deletePace   Pace
	config       func() *policy.Config
	clock        clockwork.Clock
	log          zerolog.Logger
	jitter       *backoff.Jitter

	mu sync.Mutex // one deleting pass at a time
}

// NewPruner returns a Pruner.
func NewPruner(opts Options) *Pruner {
	p := &Pruner{
		cvm:          opts.CVM,
		hist:         opts.History,
		account:      opts.Account,
		describePace: opts.DescribePace,
		deletePace:   opts.DeletePace,
		config:       opts.Config,
		clock:        opts.Clock,
		log:          opts.Logger, // the caller tags it with component
		jitter:       backoff.NewJitter(nil),
	}
	if p.clock == nil {
		p.clock = clockwork.NewRealClock()
	}
	if p.describePace == nil {
		n := policy.DefaultDescribeImagesRate
		if api, ok := p.api(); ok && api.DescribeImagesRate > 0 {
			n = api.DescribeImagesRate
		}
		p.describePace = pace.New(nil, n, pace.Options{})
	}
	if p.deletePace == nil {
		p.deletePace = pace.New(nil, DefaultDeleteRate, pace.Options{})
	}
	return p
}

// Plan returns every image a pass over policyName ("" for every policy with retention) would
// delete now, with the reason, in policy, instance and newest-first order. It deletes nothing and
// writes nothing (`imager prune --dry-run`); it does call DescribeImages to cross-check.
func (p *Pruner) Plan(ctx context.Context, policyName string) ([]Decision, error) {
	pols, err := p.policies(policyName)
	if err != nil {
		return nil, err
	}
	ds, err := p.planAll(ctx, pols, "")
	return slices.DeleteFunc(ds, func(d Decision) bool { return d.gone }), err
}

// PruneInstance runs a pass over one instance of one policy: the pass made after one of its
// images became available. A policy that is not configured or has no retention prunes nothing
// and is not an error. deleted counts the images DeleteImages removed (one found already gone is
// recorded deleted but not counted); err reports what could not be done, including deletions
// that failed and wait for the next pass. The same holds for every Prune method.
func (p *Pruner) PruneInstance(ctx context.Context, policyName, instanceID string) (deleted int, err error) {
	cfg := p.cfg()
	if cfg == nil {
		return 0, errors.New("prune: no policies loaded")
	}
	pol := cfg.Policy(policyName)
	if pol == nil || pol.Retention == nil {
		return 0, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ds, err := p.planPolicy(ctx, pol, instanceID, "")
	n, execErr := p.execute(ctx, ds)
	return n, errors.Join(err, execErr)
}

// PrunePolicy runs a pass over every instance of one policy (`imager prune --policy P`).
func (p *Pruner) PrunePolicy(ctx context.Context, policyName string) (deleted int, err error) {
	if policyName == "" {
		return 0, fmt.Errorf("prune: %w: empty name", ErrUnknownPolicy)
	}
	return p.prune(ctx, policyName, "")
}

// PruneAll runs a pass over every policy with retention (`imager prune`).
func (p *Pruner) PruneAll(ctx context.Context) (deleted int, err error) {
	return p.prune(ctx, "", "")
}

// PruneRegion runs a pass over every policy with retention, deleting only images in region: the
// quota gate's way to make room before a fire. freed counts the images deleted there.
func (p *Pruner) PruneRegion(ctx context.Context, region string) (freed int, err error) {
	if region == "" {
		return 0, errors.New("prune region: no region")
	}
	return p.prune(ctx, "", region)
}

func (p *Pruner) prune(ctx context.Context, policyName, region string) (int, error) {
	pols, err := p.policies(policyName)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ds, planErr := p.planAll(ctx, pols, region)
	n, execErr := p.execute(ctx, ds)
	return n, errors.Join(planErr, execErr)
}

// cfg returns the live config, or nil.
func (p *Pruner) cfg() *policy.Config {
	if p.config == nil {
		return nil
	}
	return p.config()
}

// api returns the api: settings of the Pruner's account (Config.Account; without
// Options.Account, the only account's, else the top-level block); ok is false without a config or
// when it has no such account.
func (p *Pruner) api() (api policy.API, ok bool) {
	cfg := p.cfg()
	if cfg == nil {
		return policy.API{}, false
	}
	if a := cfg.Account(p.account); a != nil {
		return a.API, true
	}
	if p.account == "" {
		return cfg.API, true
	}
	return policy.API{}, false
}

// policies returns the policy named name, or every policy with retention for "".
func (p *Pruner) policies(name string) ([]*policy.Policy, error) {
	cfg := p.cfg()
	if cfg == nil {
		return nil, errors.New("prune: no policies loaded")
	}
	if name != "" {
		pol := cfg.Policy(name)
		switch {
		case pol == nil:
			return nil, fmt.Errorf("prune %s: %w", name, ErrUnknownPolicy)
		case pol.Retention == nil:
			return nil, fmt.Errorf("prune %s: %w", name, ErrNoRetention)
		}
		return []*policy.Policy{pol}, nil
	}
	var out []*policy.Policy
	for _, pol := range cfg.Policies {
		if pol.Retention != nil {
			out = append(out, pol)
		}
	}
	return out, nil
}

// planAll plans every policy of pols; a policy that cannot be planned is reported and the
// others still are.
func (p *Pruner) planAll(ctx context.Context, pols []*policy.Policy, region string) ([]Decision, error) {
	var all []Decision
	var errs []error
	for _, pol := range pols {
		ds, err := p.planPolicy(ctx, pol, "", region)
		if err != nil {
			errs = append(errs, err)
		}
		all = append(all, ds...)
		if ctx.Err() != nil {
			break
		}
	}
	return all, errors.Join(errs...)
}

// planPolicy decides what a pass over pol deletes: for one instance, or every instance with
// retainable runs (""), restricted to images in region unless it is "".
func (p *Pruner) planPolicy(ctx context.Context, pol *policy.Policy, instanceID, region string) ([]Decision, error) {
	// Only the runs made with this Pruner's account: another account's images are invisible to
	// its client, and an open deletion of one would look like an image already gone.
	runs, err := p.hist.RunsRetainableOf(ctx, p.account, pol.Name, instanceID)
	if err != nil {
		return nil, fmt.Errorf("retention of %s: %w", pol.Name, err)
	}
	open, err := p.hist.DeletionsOpenOf(ctx, p.account, pol.Name, instanceID)
	if err != nil {
		return nil, fmt.Errorf("retention of %s: %w", pol.Name, err)
	}
	openByImage := make(map[string]*history.Deletion, len(open))
	for i := range open {
		openByImage[open[i].ImageID] = &open[i]
	}

	// Group by instance (RunsRetainable orders by instance, newest first); with a region, only
	// instances with an image there matter.
	var groups [][]history.Run
	for i := 0; i < len(runs); {
		j := i + 1
		for j < len(runs) && runs[j].InstanceID == runs[i].InstanceID {
			j++
		}
		g := runs[i:j]
		if region == "" || slices.ContainsFunc(g, func(r history.Run) bool { return r.Region == region }) {
			groups = append(groups, g)
		}
		i = j
	}
	var weighed []history.Run
	for _, g := range groups {
		weighed = append(weighed, g...)
	}
	images, err := p.describeImages(ctx, weighed)
	if err != nil {
		return nil, fmt.Errorf("retention of %s: %w", pol.Name, err)
	}

	now := p.clock.Now()
	var out []Decision
	for _, g := range groups {
		for _, d := range p.decideInstance(pol, now, g, images, openByImage) {
			if region == "" || d.Region == region {
				out = append(out, d)
			}
		}
	}
	for _, d := range open {
		if !slices.ContainsFunc(runs, func(r history.Run) bool { return r.ImageID == d.ImageID }) {
			p.log.Warn().Str("policy", d.Policy).Str("instance", d.InstanceID).Str("image_id", d.ImageID).
				Int64("deletion_id", d.ID).Msg("open deletion has no available run of the policy; not retried")
		}
	}
	return out, nil
}

// decideInstance applies pol's rules to the runs of one instance, newest first.
func (p *Pruner) decideInstance(pol *policy.Policy, now time.Time, runs []history.Run,
	images map[string]cvm.Image, open map[string]*history.Deletion) []Decision {
	var verified []candidate
	var out []Decision
	for _, r := range runs {
		img, found := images[r.ImageID]
		c := candidate{run: r, image: img, found: found, open: open[r.ImageID]}
		if c.open != nil && !found {
			// Deleted, but the outcome was never recorded (a crash after the call): close the
			// row. DeleteImages is not called for an image DescribeImages does not report.
			out = append(out, Decision{Policy: pol.Name, InstanceID: r.InstanceID, Region: r.Region,
				ImageID: r.ImageID, ImageName: c.open.ImageName, RunID: r.ID, Slot: r.ScheduledAt, Account: r.Account,
				Reason: c.open.Reason, DeletionID: c.open.ID, attempts: c.open.Attempts, gone: true})
			continue
		}
		if why := c.verdict(pol.Name); why != "" {
			p.log.Debug().Str("policy", pol.Name).Str("instance", r.InstanceID).Str("image_id", r.ImageID).
				Str("why", why).Msg("image not weighed by retention: never deleted, not counted as kept")
			continue
		}
		verified = append(verified, c)
	}
	reasons := decide(pol.Retention, now, verified)
	for i, c := range verified {
		if reasons[i] == "" {
			if c.open != nil {
				p.log.Warn().Str("policy", pol.Name).Str("instance", c.run.InstanceID).Str("image_id", c.run.ImageID).
					Int64("deletion_id", c.open.ID).Str("reason", c.open.Reason).
					Msg("earlier deletion no longer justified by retention; not retried")
			}
			continue
		}
		name := c.image.Name
		if name == "" {
			name = c.run.ImageName
		}
		d := Decision{
			Policy:          pol.Name,
			InstanceID:      c.run.InstanceID,
			Region:          c.run.Region,
			ImageID:         c.run.ImageID,
			ImageName:       name,
			RunID:           c.run.ID,
			Slot:            c.run.ScheduledAt,
			Account:         c.run.Account,
			Reason:          reasons[i],
			DeleteSnapshots: pol.Retention.DeleteSnapshots,
		}
		if c.open != nil {
			d.DeletionID, d.attempts = c.open.ID, c.open.Attempts
		}
		out = append(out, d)
	}
	return out
}
