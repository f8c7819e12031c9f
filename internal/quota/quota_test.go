package quota

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/scheduler"
)

// quotaPolicyYAML is a policy of four instances, fired by RunOnce.
const quotaPolicyYAML = `version: 1
policies:
  - name: fleet
    schedule: "@daily"
    region: ap-guangzhou
    instances: [ins-qt000001, ins-qt000002, ins-qt000003, ins-qt000004]
`

var quotaInstances = []string{"ins-qt000001", "ins-qt000002", "ins-qt000003", "ins-qt000004"}

// quotaStack is a real scheduler (real clock) whose BeforeFire is a Gate, against a
// simulator holding the four instances and `existing` custom images under a quota.
type quotaStack struct {
	*env
	gate  *Gate
	sched *scheduler.Scheduler
}

func newQuotaStack(t *testing.T, quota, existing int, prune func(context.Context, string) (int, error)) *quotaStack {
	t.Helper()
	e := newEnv(t, true, cvmsim.Options{ImageQuota: quota})
	for _, id := range quotaInstances {
		e.sim.AddInstance(cvmsim.Instance{ID: id, Region: region})
	}
	for i := range existing {
		e.sim.AddImage(cvmsim.Image{ID: fmt.Sprintf("img-old%05d", i), Name: fmt.Sprintf("old-%d", i), Region: region})
	}
	// A public image is not a custom image: it does not count.
	e.sim.AddImage(cvmsim.Image{Name: "TencentOS Server", Region: region, Type: cvmsim.ImageTypePublic})

	gate := NewGate(Options{CVM: e.client, Clock: e.clk, Logger: zerolog.New(e.logs), Prune: prune})
	cfg, err := policy.LoadBytes("quota.yaml", []byte(quotaPolicyYAML))
	require.NoError(t, err)
	s, err := scheduler.New(scheduler.Options{
		Config: cfg, CVM: e.client, History: e.store, Logger: zerolog.New(e.logs), DaemonID: "quota-test",
		BeforeFire: gate.Check, OnQuotaExceeded: gate.OnQuotaExceeded, DisableCron: true,
	})
	require.NoError(t, err)
	require.NoError(t, s.Start(e.ctx))
	t.Cleanup(s.Stop)
	return &quotaStack{env: e, gate: gate, sched: s}
}

// created returns the instances CreateImage was called for.
func (q *quotaStack) created() []string {
	var out []string
	for _, c := range q.sim.Calls() {
		if c.Action == cvmsim.ActionCreateImage {
			out = append(out, c.Params["InstanceId"].(string))
		}
	}
	return out
}

func TestQuotaRefusesTheSlotsThatDoNotFit(t *testing.T) {
	t.Parallel()
	q := newQuotaStack(t, 5, 3, nil)
	out, err := q.sched.RunOnce(q.ctx, "fleet", nil)
	require.NoError(t, err)
	require.Len(t, out, 4)

	require.ElementsMatch(t, quotaInstances[:2], q.created(), "refused slots are never sent")
	for i, o := range out {
		require.Equal(t, quotaInstances[i], o.InstanceID)
		if i < 2 {
			require.Equal(t, history.StatusRequested, o.Status)
			continue
		}
		require.Equal(t, history.StatusFailed, o.Status)
		r := q.run(o.RunID)
		require.Equal(t, history.StatusFailed, r.Status)
		require.Equal(t, "ImageQuotaLimitExceeded", r.ErrorCode)
		require.Equal(t, "custom image quota of ap-guangzhou is 5 and 3 images exist: 2 of this fire's 4 slots fit", r.ErrorMessage)
		require.NotNil(t, r.FinishedAt)
		require.Zero(t, r.Attempts)
	}
	require.Equal(t, 1, q.logs.Count(`"level":"error"`, "image quota: slots of this fire fail without being sent"),
		"one clear error line per fire")
	for _, c := range q.sim.Calls() {
		require.Empty(t, c.Code, "no call failed: %+v", c)
	}
}

func TestQuotaPrunesBeforeRefusing(t *testing.T) {
	t.Parallel()
	var regions []string
	var mu sync.Mutex
	var q *quotaStack
	prune := func(ctx context.Context, r string) (int, error) {
		mu.Lock()
		regions = append(regions, r)
		mu.Unlock()
		// Retention deletes the two oldest images.
		if _, err := q.client.DeleteImages(ctx, r, []string{"img-old00000", "img-old00001"}, false); err != nil {
			return 0, err
		}
		return 2, nil
	}
	q = newQuotaStack(t, 5, 3, prune)
	out, err := q.sched.RunOnce(q.ctx, "fleet", nil)
	require.NoError(t, err)
	for _, o := range out {
		require.Equal(t, history.StatusRequested, o.Status, o.InstanceID)
	}
	require.ElementsMatch(t, quotaInstances, q.created())
	require.Equal(t, []string{region}, regions)
	require.Zero(t, q.logs.Count(`"level":"error"`))
	require.Equal(t, 1, q.logs.Count("image quota short for a fire: pruned what retention allows", `"freed":2`))
}

func TestQuotaStillShortAfterPruning(t *testing.T) {
	t.Parallel()
	q := newQuotaStack(t, 5, 4, func(ctx context.Context, r string) (int, error) { return 0, nil })
	out, err := q.sched.RunOnce(q.ctx, "fleet", nil)
	require.NoError(t, err)
	require.Equal(t, history.StatusRequested, out[0].Status)
	for _, o := range out[1:] {
		require.Equal(t, history.StatusFailed, o.Status)
		require.Equal(t, "custom image quota of ap-guangzhou is 5 and 4 images exist after pruning what retention allows: 1 of this fire's 4 slots fit",
			q.run(o.RunID).ErrorMessage)
	}
	require.Equal(t, quotaInstances[:1], q.created())
}

// countCalls counts the simulator's calls of an action.
func countCalls(sim *cvmsim.Server, action string) int {
	n := 0
	for _, c := range sim.Calls() {
		if c.Action == action {
			n++
		}
	}
	return n
}

func TestQuotaGateCaches(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, cvmsim.Options{ImageQuota: 10})
	for i := range 4 {
		e.sim.AddImage(cvmsim.Image{Name: fmt.Sprintf("img-%d", i), Region: region})
	}
	pace := &countingPace{}
	g := NewGate(Options{CVM: e.client, Clock: e.clk, Logger: zerolog.New(e.logs), Pace: pace})
	p := &policy.Policy{Name: "web", Region: region}
	check := func(n int) map[string]string {
		t.Helper()
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("ins-ch%06d", i)
		}
		refused, err := g.Check(e.ctx, p, ids)
		require.NoError(t, err)
		return refused
	}
	quotaCalls := func() int { return countCalls(e.sim, cvmsim.ActionDescribeImageQuota) }
	countCallsNow := func() int { return countCalls(e.sim, cvmsim.ActionDescribeImages) }

	require.Empty(t, check(3)) // 4 + 3 <= 10
	require.Equal(t, 1, quotaCalls())
	require.Equal(t, 1, countCallsNow())
	require.EqualValues(t, 1, pace.waits.Load(), "the count waits on the describe pace")
	c := e.describeCalls()[0]
	require.EqualValues(t, 1, c.Params["Limit"])

	// Within the count's cache, 4 + 3 admitted + 2 fits without asking again.
	require.Empty(t, check(2))
	require.Equal(t, 1, countCallsNow())
	// 4 + 5 admitted + 2 does not: a fresh count decides (the admitted slots were never made).
	require.Empty(t, check(2))
	require.Equal(t, 2, countCallsNow())
	// Past the count's cache, it counts again; the quota is still cached.
	e.fake.Advance(DefaultCountCacheFor)
	require.Empty(t, check(1))
	require.Equal(t, 3, countCallsNow())
	require.Equal(t, 1, quotaCalls())
	// Past the quota's cache, the quota is read again and a lower quota refuses.
	e.sim.SetImageQuota(5)
	e.fake.Advance(DefaultQuotaCacheFor)
	refused := check(3)
	require.Equal(t, 2, quotaCalls())
	require.Len(t, refused, 2)
	require.Contains(t, refused, "ins-ch000001")
	require.Contains(t, refused, "ins-ch000002")
	require.Empty(t, check(0))
}

func TestQuotaGateRefusesNothingWhenItCannotCount(t *testing.T) {
	t.Parallel()
	cases := []struct {
		action string
		log    string
	}{
		{cvmsim.ActionDescribeImageQuota, "cannot read the region's image quota"},
		{cvmsim.ActionDescribeImages, "cannot count the region's custom images"},
	}
	for _, tc := range cases {
		t.Run(tc.action, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, false, cvmsim.Options{ImageQuota: 1})
			e.sim.AddImage(cvmsim.Image{Name: "full", Region: region})
			e.sim.QueueErrors(tc.action, "InternalError")
			g := NewGate(Options{CVM: e.client, Clock: e.clk, Logger: zerolog.New(e.logs)})
			p := &policy.Policy{Name: "web", Region: region}
			refused, err := g.Check(e.ctx, p, []string{"ins-aaaaaaaa"})
			require.NoError(t, err)
			require.Empty(t, refused)
			require.Equal(t, 1, e.logs.Count(`"level":"warn"`, tc.log, "InternalError"))

			// Once the API answers again, the full region refuses.
			refused, err = g.Check(e.ctx, p, []string{"ins-aaaaaaaa"})
			require.NoError(t, err)
			require.Len(t, refused, 1)

			ctx, cancel := context.WithCancel(e.ctx)
			cancel()
			g2 := NewGate(Options{CVM: e.client, Clock: e.clk, Logger: zerolog.New(e.logs)})
			_, err = g2.Check(ctx, p, []string{"ins-aaaaaaaa"})
			require.ErrorIs(t, err, context.Canceled)
		})
	}
}

func TestOnQuotaExceeded(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		prune func(context.Context, string) (int, error)
		want  bool
	}{
		{"no prune hook", nil, false},
		{"nothing freed", func(context.Context, string) (int, error) { return 0, nil }, false},
		{"freed", func(context.Context, string) (int, error) { return 1, nil }, true},
		{"freed some then failed", func(context.Context, string) (int, error) { return 1, fmt.Errorf("delete failed") }, true},
		{"failed", func(context.Context, string) (int, error) { return 0, fmt.Errorf("delete failed") }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, false, cvmsim.Options{ImageQuota: 3})
			var pruned atomic.Int32
			var hook func(context.Context, string) (int, error)
			if tc.prune != nil {
				hook = func(ctx context.Context, r string) (int, error) {
					require.Equal(t, region, r)
					pruned.Add(1)
					return tc.prune(ctx, r)
				}
			}
			g := NewGate(Options{CVM: e.client, Clock: e.clk, Logger: zerolog.New(e.logs), Prune: hook})
			p := &policy.Policy{Name: "web", Region: region}
			_, err := g.Check(e.ctx, p, []string{"ins-aaaaaaaa"})
			require.NoError(t, err)
			require.Equal(t, 1, countCalls(e.sim, cvmsim.ActionDescribeImageQuota))

			require.Equal(t, tc.want, g.OnQuotaExceeded(e.ctx, p))
			if tc.prune != nil {
				require.EqualValues(t, 1, pruned.Load())
			}
			// What the gate knew of the region is forgotten: the next check asks again.
			_, err = g.Check(e.ctx, p, []string{"ins-aaaaaaaa"})
			require.NoError(t, err)
			require.Equal(t, 2, countCalls(e.sim, cvmsim.ActionDescribeImageQuota))
			require.False(t, strings.Contains(e.logs.String(), `"level":"error"`))
		})
	}
}
