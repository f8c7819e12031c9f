package history_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

func TestCopiesOfRunsReadsAListingsCopiesAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	r0 := available(t, s, "web", "ins-aaaaaaaa", slot, "img-a0000000")
	r1 := available(t, s, "web", "ins-aaaaaaaa", slot.Add(24*time.Hour), "img-a1000000")
	r2 := available(t, s, "web", "ins-bbbbbbbb", slot, "img-b0000000")
	c0 := availableCopy(t, s, r0, singapore, "img-sg000000")
	rows, _, err := s.CopyRequested(ctx, r0.ID, []string{shanghai}, slot.Add(time.Hour))
	require.NoError(t, err)
	require.NoError(t, s.CopyFailed(ctx, rows[0].ID, "InvalidRegion", "no", slot.Add(2*time.Hour)))
	c1 := availableCopy(t, s, r1, shanghai, "img-sh100000")

	got, err := s.CopiesOfRuns(ctx, []int64{r0.ID, r1.ID, r2.ID})
	require.NoError(t, err)
	require.Len(t, got, 2, "a run without copies has no entry")
	require.Len(t, got[r0.ID], 2)
	require.Equal(t, shanghai, got[r0.ID][0].Region, "region order")
	require.Equal(t, history.CopyStatusFailed, got[r0.ID][0].Status)
	require.Equal(t, "InvalidRegion", got[r0.ID][0].ErrorCode)
	require.Equal(t, c0, got[r0.ID][1])
	require.Equal(t, []history.Copy{c1}, got[r1.ID])

	got, err = s.CopiesOfRuns(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestImageLatestInPicksTheNewestUsableImageOfARegion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	const ins = "ins-aaaaaaaa"
	r0 := available(t, s, "web", ins, slot, "img-a0000000")
	r1 := available(t, s, "web", ins, slot.Add(24*time.Hour), "img-a1000000")
	r2 := available(t, s, "web", ins, slot.Add(48*time.Hour), "img-a2000000")
	c0 := availableCopy(t, s, r0, singapore, "img-sg000000")
	c1 := availableCopy(t, s, r1, singapore, "img-sg100000")
	// r2's copy is still being made: not one to restore from.
	_, _, err := s.CopyRequested(ctx, r2.ID, []string{singapore}, slot.Add(49*time.Hour))
	require.NoError(t, err)

	now := slot.Add(100 * time.Hour)
	m, err := s.ImageLatestIn(ctx, ins, singapore, now)
	require.NoError(t, err)
	require.Equal(t, history.RestoreImage{RunID: r1.ID, CopyID: c1.ID, Account: "default", Policy: "web", InstanceID: ins,
		Region: singapore, Slot: r1.ScheduledAt, ImageID: "img-sg100000", ImageName: r1.ImageName,
		AvailableAt: c1.AvailableAt, SourceRegion: "ap-guangzhou", SourceImageID: r1.ImageID}, m)

	m, err = s.ImageLatestIn(ctx, ins, singapore, slot.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, c0.ID, m.CopyID, "at or before")

	// The source region answers with the run's own image.
	m, err = s.ImageLatestIn(ctx, ins, "ap-guangzhou", now)
	require.NoError(t, err)
	require.Equal(t, history.RestoreImage{RunID: r2.ID, Account: "default", Policy: "web", InstanceID: ins,
		Region: "ap-guangzhou", Slot: r2.ScheduledAt, ImageID: r2.ImageID, ImageName: r2.ImageName,
		AvailableAt: r2.FinishedAt}, m)

	// A copy retention deleted is not one to restore from.
	id, _, err := s.CopyDeletionInsert(ctx, c1.ID, "keep_last 1", now)
	require.NoError(t, err)
	require.NoError(t, s.DeletionFinish(ctx, id, history.DeletionDeleted, "req", "", "", now))
	m, err = s.ImageLatestIn(ctx, ins, singapore, now)
	require.NoError(t, err)
	require.Equal(t, c0.ID, m.CopyID)

	_, err = s.ImageLatestIn(ctx, ins, shanghai, now)
	require.ErrorIs(t, err, history.ErrNotFound)
	_, err = s.ImageLatestIn(ctx, ins, singapore, slot.Add(-time.Second))
	require.ErrorIs(t, err, history.ErrNotFound)
}

func TestCopyCoverageListAndSummary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	_, err := s.PoliciesSync(ctx, []history.PolicyRow{{Name: "web", Schedule: "0 3 * * *", Timezone: "UTC",
		Interval: 24 * time.Hour, Enabled: true, SourceFile: "a.yaml", SourceLine: 4, LoadedAt: now}}, now)
	require.NoError(t, err)
	ra := available(t, s, "web", "ins-aaaaaaaa", now.Add(-24*time.Hour), "img-a1000000")
	ca := availableCopy(t, s, ra, shanghai, "img-sa100000")
	rb := available(t, s, "web", "ins-bbbbbbbb", now.Add(-72*time.Hour), "img-b0000000")
	_, err = s.Pool().Exec(ctx, `UPDATE image_runs SET account = 'prod' WHERE id = $1`, rb.ID)
	require.NoError(t, err)
	rows, _, err := s.CopyRequested(ctx, rb.ID, []string{shanghai}, now.Add(-71*time.Hour))
	require.NoError(t, err)
	require.NoError(t, s.CopyFailed(ctx, rows[0].ID, "Timeout", "", now.Add(-70*time.Hour)))

	all, err := s.CopyCoverageList(ctx, "", nil)
	require.NoError(t, err)
	require.Len(t, all, 2)
	a := all[0]
	require.Equal(t, "ins-aaaaaaaa", a.InstanceID)
	require.Equal(t, shanghai, a.Region)
	require.Equal(t, "default", a.Account)
	require.Equal(t, ca.ImageID, a.LastAvailableImageID)
	require.Equal(t, ra.ScheduledAt, *a.LastAvailableSlot)
	require.WithinDuration(t, *ca.AvailableAt, *a.LastAvailableAt, time.Millisecond)
	require.False(t, a.Overdue)
	require.Equal(t, history.CopyCoverage{Policy: "web", InstanceID: "ins-bbbbbbbb", Region: shanghai, Account: "prod",
		Overdue: true}, all[1], "never available there, first requested 71h ago")

	some, err := s.CopyCoverageList(ctx, "web", []string{"ins-bbbbbbbb"})
	require.NoError(t, err)
	require.Equal(t, all[1:], some)
	none, err := s.CopyCoverageList(ctx, "db", nil)
	require.NoError(t, err)
	require.Empty(t, none)

	sum, err := s.CopyCoverageSummary(ctx, []string{"web", "db"})
	require.NoError(t, err)
	require.Len(t, sum, 1)
	require.Equal(t, "web", sum[0].Policy)
	require.Equal(t, shanghai, sum[0].Region)
	require.Equal(t, 2, sum[0].Instances)
	require.Equal(t, 1, sum[0].Overdue)
	require.WithinDuration(t, *ca.AvailableAt, *sum[0].OldestAt, time.Millisecond)

	accts, err := s.RunAccounts(ctx, []int64{ra.ID, rb.ID, 999999})
	require.NoError(t, err)
	require.Equal(t, map[int64]string{ra.ID: "default", rb.ID: "prod"}, accts)
	known, err := s.AccountKnown(ctx, "prod")
	require.NoError(t, err)
	require.True(t, known)
	known, err = s.AccountKnown(ctx, "nobody")
	require.NoError(t, err)
	require.False(t, known)
}

func TestRunsListFiltersByAccount(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	ra := available(t, s, "web", "ins-aaaaaaaa", slot, "img-a0000000")
	rb := available(t, s, "web", "ins-bbbbbbbb", slot, "img-b0000000")
	_, err := s.Pool().Exec(ctx, `UPDATE image_runs SET account = 'prod' WHERE id = $1`, rb.ID)
	require.NoError(t, err)

	runs, err := s.RunsList(ctx, history.RunFilter{Since: slot.Add(-time.Hour), Account: "prod"})
	require.NoError(t, err)
	require.Len(t, runs, 1)
	require.Equal(t, rb.ID, runs[0].ID)
	require.Equal(t, "prod", runs[0].Account)
	runs, err = s.RunsList(ctx, history.RunFilter{Since: slot.Add(-time.Hour)})
	require.NoError(t, err)
	require.Len(t, runs, 2)
	require.Equal(t, map[string]string{ra.InstanceID: "default", rb.InstanceID: "prod"},
		map[string]string{runs[0].InstanceID: runs[0].Account, runs[1].InstanceID: runs[1].Account})

	counts, err := s.RunStatusCounts(ctx, history.RunFilter{Since: slot.Add(-time.Hour), Account: "default"})
	require.NoError(t, err)
	require.Equal(t, map[history.Status]int64{history.StatusAvailable: 1}, counts)
}
