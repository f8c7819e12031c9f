// Package quota keeps fires inside the region's custom image quota: before a fire, the Gate checks
// that the quota has room for the fire's slots, pruning first when it can.
//
// The quota and the images counted are an account's: with several accounts (docs/policies.md
// "Accounts") a daemon runs one Gate per account (Options.Account), with that account's client,
// DescribeImages pace and Pruner, as the BeforeFire hook of that account's scheduler.
package quota

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/policy"
)

// Gate defaults.
const (
	// DefaultQuotaCacheFor is how long a region's DescribeImageQuota answer is reused.
	DefaultQuotaCacheFor = 10 * time.Minute
	// DefaultCountCacheFor is how long a region's image count, plus the slots admitted since,
	// stands in for a fresh count while the fire fits under the quota with room to spare.
	DefaultCountCacheFor = time.Minute
)

// CVM is what the Gate needs from the CVM API. *cvm.Client implements it.
type CVM interface {
	DescribeImageQuota(ctx context.Context, region string) (quota int, requestID string, err error)
	DescribeImages(ctx context.Context, region string, in cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error)
}

var _ CVM = (*cvm.Client)(nil)

// Pace spaces DescribeImages calls (the account's shared *pace.Limiter). When the Pace also
// has Throttle() and Observe(time.Duration) methods, they are told of RequestLimitExceeded
// answers and of each call's round trip.
type Pace interface {
	Wait(ctx context.Context) error
}

// throttler and observer are the optional parts of a Pace.
type (
	throttler interface{ Throttle() }
	observer  interface{ Observe(time.Duration) }
)

// ErrOtherAccount is Check's error for a policy of another account than the Gate's
// (Options.Account): that account's Gate judges it, against that account's quota.
var ErrOtherAccount = errors.New("policy of another account")

// Options configures a Gate. CVM is required.
type Options struct {
	// CVM is the client the quota is read and the images counted with: signed by Account's
	// credentials when Account is set.
	CVM CVM
	// Account, when set, is the account (policy.Account.Name) whose quota this Gate keeps: Check
	// refuses to judge another account's policy (ErrOtherAccount) and OnQuotaExceeded ignores
	// one. Empty judges every policy with the one client.
	Account string
	// Pace is waited on before every DescribeImages call (the image count); nil means no
	// pacing. The daemon passes the scheduler's DescribePace().
	Pace Pace
	// Clock decides the caches' ages; nil means the real clock.
	Clock clockwork.Clock
	// Logger is used as given: the caller sets its component field.
	Logger zerolog.Logger
	// Prune frees room in a region before slots are refused or after CreateImage answered
	// ImageQuotaLimitExceeded: it deletes what retention allows and reports how many images it
	// deleted (the PruneRegion of the same account's retention.Pruner). Nil means nothing is
	// pruned.
	Prune func(ctx context.Context, region string) (freed int, err error)
	// QuotaCacheFor is how long a quota read is reused; 0 means DefaultQuotaCacheFor.
	QuotaCacheFor time.Duration
	// CountCacheFor is how long an image count is reused (see Gate); 0 means
	// DefaultCountCacheFor, a negative value counts at every fire.
	CountCacheFor time.Duration
}

// Gate keeps fires inside the region's custom image quota (docs/policies.md "Image quota"). Its Check is
// the scheduler's BeforeFire hook and its OnQuotaExceeded the scheduler's hook of that name.
//
// Check compares the region's quota (DescribeImageQuota, cached for QuotaCacheFor) with the
// number of custom images it holds (DescribeImages image-type PRIVATE_IMAGE, TotalCount) plus
// the fire's slots. A count younger than CountCacheFor is reused, with the slots admitted since
// added to it, as long as the fire fits; a fire that does not fit is always judged on a fresh
// count, so a slot is never refused on a stale figure. When the fire does not fit, the Prune
// hook frees what retention allows and the region is counted again; the slots that still do not
// fit (the last ones of the fire) are refused.
//
// Slots admitted by a fresh count but not created yet are not in that count; two fires racing
// for the last places can together exceed the quota. CreateImage's own ImageQuotaLimitExceeded
// answer, handled by OnQuotaExceeded, remains the backstop.
type Gate struct {
	cvm        CVM
	account    string
	pace       Pace
	clock      clockwork.Clock
	log        zerolog.Logger
	prune      func(ctx context.Context, region string) (int, error)
	quotaFor   time.Duration
	countFor   time.Duration
	regionsMu  sync.Mutex
	regionByID map[string]*regionQuota
}

// regionQuota is what the gate knows of one region. mu is held for a whole Check, so fires in
// one region are judged one after the other.
type regionQuota struct {
	mu       sync.Mutex
	quota    int
	quotaAt  time.Time // zero: not read yet, or forgotten
	count    int
	countAt  time.Time // zero: not counted yet, or forgotten
	admitted int       // slots admitted since countAt
}

// NewGate returns a Gate.
func NewGate(opts Options) *Gate {
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.QuotaCacheFor <= 0 {
		opts.QuotaCacheFor = DefaultQuotaCacheFor
	}
	if opts.CountCacheFor == 0 {
		opts.CountCacheFor = DefaultCountCacheFor
	}
	return &Gate{
		cvm:        opts.CVM,
		account:    opts.Account,
		pace:       opts.Pace,
		clock:      opts.Clock,
		log:        opts.Logger, // the caller tags it with component
		prune:      opts.Prune,
		quotaFor:   opts.QuotaCacheFor,
		countFor:   opts.CountCacheFor,
		regionByID: map[string]*regionQuota{},
	}
}

func (g *Gate) region(name string) *regionQuota {
	g.regionsMu.Lock()
	defer g.regionsMu.Unlock()
	rq, ok := g.regionByID[name]
	if !ok {
		rq = &regionQuota{}
		g.regionByID[name] = rq
	}
	return rq
}

// Check returns the instances of a fire of p that must not be sent because the region's image
// quota has no room for them, each with the reason. When the quota or the count cannot be read
// it logs a warning and refuses nothing; its error is ctx's, or ErrOtherAccount (nothing read,
// nothing refused) for a policy of another account than the Gate's.
func (g *Gate) Check(ctx context.Context, p *policy.Policy, instances []string) (map[string]string, error) {
	if len(instances) == 0 {
		return nil, nil
	}
	if !g.owns(p) {
		return nil, fmt.Errorf("image quota of policy %s: it uses account %s, this gate counts account %s's images: %w",
			p.Name, policyAccount(p), g.account, ErrOtherAccount)
	}
	region := p.Region
	log := g.log.With().Str("policy", p.Name).Str("region", region).Logger()
	rq := g.region(region)
	rq.mu.Lock()
	defer rq.mu.Unlock()

	quota, err := g.quota(ctx, region, rq)
	if err != nil {
		return nil, g.unchecked(ctx, log, "cannot read the region's image quota", err)
	}
	n := len(instances)
	now := g.clock.Now()
	if g.countFor > 0 && !rq.countAt.IsZero() && now.Sub(rq.countAt) < g.countFor && rq.count+rq.admitted+n <= quota {
		rq.admitted += n
		return nil, nil
	}
	count, err := g.count(ctx, region, rq)
	if err != nil {
		return nil, g.unchecked(ctx, log, "cannot count the region's custom images", err)
	}
	if count+n <= quota {
		rq.admitted = n
		return nil, nil
	}

	pruned := false
	if g.prune != nil {
		freed, err := g.prune(ctx, region)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			log.Warn().Err(err).Int("freed", freed).Msg("pruning to make room for a fire failed")
		}
		pruned = true
		log.Info().Int("quota", quota).Int("images", count).Int("slots", n).Int("freed", freed).
			Msg("image quota short for a fire: pruned what retention allows")
		if freed > 0 {
			if count, err = g.count(ctx, region, rq); err != nil {
				return nil, g.unchecked(ctx, log, "cannot count the region's custom images after pruning", err)
			}
		}
	}
	fit := min(max(quota-count, 0), n)
	rq.admitted = fit
	if fit == n {
		return nil, nil
	}
	reason := fmt.Sprintf("custom image quota of %s is %d and %d images exist", region, quota, count)
	if pruned {
		reason += " after pruning what retention allows"
	}
	reason += fmt.Sprintf(": %d of this fire's %d slots fit", fit, n)
	refused := make(map[string]string, n-fit)
	for _, id := range instances[fit:] {
		refused[id] = reason
	}
	return refused, nil
}

// policyAccount is the account p's calls are made with; a hand-built policy that names none has
// the default account (as policy.Config.Account answers).
func policyAccount(p *policy.Policy) string {
	if p.Account == "" {
		return policy.DefaultAccount
	}
	return p.Account
}

// owns reports whether the Gate judges p: every policy without Options.Account, else the
// policies of that account.
func (g *Gate) owns(p *policy.Policy) bool {
	return g.account == "" || policyAccount(p) == g.account
}

// unchecked logs why a fire goes unchecked and returns the error Check returns: ctx's, or nil.
func (g *Gate) unchecked(ctx context.Context, log zerolog.Logger, msg string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	log.Warn().Err(err).Msg(msg + "; sending every slot (the API refuses what does not fit)")
	return nil
}

// quota returns the region's quota, read at most once per QuotaCacheFor.
func (g *Gate) quota(ctx context.Context, region string, rq *regionQuota) (int, error) {
	now := g.clock.Now()
	if !rq.quotaAt.IsZero() && now.Sub(rq.quotaAt) < g.quotaFor {
		return rq.quota, nil
	}
	q, requestID, err := g.cvm.DescribeImageQuota(ctx, region)
	if err != nil {
		return 0, fmt.Errorf("describe image quota of %s: %w", region, err)
	}
	g.log.Debug().Str("region", region).Int("quota", q).Str("request_id", requestID).Msg("image quota read")
	rq.quota, rq.quotaAt = q, now
	return q, nil
}

// count returns how many custom images the region holds now.
func (g *Gate) count(ctx context.Context, region string, rq *regionQuota) (int, error) {
	if g.pace != nil {
		if err := g.pace.Wait(ctx); err != nil {
			return 0, err
		}
	}
	start := g.clock.Now()
	out, err := g.cvm.DescribeImages(ctx, region, cvm.DescribeImagesInput{
		Filters: []cvm.Filter{{Name: "image-type", Values: []string{"PRIVATE_IMAGE"}}},
		Limit:   1,
	})
	if o, ok := g.pace.(observer); ok {
		o.Observe(g.clock.Since(start))
	}
	if err != nil {
		if ae, ok := cvm.AsAPIError(err); ok && ae.Class == cvm.ClassThrottled {
			if th, ok := g.pace.(throttler); ok {
				th.Throttle()
			}
		}
		return 0, fmt.Errorf("count custom images of %s: %w", region, err)
	}
	g.log.Debug().Str("region", region).Int("images", out.TotalCount).Str("request_id", out.RequestID).Msg("custom images counted")
	rq.count, rq.countAt, rq.admitted = out.TotalCount, g.clock.Now(), 0
	return out.TotalCount, nil
}

// OnQuotaExceeded is the scheduler's hook for a CreateImage answered ImageQuotaLimitExceeded:
// it forgets what it knew of the region, prunes what retention allows, and asks for one more try
// when anything was freed.
func (g *Gate) OnQuotaExceeded(ctx context.Context, p *policy.Policy) bool {
	if p == nil || !g.owns(p) {
		return false
	}
	rq := g.region(p.Region)
	rq.mu.Lock()
	rq.quotaAt, rq.countAt, rq.admitted = time.Time{}, time.Time{}, 0
	rq.mu.Unlock()
	if g.prune == nil {
		return false
	}
	log := g.log.With().Str("policy", p.Name).Str("region", p.Region).Logger()
	freed, err := g.prune(ctx, p.Region)
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Warn().Err(err).Int("freed", freed).Msg("pruning after ImageQuotaLimitExceeded failed")
	}
	log.Info().Int("freed", freed).Bool("retry", freed > 0).Msg("image quota reached: pruned what retention allows")
	return freed > 0
}
