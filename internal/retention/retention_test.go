package retention_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/retention"
)

// TestMain gives the tests a PostgreSQL server and checks, once it is stopped, that no goroutine
// (simulator, HTTP client, pool) outlived them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

const (
	day       = 24 * time.Hour
	guangzhou = "ap-guangzhou"
	shanghai  = "ap-shanghai"
)

// t0 is the fake clock's start: a nightly slot at 03:00 UTC has just been made.
var t0 = time.Date(2026, 11, 10, 3, 30, 0, 0, time.UTC)

// env is the real stack on a fake clock: the simulator over HTTP with signatures, the CVM client
// on the SDK, PostgreSQL, and a Pruner with its own default paces.
type env struct {
	t      *testing.T
	ctx    context.Context
	clk    *clockwork.FakeClock
	sim    *cvmsim.Server
	client *cvm.Client
	store  *history.Store
	cfg    *policy.Config
	p      *retention.Pruner
}

func newEnv(t *testing.T, pols ...*policy.Policy) *env {
	t.Helper()
	e := newEnvWith(t, cvmsim.Options{})
	e.cfg.Policies = pols
	return e
}

// newEnvWith is newEnv with no policy, over a simulator of simOpts (its accounts) with the
// settings every test here uses.
func newEnvWith(t *testing.T, simOpts cvmsim.Options) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a bound, not a timing
	t.Cleanup(cancel)
	clk := clockwork.NewFakeClockAt(t0)
	// No limits at the simulator: its fake clock stands still while the paces run on real time.
	// Images stay CREATING for an hour of fake time unless completed.
	simOpts.Clock, simOpts.MaxClockSkew, simOpts.ImageReadyAfter, simOpts.Logger = clk, -1, time.Hour, zerolog.Nop()
	simOpts.Limits = map[string]int{cvmsim.ActionCreateImage: 0, cvmsim.ActionDescribeImages: 0, cvmsim.ActionDeleteImages: 0}
	sim, client := simtest.Start(t, simOpts)
	store, err := history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(store.Close)
	_, err = store.Migrate(ctx)
	require.NoError(t, err)

	cfg := &policy.Config{API: policy.DefaultAPI()}
	e := &env{t: t, ctx: ctx, clk: clk, sim: sim, client: client, store: store, cfg: cfg}
	e.p = retention.NewPruner(retention.Options{
		CVM: client, History: store, Config: func() *policy.Config { return e.cfg },
		Clock: clk, Logger: zerolog.Nop(),
	})
	return e
}

func webPolicy(name, region string, r *policy.Retention) *policy.Policy {
	return &policy.Policy{Name: name, Region: region, Location: time.UTC, Enabled: true, Retention: r,
		Image: policy.ImageSpec{NameTemplate: policy.DefaultNameTemplate}}
}

// fire makes the image of (pol, instance, slot) as the daemon does: claim the run, CreateImage
// with imager's tags, record the request, let the image finish and mark the run available.
func (e *env) fire(pol *policy.Policy, instance string, slot time.Time) history.Run {
	e.t.Helper()
	name := policy.ImageName(pol, instance, slot, 0)
	run, claimed, err := e.store.RunClaim(e.ctx, history.RunClaimParams{Policy: pol.Name, InstanceID: instance,
		Region: pol.Region, ScheduledAt: slot, ImageName: name, DaemonID: "test", StartedAt: slot, Status: history.StatusPending})
	require.NoError(e.t, err)
	require.True(e.t, claimed)
	tags := policy.ImageTags(pol, instance, slot)
	var in []cvm.Tag
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		in = append(in, cvm.Tag{Key: k, Value: tags[k]})
	}
	out, err := e.client.CreateImage(e.ctx, pol.Region, cvm.CreateImageInput{InstanceID: instance, ImageName: name, Tags: in})
	require.NoError(e.t, err)
	require.NoError(e.t, e.store.RunRequested(e.ctx, run.ID, out.ImageID, out.RequestID))
	e.sim.CompleteAll()
	size := int64(50)
	require.NoError(e.t, e.store.RunAvailable(e.ctx, run.ID, &size, "", slot.Add(20*time.Minute)))
	run, err = e.store.RunGet(e.ctx, run.ID)
	require.NoError(e.t, err)
	return run
}

// nightly fires pol on each instance at n nightly slots ending at 03:00 on t0's day.
func (e *env) nightly(pol *policy.Policy, n int, instances ...string) map[string][]history.Run {
	e.t.Helper()
	runs := map[string][]history.Run{}
	for i := n - 1; i >= 0; i-- {
		slot := time.Date(2026, 11, 10, 3, 0, 0, 0, time.UTC).Add(-time.Duration(i) * day)
		for _, id := range instances {
			runs[id] = append(runs[id], e.fire(pol, id, slot))
		}
	}
	return runs
}

// addInstances adds instances to the simulator.
func (e *env) addInstances(region string, ids ...string) {
	for _, id := range ids {
		e.sim.AddInstance(cvmsim.Instance{ID: id, Region: region})
	}
}

// recordRun puts an available run for an image that imager did not make into history, as a
// corrupted or hand-edited history might hold.
func (e *env) recordRun(pol *policy.Policy, instance string, slot time.Time, imageID string) history.Run {
	e.t.Helper()
	run, _, err := e.store.RunClaim(e.ctx, history.RunClaimParams{Policy: pol.Name, InstanceID: instance,
		Region: pol.Region, ScheduledAt: slot, ImageName: "hand-made", DaemonID: "test", StartedAt: slot, Status: history.StatusPending})
	require.NoError(e.t, err)
	require.NoError(e.t, e.store.RunRequested(e.ctx, run.ID, imageID, "req-hand"))
	require.NoError(e.t, e.store.RunAvailable(e.ctx, run.ID, nil, "", slot.Add(time.Hour)))
	run, err = e.store.RunGet(e.ctx, run.ID)
	require.NoError(e.t, err)
	return run
}

// existing returns the ids of the images the simulator holds.
func (e *env) existing() map[string]cvmsim.Image {
	out := map[string]cvmsim.Image{}
	for _, img := range e.sim.Images() {
		out[img.ID] = img
	}
	return out
}

// deleteCalls returns the DeleteImages calls the simulator received.
func (e *env) deleteCalls() []cvmsim.Call {
	var out []cvmsim.Call
	for _, c := range e.sim.Calls() {
		if c.Action == cvmsim.ActionDeleteImages {
			out = append(out, c)
		}
	}
	return out
}

// deletions returns every image_deletions row, by image id.
func (e *env) deletions() map[string]history.Deletion {
	e.t.Helper()
	all, err := e.store.DeletionsRecent(e.ctx, time.Time{})
	require.NoError(e.t, err)
	out := map[string]history.Deletion{}
	for _, d := range all {
		out[d.ImageID] = d
	}
	return out
}

type attemptRow struct {
	deletionID int64
	attempt    int
	action     string
	requestID  string
	code       string
}

// attempts returns the image_attempts rows that are not of a run, in order.
func (e *env) attempts() []attemptRow {
	e.t.Helper()
	rows, err := e.store.Pool().Query(e.ctx, `SELECT COALESCE(deletion_id, 0), attempt, action, COALESCE(request_id, ''),
	COALESCE(error_code, '') FROM image_attempts WHERE run_id IS NULL ORDER BY id`)
	require.NoError(e.t, err)
	defer rows.Close()
	var out []attemptRow
	for rows.Next() {
		var a attemptRow
		require.NoError(e.t, rows.Scan(&a.deletionID, &a.attempt, &a.action, &a.requestID, &a.code))
		out = append(out, a)
	}
	require.NoError(e.t, rows.Err())
	return out
}

// advancing runs f while moving the fake clock past every wait f starts (retry backoffs), and
// returns once f has.
func (e *env) advancing(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	waiting, stop := context.WithCancel(e.ctx)
	defer stop()
	for {
		select {
		case <-done:
			return
		default:
		}
		blocked := make(chan error, 1)
		go func() { blocked <- e.clk.BlockUntilContext(waiting, 1) }()
		select {
		case <-done:
			stop()
			<-blocked
			return
		case err := <-blocked:
			require.NoError(e.t, err)
			e.clk.Advance(time.Minute)
		}
	}
}

func TestKeepLastTwoOfFourFires(t *testing.T) {
	t.Parallel()
	web := webPolicy("web-nightly", guangzhou, &policy.Retention{KeepLast: 2, MinKeep: 1, DeleteSnapshots: true})
	e := newEnv(t, web)
	e.addInstances(guangzhou, "ins-web00001", "ins-web00002")
	runs := e.nightly(web, 4, "ins-web00001", "ins-web00002")

	// Images in history that are not this policy's to delete: one made by someone else (no imager
	// tags), one with the imager tags of another policy. Both are older than every fired image.
	old := t0.Add(-30 * day).Truncate(time.Hour)
	e.sim.AddImage(cvmsim.Image{ID: "img-foreign1", Name: "manual-backup", Region: guangzhou,
		Tags: map[string]string{"team": "ops"}})
	e.recordRun(web, "ins-web00001", old, "img-foreign1")
	e.sim.AddImage(cvmsim.Image{ID: "img-otherpol", Name: "db-nightly-x", Region: guangzhou,
		Tags: map[string]string{policy.TagPolicy: "db-nightly", policy.TagInstance: "ins-web00001", policy.TagSlot: policy.SlotTag(old.Add(time.Hour))}})
	e.recordRun(web, "ins-web00001", old.Add(time.Hour), "img-otherpol")

	// The pass after ins-web00001's newest image became available prunes that instance only.
	n, err := e.p.PruneInstance(e.ctx, "web-nightly", "ins-web00001")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	n, err = e.p.PruneAll(e.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n, "ins-web00002's two oldest")

	images := e.existing()
	for id, rs := range runs {
		for i, r := range rs { // oldest first
			_, exists := images[r.ImageID]
			require.Equal(t, i >= 2, exists, "%s image %d of 4 (%s)", id, i+1, r.ImageID)
		}
	}
	require.Contains(t, images, "img-foreign1", "someone else's image is never deleted")
	require.Contains(t, images, "img-otherpol", "another policy's image is never deleted")

	// History shows each deletion with its RequestId, one DeleteImages call per image.
	calls := e.deleteCalls()
	require.Len(t, calls, 4)
	byImage := map[string]cvmsim.Call{}
	for _, c := range calls {
		ids := c.Params["ImageIds"].([]any)
		require.Len(t, ids, 1)
		require.Equal(t, true, c.Params["DeleteBindedSnap"])
		require.Empty(t, c.Code)
		byImage[ids[0].(string)] = c
	}
	dels := e.deletions()
	require.Len(t, dels, 4)
	for id, rs := range runs {
		for i, r := range rs[:2] {
			d, ok := dels[r.ImageID]
			require.True(t, ok, "%s image %d", id, i+1)
			require.Equal(t, history.DeletionDeleted, d.Status)
			require.Equal(t, byImage[r.ImageID].RequestID, d.RequestID)
			require.NotEmpty(t, d.RequestID)
			require.Equal(t, r.ImageName, d.ImageName)
			require.Equal(t, "web-nightly", d.Policy)
			require.Equal(t, id, d.InstanceID)
			require.Equal(t, guangzhou, d.Region)
			require.Equal(t, r.ID, d.RunID)
			require.Equal(t, fmt.Sprintf("keep_last 2: %s newest available image", []string{"4th", "3rd"}[i]), d.Reason)
			require.Equal(t, 1, d.Attempts)
			require.Equal(t, t0, d.RequestedAt)
			require.Equal(t, t0, *d.FinishedAt)
		}
	}
	imageOf := map[int64]string{}
	for id, d := range dels {
		imageOf[d.ID] = id
	}
	atts := e.attempts()
	require.Len(t, atts, 4)
	for _, a := range atts {
		require.Equal(t, "DeleteImages", a.action)
		require.Equal(t, 1, a.attempt)
		require.Empty(t, a.code)
		require.Contains(t, imageOf, a.deletionID)
		require.Equal(t, byImage[imageOf[a.deletionID]].RequestID, a.requestID)
	}

	// A second pass finds nothing to do and calls DeleteImages no more.
	n, err = e.p.PruneAll(e.ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Len(t, e.deleteCalls(), 4)
}

func TestPlanDeletesNothing(t *testing.T) {
	t.Parallel()
	web := webPolicy("web-nightly", guangzhou, &policy.Retention{KeepLast: 1, MinKeep: 1})
	plain := webPolicy("no-retention", guangzhou, nil)
	e := newEnv(t, web, plain)
	e.addInstances(guangzhou, "ins-web00001", "ins-web00002")
	runs := e.nightly(web, 3, "ins-web00001", "ins-web00002")
	e.nightly(plain, 3, "ins-web00002")
	before := e.existing()

	plan, err := e.p.Plan(e.ctx, "")
	require.NoError(t, err)
	require.Len(t, plan, 4)
	var want []retention.Decision
	for _, id := range []string{"ins-web00001", "ins-web00002"} {
		for i, r := range []history.Run{runs[id][1], runs[id][0]} { // newest first
			want = append(want, retention.Decision{Policy: "web-nightly", InstanceID: id, Region: guangzhou,
				ImageID: r.ImageID, ImageName: r.ImageName, RunID: r.ID, Slot: r.ScheduledAt, Account: policy.DefaultAccount,
				Reason: fmt.Sprintf("keep_last 1: %s newest available image", []string{"2nd", "3rd"}[i])})
		}
	}
	require.Equal(t, want, plan)
	for _, d := range plan {
		require.Equal(t, before[d.ImageID].Name, d.ImageName, "the name is the image's")
	}

	// Nothing was deleted or recorded.
	require.Empty(t, e.deleteCalls())
	require.Equal(t, before, e.existing())
	require.Empty(t, e.deletions())
	require.Empty(t, e.attempts())

	one, err := e.p.Plan(e.ctx, "web-nightly")
	require.NoError(t, err)
	require.Equal(t, plan, one)
	_, err = e.p.Plan(e.ctx, "nope")
	require.ErrorIs(t, err, retention.ErrUnknownPolicy)
	_, err = e.p.Plan(e.ctx, "no-retention")
	require.ErrorIs(t, err, retention.ErrNoRetention)
	_, err = e.p.PrunePolicy(e.ctx, "no-retention")
	require.ErrorIs(t, err, retention.ErrNoRetention)
	n, err := e.p.PruneInstance(e.ctx, "no-retention", "ins-web00002")
	require.NoError(t, err, "the automatic pass of a policy without retention does nothing")
	require.Zero(t, n)

	// Pruning deletes exactly what the plan listed.
	n, err = e.p.PrunePolicy(e.ctx, "web-nightly")
	require.NoError(t, err)
	require.Equal(t, 4, n)
	after := e.existing()
	require.Len(t, after, len(before)-4)
	for _, d := range plan {
		require.NotContains(t, after, d.ImageID)
	}
}

func TestImagesNotNormalAreNeverDeleted(t *testing.T) {
	t.Parallel()
	web := webPolicy("web-nightly", guangzhou, &policy.Retention{KeepLast: 1, MinKeep: 1})
	e := newEnv(t, web)
	e.addInstances(guangzhou, "ins-web00001")
	runs := e.nightly(web, 2, "ins-web00001")["ins-web00001"]

	// Older images of the policy, with its tags, that history says are available but that are
	// still CREATING, or SYNCING, at the API.
	for i, state := range []string{cvmsim.ImageStateCreating, cvmsim.ImageStateSyncing} {
		slot := runs[0].ScheduledAt.Add(-time.Duration(i+1) * day)
		id := fmt.Sprintf("img-state%03d", i)
		e.sim.AddImage(cvmsim.Image{ID: id, Name: "web-" + id, Region: guangzhou, State: state,
			Tags: map[string]string{policy.TagPolicy: "web-nightly", policy.TagInstance: "ins-web00001", policy.TagSlot: policy.SlotTag(slot)}})
		e.recordRun(web, "ins-web00001", slot, id)
	}

	plan, err := e.p.Plan(e.ctx, "web-nightly")
	require.NoError(t, err)
	require.Len(t, plan, 1)
	require.Equal(t, runs[0].ImageID, plan[0].ImageID)
	require.Equal(t, "keep_last 1: 2nd newest available image", plan[0].Reason, "images not NORMAL do not count")

	n, err := e.p.PruneAll(e.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	images := e.existing()
	require.Equal(t, cvmsim.ImageStateCreating, images["img-state000"].State)
	require.Equal(t, cvmsim.ImageStateSyncing, images["img-state001"].State)
	require.Contains(t, images, runs[1].ImageID)
	require.NotContains(t, images, runs[0].ImageID)
	require.Len(t, e.deleteCalls(), 1)
}

func TestMaxAgeAndMinKeep(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		r       policy.Retention
		ages    []int // days before t0's slot, oldest first
		deleted []int // indexes into ages
		reasons []string
	}{
		{"max_age 30d min_keep 2: all too old, two kept", policy.Retention{MaxAge: 30 * day, MinKeep: 2},
			[]int{100, 90, 80, 70}, []int{0, 1},
			[]string{"max_age 30d: slot 2026-08-02T03:00:00Z is 100d old", "max_age 30d: slot 2026-08-12T03:00:00Z is 90d old"}},
		{"max_age 30d min_keep 1: only the too old", policy.Retention{MaxAge: 30 * day, MinKeep: 1},
			[]int{40, 35, 5, 0}, []int{0, 1},
			[]string{"max_age 30d: slot 2026-10-01T03:00:00Z is 40d old", "max_age 30d: slot 2026-10-06T03:00:00Z is 35d old"}},
		{"max_age 30d: the only image stays however old", policy.Retention{MaxAge: 30 * day, MinKeep: 1},
			[]int{365}, nil, nil},
		{"keep_last 3 max_age 10d min_keep 2", policy.Retention{KeepLast: 3, MaxAge: 10 * day, MinKeep: 2},
			[]int{20, 15, 12, 11, 1}, []int{0, 1, 2}, // the 11-day-old image is the second min_keep keeps
			[]string{"keep_last 3: 5th newest available image", "keep_last 3: 4th newest available image",
				"max_age 10d: slot 2026-10-29T03:00:00Z is 12d old"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := tc.r
			web := webPolicy("web-nightly", guangzhou, &r)
			e := newEnv(t, web)
			e.addInstances(guangzhou, "ins-web00001")
			today := time.Date(2026, 11, 10, 3, 0, 0, 0, time.UTC) // t0 is half an hour later
			var runs []history.Run
			for _, a := range tc.ages {
				runs = append(runs, e.fire(web, "ins-web00001", today.Add(-time.Duration(a)*day)))
			}
			n, err := e.p.PruneAll(e.ctx)
			require.NoError(t, err)
			require.Equal(t, len(tc.deleted), n)
			images := e.existing()
			dels := e.deletions()
			for i, run := range runs {
				if j := slices.Index(tc.deleted, i); j >= 0 {
					require.NotContains(t, images, run.ImageID, "image %d", i)
					require.Equal(t, tc.reasons[j], dels[run.ImageID].Reason)
					continue
				}
				require.Contains(t, images, run.ImageID, "image %d", i)
			}
		})
	}
}

func TestFailedDeletionIsRetriedAtTheNextPass(t *testing.T) {
	t.Parallel()
	web := webPolicy("web-nightly", guangzhou, &policy.Retention{KeepLast: 1, MinKeep: 1})
	e := newEnv(t, web)
	e.addInstances(guangzhou, "ins-web00001")
	runs := e.nightly(web, 2, "ins-web00001")["ins-web00001"]
	doomed := runs[0].ImageID
	e.sim.QueueErrors(cvmsim.ActionDeleteImages, "InternalError", "InternalError", "InternalError", "InternalError")

	// First pass: three calls, all InternalError; the deletion is recorded failed, not lost.
	var n int
	var err error
	e.advancing(func() { n, err = e.p.PruneAll(e.ctx) })
	require.Zero(t, n)
	require.ErrorContains(t, err, "retried at the next pass")
	ae, ok := cvm.AsAPIError(err)
	require.True(t, ok)
	require.Equal(t, "InternalError", ae.Code)
	require.Contains(t, e.existing(), doomed)
	d := e.deletions()[doomed]
	require.Equal(t, history.DeletionFailed, d.Status)
	require.Equal(t, "InternalError", d.ErrorCode)
	require.Equal(t, 3, d.Attempts)
	require.NotEmpty(t, d.RequestID)
	open, err := e.store.DeletionsPending(e.ctx)
	require.NoError(t, err)
	require.Len(t, open, 1)
	require.Equal(t, d.ID, open[0].ID)

	// Next pass: one more InternalError, then the deletion goes through, on the same row.
	e.advancing(func() { n, err = e.p.PruneAll(e.ctx) })
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NotContains(t, e.existing(), doomed)
	require.Contains(t, e.existing(), runs[1].ImageID)
	dels := e.deletions()
	require.Len(t, dels, 1)
	d2 := dels[doomed]
	require.Equal(t, d.ID, d2.ID)
	require.Equal(t, history.DeletionDeleted, d2.Status)
	require.Empty(t, d2.ErrorCode)
	require.Equal(t, 5, d2.Attempts)

	calls := e.deleteCalls()
	require.Len(t, calls, 5)
	atts := e.attempts()
	require.Len(t, atts, 5)
	for i, a := range atts {
		require.Equal(t, d.ID, a.deletionID)
		require.Equal(t, i+1, a.attempt)
		require.Equal(t, calls[i].RequestID, a.requestID)
		require.Equal(t, calls[i].Code, a.code)
	}
	require.Equal(t, "InternalError", atts[3].code)
	require.Empty(t, atts[4].code)
	require.Equal(t, calls[4].RequestID, d2.RequestID)
}

func TestDeletionEdgeCases(t *testing.T) {
	t.Parallel()
	web := webPolicy("web-nightly", guangzhou, &policy.Retention{KeepLast: 1, MinKeep: 1})
	e := newEnv(t, web)
	e.addInstances(guangzhou, "ins-web00001", "ins-web00002", "ins-web00003")
	runs := e.nightly(web, 2, "ins-web00001", "ins-web00002", "ins-web00003")

	// ins-web00001: the image is gone by the time DeleteImages is called: counted as deleted.
	// ins-web00002: a permanent error: failed at once, no retry in the pass.
	// (Deletions run in instance order.)
	e.sim.QueueErrors(cvmsim.ActionDeleteImages, "InvalidImageId.NotFound", "UnauthorizedOperation")
	n, err := e.p.PruneAll(e.ctx)
	require.Equal(t, 1, n, "only ins-web00003's image was removed by this pass")
	require.ErrorContains(t, err, "UnauthorizedOperation")
	dels := e.deletions()
	gone := dels[runs["ins-web00001"][0].ImageID]
	require.Equal(t, history.DeletionDeleted, gone.Status)
	require.Equal(t, "image already gone (InvalidImageId.NotFound)", gone.ErrorMessage)
	require.Empty(t, gone.ErrorCode)
	denied := dels[runs["ins-web00002"][0].ImageID]
	require.Equal(t, history.DeletionFailed, denied.Status)
	require.Equal(t, "UnauthorizedOperation", denied.ErrorCode)
	require.Equal(t, 1, denied.Attempts)
	require.Equal(t, history.DeletionDeleted, dels[runs["ins-web00003"][0].ImageID].Status)
	require.Len(t, e.deleteCalls(), 3)

	// DescribeImages failing: nothing can be justified, so nothing is deleted; the call is
	// recorded as an attempt of no run or deletion.
	e.sim.QueueErrors(cvmsim.ActionDescribeImages, "UnauthorizedOperation")
	n, err = e.p.PruneAll(e.ctx)
	require.Zero(t, n)
	require.ErrorContains(t, err, "cross-check")
	require.Len(t, e.deleteCalls(), 3)
	atts := e.attempts()
	last := atts[len(atts)-1]
	require.Equal(t, attemptRow{attempt: 1, action: "DescribeImages", requestID: last.requestID, code: "UnauthorizedOperation"}, last)
	require.NotEmpty(t, last.requestID)

	// The next pass retries the failed deletion.
	n, err = e.p.PruneAll(e.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, history.DeletionDeleted, e.deletions()[runs["ins-web00002"][0].ImageID].Status)
	// The newest image of each instance, and the one DeleteImages said was gone (the simulator
	// answered the queued error without deleting it).
	require.Len(t, e.existing(), 4)
}

func TestPruneRegion(t *testing.T) {
	t.Parallel()
	gz := webPolicy("web-gz", guangzhou, &policy.Retention{KeepLast: 1, MinKeep: 1})
	sh := webPolicy("web-sh", shanghai, &policy.Retention{KeepLast: 1, MinKeep: 1})
	e := newEnv(t, gz, sh)
	e.addInstances(guangzhou, "ins-gz000001")
	e.addInstances(shanghai, "ins-sh000001", "ins-sh000002")
	gzRuns := e.nightly(gz, 3, "ins-gz000001")
	shRuns := e.nightly(sh, 3, "ins-sh000001", "ins-sh000002")

	freed, err := e.p.PruneRegion(e.ctx, shanghai)
	require.NoError(t, err)
	require.Equal(t, 4, freed)
	images := e.existing()
	for _, rs := range shRuns {
		require.NotContains(t, images, rs[0].ImageID)
		require.NotContains(t, images, rs[1].ImageID)
		require.Contains(t, images, rs[2].ImageID)
	}
	for _, r := range gzRuns["ins-gz000001"] {
		require.Contains(t, images, r.ImageID, "another region is left alone")
	}
	for _, c := range e.sim.Calls() {
		if c.Action != cvmsim.ActionCreateImage {
			require.Equal(t, shanghai, c.Region, "%s", c.Action)
		}
	}

	freed, err = e.p.PruneRegion(e.ctx, guangzhou)
	require.NoError(t, err)
	require.Equal(t, 2, freed)
}

// A pass stopped by its context records what it did and leaves the rest for the next one.
func TestPruneStopsWithTheContext(t *testing.T) {
	t.Parallel()
	web := webPolicy("web-nightly", guangzhou, &policy.Retention{KeepLast: 1, MinKeep: 1})
	e := newEnv(t, web)
	e.addInstances(guangzhou, "ins-web00001")
	e.nightly(web, 3, "ins-web00001")
	e.sim.QueueErrors(cvmsim.ActionDeleteImages, "InternalError")

	ctx, cancel := context.WithCancel(e.ctx)
	var n int
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, err = e.p.PruneAll(ctx)
	}()
	require.NoError(t, e.clk.BlockUntilContext(e.ctx, 1), "the pass waits out its backoff")
	cancel()
	<-done
	require.Zero(t, n)
	require.ErrorIs(t, err, context.Canceled)
	dels := e.deletions()
	require.Len(t, dels, 1, "the second deletion was never decided on the row")
	for _, d := range dels {
		require.Equal(t, history.DeletionFailed, d.Status)
		require.Equal(t, 1, d.Attempts)
	}
	require.Len(t, e.deleteCalls(), 1)

	n, err = e.p.PruneAll(e.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	var reasons []string
	for _, d := range e.deletions() {
		require.Equal(t, history.DeletionDeleted, d.Status)
		reasons = append(reasons, d.Reason)
	}
	sort.Strings(reasons)
	require.Equal(t, []string{"keep_last 1: 2nd newest available image", "keep_last 1: 3rd newest available image"}, reasons)
}

// A deletion whose outcome was never recorded (the daemon died after DeleteImages succeeded) is
// closed by the next pass without another call.
func TestUnrecordedDeletionIsClosed(t *testing.T) {
	t.Parallel()
	web := webPolicy("web-nightly", guangzhou, &policy.Retention{KeepLast: 1, MinKeep: 1})
	e := newEnv(t, web)
	e.addInstances(guangzhou, "ins-web00001")
	runs := e.nightly(web, 2, "ins-web00001")["ins-web00001"]
	old := runs[0]
	id, created, err := e.store.DeletionInsert(e.ctx, history.Deletion{ImageID: old.ImageID, ImageName: old.ImageName,
		Policy: old.Policy, InstanceID: old.InstanceID, Region: old.Region, RunID: old.ID,
		Reason: "keep_last 1: 2nd newest available image", RequestedAt: t0.Add(-time.Hour)})
	require.NoError(t, err)
	require.True(t, created)
	_, err = e.client.DeleteImages(e.ctx, guangzhou, []string{old.ImageID}, false) // the call whose answer was lost
	require.NoError(t, err)

	plan, err := e.p.Plan(e.ctx, "")
	require.NoError(t, err)
	require.Empty(t, plan, "nothing left to delete")
	n, err := e.p.PruneAll(e.ctx)
	require.NoError(t, err)
	require.Zero(t, n, "nothing freed now")
	require.Len(t, e.deleteCalls(), 1, "only the lost call")
	d, err := e.store.DeletionGet(e.ctx, id)
	require.NoError(t, err)
	require.Equal(t, history.DeletionDeleted, d.Status)
	require.Equal(t, "image no longer exists (DescribeImages)", d.ErrorMessage)
	require.Equal(t, t0, *d.FinishedAt)
	require.Contains(t, e.existing(), runs[1].ImageID)

	n, err = e.p.PruneAll(e.ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}
