package copies

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
)

func TestEachImageIsCopiedOncePerRegion(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai, singapore)
	e := newEnv(t, pol, webPolicy("db", nil)) // db copies nowhere
	a := e.source(pol, "ins-aaaaaaaa", t0.Add(-30*time.Minute))
	b := e.source(pol, "ins-bbbbbbbb", t0.Add(-30*time.Minute))
	e.source(e.cfg.Policy("db"), "ins-aaaaaaaa", t0.Add(-30*time.Minute))

	res := e.pass()
	require.Equal(t, 2, res.calls, "one SyncImages call per run")
	calls := e.cloud.callsOf(cvm.ActionSyncImages)
	require.Len(t, calls, 2)
	for i, r := range []history.Run{a, b} {
		require.Equal(t, guangzhou, calls[i].region)
		require.Equal(t, cvm.SyncImagesInput{ImageID: e.src[r.ID], DestinationRegions: []string{shanghai, singapore},
			ImageName: r.ImageName}, calls[i].sync)
		cs := e.copies(r.ID)
		require.Len(t, cs, 2)
		for _, region := range []string{shanghai, singapore} {
			c := cs[region]
			require.Equal(t, history.CopyStatusSyncing, c.Status)
			require.NotEmpty(t, c.ImageID)
			require.Equal(t, fmt.Sprintf("req-sync-%d", i+1), c.RequestID)
			require.Equal(t, 1, c.Attempts)
		}
		att, err := e.store.AttemptsOfRun(e.ctx, r.ID)
		require.NoError(t, err)
		require.Equal(t, cvm.ActionSyncImages, att[len(att)-1].Action, "the call is audited on its run")
	}
	require.Equal(t, 2, e.paces.count("SyncImages/default"))

	// Passes while the copies sync call nothing more; then they become available.
	require.Zero(t, e.pass().calls)
	e.clk.Advance(10 * time.Minute)
	e.cloud.complete()
	res = e.pass()
	require.Zero(t, res.calls)
	require.Equal(t, 4, res.available)
	for _, r := range []history.Run{a, b} {
		for _, c := range e.copies(r.ID) {
			require.Equal(t, history.CopyStatusAvailable, c.Status)
			require.Equal(t, t0.Add(10*time.Minute), *c.AvailableAt)
		}
	}
	// The next image of a is copied, once; older runs never are.
	e.clk.Advance(day)
	a2 := e.source(pol, "ins-aaaaaaaa", t0.Add(day-30*time.Minute))
	require.Equal(t, 1, e.pass().calls)
	require.Zero(t, e.pass().calls)
	require.Len(t, e.cloud.callsOf(cvm.ActionSyncImages), 3)
	require.Len(t, e.copies(a2.ID), 2)

	// Every log line is JSON with each key once, and the progress is there.
	logs := e.logs.String()
	sc := bufio.NewScanner(strings.NewReader(logs))
	requested := 0
	for sc.Scan() {
		keys := map[string]bool{}
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		_, err := dec.Token()
		require.NoError(t, err)
		for dec.More() {
			k, err := dec.Token()
			require.NoError(t, err)
			require.False(t, keys[k.(string)], "key %s twice in %s", k, sc.Text())
			keys[k.(string)] = true
			var v json.RawMessage
			require.NoError(t, dec.Decode(&v))
		}
		if strings.Contains(sc.Text(), `"copy requested"`) {
			requested++
			require.True(t, keys["elapsed_ms"] && keys["run_id"] && keys["region"] && keys["image_id"] && keys["source_image_id"])
		}
	}
	require.Equal(t, 6, requested)
	require.Contains(t, logs, `"copy available"`)
}

func TestLostAnswerIsResolvedByName(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai, singapore)
	e := newEnv(t, pol)
	r := e.source(pol, "ins-aaaaaaaa", t0)
	// The first call starts both copies but its answer is lost.
	e.cloud.syncHook = func(n int, _ cvm.SyncImagesInput) (error, bool) {
		if n == 1 {
			return apiErr(cvm.ActionSyncImages, cvm.CodeNetworkError, "connection reset"), true
		}
		return nil, false
	}
	require.Equal(t, 1, e.pass().calls)
	require.Len(t, e.cloud.callsOf(cvm.ActionSyncImages), 1, "found by name: never copied twice")
	cs := e.copies(r.ID)
	for _, region := range []string{shanghai, singapore} {
		require.Equal(t, history.CopyStatusSyncing, cs[region].Status)
		ids := e.cloud.inRegion(region)
		require.Equal(t, []string{cs[region].ImageID}, ids)
	}
}

func TestRequestedCopiesAreResolvedOnStart(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai, singapore)
	e := newEnv(t, pol)
	r := e.source(pol, "ins-aaaaaaaa", t0)
	// A copier crashed after recording the request and calling SyncImages for Shanghai alone
	// (Singapore's call never left): the rows say requested, with no id.
	_, _, err := e.store.CopyRequested(e.ctx, r.ID, []string{shanghai, singapore}, t0)
	require.NoError(t, err)
	_, err = e.cloud.client("default").SyncImages(e.ctx, guangzhou, cvm.SyncImagesInput{ImageID: e.src[r.ID],
		DestinationRegions: []string{shanghai}, ImageName: r.ImageName})
	require.NoError(t, err)
	// A foreign image whose name merely contains the copy's is not it.
	e.cloud.add("default", singapore, r.ImageName+"-manual", cvm.ImageStateNormal)

	res := e.pass()
	require.Equal(t, 1, res.calls)
	calls := e.cloud.callsOf(cvm.ActionSyncImages)
	require.Len(t, calls, 2)
	require.Equal(t, []string{singapore}, calls[1].sync.DestinationRegions, "only the copy not found by name is requested again")
	cs := e.copies(r.ID)
	require.Equal(t, e.cloud.inRegion(shanghai), []string{cs[shanghai].ImageID})
	require.Equal(t, history.CopyStatusSyncing, cs[singapore].Status)
	require.Equal(t, 2, cs[singapore].Attempts)
	require.Equal(t, 1, cs[shanghai].Attempts)
	require.Empty(t, cs[shanghai].RequestID, "found by name: no RequestId")
}

func TestRefusedRegionIsIsolated(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, message string
		calls         [][]string
	}{
		{"named in the message", "region ap-moon is not supported", [][]string{{"ap-moon", shanghai}, {shanghai}}},
		{"not named", "unsupported region", [][]string{{"ap-moon", shanghai}, {"ap-moon"}, {shanghai}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pol := webPolicy("web", nil, "ap-moon", shanghai)
			e := newEnv(t, pol)
			r := e.source(pol, "ins-aaaaaaaa", t0)
			e.cloud.syncHook = func(_ int, in cvm.SyncImagesInput) (error, bool) {
				for _, reg := range in.DestinationRegions {
					if reg == "ap-moon" {
						return apiErr(cvm.ActionSyncImages, "InvalidRegion.Unavailable", tc.message), false
					}
				}
				return nil, false
			}
			e.pass()
			require.Equal(t, tc.calls, syncRegions(e.cloud.callsOf(cvm.ActionSyncImages)))
			cs := e.copies(r.ID)
			require.Equal(t, history.CopyStatusFailed, cs["ap-moon"].Status)
			require.Equal(t, "InvalidRegion.Unavailable", cs["ap-moon"].ErrorCode)
			require.Equal(t, history.CopyStatusSyncing, cs[shanghai].Status)
			require.Equal(t, []string{fmt.Sprintf("ap-moon/%d/InvalidRegion.Unavailable", r.ID)}, e.events(history.EventCopyFailed))
			// The failed region is never tried again for this run.
			e.pass()
			require.Len(t, e.cloud.callsOf(cvm.ActionSyncImages), len(tc.calls))
		})
	}
}

func TestBusySourceIsRetriedLater(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai)
	e := newEnv(t, pol)
	r := e.source(pol, "ins-aaaaaaaa", t0)
	e.cloud.setState(e.src[r.ID], "SYNCING") // the source is held by another operation
	res := e.pass()
	require.Equal(t, 1, res.calls)
	c := e.copies(r.ID)[shanghai]
	require.Equal(t, history.CopyStatusRequested, c.Status)
	require.Equal(t, "InvalidImageId.IncorrectState", c.ErrorCode)
	require.NotNil(t, c.RetryAt)
	require.Equal(t, *c.RetryAt, res.nextRetry)
	require.True(t, c.RetryAt.After(t0), "busy waits the busy backoff (30s to 5m)")
	require.Equal(t, res.nextRetry.Sub(t0), e.c.delay(res, 0), "the next pass comes when the retry is due")

	// Before retry_at: nothing is called, and no name lookup is needed (the API refused).
	require.Zero(t, e.pass().calls)
	require.Empty(t, e.cloud.callsOf(cvm.ActionDescribeImages))
	e.clk.Advance(c.RetryAt.Sub(t0))
	require.Equal(t, 1, e.pass().calls)
	require.Equal(t, history.CopyStatusRequested, e.copies(r.ID)[shanghai].Status)

	// The source is ready: the next retry copies.
	e.cloud.setState(e.src[r.ID], cvm.ImageStateNormal)
	e.clk.Advance(10 * time.Minute)
	require.Equal(t, 1, e.pass().calls)
	c = e.copies(r.ID)[shanghai]
	require.Equal(t, history.CopyStatusSyncing, c.Status)
	require.Equal(t, 3, c.Attempts)
	require.Empty(t, c.ErrorCode)
}

func TestBusyUntilTheTimeoutFails(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai)
	pol.Image.Timeout = time.Hour
	e := newEnv(t, pol)
	r := e.source(pol, "ins-aaaaaaaa", t0)
	e.cloud.setState(e.src[r.ID], "SYNCING")
	for e.clk.Now().Sub(t0) <= time.Hour {
		e.pass()
		e.clk.Advance(5 * time.Minute)
	}
	e.pass()
	c := e.copies(r.ID)[shanghai]
	require.Equal(t, history.CopyStatusFailed, c.Status)
	require.Equal(t, CodeTimeout, c.ErrorCode)
	require.Contains(t, c.ErrorMessage, "InvalidImageId.IncorrectState")
	require.Equal(t, []string{fmt.Sprintf("%s/%d/%s", shanghai, r.ID, CodeTimeout)}, e.events(history.EventCopyFailed))
	n := len(e.cloud.callsOf(cvm.ActionSyncImages))
	require.GreaterOrEqual(t, n, 2)
	e.clk.Advance(time.Hour)
	e.pass()
	require.Len(t, e.cloud.callsOf(cvm.ActionSyncImages), n, "a failed copy is not called again")
}

func TestTransientErrorBacksOff(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai)
	e := newEnv(t, pol)
	r := e.source(pol, "ins-aaaaaaaa", t0)
	e.cloud.syncHook = func(n int, _ cvm.SyncImagesInput) (error, bool) {
		if n <= 2 {
			return apiErr(cvm.ActionSyncImages, "InternalError", "try later"), false
		}
		return nil, false
	}
	res := e.pass()
	require.Equal(t, 1, res.calls)
	first := res.nextRetry.Sub(t0)
	require.True(t, first >= 100*time.Millisecond && first <= 200*time.Millisecond, "transient: from 200ms with jitter, got %s", first)
	e.clk.Advance(first)
	res = e.pass()
	require.Equal(t, 1, res.calls)
	second := res.nextRetry.Sub(e.clk.Now())
	require.True(t, second >= 200*time.Millisecond && second <= 400*time.Millisecond, "doubled, got %s", second)
	e.clk.Advance(second)
	require.Equal(t, 1, e.pass().calls)
	require.Equal(t, history.CopyStatusSyncing, e.copies(r.ID)[shanghai].Status)
}

func TestQuotaGatePrunesExpiredCopiesThenRetriesOnce(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai)
	e := newEnv(t, pol)
	// Three nights copied without retention.
	var runs []history.Run
	for i := range 3 {
		runs = append(runs, e.source(pol, "ins-aaaaaaaa", t0.Add(time.Duration(i)*day)))
		e.pass()
		e.cloud.complete()
		e.pass()
	}
	foreign := e.cloud.add("default", shanghai, runs[0].ImageName+"-by-hand", cvm.ImageStateNormal)
	require.Len(t, e.cloud.inRegion(shanghai), 4)
	// Shanghai is full; keep_last 1 is set now.
	e.cloud.quota = map[string]int{shanghai: 4}
	keep1 := &policy.Retention{KeepLast: 1, MinKeep: 1}
	pol.CopyTo[0].Retention = keep1
	e.clk.Advance(3 * day)
	r := e.source(pol, "ins-aaaaaaaa", t0.Add(3*day))
	before := len(e.cloud.callsOf(cvm.ActionSyncImages))
	res := e.pass()
	require.Equal(t, 2, res.calls, "the call, the gate, one more call")
	require.Equal(t, 2, res.deleted)
	require.Len(t, e.cloud.callsOf(cvm.ActionSyncImages), before+2)
	require.Equal(t, history.CopyStatusSyncing, e.copies(r.ID)[shanghai].Status)
	left := e.cloud.inRegion(shanghai)
	require.Contains(t, left, foreign, "an image not imager's is never touched")
	require.Contains(t, left, e.copies(runs[2].ID)[shanghai].ImageID, "the newest copy is kept")
	require.Len(t, left, 3)
	for _, run := range runs[:2] {
		c := e.copies(run.ID)[shanghai]
		require.NotNil(t, c.DeletedAt)
		require.NotContains(t, left, c.ImageID)
	}
}

func TestQuotaWithoutRoomFails(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai)
	e := newEnv(t, pol)
	e.cloud.add("default", shanghai, "someone-elses", cvm.ImageStateNormal)
	e.cloud.quota = map[string]int{shanghai: 1}
	r := e.source(pol, "ins-aaaaaaaa", t0)
	require.Equal(t, 2, e.pass().calls, "retried once after the gate")
	c := e.copies(r.ID)[shanghai]
	require.Equal(t, history.CopyStatusFailed, c.Status)
	require.Equal(t, "ImageQuotaLimitExceeded", c.ErrorCode)
	require.Equal(t, []string{fmt.Sprintf("%s/%d/ImageQuotaLimitExceeded", shanghai, r.ID)}, e.events(history.EventCopyFailed))
	require.Empty(t, e.cloud.callsOf(cvm.ActionDeleteImages))
}

func TestTracking(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai)
	pol.Image.Timeout = time.Hour
	e := newEnv(t, pol)
	ok := e.source(pol, "ins-aaaaaaaa", t0)
	broken := e.source(pol, "ins-bbbbbbbb", t0)
	gone := e.source(pol, "ins-cccccccc", t0)
	slow := e.source(pol, "ins-dddddddd", t0)
	e.cloud.omitIDs = true // the answers name no copy: each is found by name
	require.Equal(t, 4, e.pass().calls)
	e.cloud.omitIDs = false
	e.pass() // finds the ids by name
	id := func(r history.Run) string { return e.copies(r.ID)[shanghai].ImageID }
	for _, r := range []history.Run{ok, broken, gone, slow} {
		require.NotEmpty(t, id(r))
	}
	e.clk.Advance(20 * time.Minute)
	e.cloud.setState(id(ok), cvm.ImageStateNormal)
	e.cloud.setState(id(broken), "CREATEFAILED")
	e.cloud.mu.Lock()
	delete(e.cloud.images, id(gone))
	e.cloud.mu.Unlock()
	res := e.pass()
	require.Equal(t, 1, res.available)
	require.Equal(t, 1, res.failed)
	require.Equal(t, history.CopyStatusAvailable, e.copies(ok.ID)[shanghai].Status)
	require.Equal(t, t0.Add(20*time.Minute), *e.copies(ok.ID)[shanghai].AvailableAt)
	require.Equal(t, "CREATEFAILED", e.copies(broken.ID)[shanghai].ErrorCode)
	e.pass()
	require.Equal(t, history.CopyStatusSyncing, e.copies(gone.ID)[shanghai].Status, "two passes without it")
	e.pass()
	require.Equal(t, CodeImageNotFound, e.copies(gone.ID)[shanghai].ErrorCode)

	e.clk.Advance(40 * time.Minute) // exactly the timeout: not past it
	e.pass()
	require.Equal(t, history.CopyStatusSyncing, e.copies(slow.ID)[shanghai].Status)
	e.clk.Advance(time.Second)
	e.pass()
	c := e.copies(slow.ID)[shanghai]
	require.Equal(t, CodeTimeout, c.ErrorCode)
	require.Contains(t, c.ErrorMessage, "SYNCING")
	require.Len(t, e.events(history.EventCopyFailed), 3)
}

func TestTrackingBatchesByID(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai)
	e := newEnv(t, pol)
	for i := range 101 {
		e.source(pol, fmt.Sprintf("ins-%08d", i), t0)
	}
	require.Equal(t, 101, e.pass().calls)
	describes := len(e.cloud.callsOf(cvm.ActionDescribeImages))
	e.cloud.complete()
	require.Equal(t, 101, e.pass().available)
	calls := e.cloud.callsOf(cvm.ActionDescribeImages)[describes:]
	require.Len(t, calls, 2, "100 ids per call")
	require.Len(t, calls[0].describe.ImageIDs, 100)
	require.Len(t, calls[1].describe.ImageIDs, 1)
	require.Equal(t, len(e.cloud.callsOf(cvm.ActionDescribeImages)), e.paces.count("DescribeImages/default"))
}

func TestRetentionKeepsKeepLastOfImagersCopies(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", &policy.Retention{KeepLast: 2, MinKeep: 1}, shanghai)
	e := newEnv(t, pol)
	var runs []history.Run
	var foreign []string
	for i := range 5 {
		runs = append(runs, e.source(pol, "ins-aaaaaaaa", t0.Add(time.Duration(i)*day)))
		e.pass()
		e.cloud.complete()
		e.pass()
		if i == 0 {
			// Images imager did not make, named like its copies: never touched.
			foreign = append(foreign,
				e.cloud.add("default", shanghai, runs[0].ImageName, cvm.ImageStateNormal), // the same name, another id
				e.cloud.add("default", shanghai, runs[0].ImageName+"-old", cvm.ImageStateNormal))
		}
		e.clk.Advance(day)
	}
	var kept []string
	for i, r := range runs {
		c := e.copies(r.ID)[shanghai]
		if i >= 3 {
			require.Nil(t, c.DeletedAt, "run %d", i)
			kept = append(kept, c.ImageID)
			continue
		}
		require.NotNil(t, c.DeletedAt, "run %d", i)
	}
	left := e.cloud.inRegion(shanghai)
	require.ElementsMatch(t, append(kept, foreign...), left)
	// Every deletion was of a copy, recorded with its attempt; the sources are all there.
	deleted := e.cloud.callsOf(cvm.ActionDeleteImages)
	require.Len(t, deleted, 3)
	for _, d := range deleted {
		require.NotContains(t, foreign, d.deleted[0])
	}
	for _, r := range runs {
		require.Contains(t, e.cloud.inRegion(guangzhou), e.src[r.ID])
	}
	open, err := e.store.CopyDeletionsOpen(e.ctx, "web", "", shanghai)
	require.NoError(t, err)
	require.Empty(t, open)
	var n int
	require.NoError(t, e.store.Pool().QueryRow(e.ctx, `SELECT count(*) FROM image_deletions d
JOIN image_attempts a ON a.deletion_id = d.id
WHERE d.copy_id IS NOT NULL AND d.status = 'deleted' AND d.region = $1 AND a.action = 'DeleteImages' AND a.request_id = 'req-delete'`,
		shanghai).Scan(&n))
	require.Equal(t, 3, n)

	// A copy renamed by hand is no longer weighed: not deleted, not counted as kept.
	e.cloud.mu.Lock()
	e.cloud.images[kept[0]].Name = "renamed"
	e.cloud.mu.Unlock()
	e.source(pol, "ins-aaaaaaaa", t0.Add(5*day))
	e.pass()
	e.cloud.complete()
	e.pass()
	require.Contains(t, e.cloud.inRegion(shanghai), kept[0])
	require.Contains(t, e.cloud.inRegion(shanghai), kept[1], "with the renamed one left out, two remain to keep")
}

func TestPacesArePerAccount(t *testing.T) {
	t.Parallel()
	web := webPolicy("web", nil, shanghai)
	other := webPolicy("other", nil, shanghai)
	other.Account = "finance"
	e := newEnv(t, web, other)
	e.source(web, "ins-aaaaaaaa", t0)
	// Runs carry their account from history (image_runs.account); the finance run is written so.
	r := e.source(other, "ins-bbbbbbbb", t0)
	_, err := e.store.Pool().Exec(e.ctx, `UPDATE image_runs SET account = 'finance' WHERE id = $1`, r.ID)
	require.NoError(t, err)
	e.cloud.mu.Lock()
	e.cloud.images[e.src[r.ID]].account = "finance"
	e.cloud.mu.Unlock()

	require.Equal(t, 2, e.pass().calls)
	for _, c := range e.cloud.callsOf(cvm.ActionSyncImages) {
		require.Equal(t, 1, e.paces.count("SyncImages/"+c.account), c.account)
	}
	require.Equal(t, history.CopyStatusSyncing, e.copies(r.ID)[shanghai].Status)
	require.Equal(t, "finance", e.copies(r.ID)[shanghai].Account)

	// Left to itself, the copier keeps one pace of its own per account and action.
	c := New(Options{History: e.store, CVM: e.cloud.client, Config: func() *policy.Config { return e.cfg }})
	a1, a2, b := c.syncPace("default"), c.syncPace("default"), c.syncPace("finance")
	require.IsType(t, &pace.Limiter{}, a1)
	require.Same(t, a1.(*pace.Limiter), a2.(*pace.Limiter))
	require.NotSame(t, a1.(*pace.Limiter), b.(*pace.Limiter))
	require.NotSame(t, a1.(*pace.Limiter), c.descPace("default").(*pace.Limiter))
}

func TestStartStopKick(t *testing.T) {
	t.Parallel()
	pol := webPolicy("web", nil, shanghai)
	e := newEnv(t, pol)
	passes := make(chan passResult, 10)
	e.c.afterPass = func(res passResult, _ time.Duration) { passes <- res }
	require.NoError(t, e.c.Start(e.ctx))
	t.Cleanup(e.c.Stop)
	next := func() passResult {
		select {
		case p := <-passes:
			return p
		case <-e.ctx.Done():
			t.Fatal("no pass")
			return passResult{}
		}
	}
	require.Zero(t, next().calls)
	e.source(pol, "ins-aaaaaaaa", t0)
	e.c.Kick()
	require.Equal(t, 1, next().calls)
	e.c.Stop()
	e.c.Stop()
	require.ErrorContains(t, e.c.Start(e.ctx), "already started")
}
