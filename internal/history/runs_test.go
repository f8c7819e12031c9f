package history_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

func TestRunClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)

	p := claimParams("web-nightly", "ins-6pb6lrmy", slot)
	first, claimed, err := s.RunClaim(ctx, p)
	require.NoError(t, err)
	require.True(t, claimed)
	require.NotZero(t, first.ID)
	require.Equal(t, history.Run{
		ID: first.ID, Policy: "web-nightly", InstanceID: "ins-6pb6lrmy", Region: "ap-guangzhou",
		ScheduledAt: slot, StartedAt: slot.Add(time.Second), Status: history.StatusPending,
		ImageName: p.ImageName, DaemonID: "daemon-a", Account: "default",
	}, first)

	// Another daemon claims the same slot: it gets the existing row, not a new one.
	again := p
	again.DaemonID = "daemon-b"
	again.StartedAt = slot.Add(time.Minute)
	again.ImageName = "other-name"
	existing, claimed, err := s.RunClaim(ctx, again)
	require.NoError(t, err)
	require.False(t, claimed)
	require.Equal(t, first, existing)

	// The same slot given in another zone is the same instant, so the same slot.
	shanghai := time.FixedZone("CST", 8*3600)
	again.ScheduledAt = slot.In(shanghai)
	_, claimed, err = s.RunClaim(ctx, again)
	require.NoError(t, err)
	require.False(t, claimed)

	// Another instance, policy or slot is another run.
	for _, q := range []history.RunClaimParams{
		claimParams("web-nightly", "ins-2b3c4d5e", slot),
		claimParams("db-hourly", "ins-6pb6lrmy", slot),
		claimParams("web-nightly", "ins-6pb6lrmy", slot.Add(24*time.Hour)),
	} {
		r, claimed, err := s.RunClaim(ctx, q)
		require.NoError(t, err)
		require.True(t, claimed)
		require.NotEqual(t, first.ID, r.ID)
	}
}

func TestRunClaimTerminal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)

	for i, status := range []history.Status{history.StatusSkipped, history.StatusMissed, history.StatusFailed} {
		p := claimParams("web-nightly", "ins-6pb6lrmy", slot.Add(time.Duration(i)*time.Hour))
		p.Status = status
		p.ErrorCode = "ImageQuotaLimitExceeded"
		p.ErrorMessage = "previous image of the instance still being made"
		r, claimed, err := s.RunClaim(ctx, p)
		require.NoError(t, err, status)
		require.True(t, claimed)
		require.Equal(t, status, r.Status)
		require.NotNil(t, r.FinishedAt, "a terminal claim is finished")
		require.Equal(t, p.StartedAt, *r.FinishedAt)
		require.Equal(t, p.ErrorCode, r.ErrorCode)
		require.Equal(t, p.ErrorMessage, r.ErrorMessage)
	}

	for _, status := range []history.Status{history.StatusRequested, history.StatusAvailable, "", "bogus"} {
		p := claimParams("web-nightly", "ins-6pb6lrmy", slot)
		p.Status = status
		_, _, err := s.RunClaim(ctx, p)
		require.ErrorIs(t, err, history.ErrInvalid, status)
	}
	p := claimParams("web-nightly", "ins-6pb6lrmy", time.Time{})
	_, _, err := s.RunClaim(ctx, p)
	require.ErrorIs(t, err, history.ErrInvalid)
}

func TestRunClaimConcurrently(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)

	const daemons = 8
	type result struct {
		run     history.Run
		claimed bool
		err     error
	}
	results := make([]result, daemons)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range daemons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			p := claimParams("web-nightly", "ins-6pb6lrmy", slot)
			p.DaemonID = string(rune('a' + i))
			r, c, err := s.RunClaim(ctx, p)
			results[i] = result{r, c, err}
		}()
	}
	close(start)
	wg.Wait()

	winners := 0
	for _, r := range results {
		require.NoError(t, r.err)
		require.Equal(t, results[0].run.ID, r.run.ID, "everyone sees the one row")
		if r.claimed {
			winners++
		}
	}
	require.Equal(t, 1, winners, "exactly one daemon claims the slot")
}

func TestRunLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	run := claim(t, s, "web-nightly", "ins-6pb6lrmy", slot)

	require.NoError(t, s.RunRename(ctx, run.ID, "web-nightly-ins-6pb6lrmy-x2"))
	require.NoError(t, s.RunRename(ctx, run.ID, "web-nightly-ins-6pb6lrmy-x2"), "renaming to the same name again")
	require.ErrorIs(t, s.RunRename(ctx, run.ID, ""), history.ErrInvalid)

	require.NoError(t, s.RunRequested(ctx, run.ID, "img-12345678", "req-1"))
	got, err := s.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, history.StatusRequested, got.Status)
	require.Equal(t, "img-12345678", got.ImageID)
	require.Equal(t, "req-1", got.RequestID)
	require.Equal(t, "web-nightly-ins-6pb6lrmy-x2", got.ImageName)
	require.Nil(t, got.FinishedAt)

	// Replaying the same accepted request is harmless; another one is a conflict.
	require.NoError(t, s.RunRequested(ctx, run.ID, "img-12345678", "req-1"))
	require.ErrorIs(t, s.RunRequested(ctx, run.ID, "img-99999999", "req-2"), history.ErrConflict)
	require.ErrorIs(t, s.RunRename(ctx, run.ID, "too-late"), history.ErrConflict)

	finished := slot.Add(20 * time.Minute)
	fail := history.RunFinishParams{RunID: run.ID, Status: history.StatusFailed, ErrorCode: "CREATEFAILED",
		ErrorMessage: "image creation failed", FinishedAt: finished}
	require.NoError(t, s.RunFinish(ctx, fail))
	require.NoError(t, s.RunFinish(ctx, fail), "finishing again with the same status")
	require.ErrorIs(t, s.RunFinish(ctx, history.RunFinishParams{RunID: run.ID, Status: history.StatusAvailable, FinishedAt: finished}), history.ErrConflict)

	got, err = s.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, history.StatusFailed, got.Status)
	require.Equal(t, "CREATEFAILED", got.ErrorCode)
	require.Equal(t, "image creation failed", got.ErrorMessage)
	require.Equal(t, finished, *got.FinishedAt)
	require.Equal(t, "req-1", got.RequestID, "the accepted RequestId stays")

	// The run is failed now, so a late RunRequested with its own RequestId is a replay, not news.
	require.NoError(t, s.RunRequested(ctx, run.ID, "img-12345678", "req-1"))
	got2, err := s.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, got, got2)
}

func TestRunFinishFromPending(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	run := claim(t, s, "web-nightly", "ins-6pb6lrmy", slot)

	require.ErrorIs(t, s.RunFinish(ctx, history.RunFinishParams{RunID: run.ID, Status: history.StatusRequested, FinishedAt: slot}), history.ErrInvalid)
	require.ErrorIs(t, s.RunFinish(ctx, history.RunFinishParams{RunID: run.ID, Status: history.StatusMissed}), history.ErrInvalid)
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: run.ID, Status: history.StatusMissed,
		ErrorMessage: "shut down before sending", FinishedAt: slot.Add(time.Minute)}))
	got, err := s.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, history.StatusMissed, got.Status)
	require.Empty(t, got.ErrorCode)
	require.Equal(t, "shut down before sending", got.ErrorMessage)
}

func TestRunUnknown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	const missing = 424242
	require.ErrorIs(t, s.RunRename(ctx, missing, "x"), history.ErrNotFound)
	require.ErrorIs(t, s.RunRequested(ctx, missing, "img-1", "req-1"), history.ErrNotFound)
	require.ErrorIs(t, s.RunFinish(ctx, history.RunFinishParams{RunID: missing, Status: history.StatusFailed, FinishedAt: slot}), history.ErrNotFound)
	require.ErrorIs(t, s.RunAvailable(ctx, missing, nil, "img-1", slot), history.ErrNotFound)
	require.ErrorIs(t, s.RunSetImageID(ctx, missing, "img-1"), history.ErrNotFound)
	_, err := s.RunGet(ctx, missing)
	require.ErrorIs(t, err, history.ErrNotFound)
}

func TestRunAvailableAndImageID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	run := claim(t, s, "web-nightly", "ins-6pb6lrmy", slot)

	// The seed's CreateImage answers without ImageId: the id is found by name later.
	require.NoError(t, s.RunRequested(ctx, run.ID, "", "req-1"))
	got, err := s.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Empty(t, got.ImageID)

	require.ErrorIs(t, s.RunSetImageID(ctx, run.ID, ""), history.ErrInvalid)
	require.NoError(t, s.RunSetImageID(ctx, run.ID, "img-aaaaaaaa"))
	require.NoError(t, s.RunSetImageID(ctx, run.ID, "img-aaaaaaaa"), "the same id again")
	require.ErrorIs(t, s.RunSetImageID(ctx, run.ID, "img-bbbbbbbb"), history.ErrConflict)

	at := slot.Add(12 * time.Minute)
	require.NoError(t, s.RunAvailable(ctx, run.ID, ptr[int64](50), "", at))
	require.NoError(t, s.RunAvailable(ctx, run.ID, ptr[int64](50), "", at), "marking available again")
	got, err = s.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, history.StatusAvailable, got.Status)
	require.Equal(t, "img-aaaaaaaa", got.ImageID, "an empty id keeps the known one")
	require.Equal(t, ptr[int64](50), got.ImageSizeGiB)
	require.Equal(t, at, *got.FinishedAt)

	require.ErrorIs(t, s.RunFinish(ctx, history.RunFinishParams{RunID: run.ID, Status: history.StatusFailed,
		ErrorCode: "Timeout", FinishedAt: at}), history.ErrConflict, "an available run does not fail later")

	other := claim(t, s, "web-nightly", "ins-2b3c4d5e", slot)
	require.NoError(t, s.RunRequested(ctx, other.ID, "img-cccccccc", "req-2"))
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: other.ID, Status: history.StatusFailed,
		ErrorCode: "Timeout", FinishedAt: at}))
	require.ErrorIs(t, s.RunAvailable(ctx, other.ID, nil, "", at), history.ErrConflict)
}

func TestRunListings(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)

	// Claimed out of slot order on purpose.
	late := claim(t, s, "web-nightly", "ins-aaaaaaaa", slot.Add(2*time.Hour))
	early := claim(t, s, "web-nightly", "ins-aaaaaaaa", slot)
	mid := claim(t, s, "db-hourly", "ins-bbbbbbbb", slot.Add(time.Hour))
	done := claim(t, s, "web-nightly", "ins-aaaaaaaa", slot.Add(-time.Hour))
	skippedParams := claimParams("web-nightly", "ins-cccccccc", slot)
	skippedParams.Status = history.StatusSkipped
	skipped, _, err := s.RunClaim(ctx, skippedParams)
	require.NoError(t, err)

	require.NoError(t, s.RunRequested(ctx, late.ID, "img-late0000", "req-late"))
	require.NoError(t, s.RunRequested(ctx, mid.ID, "img-mid00000", "req-mid"))
	require.NoError(t, s.RunRequested(ctx, done.ID, "img-done0000", "req-done"))
	require.NoError(t, s.RunAvailable(ctx, done.ID, ptr[int64](20), "", slot))

	ids := func(runs []history.Run) []int64 {
		out := []int64{}
		for _, r := range runs {
			out = append(out, r.ID)
		}
		return out
	}

	unfinished, err := s.RunsUnfinished(ctx)
	require.NoError(t, err)
	require.Equal(t, []int64{early.ID, mid.ID, late.ID}, ids(unfinished), "pending and requested, oldest slot first")

	requested, err := s.RunsRequested(ctx, 0)
	require.NoError(t, err)
	require.Equal(t, []int64{mid.ID, late.ID}, ids(requested))
	requested, err = s.RunsRequested(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, []int64{mid.ID}, ids(requested))

	recent, err := s.RunsRecent(ctx, slot, 0)
	require.NoError(t, err)
	require.ElementsMatch(t, []int64{late.ID, mid.ID, early.ID, skipped.ID}, ids(recent))
	require.Equal(t, late.ID, recent[0].ID, "newest slot first")
	recent, err = s.RunsRecent(ctx, slot.Add(-24*time.Hour), 2)
	require.NoError(t, err)
	require.Equal(t, []int64{late.ID, mid.ID}, ids(recent))
}

func TestClosedStoreIsUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	run := claim(t, s, "web-nightly", "ins-6pb6lrmy", slot)
	s.Close()
	err := s.RunRequested(ctx, run.ID, "img-1", "req-1")
	require.ErrorIs(t, err, history.ErrUnavailable)
	_, _, err = s.RunClaim(ctx, claimParams("web-nightly", "ins-6pb6lrmy", slot.Add(time.Hour)))
	require.ErrorIs(t, err, history.ErrUnavailable)
}

func TestSchemaRefusesImpossibleRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	for name, sql := range map[string]string{
		"unknown status": `INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at, status, image_name, daemon_id)
			VALUES ('p', 'ins-1', 'r', now(), now(), 'done', 'n', 'd')`,
		"finished but pending": `INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at, finished_at, status, image_name, daemon_id)
			VALUES ('p', 'ins-1', 'r', now(), now(), now(), 'pending', 'n', 'd')`,
		"failed without finish time": `INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at, status, image_name, daemon_id)
			VALUES ('p', 'ins-1', 'r', now(), now(), 'failed', 'n', 'd')`,
		"unknown deletion status": `INSERT INTO image_deletions (image_id, image_name, policy, instance_id, region, reason, requested_at, status)
			VALUES ('img-1', 'n', 'p', 'ins-1', 'r', 'why', now(), 'gone')`,
		"attempt zero": `INSERT INTO image_attempts (attempt, action, started_at) VALUES (0, 'CreateImage', now())`,
	} {
		_, err := s.Pool().Exec(ctx, sql)
		require.Error(t, err, name)
	}
}

func TestTerminatedConnectionIsUnavailableThenRecovers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dbURL := newStoreURL(t)
	cfg, err := pgxpool.ParseConfig(dbURL)
	require.NoError(t, err)
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false } // hand out the dead connection
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	s := history.NewStore(pool, zerolog.Nop())
	run := claim(t, s, "web-nightly", "ins-6pb6lrmy", slot)

	// An administrator (or a failover) ends every session of the database.
	admin := mustPool(t, dbURL)
	var terminated int
	require.NoError(t, admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))
FROM (SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() OFFSET 0) others`).Scan(&terminated))
	require.Positive(t, terminated)

	err = s.RunRequested(ctx, run.ID, "img-1", "req-1")
	require.ErrorIs(t, err, history.ErrUnavailable)

	// The pool dropped its dead connections: the retry dials afresh and succeeds.
	require.NoError(t, s.RunRequested(ctx, run.ID, "img-1", "req-1"))
	got, err := s.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, history.StatusRequested, got.Status)
}
