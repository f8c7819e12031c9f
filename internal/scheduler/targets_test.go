package scheduler

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// fireHour advances the fake clock by an hour (an @every 1h policy's next slot) and waits until
// cond holds of the runs.
func (h *harness) fireHour(cond func([]history.Run) bool) {
	h.t.Helper()
	require.NoError(h.t, h.clk.BlockUntilContext(h.ctx, h.base))
	h.clk.Advance(time.Hour)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.hist.waitFor(h.ctx, cond)
	}()
	h.drive(done, 10*time.Millisecond)
}

func instancesAt(runs []history.Run, at time.Time) []string {
	var out []string
	for _, r := range runs {
		if r.ScheduledAt.Equal(at) {
			out = append(out, r.InstanceID)
		}
	}
	slices.Sort(out)
	return out
}

func requestedCount(runs []history.Run) int {
	n := 0
	for _, r := range runs {
		if r.Status == history.StatusRequested {
			n++
		}
	}
	return n
}

// A fire whose selector cannot be resolved still images what it knows: the listed instances and
// the targets of the policy's previous fire, less those the API reported gone.
func TestUnresolvedTargetsFallBackOnThePreviousFire(t *testing.T) {
	t.Parallel()
	p := scheduled(t, testPolicy("sel", "ins-listed01"), "@every 1h")
	p.Select = &policy.Selector{Tags: map[string]string{"env": "prod"}}
	var calls atomic.Int32
	h := newHarness(t, testConfig(10, 1, p), func(o *Options) {
		o.ResolveTargets = func(context.Context, *policy.Policy) ([]string, map[string]string, error) {
			if calls.Add(1) == 1 {
				return []string{"ins-listed01", "ins-tagged01", "ins-tagged02"}, nil, nil
			}
			return nil, nil, errFake
		}
	})
	h.start()

	h.fireHour(func(runs []history.Run) bool { return requestedCount(runs) == 3 })
	runs, _, _ := h.hist.snapshot()
	first := runs[0].ScheduledAt
	h.fireHour(func(runs []history.Run) bool { return requestedCount(runs) == 6 })
	runs, _, _ = h.hist.snapshot()
	second := first.Add(time.Hour)
	require.Equal(t, []string{"ins-listed01", "ins-tagged01", "ins-tagged02"}, instancesAt(runs, second))
	require.Contains(t, h.logs.String(), `"previous_targets":3`)
	require.Contains(t, h.logs.String(), "cannot resolve the policy's targets; imaging its listed instances and those of its previous fire")
	require.Equal(t, 6, h.cvm.count("CreateImage"))
}

// A fire with no target at all writes no run, but it is recorded as a fire: succeeded when the
// selector matched nothing, failed (TargetsUnresolved) when the targets could not be resolved
// and the policy knows of no instance.
func TestFireWithoutTargetsIsRecorded(t *testing.T) {
	t.Parallel()
	p := scheduled(t, testPolicy("sel"), "@every 1h")
	p.Select = &policy.Selector{Tags: map[string]string{"env": "prod"}}
	var fail atomic.Bool
	h := newHarness(t, testConfig(10, 1, p), func(o *Options) {
		o.ResolveTargets = func(context.Context, *policy.Policy) ([]string, map[string]string, error) {
			if fail.Load() {
				return nil, nil, errFake
			}
			return nil, nil, nil
		}
	})
	h.start()

	require.NoError(t, h.clk.BlockUntilContext(h.ctx, h.base))
	h.clk.Advance(time.Hour)
	got, err := h.hist.waitEmptyFires(h.ctx, 1)
	require.NoError(t, err)
	require.Equal(t, "sel", got[0].policy)
	require.Empty(t, got[0].code, "nothing matched: a fire with nothing to do")

	fail.Store(true)
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, h.base))
	h.clk.Advance(time.Hour)
	got, err = h.hist.waitEmptyFires(h.ctx, 2)
	require.NoError(t, err)
	require.Equal(t, got[0].slot.Add(time.Hour), got[1].slot)
	require.Equal(t, CodeTargetsUnresolved, got[1].code)
	require.Contains(t, got[1].message, "cannot resolve the policy's targets, and it has no earlier ones: ")
	require.Contains(t, got[1].message, errFake.Error())
	last, _ := h.hist.PolicySlots(h.ctx)
	require.Equal(t, got[1].slot, last["sel"])
	require.Zero(t, h.cvm.count("CreateImage"))
	require.Contains(t, h.logs.String(), `"error_code":"TargetsUnresolved"`)
}

// A first start marks every new policy's latest slot in one write, and a mark is not a fire.
func TestFirstStartMarksNewPoliciesAtOnce(t *testing.T) {
	t.Parallel()
	var ps []*policy.Policy
	for _, name := range []string{"a", "b", "c", "d"} {
		ps = append(ps, scheduled(t, testPolicy(name, "ins-"+name+"0000001"), "0 * * * *"))
	}
	h := newHarness(t, testConfig(10, 1, ps...))
	h.start()
	require.NoError(t, h.clk.BlockUntilContext(h.ctx, h.base))
	h.hist.mu.Lock()
	defer h.hist.mu.Unlock()
	require.Equal(t, 1, h.hist.slotSets)
	require.Len(t, h.hist.lastSlots, 4)
	prev := h.clk.Now().Truncate(time.Hour)
	for _, name := range []string{"a", "b", "c", "d"} {
		require.Equal(t, prev, h.hist.lastSlots[name].UTC(), name)
	}
	require.Empty(t, h.hist.emptyFires)
	require.Empty(t, h.hist.runs)
}
