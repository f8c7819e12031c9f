package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/scheduler"
)

// PacingParams is one pacing scenario: Calls CreateImage calls queued at once against a simulator
// that admits at most Limit of them in any sliding second.
type PacingParams struct {
	Calls   int // N: one run per instance, all queued at once
	Limit   int // L: api.create_image_rate, and the simulator's limit
	Workers int // api.workers
	// FaultRate is the share of admitted calls the simulator answers InternalError (0 for none).
	FaultRate float64
	// TransientAttempts, TransientInitial and TransientMax set api.retry.transient (zero values
	// keep imager's defaults: 200 ms doubling to 30 s, until the slot's start window closes).
	TransientAttempts              int
	TransientInitial, TransientMax time.Duration
	// NaiveRetries is the SDK's RateLimitExceededMaxRetries for the naive client; negative skips the
	// naive client.
	NaiveRetries int
	// Seed seeds the simulator's fault decisions.
	Seed int64
	// Loaded runs imager beside a background load (StartLoad): CPU hogs and a build loop.
	Loaded bool
}

// ClientPacing is what the simulator saw of one client in one pacing run.
type ClientPacing struct {
	Requested      int           // runs whose CreateImage was accepted (an image is being made)
	Lost           int           // runs that ended without an accepted CreateImage
	Makespan       time.Duration // from queueing the N calls to the last outcome
	Calls          int           // CreateImage calls that reached the simulator, retries included
	Rejected       int           // answered RequestLimitExceeded
	InternalErrors int           // answered InternalError (injected)
	// AdmittedRate is the admitted (not rejected) calls per second between the first and the last
	// admitted call: the rate while work was queued.
	AdmittedRate float64
	// MaxInAnySecond is the most calls, rejected ones included, that arrived in one sliding second;
	// MaxAdmittedInAnySecond counts only those the limiter admitted.
	MaxInAnySecond         int
	MaxAdmittedInAnySecond int
	// FirstCall is how long after the fire the first call reached the simulator (the fire's
	// claim of every slot comes first), and Tail how long the last outcome came after the last
	// call that reached it (retries waiting out their backoff with nothing else to send).
	FirstCall, Tail time.Duration
	// Grants is how many sends imager's pace granted: one per call unless a call was lost on
	// the way (imager's client only; 0 for the naive one).
	Grants int
}

// PacingRun is one run of a pacing scenario.
type PacingRun struct {
	Imager ClientPacing
	Naive  *ClientPacing // nil when the naive client was skipped
}

// RatePerLimit is the achieved rate as a share of the limit.
func (c ClientPacing) RatePerLimit(limit int) float64 { return ratio(c.AdmittedRate, float64(limit)) }

// MakespanPerIdeal is the makespan as a multiple of N/L, the least time N calls can take.
func (c ClientPacing) MakespanPerIdeal(n, limit int) float64 {
	return ratio(c.Makespan.Seconds(), float64(n)/float64(limit))
}

// pacingPolicy is the name of the one policy of a pacing run.
const pacingPolicy = "bench-pacing"

// RunPacing runs one pacing scenario once: imager's path (RunOnce of one policy holding every
// instance, through the scheduler's pool and pace, the CVM client and history on a fresh database)
// against one simulator, then the naive client against a second, identical one.
func RunPacing(ctx context.Context, env Env, p PacingParams) (PacingRun, error) {
	if p.Calls < 1 || p.Limit < 1 || p.Workers < 1 {
		return PacingRun{}, fmt.Errorf("pacing: calls, limit and workers must be positive: %+v", p)
	}
	instances := instanceIDs(0, p.Calls)
	var run PacingRun
	var err error
	if p.Loaded {
		load, err := StartLoad(ctx)
		if err != nil {
			return run, err
		}
		defer load.Stop()
	}
	if run.Imager, err = imagerPacing(ctx, env, p, instances); err != nil {
		return run, fmt.Errorf("pacing through imager: %w", err)
	}
	if p.NaiveRetries >= 0 {
		naive, err := naivePacing(ctx, env, p, instances)
		if err != nil {
			return run, fmt.Errorf("pacing through the naive client: %w", err)
		}
		run.Naive = &naive
	}
	return run, nil
}

func imagerPacing(ctx context.Context, env Env, p PacingParams, instances []string) (ClientPacing, error) {
	api := apiBlock{Rate: p.Limit, Workers: p.Workers}
	api.Transient.Attempts = p.TransientAttempts
	api.Transient.Initial, api.Transient.Max = p.TransientInitial, p.TransientMax
	cfg, err := policy.LoadBytes("pacing.yaml", policyFile(api, []genPolicy{{
		Name: pacingPolicy, Schedule: "0 3 * * *", Instances: instances,
	}}))
	if err != nil {
		return ClientPacing{}, fmt.Errorf("generated policy: %w", err)
	}
	store, _, err := openStore(ctx, env)
	if err != nil {
		return ClientPacing{}, err
	}
	defer store.Close()
	sim, endpoint, err := simulator(env.Logger, p.Limit, p.Seed, instances)
	if err != nil {
		return ClientPacing{}, err
	}
	defer sim.Close()
	if p.FaultRate > 0 {
		sim.SetFaults(cvmsim.Faults{InternalErrorRate: p.FaultRate, Actions: []string{cvmsim.ActionCreateImage}})
	}
	client, err := cvmClient(endpoint, env.Logger)
	if err != nil {
		return ClientPacing{}, err
	}
	defer client.Close()
	var grants atomic.Int64
	sched, err := scheduler.New(scheduler.Options{
		Pace:          pace.Options{OnGrant: func(time.Time) { grants.Add(1) }},
		Config:        cfg,
		CVM:           client,
		History:       store,
		Logger:        env.Logger,
		DaemonID:      "imager-bench",
		ShutdownGrace: 10 * time.Second,
		DisableCron:   true,
	})
	if err != nil {
		return ClientPacing{}, err
	}
	defer sched.Stop()
	if err := sched.Start(ctx); err != nil {
		return ClientPacing{}, err
	}

	start := time.Now()
	outcomes, err := sched.RunOnce(ctx, pacingPolicy, nil)
	makespan := time.Since(start)
	if err != nil {
		return ClientPacing{}, err
	}
	calls := sim.Calls()
	res := pacingFromCalls(calls)
	res.Makespan = makespan
	res.FirstCall, res.Tail = callSpan(calls, start, makespan)
	res.Grants = int(grants.Load())
	for _, o := range outcomes {
		if o.Succeeded() {
			res.Requested++
		}
	}
	res.Lost = p.Calls - res.Requested
	return res, nil
}

func naivePacing(ctx context.Context, env Env, p PacingParams, instances []string) (ClientPacing, error) {
	sim, _, err := simulator(env.Logger, p.Limit, p.Seed, instances)
	if err != nil {
		return ClientPacing{}, err
	}
	defer sim.Close()
	if p.FaultRate > 0 {
		sim.SetFaults(cvmsim.Faults{InternalErrorRate: p.FaultRate, Actions: []string{cvmsim.ActionCreateImage}})
	}
	start := time.Now()
	requested, makespan, err := naiveCreateImages(ctx, sim.Endpoint(), instances, p.NaiveRetries)
	if err != nil {
		return ClientPacing{}, err
	}
	calls := sim.Calls()
	res := pacingFromCalls(calls)
	res.Makespan = makespan
	res.FirstCall, res.Tail = callSpan(calls, start, time.Since(start))
	res.Requested = requested
	res.Lost = p.Calls - requested
	return res, nil
}

// pacingFromCalls counts what the simulator saw of the CreateImage calls.
func pacingFromCalls(calls []cvmsim.Call) ClientPacing {
	var res ClientPacing
	var all, admitted []time.Time
	for _, c := range calls {
		if c.Action != cvmsim.ActionCreateImage {
			continue
		}
		res.Calls++
		all = append(all, c.At)
		switch {
		case strings.HasPrefix(c.Code, "RequestLimitExceeded"):
			res.Rejected++
			continue
		case c.Code == "InternalError":
			res.InternalErrors++
		}
		admitted = append(admitted, c.At)
	}
	res.MaxInAnySecond = cvmsim.MaxInWindow(all, time.Second)
	res.MaxAdmittedInAnySecond = cvmsim.MaxInWindow(admitted, time.Second)
	res.AdmittedRate = spanRate(admitted)
	return res
}

// callSpan returns how long after start the first CreateImage reached the simulator, and how
// long before start+makespan the last one did.
func callSpan(calls []cvmsim.Call, start time.Time, makespan time.Duration) (first, tail time.Duration) {
	var lo, hi time.Time
	for _, c := range calls {
		if c.Action != cvmsim.ActionCreateImage {
			continue
		}
		if lo.IsZero() || c.At.Before(lo) {
			lo = c.At
		}
		if c.At.After(hi) {
			hi = c.At
		}
	}
	if lo.IsZero() {
		return 0, 0
	}
	return lo.Sub(start), start.Add(makespan).Sub(hi)
}

// spanRate is (n−1) over the time from the first to the last of n times (calls per second between
// them); NaN for fewer than two times.
func spanRate(times []time.Time) float64 {
	if len(times) < 2 {
		return ratio(0, 0)
	}
	first, last := times[0], times[0]
	for _, t := range times {
		if t.Before(first) {
			first = t
		}
		if t.After(last) {
			last = t
		}
	}
	return ratio(float64(len(times)-1), last.Sub(first).Seconds())
}

// errNoCalls reports a run in which nothing reached the simulator.
var errNoCalls = errors.New("no CreateImage call reached the simulator")
