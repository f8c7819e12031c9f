// Package targets resolves which instances a policy images at a fire (docs/policies.md "Tag-selected targets and whole-machine images"):
// the listed instances that still exist, plus every instance its `select:` matches by tag and
// zone, asked of DescribeInstances at every fire so new instances are picked up and deleted ones
// drop out. It also resolves `image.data_disks: all` to an instance's data disk ids.
package targets

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
)

// DefaultRate is the pace of DescribeInstances calls when Options.Pace is nil: half the API's
// limit of 40 per second, leaving the rest to other tools of the account. That pace is one of
// the Resolver's own (*pace.Limiter) on the real clock, as the API counts its limit in real
// seconds; Options.Clock times the backoff.
const DefaultRate = 20

// ReasonGone is the skip reason of a listed instance that DescribeInstances no longer knows.
const ReasonGone = "instance no longer exists (DescribeInstances)"

// API limits that shape the requests.
const (
	maxFilters      = 10 // filters per DescribeInstances request
	maxFilterValues = 5  // values per filter
)

// Retries of a failed DescribeInstances call (transient and throttled errors only): a fire
// should not lose its tag-selected targets to one InternalError, nor wait long for them.
var retryBackoff = backoff.Policy{Initial: 500 * time.Millisecond, Max: 2 * time.Second, Attempts: 3}

// PrimeTTL is how long the answers Prime fetched stand in for DescribeInstances: long enough for
// the fire that primed them to resolve its policies, short enough that the next fire asks again.
const PrimeTTL = 30 * time.Second

// CVM is what the resolver needs from the CVM API. *cvm.Client implements it.
type CVM interface {
	DescribeInstances(ctx context.Context, region string, in cvm.DescribeInstancesInput) (cvm.DescribeInstancesOutput, error)
}

var _ CVM = (*cvm.Client)(nil)

// Pace spaces the DescribeInstances calls (*pace.Limiter). Wait blocks until one call may be
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

// Options configures a Resolver. CVM is required.
type Options struct {
	CVM CVM
	// Pace spaces the DescribeInstances calls; nil means a pace of its own at DefaultRate per
	// second.
	Pace Pace
	// Clock times the backoff between retries; nil means the real clock.
	Clock clockwork.Clock
	// Logger is used as given: the caller sets its component field.
	Logger zerolog.Logger
}

// Resolver resolves policy targets and data disks with DescribeInstances. It is safe for
// concurrent use. Its only state between calls is what Prime fetched for a fire, kept PrimeTTL:
// every fire sees the account as it is now.
type Resolver struct {
	cvm    CVM
	pace   Pace
	clock  clockwork.Clock
	log    zerolog.Logger
	jitter *backoff.Jitter

	mu     sync.Mutex
	primed map[instanceKey]primedAnswer // listed instances checked by Prime
}

// instanceKey names one instance of one region.
type instanceKey struct{ region, id string }

// primedAnswer is whether DescribeInstances reported an instance, and until when that stands.
type primedAnswer struct {
	exists bool
	until  time.Time
}

// NewResolver returns a Resolver.
func NewResolver(opts Options) *Resolver {
	r := &Resolver{
		cvm:   opts.CVM,
		pace:  opts.Pace,
		clock: opts.Clock,
		log:   opts.Logger, // the caller tags it with component

		jitter: backoff.NewJitter(nil),
		primed: map[instanceKey]primedAnswer{},
	}
	if r.pace == nil {
		r.pace = pace.New(nil, DefaultRate, pace.Options{})
	}
	if r.clock == nil {
		r.clock = clockwork.NewRealClock()
	}
	return r
}

// Resolve returns the instances p images now, deduplicated and sorted: the explicitly listed
// instances that still exist (checked with DescribeInstances by id, 100 per call) plus, when p has
// a select, every instance in p's region that carries all the selector's tags, in one of its
// zones when zones are given, less the excluded ones (paginated, 100 per page). A listed instance
// that no longer exists is not a target: it is in skipped, with the reason (ReasonGone), for the
// caller to record as a skipped run; skipped is nil when there are none. Any failed call fails the
// whole resolution: a partial list would silently leave instances out.
func (r *Resolver) Resolve(ctx context.Context, p *policy.Policy) (targets []string, skipped map[string]string, err error) {
	set := map[string]bool{}
	listed := dedupe(p.Instances)
	if len(listed) > 0 {
		found, err := r.existing(ctx, p.Region, listed)
		if err != nil {
			return nil, nil, fmt.Errorf("resolve targets of %s: %w", p.Name, err)
		}
		for _, id := range listed {
			if found[id] {
				set[id] = true
				continue
			}
			if skipped == nil {
				skipped = map[string]string{}
			}
			skipped[id] = ReasonGone
		}
	}
	if p.Select != nil {
		matched, err := r.selected(ctx, p.Region, p.Select)
		if err != nil {
			return nil, nil, fmt.Errorf("resolve select of %s: %w", p.Name, err)
		}
		for _, id := range matched {
			set[id] = true
		}
	}
	targets = slices.Sorted(maps.Keys(set))
	ev := r.log.Debug().Str("policy", p.Name).Int("targets", len(targets))
	if len(skipped) > 0 {
		ev = ev.Strs("gone", slices.Sorted(maps.Keys(skipped)))
	}
	ev.Msg("targets resolved")
	return targets, skipped, nil
}

// DataDisks returns the disk ids p's images of instanceID include: for `image.data_disks: all`,
// the instance's data disks as DescribeInstances reports them now (none is a valid answer: the
// image is then of the system disk only); for a list, that list; otherwise nil. The lookup is
// made per image rather than cached per fire: at DefaultRate it is twice as fast as CreateImage
// may be called, so it never slows a fire, and it cannot name a disk detached since the fire.
func (r *Resolver) DataDisks(ctx context.Context, p *policy.Policy, instanceID string) ([]string, error) {
	if !p.Image.DataDisks.All {
		return slices.Clone(p.Image.DataDisks.IDs), nil
	}
	out, err := r.describe(ctx, p.Region, cvm.DescribeInstancesInput{InstanceIDs: []string{instanceID}, Limit: cvm.MaxLimit})
	if err != nil {
		return nil, fmt.Errorf("data disks of %s: %w", instanceID, err)
	}
	for _, in := range out.Instances {
		if in.ID == instanceID {
			return slices.Clone(in.DataDiskIDs), nil
		}
	}
	return nil, fmt.Errorf("data disks of %s: %s", instanceID, ReasonGone)
}

// Prime checks the listed instances of every policy in policies with DescribeInstances, 100 ids
// per call across all the policies of a region, and keeps the answers PrimeTTL, so that the
// Resolve calls of a fire of many policies make no DescribeInstances call for their listed
// instances (one call per policy would make a fire of 1,000 policies wait on 1,000 calls). A
// batch that fails is logged and left out: Resolve then asks about those instances itself.
func (r *Resolver) Prime(ctx context.Context, policies []*policy.Policy) {
	byRegion := map[string][]string{}
	seen := map[instanceKey]bool{}
	for _, p := range policies {
		if p == nil {
			continue
		}
		for _, id := range p.Instances {
			k := instanceKey{p.Region, id}
			if !seen[k] {
				seen[k] = true
				byRegion[p.Region] = append(byRegion[p.Region], id)
			}
		}
	}
	r.mu.Lock()
	now := r.clock.Now()
	for k, a := range r.primed {
		if !now.Before(a.until) {
			delete(r.primed, k)
		}
	}
	r.mu.Unlock()
	calls, failed := 0, 0
	for _, region := range slices.Sorted(maps.Keys(byRegion)) {
		for batch := range slices.Chunk(byRegion[region], cvm.MaxLimit) {
			if ctx.Err() != nil {
				return
			}
			calls++
			out, err := r.describe(ctx, region, cvm.DescribeInstancesInput{InstanceIDs: batch, Limit: cvm.MaxLimit})
			if err != nil {
				failed++
				if ctx.Err() == nil {
					r.log.Warn().Err(err).Str("region", region).Int("instances", len(batch)).
						Msg("cannot check listed instances ahead of the fire; each policy asks on its own")
				}
				continue
			}
			until := r.clock.Now().Add(PrimeTTL)
			r.mu.Lock()
			for _, id := range batch {
				r.primed[instanceKey{region, id}] = primedAnswer{until: until}
			}
			for _, in := range out.Instances {
				if k := (instanceKey{region, in.ID}); slices.Contains(batch, in.ID) {
					r.primed[k] = primedAnswer{exists: true, until: until}
				}
			}
			r.mu.Unlock()
		}
	}
	r.log.Debug().Int("policies", len(policies)).Int("instances", len(seen)).Int("calls", calls).
		Int("failed_calls", failed).Msg("listed instances checked for the fire")
}

// existing returns which of ids DescribeInstances reports in region: from what Prime fetched
// while it stands, else asked 100 per call.
func (r *Resolver) existing(ctx context.Context, region string, ids []string) (map[string]bool, error) {
	found := make(map[string]bool, len(ids))
	var ask []string
	r.mu.Lock()
	now := r.clock.Now()
	for _, id := range ids {
		if a, ok := r.primed[instanceKey{region, id}]; ok && now.Before(a.until) {
			if a.exists {
				found[id] = true
			}
			continue
		}
		ask = append(ask, id)
	}
	r.mu.Unlock()
	for batch := range slices.Chunk(ask, cvm.MaxLimit) {
		out, err := r.describe(ctx, region, cvm.DescribeInstancesInput{InstanceIDs: batch, Limit: cvm.MaxLimit})
		if err != nil {
			return nil, fmt.Errorf("check listed instances: %w", err)
		}
		for _, in := range out.Instances {
			found[in.ID] = true
		}
	}
	return found, nil
}

// selected returns the instances of region that sel matches. The API takes at most 10 filters of
// 5 values each, so more than 5 zones are asked in groups, and tags beyond what fits in the
// filters are checked here; every answer is checked here anyway, so an instance the selector does
// not match is never a target, whatever the endpoint did with the filters.
func (r *Resolver) selected(ctx context.Context, region string, sel *policy.Selector) ([]string, error) {
	keys := slices.Sorted(maps.Keys(sel.Tags))
	zoneGroups := [][]string{nil}
	if len(sel.Zones) > 0 {
		zoneGroups = slices.Collect(slices.Chunk(dedupe(sel.Zones), maxFilterValues))
	}
	room := maxFilters
	if len(sel.Zones) > 0 {
		room--
	}
	var base []cvm.Filter
	for _, k := range keys[:min(len(keys), room)] {
		base = append(base, cvm.Filter{Name: "tag:" + k, Values: []string{sel.Tags[k]}})
	}

	var out []string
	for _, zones := range zoneGroups {
		filters := slices.Clone(base)
		if len(zones) > 0 {
			filters = append(filters, cvm.Filter{Name: "zone", Values: zones})
		}
		err := r.pages(ctx, region, filters, func(in cvm.Instance) {
			if matches(in, sel) {
				out = append(out, in.ID)
			}
		})
		if err != nil {
			return nil, err
		}
	}
	return dedupe(out), nil
}

// pages calls each for every instance DescribeInstances reports for filters, page by page.
func (r *Resolver) pages(ctx context.Context, region string, filters []cvm.Filter, each func(cvm.Instance)) error {
	for offset := 0; ; {
		out, err := r.describe(ctx, region, cvm.DescribeInstancesInput{Filters: filters, Offset: offset, Limit: cvm.MaxLimit})
		if err != nil {
			return fmt.Errorf("list instances by tag (offset %d): %w", offset, err)
		}
		for _, in := range out.Instances {
			each(in)
		}
		offset += len(out.Instances)
		// An empty page ends the walk even if TotalCount promised more (instances deleted
		// while paging): asking again at the same offset would loop.
		if len(out.Instances) == 0 || offset >= out.TotalCount {
			return nil
		}
	}
}

// describe makes one paced DescribeInstances call, retrying transient and throttled errors a few
// times with a short backoff (backoff.Retry). An error the client did not classify is transient
// (cvm.ClassifyError).
func (r *Resolver) describe(ctx context.Context, region string, in cvm.DescribeInstancesInput) (cvm.DescribeInstancesOutput, error) {
	var out cvm.DescribeInstancesOutput
	err := backoff.Retry(ctx, r.clock, retryBackoff, func(int) error {
		if err := r.pace.Wait(ctx); err != nil {
			return backoff.Permanent(fmt.Errorf("wait for the DescribeInstances pace: %w", err))
		}
		start := r.clock.Now()
		var err error
		out, err = r.cvm.DescribeInstances(ctx, region, in)
		if o, ok := r.pace.(observer); ok {
			o.Observe(r.clock.Since(start))
		}
		if err == nil {
			return nil
		}
		ae := cvm.ClassifyError(cvm.ActionDescribeInstances, err)
		if t, ok := r.pace.(throttler); ok && ae.Class == cvm.ClassThrottled {
			t.Throttle() // a shared pace (the scheduler's) slows down for everyone
		}
		if ae.Class != cvm.ClassTransient && ae.Class != cvm.ClassThrottled {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.WithJitter(r.jitter), backoff.OnRetry(func(attempt int, err error, delay time.Duration) {
		ae := cvm.ClassifyError(cvm.ActionDescribeInstances, err)
		r.log.Warn().Err(err).Str("region", region).Str("error_code", ae.Code).Str("request_id", ae.RequestID).
			Int("attempt", attempt).Int64("retry_in_ms", delay.Milliseconds()).Msg("DescribeInstances failed; retrying")
	}))
	if err != nil {
		return cvm.DescribeInstancesOutput{}, err
	}
	return out, nil
}

// matches reports whether in carries every tag of sel and, when sel names zones, is in one.
func matches(in cvm.Instance, sel *policy.Selector) bool {
	if len(sel.Zones) > 0 && !slices.Contains(sel.Zones, in.Zone) {
		return false
	}
	for k, v := range sel.Tags {
		if !slices.Contains(in.Tags, cvm.Tag{Key: k, Value: v}) {
			return false
		}
	}
	return !slices.Contains(sel.Exclude, in.ID)
}

// dedupe returns ids without repeats, in first-seen order.
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
