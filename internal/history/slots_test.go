package history_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

// setLease writes the leader lease row with term, live for ttl by the database clock (negative:
// expired).
func setLease(t *testing.T, s *history.Store, term int64, ttl time.Duration) {
	t.Helper()
	_, err := s.Pool().Exec(context.Background(), `INSERT INTO leader_lease (name, term, daemon_id, host, pid, acquired_at, renewed_at, expires_at)
VALUES ('leader', $1, 'd', 'h', 1, now(), now(), now() + make_interval(secs => $2))
ON CONFLICT (name) DO UPDATE SET term = EXCLUDED.term, expires_at = EXCLUDED.expires_at`, term, ttl.Seconds())
	require.NoError(t, err)
}

func countRuns(t *testing.T, s *history.Store) int {
	t.Helper()
	var n int
	require.NoError(t, s.Pool().QueryRow(context.Background(), `SELECT count(*) FROM image_runs`).Scan(&n))
	return n
}

func TestRunsClaimFire(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)

	// One instance was claimed before (another fire of the same slot): it keeps its row.
	before := claim(t, s, "web", "ins-22222222", slot)

	skipped := claimParams("web", "ins-33333333", slot)
	skipped.Status, skipped.ErrorCode, skipped.ErrorMessage = history.StatusSkipped, "PreviousImageInProgress", "previous image still being made"
	ps := []history.RunClaimParams{claimParams("web", "ins-11111111", slot), claimParams("web", "ins-22222222", slot), skipped}
	runs, claimed, err := s.RunsClaimFire(ctx, ps)
	require.NoError(t, err)
	require.Equal(t, []bool{true, false, true}, claimed)
	require.Equal(t, history.StatusPending, runs[0].Status)
	require.Equal(t, before, runs[1])
	require.Equal(t, history.StatusSkipped, runs[2].Status)
	require.Equal(t, "PreviousImageInProgress", runs[2].ErrorCode)
	require.NotNil(t, runs[2].FinishedAt)
	require.Equal(t, 3, countRuns(t, s))
	require.Less(t, runs[0].ID, runs[2].ID, "rows are inserted in the order given")

	// A slot given twice in one fire is claimed once: by its first params.
	twice := claimParams("web", "ins-55555555", slot.Add(-3*time.Hour))
	runs, claimed, err = s.RunsClaimFire(ctx, []history.RunClaimParams{twice, claimParams("web", "ins-66666666", slot.Add(-3*time.Hour)), twice})
	require.NoError(t, err)
	require.Equal(t, []bool{true, true, false}, claimed)
	require.Equal(t, runs[0], runs[2])
	require.Equal(t, 5, countRuns(t, s))

	// The fire moved the policy's last handled slot; an older slot never moves it back.
	last, err := s.PolicySlots(ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]time.Time{"web": slot}, last)
	_, _, err = s.RunsClaimFire(ctx, []history.RunClaimParams{claimParams("web", "ins-11111111", slot.Add(-time.Hour))})
	require.NoError(t, err)
	require.NoError(t, s.PolicySlotSet(ctx, "web", slot.Add(-2*time.Hour)))
	require.NoError(t, s.PolicySlotSet(ctx, "db", slot.Add(time.Hour)))
	last, err = s.PolicySlots(ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]time.Time{"web": slot, "db": slot.Add(time.Hour)}, last)

	// An invalid row refuses the whole fire before any SQL.
	bad := claimParams("web", "", slot.Add(time.Hour))
	_, _, err = s.RunsClaimFire(ctx, []history.RunClaimParams{claimParams("web", "ins-44444444", slot.Add(time.Hour)), bad})
	require.ErrorIs(t, err, history.ErrInvalid)
	require.Equal(t, 6, countRuns(t, s))
}

func TestManualFiresDoNotMoveTheLastHandledSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	_, _, err := s.RunsClaimFire(ctx, []history.RunClaimParams{claimParams("web", "ins-11111111", slot)})
	require.NoError(t, err)

	// imager once an hour later: its rows are written, the schedule's last slot stays, so slots
	// missed between the two are still walked at the next start.
	manual := claimParams("web", "ins-11111111", slot.Add(time.Hour))
	manual.Manual = true
	_, claimed, err := s.RunsClaimFire(ctx, []history.RunClaimParams{manual})
	require.NoError(t, err)
	require.Equal(t, []bool{true}, claimed)
	last, err := s.PolicySlots(ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]time.Time{"web": slot}, last)
	require.Equal(t, 2, countRuns(t, s))
}

func TestClaimsAreFenced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	setLease(t, s, 7, time.Minute)

	// The current term claims, and its rows carry the term.
	leader := s.WithTerm(7)
	runs, claimed, err := leader.RunsClaimFire(ctx, []history.RunClaimParams{claimParams("web", "ins-11111111", slot)})
	require.NoError(t, err)
	require.Equal(t, []bool{true}, claimed)
	var term *int64
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT term FROM image_runs WHERE id = $1`, runs[0].ID).Scan(&term))
	require.Equal(t, int64(7), *term)
	r, one, err := leader.RunClaim(ctx, claimParams("web", "ins-22222222", slot))
	require.NoError(t, err)
	require.True(t, one)
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT term FROM image_runs WHERE id = $1`, r.ID).Scan(&term))
	require.Equal(t, int64(7), *term)

	// An older term is fenced: nothing is written, by any claiming method.
	old := s.WithTerm(6)
	n := countRuns(t, s)
	_, _, err = old.RunsClaimFire(ctx, []history.RunClaimParams{claimParams("web", "ins-33333333", slot)})
	require.ErrorIs(t, err, history.ErrFenced)
	_, _, err = old.RunClaim(ctx, claimParams("web", "ins-33333333", slot))
	require.ErrorIs(t, err, history.ErrFenced)
	require.ErrorIs(t, old.PolicySlotSet(ctx, "web", slot.Add(time.Hour)), history.ErrFenced)
	_, err = old.RunsTakeOver(ctx, []int64{r.ID}, "old")
	require.ErrorIs(t, err, history.ErrFenced)
	require.Equal(t, n, countRuns(t, s))

	// The current term whose lease lapsed (by the database clock) cannot claim either.
	setLease(t, s, 7, -time.Second)
	_, _, err = leader.RunClaim(ctx, claimParams("web", "ins-33333333", slot))
	require.ErrorIs(t, err, history.ErrFenced)

	// Unfenced (term 0) tools still claim, with the next id: the fenced claims took none (a gap
	// would read as a lost row to anyone following image_runs by id).
	r3, one, err := s.RunClaim(ctx, claimParams("web", "ins-33333333", slot))
	require.NoError(t, err)
	require.True(t, one)
	require.Equal(t, r.ID+1, r3.ID)
	runs, _, err = s.RunsClaimFire(ctx, []history.RunClaimParams{claimParams("web", "ins-44444444", slot)})
	require.NoError(t, err)
	require.Equal(t, r3.ID+1, runs[0].ID)
}

func TestClaimedRunsAreTheRowsWritten(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	ps := []history.RunClaimParams{claimParams("web", "ins-11111111", slot), claimParams("web", "ins-22222222", slot)}
	ps[0].StartedAt = slot.Add(1234567891 * time.Nanosecond) // below the database's microsecond
	ps[1].Status, ps[1].ErrorCode, ps[1].ErrorMessage = history.StatusSkipped, "TargetGone", "instance is gone"
	runs, claimed, err := s.RunsClaimFire(ctx, ps)
	require.NoError(t, err)
	require.Equal(t, []bool{true, true}, claimed)
	for _, r := range runs {
		got, err := s.RunGet(ctx, r.ID)
		require.NoError(t, err)
		require.Equal(t, got, r, "the claim answers with the row as the database holds it")
	}
}

func TestRunsTakeOverAndInProgress(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	a := claim(t, s, "web", "ins-11111111", slot)
	b := claim(t, s, "web", "ins-22222222", slot)
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: b.ID, Status: history.StatusFailed, ErrorCode: "X", FinishedAt: slot.Add(time.Minute)}))
	c := claim(t, s, "web", "ins-33333333", slot)
	require.NoError(t, s.RunRequested(ctx, c.ID, "img-1", "req-1"))

	inProgress, err := s.RunsInProgress(ctx, "web", []string{"ins-11111111", "ins-22222222", "ins-33333333", "ins-44444444"}, slot.Add(time.Hour))
	require.NoError(t, err)
	require.Len(t, inProgress, 2)
	require.Equal(t, a.ID, inProgress["ins-11111111"].ID)
	require.Equal(t, c.ID, inProgress["ins-33333333"].ID)
	// Only earlier slots count.
	inProgress, err = s.RunsInProgress(ctx, "web", []string{"ins-11111111"}, slot)
	require.NoError(t, err)
	require.Empty(t, inProgress)

	setLease(t, s, 3, time.Minute)
	n, err := s.WithTerm(3).RunsTakeOver(ctx, []int64{a.ID, b.ID, c.ID}, "daemon-new")
	require.NoError(t, err)
	require.Equal(t, int64(2), n, "the finished run is left alone")
	got, err := s.RunGet(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, "daemon-new", got.DaemonID)
}
