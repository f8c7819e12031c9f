package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
)

// pruneFixture is a migrated database whose history has rows older than 30 days, and a policy
// file that keeps 30 days.
type pruneFixture struct {
	e        *e2e
	dbURL    string
	policies string
	old      history.Run // failed 60 days ago: pruned
	oldGone  history.Run // available 59 days ago, image deleted since: pruned with its deletion
	recent   history.Run // available yesterday: kept
}

func newPruneFixture(t *testing.T) *pruneFixture {
	t.Helper()
	ctx := context.Background()
	f := &pruneFixture{e: &e2e{dir: t.TempDir()}, dbURL: pgtest.NewDatabase(t)}
	f.policies = f.e.writePolicies(t, "version: 1\nhistory:\n  keep: 30d\npolicies:\n"+
		"  - {name: web, schedule: '0 3 * * *', region: ap-guangzhou, instances: [ins-aaaaaaaa]}\n")
	s, err := history.Open(ctx, f.dbURL, zerolog.Nop())
	require.NoError(t, err)
	defer s.Close()
	_, err = s.Migrate(ctx)
	require.NoError(t, err)

	now := time.Now().UTC().Truncate(time.Second)
	claim := func(at time.Time) history.Run {
		r, _, err := s.RunClaim(ctx, history.RunClaimParams{Policy: "web", InstanceID: "ins-aaaaaaaa", Region: "ap-guangzhou",
			ScheduledAt: at, ImageName: "web-" + at.Format("20060102"), DaemonID: "d1", StartedAt: at, Status: history.StatusPending})
		require.NoError(t, err)
		require.NoError(t, s.AttemptInsert(ctx, history.Attempt{RunID: r.ID, Attempt: 1, Action: "CreateImage", StartedAt: at, RequestID: "req"}))
		return r
	}
	availableAt := func(at time.Time, imageID string) history.Run {
		r := claim(at)
		require.NoError(t, s.RunRequested(ctx, r.ID, imageID, "req-"+imageID))
		require.NoError(t, s.RunAvailable(ctx, r.ID, nil, "", at.Add(time.Hour)))
		r, err := s.RunGet(ctx, r.ID)
		require.NoError(t, err)
		return r
	}
	f.old = claim(now.Add(-60 * 24 * time.Hour))
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: f.old.ID, Status: history.StatusFailed,
		ErrorCode: "InternalError", ErrorMessage: "no", FinishedAt: f.old.ScheduledAt.Add(time.Minute)}))
	f.oldGone = availableAt(now.Add(-59*24*time.Hour), "img-gone0000")
	id, _, err := s.DeletionInsert(ctx, history.Deletion{ImageID: f.oldGone.ImageID, ImageName: f.oldGone.ImageName, Policy: "web",
		InstanceID: "ins-aaaaaaaa", Region: "ap-guangzhou", RunID: f.oldGone.ID, Reason: "keep_last 1", RequestedAt: now.Add(-58 * 24 * time.Hour)})
	require.NoError(t, err)
	require.NoError(t, s.DeletionFinish(ctx, id, history.DeletionDeleted, "req-del", "", "", now.Add(-58*24*time.Hour)))
	f.recent = availableAt(now.Add(-24*time.Hour), "img-recent00")
	_, err = s.Pool().Exec(ctx, `INSERT INTO replicas (daemon_id, host, pid, role, started_at, seen_at)
VALUES ('gone/1/1', 'h', 1, 'stopped', now() - interval '3 days', now() - interval '2 days')`)
	require.NoError(t, err)
	return f
}

func (f *pruneFixture) count(t *testing.T, sql string) int {
	t.Helper()
	var n int
	require.NoError(t, connect(t, f.dbURL).QueryRow(context.Background(), sql).Scan(&n))
	return n
}

var rowsTotalRe = regexp.MustCompile(`(?m)^(\d+) rows (would be deleted \(dry run: nothing deleted\)|deleted)$`)

func TestPruneHistoryCommand(t *testing.T) {
	f := newPruneFixture(t)
	db := []string{"--policies", f.policies, "--database-url", f.dbURL}
	runs, attempts := f.count(t, `SELECT count(*) FROM image_runs`), f.count(t, `SELECT count(*) FROM image_attempts`)

	code, stdout, stderr := f.e.imager(t, append([]string{"prune-history", "--dry-run"}, db...)...)
	require.Equal(t, exitOK, code, stderr)
	require.Empty(t, stderr, "a one-shot command logs only warnings")
	require.Regexp(t, `^history\.keep 30d: rows older than \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n`, stdout)
	require.Regexp(t, `TABLE +ROWS +WHAT\n`, stdout)
	require.Regexp(t, `\nimage_runs +2 +finished runs`, stdout)
	require.Regexp(t, `\nimage_attempts +2 +API calls of those runs`, stdout)
	require.Regexp(t, `\nimage_deletions +1 +deletions done`, stdout)
	require.Regexp(t, `\nimage_attempts +0 +API calls of those deletions`, stdout)
	require.Regexp(t, `\ncoverage_days +\d+ +days before then`, stdout)
	require.Regexp(t, `\nreplicas +1 +processes not seen for 1d`, stdout)
	require.Regexp(t, `\nfire_requests +0 +`, stdout)
	m := rowsTotalRe.FindStringSubmatch(stdout)
	require.NotNil(t, m, stdout)
	require.Equal(t, "would be deleted (dry run: nothing deleted)", m[2])
	dryTotal := m[1]
	require.Equal(t, runs, f.count(t, `SELECT count(*) FROM image_runs`), "a dry run deletes nothing")
	require.Equal(t, attempts, f.count(t, `SELECT count(*) FROM image_attempts`))

	// A live leader: the command refuses and deletes nothing.
	_, err := connect(t, f.dbURL).Exec(context.Background(), `INSERT INTO leader_lease (name, term, daemon_id, host, pid, acquired_at, renewed_at, expires_at)
VALUES ('leader', 7, 'host-x/42/1', 'host-x', 42, now(), now(), now() + interval '1 hour')`)
	require.NoError(t, err)
	code, stdout, stderr = f.e.imager(t, append([]string{"prune-history"}, db...)...)
	require.Equal(t, exitFail, code)
	require.Empty(t, stdout)
	require.Equal(t, "imager prune-history: a leader is running (host-x/42/1, term 7): it prunes the history every hour by history.keep; "+
		"see what would go with --dry-run, or stop every imager process to prune now\n", stderr)
	require.Equal(t, runs, f.count(t, `SELECT count(*) FROM image_runs`))

	// No live leader: it takes the lease, prunes what the dry run counted, and resigns.
	_, err = connect(t, f.dbURL).Exec(context.Background(), `UPDATE leader_lease SET expires_at = now() - interval '1 second'`)
	require.NoError(t, err)
	code, stdout, stderr = f.e.imager(t, append([]string{"prune-history"}, db...)...)
	require.Equal(t, exitOK, code, stderr)
	m = rowsTotalRe.FindStringSubmatch(stdout)
	require.NotNil(t, m, stdout)
	require.Equal(t, "deleted", m[2])
	require.Equal(t, dryTotal, m[1], "the prune deletes what the dry run counted")
	require.Regexp(t, `\nimage_runs +2 +`, stdout)
	require.Equal(t, runs-2, f.count(t, `SELECT count(*) FROM image_runs`))
	require.Equal(t, 1, f.count(t, `SELECT count(*) FROM image_runs WHERE id = `+strconv.FormatInt(f.recent.ID, 10)))
	require.Equal(t, 0, f.count(t, `SELECT count(*) FROM image_deletions`))
	require.Equal(t, 8, f.count(t, `SELECT term FROM leader_lease`), "it pruned under a term of its own")
	require.Equal(t, 0, f.count(t, `SELECT count(*) FROM leader_lease WHERE expires_at > now()`), "and resigned it")
	require.Equal(t, 0, f.count(t, `SELECT count(*) FROM replicas WHERE daemon_id = 'gone/1/1'`))

	code, stdout, stderr = f.e.imager(t, append([]string{"prune-history", "--dry-run"}, db...)...)
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "\n0 rows would be deleted (dry run: nothing deleted)\n")
}

func TestPruneHistoryCommandBadPolicyFile(t *testing.T) {
	e := &e2e{dir: t.TempDir()}
	path := e.writePolicies(t, "version: 1\nhistory:\n  keep: 7d\npolicies:\n"+
		"  - {name: web, schedule: '0 3 * * *', region: ap-guangzhou, instances: [ins-aaaaaaaa]}\n")
	code, stdout, stderr := e.imager(t, "prune-history", "--dry-run", "--policies", path, "--database-url", "postgres://nowhere.invalid/x")
	require.Equal(t, exitFail, code)
	require.Empty(t, stdout)
	require.Equal(t, path+":3: history.keep: must be at least 30d, got 7d\n", stderr)
}

// TestLeaderPrunesHistory drives the leader's prune loop on a fake clock: a prune a minute after
// election, then every hour, each logged with its counts; it ends with leadership.
func TestLeaderPrunesHistory(t *testing.T) {
	f := newPruneFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lines := make(chan string, 16)
	log := zerolog.New(chanWriter(lines))
	store, err := history.Open(ctx, f.dbURL, zerolog.Nop())
	require.NoError(t, err)
	defer store.Close()
	cfg, err := policy.Load(f.policies)
	require.NoError(t, err)
	clock := clockwork.NewFakeClockAt(time.Now())
	d := &daemon{log: log, clock: clock, store: store, daemonID: "me/1/1"}
	d.cfg.Store(cfg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.pruneHistoryLoop(ctx, &leaderWork{term: 0})
	}()

	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	clock.Advance(historyPruneFirstAfter)
	var first map[string]any
	require.NoError(t, json.Unmarshal([]byte(<-lines), &first))
	require.Equal(t, "info", first["level"])
	require.Equal(t, "history pruned", first["message"])
	require.Equal(t, "history-prune", first["component"])
	require.Equal(t, float64(2), first["runs_deleted"])
	require.Equal(t, float64(2), first["run_attempts_deleted"])
	require.Equal(t, float64(1), first["deletions_deleted"])
	require.Equal(t, float64(1), first["replicas_deleted"])
	require.Equal(t, float64(30*24*3600), first["keep_s"])
	require.Contains(t, first, "elapsed_ms")
	require.Contains(t, first, "coverage_days_deleted")

	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	clock.Advance(historyPruneEvery)
	var second map[string]any
	require.NoError(t, json.Unmarshal([]byte(<-lines), &second))
	require.Equal(t, float64(0), second["runs_deleted"], "an hour later nothing is left to prune")

	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	cancel()
	<-done
	require.Empty(t, lines, "nothing logged when leadership ends")
}

// TestPruneHistoryOnceLogsFailures: a failed prune is a warning with its error, and a prune
// cut short by the end of leadership logs nothing.
func TestPruneHistoryOnceLogsFailures(t *testing.T) {
	t.Parallel()
	var buf strings.Builder
	log := zerolog.New(&buf)
	ctx := context.Background()
	store, err := history.Open(ctx, pgtest.NewDatabase(t), zerolog.Nop())
	require.NoError(t, err)
	defer store.Close()
	_, err = store.Migrate(ctx)
	require.NoError(t, err)
	p := history.HistoryPruneParams{Keep: policy.DefaultHistoryKeep, Now: time.Now(), DaemonID: "me"}

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, pruneHistoryOnce(canceled, store, p, time.Now, log), context.Canceled)
	require.Empty(t, buf.String())

	err = pruneHistoryOnce(ctx, store.WithTerm(3), p, time.Now, log) // no lease at all: fenced
	require.ErrorIs(t, err, history.ErrFenced)
	var line map[string]any
	require.NoError(t, json.Unmarshal([]byte(buf.String()), &line))
	require.Equal(t, "warn", line["level"])
	require.Contains(t, line["error"], "fenced")
	require.Equal(t, float64(0), line["runs_deleted"])
}

// chanWriter sends each write (one log line) to a channel.
type chanWriter chan string

func (c chanWriter) Write(p []byte) (int, error) {
	c <- string(p)
	return len(p), nil
}
