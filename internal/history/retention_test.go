package history_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

// available claims a run, records its image and marks it available.
func available(t *testing.T, s *history.Store, policy, instance string, at time.Time, imageID string) history.Run {
	t.Helper()
	ctx := context.Background()
	r := claim(t, s, policy, instance, at)
	require.NoError(t, s.RunRequested(ctx, r.ID, imageID, "req-"+imageID))
	require.NoError(t, s.RunAvailable(ctx, r.ID, ptr[int64](20), "", at.Add(15*time.Minute)))
	r, err := s.RunGet(ctx, r.ID)
	require.NoError(t, err)
	return r
}

// decideDeletion records a deletion of the run's image and, unless status is pending, its outcome.
func decideDeletion(t *testing.T, s *history.Store, r history.Run, status history.DeletionStatus, at time.Time) int64 {
	t.Helper()
	ctx := context.Background()
	id, created, err := s.DeletionInsert(ctx, history.Deletion{ImageID: r.ImageID, ImageName: r.ImageName, Policy: r.Policy,
		InstanceID: r.InstanceID, Region: r.Region, RunID: r.ID, Reason: "keep_last 1: 2nd newest available image", RequestedAt: at})
	require.NoError(t, err)
	require.True(t, created)
	switch status {
	case history.DeletionDeleted:
		require.NoError(t, s.DeletionFinish(ctx, id, status, "req-del-"+r.ImageID, "", "", at.Add(time.Second)))
	case history.DeletionFailed:
		require.NoError(t, s.DeletionFinish(ctx, id, status, "req-del-"+r.ImageID, "InternalError", "try later", at.Add(time.Second)))
	}
	return id
}

func runIDs(runs []history.Run) []int64 {
	out := make([]int64, len(runs))
	for i, r := range runs {
		out[i] = r.ID
	}
	return out
}

func TestRunsRetainable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	day := 24 * time.Hour

	a0 := available(t, s, "web", "ins-aaaaaaaa", slot, "img-a0000000")
	a1 := available(t, s, "web", "ins-aaaaaaaa", slot.Add(day), "img-a1000000")
	a2 := available(t, s, "web", "ins-aaaaaaaa", slot.Add(2*day), "img-a2000000")
	a3 := available(t, s, "web", "ins-aaaaaaaa", slot.Add(3*day), "img-a3000000")
	b0 := available(t, s, "web", "ins-bbbbbbbb", slot, "img-b0000000")
	available(t, s, "db", "ins-aaaaaaaa", slot, "img-other000") // another policy

	// Not retainable: still being made, failed, and available without a known image id.
	requested := claim(t, s, "web", "ins-aaaaaaaa", slot.Add(4*day))
	require.NoError(t, s.RunRequested(ctx, requested.ID, "img-a4000000", "req-a4"))
	failed := claim(t, s, "web", "ins-aaaaaaaa", slot.Add(5*day))
	require.NoError(t, s.RunRequested(ctx, failed.ID, "img-a5000000", "req-a5"))
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: failed.ID, Status: history.StatusFailed,
		ErrorCode: "CREATEFAILED", FinishedAt: slot.Add(5*day + time.Hour)}))
	noID := claim(t, s, "web", "ins-aaaaaaaa", slot.Add(6*day))
	require.NoError(t, s.RunAvailable(ctx, noID.ID, nil, "", slot.Add(6*day+time.Hour)))

	// a0 is deleted: gone from the list. a1 failed to delete and a2 is pending: still listed,
	// the next pass retries them.
	decideDeletion(t, s, a0, history.DeletionDeleted, slot.Add(10*day))
	failedDel := decideDeletion(t, s, a1, history.DeletionFailed, slot.Add(10*day))
	pendingDel := decideDeletion(t, s, a2, history.DeletionPending, slot.Add(10*day+time.Minute))

	tests := []struct {
		name, policy, instance string
		want                   []int64
	}{
		{"one instance, newest first", "web", "ins-aaaaaaaa", []int64{a3.ID, a2.ID, a1.ID}},
		{"every instance of the policy", "web", "", []int64{a3.ID, a2.ID, a1.ID, b0.ID}},
		{"another instance", "web", "ins-bbbbbbbb", []int64{b0.ID}},
		{"unknown policy", "nope", "", []int64{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runs, err := s.RunsRetainable(ctx, tc.policy, tc.instance)
			require.NoError(t, err)
			require.Equal(t, tc.want, runIDs(runs))
			for _, r := range runs {
				require.Equal(t, history.StatusAvailable, r.Status)
				require.NotEmpty(t, r.ImageID)
			}
		})
	}

	open, err := s.DeletionsOpen(ctx, "web", "ins-aaaaaaaa")
	require.NoError(t, err)
	require.Len(t, open, 2)
	require.Equal(t, failedDel, open[0].ID, "oldest decision first")
	require.Equal(t, history.DeletionFailed, open[0].Status)
	require.Equal(t, "img-a1000000", open[0].ImageID)
	require.Equal(t, pendingDel, open[1].ID)
	require.Equal(t, history.DeletionPending, open[1].Status)

	open, err = s.DeletionsOpen(ctx, "web", "ins-bbbbbbbb")
	require.NoError(t, err)
	require.Empty(t, open)
	open, err = s.DeletionsOpen(ctx, "web", "")
	require.NoError(t, err)
	require.Len(t, open, 2)
	open, err = s.DeletionsOpen(ctx, "db", "")
	require.NoError(t, err)
	require.Empty(t, open)
}

func TestDeletionsRecent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	day := 24 * time.Hour
	r0 := available(t, s, "web", "ins-aaaaaaaa", slot, "img-a0000000")
	r1 := available(t, s, "web", "ins-aaaaaaaa", slot.Add(day), "img-a1000000")
	r2 := available(t, s, "web", "ins-aaaaaaaa", slot.Add(2*day), "img-a2000000")
	old := decideDeletion(t, s, r0, history.DeletionDeleted, slot.Add(3*day))
	mid := decideDeletion(t, s, r1, history.DeletionFailed, slot.Add(10*day))
	last := decideDeletion(t, s, r2, history.DeletionDeleted, slot.Add(11*day))

	got, err := s.DeletionsRecent(ctx, slot.Add(10*day))
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, last, got[0].ID, "newest first")
	require.Equal(t, history.DeletionDeleted, got[0].Status)
	require.Equal(t, "req-del-img-a2000000", got[0].RequestID)
	require.Equal(t, mid, got[1].ID)
	require.Equal(t, "InternalError", got[1].ErrorCode)

	got, err = s.DeletionsRecent(ctx, slot)
	require.NoError(t, err)
	require.Len(t, got, 3)
	require.Equal(t, old, got[2].ID)
	require.Equal(t, r0.ID, got[2].RunID)
}

func TestLastFailedPerInstance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	day := 24 * time.Hour
	fail := func(policy, instance string, at time.Time, code string) history.Run {
		r := claim(t, s, policy, instance, at)
		require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: r.ID, Status: history.StatusFailed,
			ErrorCode: code, FinishedAt: at.Add(time.Minute)}))
		return r
	}
	skip := func(policy, instance string, at time.Time) {
		p := claimParams(policy, instance, at)
		p.Status, p.ErrorMessage = history.StatusSkipped, "policy disabled"
		_, _, err := s.RunClaim(ctx, p)
		require.NoError(t, err)
	}

	// a: failed, then a good image: fine now.
	fail("web", "ins-aaaaaaaa", slot, "Timeout")
	available(t, s, "web", "ins-aaaaaaaa", slot.Add(day), "img-a1000000")
	// b: a good image, then a failure, then a skipped slot: its last image failed.
	available(t, s, "web", "ins-bbbbbbbb", slot, "img-b0000000")
	bFailed := fail("web", "ins-bbbbbbbb", slot.Add(day), "CREATEFAILED")
	skip("web", "ins-bbbbbbbb", slot.Add(2*day))
	// c: failed under one policy, fine under another: listed for the failing one only.
	cFailed := fail("db", "ins-cccccccc", slot.Add(day), "InvalidInstanceId.NotFound")
	available(t, s, "web", "ins-cccccccc", slot.Add(day), "img-c1000000")
	// d: only still being made after an older failure: the newer request decides.
	fail("web", "ins-dddddddd", slot, "Timeout")
	d := claim(t, s, "web", "ins-dddddddd", slot.Add(day))
	require.NoError(t, s.RunRequested(ctx, d.ID, "img-d1000000", "req-d1"))

	got, err := s.LastFailedPerInstance(ctx, slot)
	require.NoError(t, err)
	require.Equal(t, []int64{cFailed.ID, bFailed.ID}, runIDs(got), "ordered by policy, then instance")
	require.Equal(t, "InvalidInstanceId.NotFound", got[0].ErrorCode)
	require.Equal(t, "CREATEFAILED", got[1].ErrorCode)

	// Only slots since the bound count: from the second day on, a's Timeout is out of view.
	got, err = s.LastFailedPerInstance(ctx, slot.Add(day))
	require.NoError(t, err)
	require.Equal(t, []int64{cFailed.ID, bFailed.ID}, runIDs(got))
	got, err = s.LastFailedPerInstance(ctx, slot.Add(3*day))
	require.NoError(t, err)
	require.Empty(t, got)
}

// The retention queries of docs/audit.md's audit cookbook, verbatim (TestCookbookRetentionSQL checks).
const (
	readmeImagesPruned = `SELECT d.finished_at, d.policy, d.instance_id, d.image_id, d.image_name, d.reason, d.request_id
FROM image_deletions d
WHERE d.status = 'deleted' AND d.finished_at > now() - interval '7 days'
ORDER BY d.finished_at DESC;`
	readmeDeletionsOpen = `SELECT requested_at, policy, instance_id, image_id, status, attempts, error_code, error_message
FROM image_deletions
WHERE status <> 'deleted'
ORDER BY requested_at;`
	readmeLastImageFailed = `SELECT policy, instance_id, scheduled_at, error_code, error_message
FROM (
  SELECT DISTINCT ON (policy, instance_id) policy, instance_id, scheduled_at, status, error_code, error_message
  FROM image_runs
  WHERE status IN ('requested', 'available', 'failed') AND scheduled_at > now() - interval '7 days'
  ORDER BY policy, instance_id, scheduled_at DESC, id DESC
) last
WHERE status = 'failed'
ORDER BY policy, instance_id;`
)

func TestCookbookRetentionSQL(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/audit.md")
	require.NoError(t, err)
	for _, q := range []string{readmeImagesPruned, readmeDeletionsOpen, readmeLastImageFailed} {
		require.Containsf(t, string(doc), "```sql\n"+q+"\n```", "docs/audit.md lacks the query:\n%s", q)
	}
	ctx := context.Background()
	s := newStore(t)
	// These queries compare with now(): the fixture is placed around the real time.
	now := time.Now().UTC().Truncate(time.Second)
	day := 24 * time.Hour

	r0 := available(t, s, "web", "ins-aaaaaaaa", now.Add(-20*day), "img-a0000000")
	r1 := available(t, s, "web", "ins-aaaaaaaa", now.Add(-19*day), "img-a1000000")
	r2 := available(t, s, "web", "ins-aaaaaaaa", now.Add(-18*day), "img-a2000000")
	available(t, s, "web", "ins-aaaaaaaa", now.Add(-17*day), "img-a3000000")
	decideDeletion(t, s, r0, history.DeletionDeleted, now.Add(-10*day)) // pruned too long ago
	decideDeletion(t, s, r1, history.DeletionDeleted, now.Add(-2*day))
	decideDeletion(t, s, r2, history.DeletionFailed, now.Add(-time.Hour))
	available(t, s, "web", "ins-bbbbbbbb", now.Add(-2*day), "img-b0000000")
	b := claim(t, s, "web", "ins-bbbbbbbb", now.Add(-day))
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: b.ID, Status: history.StatusFailed,
		ErrorCode: "CREATEFAILED", FinishedAt: now.Add(-day + time.Hour)}))

	query := func(sql string) [][]any {
		rows, err := s.Pool().Query(ctx, sql)
		require.NoError(t, err)
		defer rows.Close()
		var out [][]any
		for rows.Next() {
			v, err := rows.Values()
			require.NoError(t, err)
			out = append(out, v)
		}
		require.NoError(t, rows.Err())
		return out
	}

	pruned := query(readmeImagesPruned)
	require.Len(t, pruned, 1)
	require.Equal(t, "img-a1000000", pruned[0][3])
	require.Equal(t, "req-del-img-a1000000", pruned[0][6])

	open := query(readmeDeletionsOpen)
	require.Len(t, open, 1)
	require.Equal(t, "img-a2000000", open[0][3])
	require.Equal(t, "failed", open[0][4])
	require.Equal(t, "InternalError", open[0][6])

	failed := query(readmeLastImageFailed)
	require.Len(t, failed, 1)
	require.Equal(t, "ins-bbbbbbbb", failed[0][1])
	require.Equal(t, "CREATEFAILED", failed[0][3])
	require.Equal(t, fmt.Sprint(now.Add(-day)), fmt.Sprint(failed[0][2].(time.Time).UTC()))
}
