package bench

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

// latest_images (migrations/0003_audit_indexes.sql) must always hold what the plain DISTINCT ON
// over image_runs answers, whatever the daemon's writes do. These tests drive the history store as
// the daemon does and compare the two after every step.

// distinctOnLatest is the reference: the newest accepted or available run of every instance.
const distinctOnLatest = `SELECT DISTINCT ON (instance_id) instance_id, id, policy, scheduled_at, status, image_name,
	COALESCE(image_id, ''), COALESCE(request_id, '')
FROM image_runs WHERE status IN ('requested', 'available')
ORDER BY instance_id, scheduled_at DESC, id DESC`

const tableLatest = `SELECT instance_id, run_id, policy, scheduled_at, status, image_name,
	COALESCE(image_id, ''), COALESCE(request_id, '')
FROM latest_images ORDER BY instance_id`

func latestRows(t *testing.T, store *history.Store, sql string) []string {
	t.Helper()
	rows, err := store.Pool().Query(context.Background(), sql)
	require.NoError(t, err)
	defer rows.Close()
	var out []string
	for rows.Next() {
		var inst, pol, status, name, img, req string
		var id int64
		var slot time.Time
		require.NoError(t, rows.Scan(&inst, &id, &pol, &slot, &status, &name, &img, &req))
		out = append(out, fmt.Sprintf("%s run %d %s %s %s %s %s %s", inst, id, pol, slot.UTC().Format(time.RFC3339), status, name, img, req))
	}
	require.NoError(t, rows.Err())
	return out
}

func requireLatestInStep(t *testing.T, store *history.Store, step string) []string {
	t.Helper()
	want := latestRows(t, store, distinctOnLatest)
	require.Equal(t, want, latestRows(t, store, tableLatest), "after %s", step)
	return want
}

func migratedStore(t *testing.T) *history.Store {
	t.Helper()
	ctx := context.Background()
	store, err := history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(store.Close)
	_, err = store.Migrate(ctx)
	require.NoError(t, err)
	return store
}

func claimRun(t *testing.T, store *history.Store, pol, inst string, slot time.Time) history.Run {
	t.Helper()
	r, claimed, err := store.RunClaim(context.Background(), history.RunClaimParams{
		Policy: pol, InstanceID: inst, Region: region, ScheduledAt: slot,
		ImageName: pol + "-" + inst + "-" + slot.Format("20060102-1504"), DaemonID: "test",
		StartedAt: slot, Status: history.StatusPending,
	})
	require.NoError(t, err)
	require.True(t, claimed)
	return r
}

func TestLatestImagesFollowTheDaemonsWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := migratedStore(t)
	t0 := time.Date(2026, 3, 1, 3, 0, 0, 0, time.UTC)
	t1, t2 := t0.Add(24*time.Hour), t0.Add(48*time.Hour)

	a := claimRun(t, store, "web", "ins-aaaaaaaa", t1)
	require.Empty(t, requireLatestInStep(t, store, "a pending claim"))
	require.NoError(t, store.RunRequested(ctx, a.ID, "", "req-a"))
	require.Len(t, requireLatestInStep(t, store, "CreateImage accepted without an image id"), 1)
	require.NoError(t, store.RunSetImageID(ctx, a.ID, "img-aaaaaaaa"))
	requireLatestInStep(t, store, "image id found by name")

	// A newer slot of another policy on the same instance takes over; an older one does not.
	b := claimRun(t, store, "db", "ins-aaaaaaaa", t2)
	require.NoError(t, store.RunRequested(ctx, b.ID, "img-bbbbbbbb", "req-b"))
	got := requireLatestInStep(t, store, "a newer slot accepted")
	require.Contains(t, got[0], fmt.Sprintf("run %d ", b.ID))
	old := claimRun(t, store, "web", "ins-aaaaaaaa", t0)
	require.NoError(t, store.RunRequested(ctx, old.ID, "img-00000000", "req-old"))
	require.Contains(t, requireLatestInStep(t, store, "an older slot accepted")[0], fmt.Sprintf("run %d ", b.ID))

	require.NoError(t, store.RunAvailable(ctx, a.ID, nil, "", t2))
	requireLatestInStep(t, store, "an older run became available")
	// The latest image fails: the newest remaining one is the answer again.
	require.NoError(t, store.RunFinish(ctx, history.RunFinishParams{RunID: b.ID, Status: history.StatusFailed,
		ErrorCode: "CREATEFAILED", ErrorMessage: "the image could not be created", FinishedAt: t2}))
	require.Contains(t, requireLatestInStep(t, store, "the latest image failed")[0], fmt.Sprintf("run %d ", a.ID))

	// Terminal claims that made no image never count.
	_, _, err := store.RunClaim(ctx, history.RunClaimParams{Policy: "web", InstanceID: "ins-bbbbbbbb", Region: region,
		ScheduledAt: t2, ImageName: "x", DaemonID: "test", StartedAt: t2, Status: history.StatusSkipped, ErrorMessage: "policy disabled"})
	require.NoError(t, err)
	requireLatestInStep(t, store, "a skipped slot")

	// Every accepted image of the instance fails: it drops out.
	require.NoError(t, store.RunFinish(ctx, history.RunFinishParams{RunID: old.ID, Status: history.StatusFailed,
		ErrorCode: "CREATEFAILED", ErrorMessage: "the image could not be created", FinishedAt: t2}))
	require.Contains(t, requireLatestInStep(t, store, "an older accepted image failed")[0], fmt.Sprintf("run %d ", a.ID))
}

func TestLatestImagesUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := migratedStore(t)
	base := time.Date(2026, 3, 1, 3, 0, 0, 0, time.UTC)
	const writers, perWriter = 8, 40
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				// Every writer works on the same two instances, slots interleaved with the others'.
				inst := fmt.Sprintf("ins-0000000%d", i%2)
				slot := base.Add(time.Duration(i*writers+w) * time.Hour)
				r, _, err := store.RunClaim(ctx, history.RunClaimParams{Policy: fmt.Sprintf("p%d", w), InstanceID: inst,
					Region: region, ScheduledAt: slot, ImageName: fmt.Sprintf("n-%d-%d", w, i), DaemonID: "test",
					StartedAt: slot, Status: history.StatusPending})
				if err == nil {
					err = store.RunRequested(ctx, r.ID, fmt.Sprintf("img-%d-%d", w, i), "req")
				}
				if err == nil && i%4 == 0 {
					err = store.RunFinish(ctx, history.RunFinishParams{RunID: r.ID, Status: history.StatusFailed,
						ErrorCode: "CREATEFAILED", ErrorMessage: "failed", FinishedAt: slot})
				}
				if err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, requireLatestInStep(t, store, "concurrent writers"), 2)

	// The rebuild gives the same answer.
	require.NoError(t, store.RebuildDerived(ctx))
	requireLatestInStep(t, store, "RebuildDerived")
}
