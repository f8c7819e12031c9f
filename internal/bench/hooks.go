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
	"github.com/imager-dev/imager/internal/hooks"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/scheduler"
	"github.com/imager-dev/imager/internal/tat"
)

// NameHooks is one fire of a policy with pre and post hooks: how long each instance stays frozen
// beyond its CreateImage round trip.
const NameHooks = "hooks"

// HooksParams sizes the hooks benchmark: one fire of Instances instances at Limit CreateImage
// calls per second, each pre and post task running TaskTime on the simulator.
type HooksParams struct {
	Instances int
	Limit     int
	Workers   int
	TaskTime  time.Duration
}

// HooksRun is what one run of the hooks benchmark measured, per instance imaged: Frozen is the
// time from the end of its pre task to the start of its post task (what imager_hook_frozen_seconds
// observes), Extra that time less the CreateImage round trip (the call's time in the client).
type HooksRun struct {
	Frozen []time.Duration // sorted
	Extra  []time.Duration // sorted
	// MaxCreateInAnySecond is the densest second of CreateImage arrivals (the pace still holds).
	MaxCreateInAnySecond int
	// MaxTATInAnySecond is the densest second of TAT calls (TAT's limit is 20 per account).
	MaxTATInAnySecond int
}

// timedCVM measures each CreateImage round trip, by instance.
type timedCVM struct {
	scheduler.CVM
	mu  sync.Mutex
	rtt map[string]time.Duration
}

func (t *timedCVM) CreateImage(ctx context.Context, region string, in cvm.CreateImageInput) (cvm.CreateImageOutput, error) {
	start := time.Now()
	out, err := t.CVM.CreateImage(ctx, region, in)
	if err == nil {
		t.mu.Lock()
		t.rtt[in.InstanceID] = time.Since(start)
		t.mu.Unlock()
	}
	return out, err
}

// RunHooks fires one policy with hooks over p.Instances instances through a real scheduler, a
// simulator that speaks CVM and TAT, and a fresh database, and reads every instance's frozen
// time from the simulator's record of its tasks.
func RunHooks(ctx context.Context, env Env, p HooksParams) (HooksRun, error) {
	if p.Instances < 1 || p.Limit < 1 || p.Workers < 1 {
		return HooksRun{}, fmt.Errorf("hooks: instances, limit and workers must be positive: %+v", p)
	}
	instances := instanceIDs(0x200000, p.Instances)
	yaml := policyFile(apiBlock{Rate: p.Limit, Workers: p.Workers}, []genPolicy{{Name: "db", Schedule: "0 3 * * *", Instances: instances}})
	yaml = append(yaml, []byte(`    hooks:
      pre: {command: "fsfreeze --freeze /data", timeout: 30s}
      post: {command: "fsfreeze --unfreeze /data", timeout: 30s}
`)...)
	cfg, err := policy.LoadBytes("hooks.yaml", yaml)
	if err != nil {
		return HooksRun{}, fmt.Errorf("generated policy: %w", err)
	}
	store, _, err := openStore(ctx, env)
	if err != nil {
		return HooksRun{}, err
	}
	defer store.Close()
	sim, endpoint, err := simulator(env.Logger, p.Limit, 1, instances)
	if err != nil {
		return HooksRun{}, err
	}
	defer sim.Close()
	sim.SetCommandResult(func(string, string) cvmsim.CommandOutcome { return cvmsim.CommandOutcome{After: p.TaskTime} })
	client, err := cvmClient(endpoint, env.Logger)
	if err != nil {
		return HooksRun{}, err
	}
	defer client.Close()

	clock := clockwork.NewRealClock()
	timed := &timedCVM{CVM: client, rtt: map[string]time.Duration{}}
	sched, err := scheduler.New(scheduler.Options{
		Config: cfg, CVM: timed, History: store, Clock: clock, Logger: env.Logger, DaemonID: "imager-bench",
		ShutdownGrace: 30 * time.Second, DisableCron: true,
		TAT: tat.New(client), TATPace: pace.New(clock, hooks.DefaultRate, pace.Options{}),
	})
	if err != nil {
		return HooksRun{}, err
	}
	defer sched.Stop()
	if err := sched.Start(ctx); err != nil {
		return HooksRun{}, err
	}
	if _, err := sched.RunOnce(ctx, "db", nil); err != nil {
		return HooksRun{}, err
	}
	sched.Stop() // the posts still queued are sent within the shutdown grace

	type window struct{ preEnd, postStart time.Time }
	by := map[string]*window{}
	for _, t := range sim.Tasks() {
		w := by[t.InstanceID]
		if w == nil {
			w = &window{}
			by[t.InstanceID] = w
		}
		if t.Content == "fsfreeze --freeze /data" {
			w.preEnd = t.FinishedAt
		} else {
			w.postStart = t.StartedAt
		}
	}
	var run HooksRun
	timed.mu.Lock()
	for id, rtt := range timed.rtt {
		w := by[id]
		if w == nil || w.preEnd.IsZero() || w.postStart.IsZero() {
			timed.mu.Unlock()
			return HooksRun{}, fmt.Errorf("hooks: %s was imaged without both its hook tasks", id)
		}
		frozen := w.postStart.Sub(w.preEnd)
		run.Frozen = append(run.Frozen, frozen)
		run.Extra = append(run.Extra, frozen-rtt)
	}
	timed.mu.Unlock()
	if len(run.Frozen) != p.Instances {
		return HooksRun{}, fmt.Errorf("hooks: %d of %d instances imaged", len(run.Frozen), p.Instances)
	}
	slices.Sort(run.Frozen)
	slices.Sort(run.Extra)
	var creates, tatCalls []time.Time
	for _, c := range sim.Calls() {
		switch c.Action {
		case cvmsim.ActionCreateImage:
			creates = append(creates, c.At)
		case cvmsim.ActionRunCommand, cvmsim.ActionDescribeInvocationTasks, cvmsim.ActionDescribeAutomationAgentStatus:
			tatCalls = append(tatCalls, c.At)
		}
	}
	run.MaxCreateInAnySecond = cvmsim.MaxInWindow(creates, time.Second)
	run.MaxTATInAnySecond = cvmsim.MaxInWindow(tatCalls, time.Second)
	return run, nil
}
