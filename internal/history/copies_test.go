package history_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

const (
	shanghai  = "ap-shanghai"
	singapore = "ap-singapore"
)

var copyWants = []history.CopyWant{{Policy: "web", Regions: []string{singapore, shanghai}}}

// due returns CopiesDue as run id → regions.
func due(t *testing.T, s *history.Store, wants []history.CopyWant) map[int64][]string {
	t.Helper()
	ds, err := s.CopiesDue(context.Background(), wants, 0)
	require.NoError(t, err)
	out := map[int64][]string{}
	for _, d := range ds {
		require.Equal(t, history.StatusAvailable, d.Run.Status)
		require.Equal(t, "default", d.Account)
		out[d.Run.ID] = d.Regions
	}
	return out
}

// copyEvents returns the copy events of the outbox, oldest first, with their payloads.
func copyEvents(t *testing.T, s *history.Store) []map[string]any {
	t.Helper()
	rows, err := s.Pool().Query(context.Background(), `SELECT payload FROM notifications
WHERE event LIKE 'copy_%' ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	var out []map[string]any
	for rows.Next() {
		var raw []byte
		require.NoError(t, rows.Scan(&raw))
		var m map[string]any
		require.NoError(t, json.Unmarshal(raw, &m))
		out = append(out, m)
	}
	require.NoError(t, rows.Err())
	return out
}

func TestCopyLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	const insA, insB = "ins-aaaaaaaa", "ins-bbbbbbbb"
	a0 := available(t, s, "web", insA, slot, "img-a0000000")
	a1 := available(t, s, "web", insA, slot.Add(24*time.Hour), "img-a1000000")
	b0 := available(t, s, "web", insB, slot, "img-b0000000")
	finish(t, s, claim(t, s, "web", insB, slot.Add(24*time.Hour)), history.StatusFailed)
	available(t, s, "db", insA, slot, "img-d0000000") // no copy_to

	// The first copies of a pair are of its newest available image only, in every wanted region.
	require.Equal(t, map[int64][]string{a1.ID: {shanghai, singapore}, b0.ID: {shanghai, singapore}}, due(t, s, copyWants))
	ds, err := s.CopiesDue(ctx, copyWants, 1)
	require.NoError(t, err)
	require.Len(t, ds, 1, "the limit counts runs")
	require.Equal(t, a1.ID, ds[0].Run.ID)

	at := slot.Add(25 * time.Hour)
	rows, attempt, err := s.CopyRequested(ctx, a1.ID, []string{shanghai, singapore}, at)
	require.NoError(t, err)
	require.Equal(t, 1, attempt)
	require.Len(t, rows, 2)
	sh, sg := rows[0], rows[1]
	require.Equal(t, history.Copy{ID: sh.ID, RunID: a1.ID, Account: "default", Policy: "web", InstanceID: insA,
		Slot: a1.ScheduledAt, SourceRegion: "ap-guangzhou", SourceImageID: "img-a1000000", Region: shanghai,
		ImageName: a1.ImageName, Status: history.CopyStatusRequested, Attempts: 1, RequestedAt: at}, sh)
	require.Equal(t, singapore, sg.Region)
	require.Equal(t, map[int64][]string{b0.ID: {shanghai, singapore}}, due(t, s, copyWants))

	// Singapore is refused (busy): it stays requested, to be called again at retry_at. Calling
	// again clears retry_at (the outcome of that call is unknown until answered).
	retry := at.Add(time.Minute)
	require.NoError(t, s.CopyCallFailed(ctx, []int64{sg.ID}, "InvalidImageId.IncorrectState", "not ready", "req-busy", &retry))
	got, err := s.CopyGet(ctx, sg.ID)
	require.NoError(t, err)
	require.Equal(t, history.CopyStatusRequested, got.Status)
	require.Equal(t, retry, *got.RetryAt)
	require.Equal(t, "InvalidImageId.IncorrectState", got.ErrorCode)
	require.NoError(t, s.AttemptInsert(ctx, history.Attempt{RunID: a1.ID, Attempt: attempt, Action: "SyncImages",
		StartedAt: at, RequestID: "req-busy", ErrorCode: "InvalidImageId.IncorrectState"}))
	rows, attempt, err = s.CopyRequested(ctx, a1.ID, []string{singapore}, retry)
	require.NoError(t, err)
	require.Equal(t, 2, attempt)
	require.Nil(t, rows[0].RetryAt)
	require.Equal(t, 2, rows[0].Attempts)
	require.Equal(t, at, rows[0].RequestedAt, "requested_at is the first decision")

	// Answered: syncing with the ids; a second answer with another id is a conflict.
	require.NoError(t, s.CopyAnswered(ctx, sh.ID, "img-sh100000", "req-sync"))
	require.NoError(t, s.CopyAnswered(ctx, sg.ID, "", "req-sync")) // no ImageSet: found by name later
	require.NoError(t, s.CopyAnswered(ctx, sg.ID, "img-sg100000", ""))
	require.ErrorIs(t, s.CopyAnswered(ctx, sh.ID, "img-other000", ""), history.ErrConflict)
	got, err = s.CopyGet(ctx, sg.ID)
	require.NoError(t, err)
	require.Equal(t, history.CopyStatusSyncing, got.Status)
	require.Equal(t, "img-sg100000", got.ImageID)
	require.Equal(t, "req-sync", got.RequestID)
	require.Empty(t, got.ErrorCode, "an answer clears the refusal")
	rows, _, err = s.CopyRequested(ctx, a1.ID, []string{singapore}, retry)
	require.NoError(t, err)
	require.Equal(t, 2, rows[0].Attempts, "a syncing copy is never requested again")
	pending, err := s.CopiesPending(ctx, 0)
	require.NoError(t, err)
	require.Len(t, pending, 2)

	// Shanghai becomes available, Singapore fails: one copy_failed event, no recovery.
	done := at.Add(time.Hour)
	require.NoError(t, s.CopyAvailable(ctx, sh.ID, "", done))
	require.NoError(t, s.CopyAvailable(ctx, sh.ID, "", done), "a replay")
	require.NoError(t, s.CopyFailed(ctx, sg.ID, "Timeout", "still SYNCING after 4h", done))
	require.NoError(t, s.CopyFailed(ctx, sg.ID, "Timeout", "still SYNCING after 4h", done), "a replay")
	require.ErrorIs(t, s.CopyFailed(ctx, sh.ID, "Timeout", "", done), history.ErrConflict)
	require.ErrorIs(t, s.CopyAvailable(ctx, sg.ID, "", done), history.ErrConflict)
	pending, err = s.CopiesPending(ctx, 0)
	require.NoError(t, err)
	require.Empty(t, pending)
	evs := copyEvents(t, s)
	require.Len(t, evs, 1)
	require.Equal(t, "copy_failed", evs[0]["event"])
	require.Equal(t, singapore, evs[0]["region"])
	require.Equal(t, "Timeout", evs[0]["error_code"])
	require.Equal(t, "img-sg100000", evs[0]["image_id"])
	require.Equal(t, "img-a1000000", evs[0]["source_image_id"])
	require.Equal(t, float64(a1.ID), evs[0]["run_id"])
	require.Equal(t, insA, evs[0]["instance_id"])

	// The older run a0 is never due; the next image of the pair is, in both regions.
	a2 := available(t, s, "web", insA, slot.Add(48*time.Hour), "img-a2000000")
	require.Equal(t, map[int64][]string{a2.ID: {shanghai, singapore}, b0.ID: {shanghai, singapore}}, due(t, s, copyWants))
	require.NotContains(t, due(t, s, copyWants), a0.ID)
	// Only the wanted regions are listed.
	require.Equal(t, []string{shanghai}, due(t, s, []history.CopyWant{{Policy: "web", Regions: []string{shanghai}}})[a2.ID])

	// a2 available in Singapore after a1's copy there failed: copy_recovered; in Shanghai: nothing.
	rows, _, err = s.CopyRequested(ctx, a2.ID, []string{shanghai, singapore}, done)
	require.NoError(t, err)
	for _, c := range rows {
		require.NoError(t, s.CopyAnswered(ctx, c.ID, "img-"+c.Region[3:6]+"200000", "req-2"))
		require.NoError(t, s.CopyAvailable(ctx, c.ID, "", done.Add(time.Hour)))
	}
	evs = copyEvents(t, s)
	require.Len(t, evs, 2)
	require.Equal(t, "copy_recovered", evs[1]["event"])
	require.Equal(t, singapore, evs[1]["region"])
	require.Equal(t, "failed", evs[1]["previous_status"])
	require.Equal(t, float64(a2.ID), evs[1]["run_id"])

	// A run with no image to copy, and one that does not exist.
	_, _, err = s.CopyRequested(ctx, claim(t, s, "web", insA, slot.Add(72*time.Hour)).ID, []string{shanghai}, done)
	require.ErrorIs(t, err, history.ErrConflict)
	_, _, err = s.CopyRequested(ctx, 999999, []string{shanghai}, done)
	require.ErrorIs(t, err, history.ErrNotFound)
	// A copy in the source's own region is refused by the schema.
	_, _, err = s.CopyRequested(ctx, b0.ID, []string{"ap-guangzhou"}, done)
	require.Error(t, err)
}

func TestCopyWritesAreFenced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	r := available(t, s, "web", "ins-aaaaaaaa", slot, "img-a0000000")
	rows, _, err := s.CopyRequested(ctx, r.ID, []string{shanghai}, slot)
	require.NoError(t, err)
	stale := s.WithTerm(7) // no lease has term 7
	_, _, err = stale.CopyRequested(ctx, r.ID, []string{singapore}, slot)
	require.ErrorIs(t, err, history.ErrFenced)
	require.ErrorIs(t, stale.CopyAnswered(ctx, rows[0].ID, "img-x", "req"), history.ErrFenced)
	require.ErrorIs(t, stale.CopyAvailable(ctx, rows[0].ID, "img-x", slot), history.ErrFenced)
	require.ErrorIs(t, stale.CopyFailed(ctx, rows[0].ID, "Timeout", "", slot), history.ErrFenced)
	got, err := s.CopiesOfRun(ctx, r.ID)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, history.CopyStatusRequested, got[0].Status)
}

// availableCopy makes the copy of r in region available with image id imageID.
func availableCopy(t *testing.T, s *history.Store, r history.Run, region, imageID string) history.Copy {
	t.Helper()
	ctx := context.Background()
	rows, _, err := s.CopyRequested(ctx, r.ID, []string{region}, r.ScheduledAt.Add(time.Hour))
	require.NoError(t, err)
	require.NoError(t, s.CopyAnswered(ctx, rows[0].ID, imageID, "req-"+imageID))
	require.NoError(t, s.CopyAvailable(ctx, rows[0].ID, "", r.ScheduledAt.Add(2*time.Hour)))
	c, err := s.CopyGet(ctx, rows[0].ID)
	require.NoError(t, err)
	return c
}

func TestCopyDeletions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	r0 := available(t, s, "web", "ins-aaaaaaaa", slot, "img-a0000000")
	r1 := available(t, s, "web", "ins-aaaaaaaa", slot.Add(24*time.Hour), "img-a1000000")
	c0 := availableCopy(t, s, r0, shanghai, "img-s0000000")
	c1 := availableCopy(t, s, r1, shanghai, "img-s1000000")

	ret, err := s.CopiesRetainable(ctx, "web", "", shanghai)
	require.NoError(t, err)
	require.Equal(t, []int64{c1.ID, c0.ID}, []int64{ret[0].ID, ret[1].ID}, "newest slot first")
	ret, err = s.CopiesRetainable(ctx, "web", "", singapore)
	require.NoError(t, err)
	require.Empty(t, ret)

	at := slot.Add(48 * time.Hour)
	id, created, err := s.CopyDeletionInsert(ctx, c0.ID, "keep_last 1: 2nd newest available image", at)
	require.NoError(t, err)
	require.True(t, created)
	again, created, err := s.CopyDeletionInsert(ctx, c0.ID, "other", at)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, id, again)

	d, err := s.DeletionGet(ctx, id)
	require.NoError(t, err)
	require.Equal(t, history.Deletion{ID: id, ImageID: "img-s0000000", ImageName: r0.ImageName, Policy: "web",
		InstanceID: "ins-aaaaaaaa", Region: shanghai, RunID: r0.ID, CopyID: c0.ID,
		Reason: "keep_last 1: 2nd newest available image", RequestedAt: at, Status: history.DeletionPending, Account: "default"}, d)
	open, err := s.CopyDeletionsOpen(ctx, "web", "", shanghai)
	require.NoError(t, err)
	require.Len(t, open, 1)
	srcOpen, err := s.DeletionsOpen(ctx, "web", "")
	require.NoError(t, err)
	require.Empty(t, srcOpen, "source retention never sees a copy's deletion")

	// A failed call leaves the copy as it is; the deleted outcome records deleted_at with it.
	require.NoError(t, s.DeletionFinish(ctx, id, history.DeletionFailed, "req-d1", "InternalError", "later", at))
	ret, err = s.CopiesRetainable(ctx, "web", "", shanghai)
	require.NoError(t, err)
	require.Len(t, ret, 2)
	require.NoError(t, s.DeletionFinish(ctx, id, history.DeletionDeleted, "req-d2", "", "", at.Add(time.Hour)))
	got, err := s.CopyGet(ctx, c0.ID)
	require.NoError(t, err)
	require.Equal(t, at.Add(time.Hour), *got.DeletedAt)
	require.Equal(t, history.CopyStatusAvailable, got.Status)
	ret, err = s.CopiesRetainable(ctx, "web", "", shanghai)
	require.NoError(t, err)
	require.Equal(t, []int64{c1.ID}, []int64{ret[0].ID})
	// The source images are untouched.
	runs, err := s.RunsRetainable(ctx, "web", "")
	require.NoError(t, err)
	require.Len(t, runs, 2)
}

func TestPruneKeepsRunsWithLiveCopies(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	const ins = "ins-aaaaaaaa"
	// Old runs whose source images were deleted: prunable but for their copies.
	withCopy := available(t, s, "web", ins, slot, "img-a0000000")
	decideDeletion(t, s, withCopy, history.DeletionDeleted, slot.Add(pruneDay))
	cp := availableCopy(t, s, withCopy, shanghai, "img-s0000000")
	inFlight := available(t, s, "web", ins, slot.Add(pruneDay), "img-a1000000")
	decideDeletion(t, s, inFlight, history.DeletionDeleted, slot.Add(2*pruneDay))
	_, _, err := s.CopyRequested(ctx, inFlight.ID, []string{shanghai}, slot.Add(pruneDay))
	require.NoError(t, err)
	plain := available(t, s, "web", ins, slot.Add(2*pruneDay), "img-a2000000")
	decideDeletion(t, s, plain, history.DeletionDeleted, slot.Add(3*pruneDay))
	available(t, s, "web", ins, slot.Add(300*pruneDay), "img-a3000000") // the pair's answer, recent

	p := history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow, DaemonID: "daemon-a"}
	got, err := s.HistoryPrune(ctx, p)
	require.NoError(t, err)
	require.Equal(t, int64(1), got.Runs, "only the run without copies")
	_, err = s.RunGet(ctx, plain.ID)
	require.ErrorIs(t, err, history.ErrNotFound)
	_, err = s.RunGet(ctx, withCopy.ID)
	require.NoError(t, err)
	_, err = s.RunGet(ctx, inFlight.ID)
	require.NoError(t, err)

	// Once its copy is deleted (long ago), the run goes with the copy's row, then the copy's deletion.
	del, _, err := s.CopyDeletionInsert(ctx, cp.ID, "keep_last 1", slot.Add(10*pruneDay))
	require.NoError(t, err)
	require.NoError(t, s.DeletionFinish(ctx, del, history.DeletionDeleted, "req", "", "", slot.Add(10*pruneDay)))
	p.DryRun = true
	dry, err := s.HistoryPrune(ctx, p)
	require.NoError(t, err)
	p.DryRun = false
	got, err = s.HistoryPrune(ctx, p)
	require.NoError(t, err)
	require.Equal(t, int64(1), got.Runs)
	require.Equal(t, int64(1), got.Copies)
	require.Equal(t, got.Runs, dry.Runs)
	require.Equal(t, got.Copies, dry.Copies)
	require.Equal(t, got.Deletions, dry.Deletions, "the dry run counts the copy's deletion that goes with its run")
	_, err = s.CopyGet(ctx, cp.ID)
	require.ErrorIs(t, err, history.ErrNotFound)
	_, err = s.DeletionGet(ctx, del)
	require.ErrorIs(t, err, history.ErrNotFound)
	copies, err := s.CopiesOfRun(ctx, inFlight.ID)
	require.NoError(t, err)
	require.Len(t, copies, 1, "a copy being made keeps its run")
}

func TestCopyCoverageView(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	web := history.PolicyRow{Name: "web", Schedule: "0 3 * * *", Timezone: "UTC", Interval: 24 * time.Hour,
		Enabled: true, SourceFile: "a.yaml", SourceLine: 4, LoadedAt: now}
	_, err := s.PoliciesSync(ctx, []history.PolicyRow{web}, now)
	require.NoError(t, err)
	// Shanghai got yesterday's copy 2h after its slot; Singapore's copy failed three days ago.
	r0 := available(t, s, "web", "ins-aaaaaaaa", now.Add(-72*time.Hour), "img-a0000000")
	rows, _, err := s.CopyRequested(ctx, r0.ID, []string{singapore}, now.Add(-71*time.Hour))
	require.NoError(t, err)
	require.NoError(t, s.CopyFailed(ctx, rows[0].ID, "UnsupportedRegion", "", now.Add(-71*time.Hour)))
	r1 := available(t, s, "web", "ins-aaaaaaaa", now.Add(-24*time.Hour), "img-a1000000")
	c := availableCopy(t, s, r1, shanghai, "img-s1000000")

	type row struct {
		Region, ImageID string
		Slot            *time.Time
		Overdue         bool
	}
	q, err := s.Pool().Query(ctx, `SELECT region, COALESCE(last_available_image_id, ''), last_available_slot, overdue
FROM copy_coverage WHERE policy = 'web' ORDER BY region`)
	require.NoError(t, err)
	var got []row
	for q.Next() {
		var r row
		require.NoError(t, q.Scan(&r.Region, &r.ImageID, &r.Slot, &r.Overdue))
		got = append(got, r)
	}
	require.NoError(t, q.Err())
	require.Len(t, got, 2)
	require.Equal(t, row{Region: shanghai, ImageID: c.ImageID, Slot: &r1.ScheduledAt, Overdue: false},
		row{Region: got[0].Region, ImageID: got[0].ImageID, Slot: ptr(got[0].Slot.UTC()), Overdue: got[0].Overdue})
	require.Equal(t, row{Region: singapore, Overdue: true}, got[1], "no copy for 71h, over 1.5 intervals")
}
