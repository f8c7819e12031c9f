package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/scheduler"
)

// FireParams is the fire-latency scenario: Policies policies of one instance each, all due at the
// same slot, on a daemon paced to Limit calls per second.
type FireParams struct {
	Policies int
	Limit    int // api.create_image_rate and the simulator's limit
	Workers  int // api.workers
	// Lead is how long before the slot the scheduler starts (its cron loop then waits for the
	// slot on a real timer).
	Lead time.Duration
}

// FireRun is one fire-latency run. Latencies run from the slot's nominal time to the moment the
// first CreateImage of a policy left imager (the scheduler handed it to the CVM client).
type FireRun struct {
	Latencies []time.Duration // per policy, sorted
	// FirstArrival is from the slot to the first call's arrival at the simulator (signing, HTTP).
	FirstArrival time.Duration
	// DrainRate is the first calls per second from the first to the last of them.
	DrainRate      float64
	MaxInAnySecond int
}

// First is the latency of the first call of the fire.
func (r FireRun) First() time.Duration { return Percentile(r.Latencies, 0) }

// Last is the latency of the policy served last: when the queue of first calls had drained.
func (r FireRun) Last() time.Duration { return Percentile(r.Latencies, 100) }

// shiftedClock is the real clock moved by a fixed offset: Now reads real time plus the offset and
// every timer runs in real time. It puts a whole-minute slot a moment ahead without waiting for a
// real minute boundary, while every wait, the scheduler's and the pace's, stays real.
type shiftedClock struct {
	clockwork.Clock
	offset time.Duration
}

func (c shiftedClock) Now() time.Time                  { return time.Now().Add(c.offset) }
func (c shiftedClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }
func (c shiftedClock) Until(t time.Time) time.Duration { return t.Sub(c.Now()) }

// firstSends is the CVM client as the scheduler sees it, noting when the first CreateImage of each
// instance leaves imager. Other methods pass straight through.
type firstSends struct {
	scheduler.CVM
	clock clockwork.Clock

	mu    sync.Mutex
	first map[string]time.Time
	want  int
	done  chan struct{}
}

func (f *firstSends) CreateImage(ctx context.Context, region string, in cvm.CreateImageInput) (cvm.CreateImageOutput, error) {
	now := f.clock.Now()
	f.mu.Lock()
	if _, seen := f.first[in.InstanceID]; !seen {
		f.first[in.InstanceID] = now
		if len(f.first) == f.want {
			close(f.done)
		}
	}
	f.mu.Unlock()
	return f.CVM.CreateImage(ctx, region, in)
}

// fireZones are the time zones the generated policies are written in (the slot is the same instant).
var fireZones = []string{"UTC", "Asia/Shanghai", "Europe/Berlin", "America/New_York"}

// RunFire runs the fire-latency scenario once. The daemon runs on a shifted real clock (see
// shiftedClock) that shows Lead before a whole minute when the scheduler starts; every policy is a
// daily cron schedule for that minute, written in one of several time zones.
func RunFire(ctx context.Context, env Env, p FireParams) (FireRun, error) {
	if p.Policies < 1 || p.Limit < 1 || p.Workers < 1 || p.Lead <= 0 {
		return FireRun{}, fmt.Errorf("fire: policies, limit, workers and lead must be positive: %+v", p)
	}
	slot := time.Now().UTC().Truncate(time.Minute).Add(10 * time.Minute)
	instances := instanceIDs(0x100000, p.Policies)
	policies := make([]genPolicy, p.Policies)
	for i := range policies {
		zone := fireZones[i%len(fireZones)]
		loc, err := time.LoadLocation(zone)
		if err != nil {
			return FireRun{}, err
		}
		local := slot.In(loc)
		gp := genPolicy{Name: fmt.Sprintf("fire-%04d", i), Instances: instances[i : i+1]}
		if i%2 == 0 {
			gp.Schedule = fmt.Sprintf("%d %d * * *", local.Minute(), local.Hour())
			gp.Timezone = zone
		} else {
			gp.Schedule = fmt.Sprintf("CRON_TZ=%s %d %d * * *", zone, local.Minute(), local.Hour())
		}
		policies[i] = gp
	}
	cfg, err := policy.LoadBytes("fire.yaml", policyFile(apiBlock{Rate: p.Limit, Workers: p.Workers}, policies))
	if err != nil {
		return FireRun{}, fmt.Errorf("generated policies: %w", err)
	}

	store, _, err := openStore(ctx, env)
	if err != nil {
		return FireRun{}, err
	}
	defer store.Close()
	sim, endpoint, err := simulator(env.Logger, p.Limit, 1, instances)
	if err != nil {
		return FireRun{}, err
	}
	defer sim.Close()
	client, err := cvmClient(endpoint, env.Logger)
	if err != nil {
		return FireRun{}, err
	}
	defer client.Close()

	clock := shiftedClock{Clock: clockwork.NewRealClock(), offset: time.Until(slot) - p.Lead}
	sends := &firstSends{CVM: client, clock: clock, first: map[string]time.Time{}, want: p.Policies, done: make(chan struct{})}
	sched, err := scheduler.New(scheduler.Options{
		Config:        cfg,
		CVM:           sends,
		History:       store,
		Clock:         clock,
		Logger:        env.Logger,
		DaemonID:      "imager-bench",
		ShutdownGrace: 10 * time.Second,
	})
	if err != nil {
		return FireRun{}, err
	}
	defer sched.Stop()
	if err := sched.Start(ctx); err != nil {
		return FireRun{}, err
	}
	if now := clock.Now(); !now.Before(slot) {
		return FireRun{}, fmt.Errorf("fire: the scheduler started %s after the slot; raise the lead", now.Sub(slot))
	}
	select {
	case <-sends.done:
	case <-ctx.Done():
		return FireRun{}, ctx.Err()
	}
	sched.Stop() // every first call has left; Stop lets them finish

	var run FireRun
	sends.mu.Lock()
	firsts := make([]time.Time, 0, len(sends.first))
	for _, t := range sends.first {
		run.Latencies = append(run.Latencies, t.Sub(slot))
		firsts = append(firsts, t)
	}
	sends.mu.Unlock()
	slices.Sort(run.Latencies)
	run.DrainRate = spanRate(firsts)
	var arrivals []time.Time
	for _, c := range sim.Calls() {
		if c.Action == cvmsim.ActionCreateImage {
			arrivals = append(arrivals, c.At)
		}
	}
	if len(arrivals) == 0 {
		return FireRun{}, errNoCalls
	}
	run.FirstArrival = slices.MinFunc(arrivals, time.Time.Compare).Add(clock.offset).Sub(slot)
	run.MaxInAnySecond = cvmsim.MaxInWindow(arrivals, time.Second)
	return run, nil
}
