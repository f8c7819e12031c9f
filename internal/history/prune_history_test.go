package history_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

const pruneDay = 24 * time.Hour

// The prune tests measure ages from pruneNow with a keep of 400 days: the cutoff is slot + 100
// days, so runs of the first hundred days after slot are old and those after it recent.
var (
	pruneNow    = slot.Add(500 * pruneDay)
	pruneKeep   = 400 * pruneDay
	pruneCutoff = pruneNow.Add(-pruneKeep)
)

// pruneWorld is a history with every kind of old and recent row HistoryPrune weighs.
type pruneWorld struct {
	// pruned: old and finished, no answer, image deleted or none.
	a0Failed, a1DeletedImage, a3Missed, b0DeletedImage history.Run
	// kept.
	a2ImageExists, a4LastAvailable, a5Recent, a6Pending, a7Requested, b1Last, d0LastOfPair, d1LastRun history.Run
	// deletions: pruned (a1, b0), kept (a4: its run stays; a2: pending; old failed one).
	delA1, delB0, delA4, delA2Pending, delFailed int64
	// coverage days written by hand (no runs): 3 old, 2 recent.
}

func attempt(t *testing.T, s *history.Store, a history.Attempt) {
	t.Helper()
	a.StartedAt = slot
	require.NoError(t, s.AttemptInsert(context.Background(), a))
}

// finish ends a claimed run in a terminal status.
func finish(t *testing.T, s *history.Store, r history.Run, status history.Status) history.Run {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: r.ID, Status: status, ErrorCode: "InternalError",
		ErrorMessage: "test", FinishedAt: r.ScheduledAt.Add(time.Minute)}))
	r, err := s.RunGet(ctx, r.ID)
	require.NoError(t, err)
	return r
}

func newPruneWorld(t *testing.T, s *history.Store) pruneWorld {
	t.Helper()
	ctx := context.Background()
	var w pruneWorld
	const insA, insB = "ins-aaaaaaaa", "ins-bbbbbbbb"

	w.a0Failed = finish(t, s, claim(t, s, "web", insA, slot), history.StatusFailed)
	attempt(t, s, history.Attempt{RunID: w.a0Failed.ID, Attempt: 1, Action: "CreateImage", ErrorCode: "InternalError"})
	attempt(t, s, history.Attempt{RunID: w.a0Failed.ID, Attempt: 2, Action: "CreateImage", ErrorCode: "InternalError"})
	w.a1DeletedImage = available(t, s, "web", insA, slot.Add(pruneDay), "img-a1000000")
	attempt(t, s, history.Attempt{RunID: w.a1DeletedImage.ID, Attempt: 1, Action: "CreateImage", RequestID: "req-a1"})
	w.delA1 = decideDeletion(t, s, w.a1DeletedImage, history.DeletionDeleted, slot.Add(2*pruneDay))
	attempt(t, s, history.Attempt{DeletionID: w.delA1, Attempt: 1, Action: "DeleteImages", RequestID: "req-del-a1"})
	w.a2ImageExists = available(t, s, "web", insA, slot.Add(2*pruneDay), "img-a2000000")
	attempt(t, s, history.Attempt{RunID: w.a2ImageExists.ID, Attempt: 1, Action: "CreateImage", RequestID: "req-a2"})
	w.delA2Pending = decideDeletion(t, s, w.a2ImageExists, history.DeletionPending, slot.Add(3*pruneDay))
	w.a3Missed = finish(t, s, claim(t, s, "web", insA, slot.Add(3*pruneDay)), history.StatusMissed)
	w.a6Pending = claim(t, s, "web", insA, slot.Add(10*pruneDay))
	w.a7Requested = claim(t, s, "web", insA, slot.Add(11*pruneDay))
	require.NoError(t, s.RunRequested(ctx, w.a7Requested.ID, "img-a7000000", "req-a7"))
	// The newest available run of (web, ins-a) is old and its image was deleted: still an answer.
	w.a4LastAvailable = available(t, s, "web", insA, slot.Add(50*pruneDay), "img-a4000000")
	w.delA4 = decideDeletion(t, s, w.a4LastAvailable, history.DeletionDeleted, slot.Add(60*pruneDay))
	w.a5Recent = finish(t, s, claim(t, s, "web", insA, slot.Add(200*pruneDay)), history.StatusFailed)
	attempt(t, s, history.Attempt{RunID: w.a5Recent.ID, Attempt: 1, Action: "CreateImage", ErrorCode: "InternalError"})

	w.b0DeletedImage = available(t, s, "web", insB, slot, "img-b0000000")
	w.delB0 = decideDeletion(t, s, w.b0DeletedImage, history.DeletionDeleted, slot.Add(pruneDay))
	w.b1Last = available(t, s, "web", insB, slot.Add(5*pruneDay), "img-b1000000")
	decideDeletion(t, s, w.b1Last, history.DeletionDeleted, slot.Add(6*pruneDay))
	// Another policy on ins-b: its only run is the answer of (db, ins-b), though not ins-b's
	// latest image (b1 is newer).
	w.d0LastOfPair = available(t, s, "db", insB, slot.Add(pruneDay), "img-d0000000")
	decideDeletion(t, s, w.d0LastOfPair, history.DeletionDeleted, slot.Add(2*pruneDay))
	// A later failed run of (db, ins-b): the pair's last run, so d0 stays only as its last
	// available run.
	w.d1LastRun = finish(t, s, claim(t, s, "db", insB, slot.Add(3*pruneDay)), history.StatusFailed)
	// A deletion that failed long ago is retried at the next pass: it stays, as does its image's run.
	old := available(t, s, "web", "ins-cccccccc", slot, "img-c0000000")
	w.delFailed = decideDeletion(t, s, old, history.DeletionFailed, slot.Add(pruneDay))

	// Coverage days of a policy without runs: three old, two recent (the cutoff's day is kept).
	for _, d := range []time.Time{slot, slot.Add(pruneDay), pruneCutoff.Add(-pruneDay), pruneCutoff, pruneNow} {
		_, err := s.Pool().Exec(ctx, `INSERT INTO coverage_days (policy, instance_id, day, status, run_id, runs)
VALUES ('days', 'ins-dddddddd', $1::date, 'available', 0, 1)`, d.UTC().Format(time.DateOnly))
		require.NoError(t, err)
	}
	return w
}

// tableCounts counts the rows of every table HistoryPrune prunes.
func tableCounts(t *testing.T, s *history.Store) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, table := range []string{"image_runs", "image_attempts", "image_deletions", "coverage_days", "replicas", "fire_requests",
		"coverage_state", "latest_images"} {
		var n int64
		require.NoError(t, s.Pool().QueryRow(context.Background(), `SELECT count(*) FROM `+table).Scan(&n))
		out[table] = n
	}
	return out
}

func runExists(t *testing.T, s *history.Store, id int64) bool {
	t.Helper()
	_, err := s.RunGet(context.Background(), id)
	if err != nil {
		require.ErrorIs(t, err, history.ErrNotFound)
		return false
	}
	return true
}

func deletionExists(t *testing.T, s *history.Store, id int64) bool {
	t.Helper()
	_, err := s.DeletionGet(context.Background(), id)
	if err != nil {
		require.ErrorIs(t, err, history.ErrNotFound)
		return false
	}
	return true
}

func oldCoverageDays(t *testing.T, s *history.Store) int64 {
	t.Helper()
	var n int64
	require.NoError(t, s.Pool().QueryRow(context.Background(), `SELECT count(*) FROM coverage_days WHERE day < $1::date`,
		pruneCutoff.UTC().Format(time.DateOnly)).Scan(&n))
	return n
}

func TestHistoryPruneRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	w := newPruneWorld(t, s)
	oldDays := oldCoverageDays(t, s)
	require.GreaterOrEqual(t, oldDays, int64(3), "at least the three old days written by hand")
	latestBefore, err := s.Pool().Query(ctx, `SELECT instance_id, run_id FROM latest_images ORDER BY instance_id`)
	require.NoError(t, err)
	type latest struct {
		Instance string
		RunID    int64
	}
	var latestRows []latest
	for latestBefore.Next() {
		var l latest
		require.NoError(t, latestBefore.Scan(&l.Instance, &l.RunID))
		latestRows = append(latestRows, l)
	}
	require.NoError(t, latestBefore.Err())

	got, err := s.HistoryPrune(ctx, history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow, DaemonID: "me"})
	require.NoError(t, err)
	require.Equal(t, history.HistoryPruned{Runs: 4, RunAttempts: 3, Deletions: 2, DeletionAttempts: 1, CoverageDays: oldDays}, got)

	for name, r := range map[string]history.Run{"a0 failed": w.a0Failed, "a1 image deleted": w.a1DeletedImage,
		"a3 missed": w.a3Missed, "b0 image deleted": w.b0DeletedImage} {
		require.False(t, runExists(t, s, r.ID), "%s should be pruned", name)
	}
	for name, r := range map[string]history.Run{"a2 image still exists": w.a2ImageExists, "a4 last available of its pair": w.a4LastAvailable,
		"a5 recent": w.a5Recent, "a6 pending": w.a6Pending, "a7 requested": w.a7Requested, "b1 last of its pair and instance": w.b1Last,
		"d0 last available of its pair": w.d0LastOfPair, "d1 last run of its pair": w.d1LastRun} {
		require.True(t, runExists(t, s, r.ID), "%s should be kept", name)
	}
	var attempts []int64
	rows, err := s.Pool().Query(ctx, `SELECT COALESCE(run_id, -deletion_id) FROM image_attempts ORDER BY id`)
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		require.NoError(t, rows.Scan(&id))
		attempts = append(attempts, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []int64{w.a2ImageExists.ID, w.a5Recent.ID}, attempts, "only the attempts of kept runs stay")

	require.False(t, deletionExists(t, s, w.delA1))
	require.False(t, deletionExists(t, s, w.delB0))
	require.True(t, deletionExists(t, s, w.delA4), "its run is kept: the deletion says the image is gone")
	require.True(t, deletionExists(t, s, w.delA2Pending), "pending: retention still has to delete the image")
	require.True(t, deletionExists(t, s, w.delFailed), "failed: retried at the next retention pass")
	require.Zero(t, oldCoverageDays(t, s))
	var recentDays int64
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT count(*) FROM coverage_days WHERE policy = 'days'`).Scan(&recentDays))
	require.Equal(t, int64(2), recentDays, "the cutoff's day and today stay")

	// The answers are untouched: the image to restore each instance from, and retention's view.
	for _, l := range latestRows {
		var runID int64
		require.NoError(t, s.Pool().QueryRow(ctx, `SELECT run_id FROM latest_images WHERE instance_id = $1`, l.Instance).Scan(&runID))
		require.Equal(t, l.RunID, runID, "latest image of %s", l.Instance)
	}
	retainable, err := s.RunsRetainable(ctx, "web", "ins-aaaaaaaa")
	require.NoError(t, err)
	require.Equal(t, []int64{w.a2ImageExists.ID}, runIDs(retainable), "a pruned run never hands its image back to retention")

	// A second prune finds nothing left to do.
	got, err = s.HistoryPrune(ctx, history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow, DaemonID: "me"})
	require.NoError(t, err)
	require.Equal(t, history.HistoryPruned{}, got)

	// Once the cutoff passes the newer slot of (web, ins-a), a4 is still its last available run,
	// and b1 still the last of its pair: answers are kept however old.
	got, err = s.HistoryPrune(ctx, history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow.Add(300 * pruneDay), DaemonID: "me"})
	require.NoError(t, err)
	require.True(t, runExists(t, s, w.a4LastAvailable.ID))
	require.True(t, runExists(t, s, w.b1Last.ID))
	require.True(t, runExists(t, s, w.a5Recent.ID), "the last run of (web, ins-a) is an answer too")
	require.True(t, runExists(t, s, w.a2ImageExists.ID))
	require.True(t, runExists(t, s, w.a6Pending.ID))
	var days int64
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT count(*) FROM coverage_days WHERE policy = 'days'`).Scan(&days))
	require.Equal(t, int64(1), days, "of the hand-written days only today's stays")
	require.GreaterOrEqual(t, got.CoverageDays, int64(1))
}

func TestHistoryPruneDryRunCountsWhatPruneDeletes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	newPruneWorld(t, s)
	_, err := s.Pool().Exec(ctx, `INSERT INTO replicas (daemon_id, host, pid, role, started_at, seen_at)
VALUES ('gone', 'h', 1, 'stopped', $1, $1), ('me', 'h', 2, 'leader', $1, $1), ('live', 'h', 3, 'standby', $1, $2)`,
		pruneNow.Add(-3*pruneDay), pruneNow.Add(-time.Hour))
	require.NoError(t, err)
	before := tableCounts(t, s)

	p := history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow, DaemonID: "me", DryRun: true}
	dry, err := s.HistoryPrune(ctx, p)
	require.NoError(t, err)
	require.Equal(t, history.HistoryPruned{Runs: 4, RunAttempts: 3, Deletions: 2, DeletionAttempts: 1,
		CoverageDays: oldCoverageDays(t, s), Replicas: 1}, dry)
	require.Equal(t, before, tableCounts(t, s), "a dry run deletes nothing")

	p.DryRun = false
	got, err := s.HistoryPrune(ctx, p)
	require.NoError(t, err)
	require.Equal(t, dry, got, "the prune deletes what the dry run counted")
	after := tableCounts(t, s)
	require.Equal(t, before["image_runs"]-got.Runs, after["image_runs"])
	require.Equal(t, before["image_attempts"]-got.RunAttempts-got.DeletionAttempts, after["image_attempts"])
	require.Equal(t, before["image_deletions"]-got.Deletions, after["image_deletions"])
	require.Equal(t, before["replicas"]-got.Replicas, after["replicas"])

	p.DryRun = true
	dry, err = s.HistoryPrune(ctx, p)
	require.NoError(t, err)
	require.Equal(t, history.HistoryPruned{}, dry, "after the prune a dry run finds nothing")
}

func TestHistoryPruneReplicasAndFireRequests(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	// Seen times are the database clock's; the test writes them relative to its own now.
	_, err := s.Pool().Exec(ctx, `INSERT INTO replicas (daemon_id, host, pid, role, started_at, seen_at) VALUES
	('stopped-2d-ago', 'h', 1, 'stopped', $1::timestamptz, $1::timestamptz + interval '1 hour'),
	('crashed-25h-ago', 'h', 2, 'leader', $1::timestamptz, $2::timestamptz - interval '25 hours'),
	('standby-23h-ago', 'h', 3, 'standby', $1::timestamptz, $2::timestamptz - interval '23 hours'),
	('me', 'h', 4, 'leader', $1::timestamptz, $1::timestamptz)`, pruneNow.Add(-2*pruneDay), pruneNow)
	require.NoError(t, err)
	ids := map[string]int64{}
	for _, name := range []string{"done-2d", "failed-2d", "done-1h", "taken-2d", "pending-2d"} {
		id, err := s.FireRequestInsert(ctx, history.FireRequest{Policy: "web", Slot: slot, RequestedBy: name})
		require.NoError(t, err)
		ids[name] = id
	}
	_, err = s.Pool().Exec(ctx, `UPDATE fire_requests SET
	status = CASE requested_by WHEN 'done-2d' THEN 'done' WHEN 'done-1h' THEN 'done' WHEN 'failed-2d' THEN 'failed'
		WHEN 'taken-2d' THEN 'taken' ELSE 'pending' END,
	finished_at = CASE WHEN requested_by IN ('done-2d', 'failed-2d') THEN $1::timestamptz
		WHEN requested_by = 'done-1h' THEN $2::timestamptz END,
	error_message = CASE requested_by WHEN 'failed-2d' THEN 'no such policy' END,
	requested_at = $1::timestamptz - interval '1 minute'`, pruneNow.Add(-2*pruneDay), pruneNow.Add(-time.Hour))
	require.NoError(t, err)

	got, err := s.HistoryPrune(ctx, history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow, DaemonID: "me"})
	require.NoError(t, err)
	require.Equal(t, history.HistoryPruned{Replicas: 2, FireRequests: 2}, got)

	var replicas []string
	rows, err := s.Pool().Query(ctx, `SELECT daemon_id FROM replicas ORDER BY daemon_id`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		replicas = append(replicas, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"me", "standby-23h-ago"}, replicas, "the caller's own row stays, however old it looks")
	for name, id := range ids {
		_, err := s.FireRequestGet(ctx, id)
		if name == "done-2d" || name == "failed-2d" {
			require.ErrorIs(t, err, history.ErrNotFound, name)
		} else {
			require.NoError(t, err, "%s stays", name)
		}
	}
}

// TestHistoryPruneBatches runs with two rows per transaction: every table takes several, and the
// old rows that stay (here images not deleted) are walked past, not found again and again.
// Not parallel: it changes the package's batch size.
func TestHistoryPruneBatches(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	history.SetHistoryPruneBatch(t, 2)

	var pruned, kept []int64
	for i := range 7 {
		at := slot.Add(time.Duration(i) * time.Hour)
		inst := fmt.Sprintf("ins-%08d", i%3)
		r := finish(t, s, claim(t, s, "web", inst, at), history.StatusFailed)
		attempt(t, s, history.Attempt{RunID: r.ID, Attempt: 1, Action: "CreateImage", ErrorCode: "InternalError"})
		pruned = append(pruned, r.ID)
		// Between them, old available runs whose images exist: kept.
		k := available(t, s, "web", inst, at.Add(time.Minute), fmt.Sprintf("img-%08d", i))
		kept = append(kept, k.ID)
	}
	// Recent runs, so that the old ones are no pair's last run.
	for i := range 3 {
		finish(t, s, claim(t, s, "web", fmt.Sprintf("ins-%08d", i), pruneNow), history.StatusSkipped)
	}
	for i := range 5 {
		id, created, err := s.DeletionInsert(ctx, history.Deletion{ImageID: fmt.Sprintf("img-gone%04d", i), ImageName: "x",
			Policy: "web", InstanceID: "ins-gone0000", Region: "ap-guangzhou", Reason: "max_age 30d", RequestedAt: slot})
		require.NoError(t, err)
		require.True(t, created)
		require.NoError(t, s.DeletionFinish(ctx, id, history.DeletionDeleted, "req", "", "", slot.Add(time.Second)))
		attempt(t, s, history.Attempt{DeletionID: id, Attempt: 1, Action: "DeleteImages", RequestID: "req"})
	}
	_, err := s.Pool().Exec(ctx, `DELETE FROM coverage_days`) // the days of the runs above, if any
	require.NoError(t, err)
	for i := range 6 {
		_, err := s.Pool().Exec(ctx, `INSERT INTO coverage_days (policy, instance_id, day, status, run_id, runs)
VALUES ($1, $2, $3::date, 'failed', 0, 1)`, fmt.Sprintf("p%d", i%2), fmt.Sprintf("ins-%08d", i%3), slot.Add(time.Duration(i)*pruneDay).Format(time.DateOnly))
		require.NoError(t, err)
	}
	for i := range 5 {
		_, err := s.Pool().Exec(ctx, `INSERT INTO replicas (daemon_id, host, pid, role, started_at, seen_at)
VALUES ($1, 'h', 1, 'stopped', $2, $2)`, fmt.Sprintf("old-%d", i), slot)
		require.NoError(t, err)
		_, err = s.Pool().Exec(ctx, `INSERT INTO fire_requests (policy, slot, requested_by, status, finished_at)
VALUES ('web', $1, 'once', 'done', $1)`, slot)
		require.NoError(t, err)
	}

	dry, err := s.HistoryPrune(ctx, history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow, DaemonID: "me", DryRun: true})
	require.NoError(t, err)
	got, err := s.HistoryPrune(ctx, history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow, DaemonID: "me"})
	require.NoError(t, err)
	want := history.HistoryPruned{Runs: 7, RunAttempts: 7, Deletions: 5, DeletionAttempts: 5, CoverageDays: 6, Replicas: 5, FireRequests: 5}
	require.Equal(t, want, got, "more rows than one batch of 2 in every table: several batches ran")
	require.Equal(t, want, dry)
	for _, id := range pruned {
		require.False(t, runExists(t, s, id))
	}
	for _, id := range kept {
		require.True(t, runExists(t, s, id), "run %d's image still exists", id)
	}
}

func TestHistoryPruneFenced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	newPruneWorld(t, s)
	_, err := s.Pool().Exec(ctx, `INSERT INTO leader_lease (name, term, daemon_id, host, pid, acquired_at, renewed_at, expires_at)
VALUES ('leader', 2, 'b', 'h', 1, now(), now(), now() + interval '1 minute')`)
	require.NoError(t, err)
	before := tableCounts(t, s)

	// Term 1 is over (term 2 holds the lease): nothing goes.
	got, err := s.WithTerm(1).HistoryPrune(ctx, history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow, DaemonID: "a"})
	require.ErrorIs(t, err, history.ErrFenced)
	require.Equal(t, history.HistoryPruned{}, got)
	require.Equal(t, before, tableCounts(t, s))

	// The live term prunes.
	got, err = s.WithTerm(2).HistoryPrune(ctx, history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow, DaemonID: "b"})
	require.NoError(t, err)
	require.Equal(t, int64(4), got.Runs)

	// A term whose lease lapsed by the database clock prunes nothing either.
	_, err = s.Pool().Exec(ctx, `UPDATE leader_lease SET expires_at = now() - interval '1 second'`)
	require.NoError(t, err)
	_, err = s.WithTerm(2).HistoryPrune(ctx, history.HistoryPruneParams{Keep: pruneKeep, Now: pruneNow.Add(300 * pruneDay), DaemonID: "b"})
	require.ErrorIs(t, err, history.ErrFenced)
}

func TestHistoryPruneInvalid(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	_, err := s.HistoryPrune(context.Background(), history.HistoryPruneParams{Keep: 0, Now: pruneNow})
	require.ErrorIs(t, err, history.ErrInvalid)
	_, err = s.HistoryPrune(context.Background(), history.HistoryPruneParams{Keep: pruneKeep})
	require.ErrorIs(t, err, history.ErrInvalid)
}
