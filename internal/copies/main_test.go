package copies

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/testenv"
)

// TestMain gives the tests a PostgreSQL server and checks that no goroutine outlived them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

const (
	guangzhou = "ap-guangzhou"
	shanghai  = "ap-shanghai"
	singapore = "ap-singapore"
	day       = 24 * time.Hour
)

// t0 is where every fake clock starts.
var t0 = time.Date(2026, 11, 10, 3, 30, 0, 0, time.UTC)

// fakeImage is one image of the fake cloud.
type fakeImage struct {
	cvm.Image
	region, account string
}

// fakeCall is one call the fake cloud received.
type fakeCall struct {
	action, account, region string
	sync                    cvm.SyncImagesInput
	describe                cvm.DescribeImagesInput
	deleted                 []string
}

// fakeCloud is the CVM API of every account, in memory: SyncImages makes SYNCING copies named
// as asked, DescribeImages answers by ids or by the (fuzzy) image-name filter, DeleteImages
// removes. It counts every call.
type fakeCloud struct {
	mu     sync.Mutex
	clk    clockwork.Clock
	images map[string]*fakeImage
	seq    int
	calls  []fakeCall
	// syncHook, when set, decides each SyncImages call (n counts them from 1) before it acts: an
	// error to answer, and whether the copies are made anyway (an answer lost on the way back).
	syncHook func(n int, in cvm.SyncImagesInput) (err error, act bool)
	// quota, when set, is the most images a region holds: SyncImages to a full region answers
	// ImageQuotaLimitExceeded.
	quota   map[string]int
	omitIDs bool // SyncImages answers without ImageSet
}

func newFakeCloud(clk clockwork.Clock) *fakeCloud {
	return &fakeCloud{clk: clk, images: map[string]*fakeImage{}}
}

func apiErr(action, code, msg string) *cvm.APIError {
	return &cvm.APIError{Action: action, Code: code, Message: msg, RequestID: "req-err", Class: cvm.Classify(code)}
}

// add puts an image into the cloud and returns its id.
func (f *fakeCloud) add(account, region, name, state string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	id := fmt.Sprintf("img-%08d", f.seq)
	f.images[id] = &fakeImage{Image: cvm.Image{ID: id, Name: name, State: state, Type: "PRIVATE_IMAGE",
		CreatedTime: f.clk.Now().Add(time.Duration(f.seq) * time.Millisecond)}, region: region, account: account}
	return id
}

func (f *fakeCloud) setState(id, state string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.images[id].State = state
}

// complete makes every SYNCING copy NORMAL.
func (f *fakeCloud) complete() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, img := range f.images {
		if img.State == cvm.ImageStateSyncing {
			img.State = cvm.ImageStateNormal
		}
	}
}

// inRegion lists the ids of the images in region, sorted.
func (f *fakeCloud) inRegion(region string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for id, img := range f.images {
		if img.region == region {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func (f *fakeCloud) callsOf(action string) []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeCall
	for _, c := range f.calls {
		if c.action == action {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeCloud) client(account string) CVM { return &fakeClient{f, account} }

type fakeClient struct {
	f       *fakeCloud
	account string
}

func (c *fakeClient) SyncImages(_ context.Context, region string, in cvm.SyncImagesInput) (cvm.SyncImagesOutput, error) {
	f := c.f
	f.mu.Lock()
	f.calls = append(f.calls, fakeCall{action: cvm.ActionSyncImages, account: c.account, region: region, sync: in})
	n := len(f.callsLocked(cvm.ActionSyncImages))
	hook := f.syncHook
	f.mu.Unlock()
	var hookErr error
	if hook != nil {
		var act bool
		if hookErr, act = hook(n, in); hookErr != nil && !act {
			return cvm.SyncImagesOutput{}, hookErr
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	src := f.images[in.ImageID]
	switch {
	case src == nil || src.region != region || src.account != c.account:
		return cvm.SyncImagesOutput{}, apiErr(cvm.ActionSyncImages, "InvalidImageId.NotFound", "no image "+in.ImageID)
	case src.State != cvm.ImageStateNormal:
		return cvm.SyncImagesOutput{}, apiErr(cvm.ActionSyncImages, "InvalidImageId.IncorrectState", "image is "+src.State)
	}
	for _, r := range in.DestinationRegions {
		if q, ok := f.quota[r]; ok && f.countLocked(r) >= q {
			return cvm.SyncImagesOutput{}, apiErr(cvm.ActionSyncImages, "ImageQuotaLimitExceeded", "quota")
		}
	}
	out := cvm.SyncImagesOutput{RequestID: fmt.Sprintf("req-sync-%d", n)}
	for _, r := range in.DestinationRegions {
		f.seq++
		id := fmt.Sprintf("img-%08d", f.seq)
		f.images[id] = &fakeImage{Image: cvm.Image{ID: id, Name: in.ImageName, State: cvm.ImageStateSyncing,
			Type: "PRIVATE_IMAGE", CreatedTime: f.clk.Now()}, region: r, account: c.account}
		if !f.omitIDs {
			out.Copies = append(out.Copies, cvm.ImageCopy{ImageID: id, Region: r})
		}
	}
	if hookErr != nil {
		return cvm.SyncImagesOutput{}, hookErr
	}
	return out, nil
}

func (f *fakeCloud) callsLocked(action string) []fakeCall {
	var out []fakeCall
	for _, c := range f.calls {
		if c.action == action {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeCloud) countLocked(region string) int {
	n := 0
	for _, img := range f.images {
		if img.region == region {
			n++
		}
	}
	return n
}

func (c *fakeClient) DescribeImages(_ context.Context, region string, in cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error) {
	f := c.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fakeCall{action: cvm.ActionDescribeImages, account: c.account, region: region, describe: in})
	if len(in.ImageIDs) > cvm.MaxLimit || in.Limit > cvm.MaxLimit {
		return cvm.DescribeImagesOutput{}, apiErr(cvm.ActionDescribeImages, "InvalidParameterValue.LimitExceeded", "too many")
	}
	var all []cvm.Image
	for _, img := range f.images {
		if img.region != region || img.account != c.account {
			continue
		}
		match := len(in.ImageIDs) == 0 || slices.Contains(in.ImageIDs, img.ID)
		for _, flt := range in.Filters {
			if flt.Name == "image-name" && !strings.Contains(img.Name, flt.Values[0]) {
				match = false
			}
		}
		if match {
			all = append(all, img.Image)
		}
	}
	slices.SortFunc(all, func(a, b cvm.Image) int { return strings.Compare(a.ID, b.ID) })
	out := cvm.DescribeImagesOutput{TotalCount: len(all), RequestID: "req-describe"}
	limit := in.Limit
	if limit == 0 {
		limit = 20
	}
	if in.Offset < len(all) {
		out.Images = all[in.Offset:min(len(all), in.Offset+limit)]
	}
	return out, nil
}

func (c *fakeClient) DeleteImages(_ context.Context, region string, ids []string, _ bool) (string, error) {
	f := c.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fakeCall{action: cvm.ActionDeleteImages, account: c.account, region: region, deleted: ids})
	for _, id := range ids {
		img := f.images[id]
		if img == nil || img.region != region {
			return "", apiErr(cvm.ActionDeleteImages, codeImageNotFound, "no image "+id)
		}
		delete(f.images, id)
	}
	return "req-delete", nil
}

// paceLog is a Pace per (action, account) that never waits and counts its waits.
type paceLog struct {
	mu    sync.Mutex
	waits map[string]int
}

type countingPace struct {
	l   *paceLog
	key string
}

func (p countingPace) Wait(ctx context.Context) error {
	p.l.mu.Lock()
	defer p.l.mu.Unlock()
	p.l.waits[p.key]++
	return ctx.Err()
}

func (l *paceLog) pace(action string) func(string) Pace {
	return func(account string) Pace { return countingPace{l, action + "/" + account} }
}

func (l *paceLog) count(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waits[key]
}

// env is a Copier over a fake cloud, PostgreSQL and a fake clock; passes are run by the test.
type env struct {
	t     *testing.T
	ctx   context.Context
	clk   *clockwork.FakeClock
	store *history.Store
	cloud *fakeCloud
	cfg   *policy.Config
	paces *paceLog
	logs  *testenv.LogBuffer
	c     *Copier
	src   map[int64]string // run id → source image id
}

func newEnv(t *testing.T, pols ...*policy.Policy) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a bound, not a timing
	t.Cleanup(cancel)
	clk := clockwork.NewFakeClockAt(t0)
	store, err := history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(store.Close)
	_, err = store.Migrate(ctx)
	require.NoError(t, err)
	e := &env{t: t, ctx: ctx, clk: clk, store: store, cloud: newFakeCloud(clk), paces: &paceLog{waits: map[string]int{}},
		logs: &testenv.LogBuffer{}, src: map[int64]string{}}
	e.cfg = &policy.Config{API: policy.DefaultAPI(), Policies: pols}
	e.c = New(Options{
		History: store, CVM: e.cloud.client, Config: func() *policy.Config { return e.cfg },
		SyncPace: e.paces.pace("SyncImages"), DescribePace: e.paces.pace("DescribeImages"),
		DeletePace: e.paces.pace("DeleteImages"), Clock: clk, Logger: zerolog.New(e.logs),
	})
	return e
}

// webPolicy is a policy in Guangzhou copying to regions, with a 4h image timeout.
func webPolicy(name string, r *policy.Retention, regions ...string) *policy.Policy {
	p := &policy.Policy{Name: name, Region: guangzhou, Location: time.UTC, Enabled: true,
		Account: policy.DefaultAccount, Image: policy.ImageSpec{Timeout: 4 * time.Hour}}
	for _, reg := range regions {
		p.CopyTo = append(p.CopyTo, policy.CopyTarget{Region: reg, Retention: r})
	}
	return p
}

// source makes an available image of (pol, instance, slot): the image NORMAL in the cloud and
// its run available in history.
func (e *env) source(pol *policy.Policy, instance string, slot time.Time) history.Run {
	e.t.Helper()
	name := fmt.Sprintf("%s-%s-%s", pol.Name, instance, slot.Format("20060102-1504"))
	id := e.cloud.add(accountOf(pol), pol.Region, name, cvm.ImageStateNormal)
	r, claimed, err := e.store.RunClaim(e.ctx, history.RunClaimParams{Policy: pol.Name, InstanceID: instance,
		Region: pol.Region, ScheduledAt: slot, ImageName: name, DaemonID: "test", StartedAt: slot, Status: history.StatusPending})
	require.NoError(e.t, err)
	require.True(e.t, claimed)
	require.NoError(e.t, e.store.RunRequested(e.ctx, r.ID, id, "req-create"))
	require.NoError(e.t, e.store.RunAvailable(e.ctx, r.ID, nil, "", slot.Add(20*time.Minute)))
	r, err = e.store.RunGet(e.ctx, r.ID)
	require.NoError(e.t, err)
	e.src[r.ID] = id
	return r
}

// pass runs one pass and fails the test if it reports an error.
func (e *env) pass() passResult {
	e.t.Helper()
	res := e.c.pass(e.ctx)
	require.NoError(e.t, res.err)
	return res
}

// copies returns the copies of a run by region.
func (e *env) copies(runID int64) map[string]history.Copy {
	e.t.Helper()
	cs, err := e.store.CopiesOfRun(e.ctx, runID)
	require.NoError(e.t, err)
	out := map[string]history.Copy{}
	for _, c := range cs {
		out[c.Region] = c
	}
	return out
}

// events returns the events of the outbox named event, as (region, run id, error code).
func (e *env) events(event string) []string {
	e.t.Helper()
	rows, err := e.store.Pool().Query(e.ctx, `SELECT detail->>'region', run_id, COALESCE(error_code, '')
FROM notifications WHERE event = $1 ORDER BY id`, event)
	require.NoError(e.t, err)
	defer rows.Close()
	var out []string
	for rows.Next() {
		var region, code string
		var run int64
		require.NoError(e.t, rows.Scan(&region, &run, &code))
		out = append(out, fmt.Sprintf("%s/%d/%s", region, run, code))
	}
	require.NoError(e.t, rows.Err())
	return out
}

func syncRegions(calls []fakeCall) [][]string {
	out := make([][]string, len(calls))
	for i, c := range calls {
		out[i] = c.sync.DestinationRegions
	}
	return out
}
