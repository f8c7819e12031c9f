package history_test

import (
	"context"
	"fmt"
	"io/fs"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/migrate"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/migrations"
)

// historyStep is one write of the history both databases of TestUpgradeFrom0011AgreesWithAFreshBuild
// receive: old is the SQL the store sent before 0012 (the triggers of 0003-0011 then wrote the
// effects), store is the same write through today's store (effects.go writes them).
type historyStep struct {
	what  string
	old   func(ctx context.Context, pool *pgxpool.Pool) error
	store func(ctx context.Context, s *history.Store) error
}

// TestUpgradeFrom0011AgreesWithAFreshBuild builds one database at 0011 and writes a history into
// it the way the store did then (the triggers wrote latest_images, coverage, the outbox and the
// fires), upgrades it, and writes the same history into a fresh database through today's store.
// Both then finish the fire left open, and the views, the kept answers, the outbox and the fires
// must be the same.
func TestUpgradeFrom0011AgreesWithAFreshBuild(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Hour)
	day := 24 * time.Hour
	s1, s2, s3 := now.Add(-3*day), now.Add(-2*day), now.Add(-day)
	at := now.Add(-time.Minute)

	upURL := pgtest.NewDatabase(t)
	upgraded := mustPool(t, upURL)
	_, err := migrate.ApplyFS(ctx, upgraded, migrationsBefore(t, "0012"))
	require.NoError(t, err)
	fresh := newStore(t)

	exec := func(sql string, args ...any) func(context.Context, *pgxpool.Pool) error {
		return func(ctx context.Context, pool *pgxpool.Pool) error {
			_, err := pool.Exec(ctx, sql, args...)
			return err
		}
	}
	claimOld := func(status string, slot time.Time, insts ...string) func(context.Context, *pgxpool.Pool) error {
		return func(ctx context.Context, pool *pgxpool.Pool) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				for _, inst := range insts {
					var finished *time.Time
					if status != "pending" {
						finished = &slot
					}
					if _, err := tx.Exec(ctx, `INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at,
	finished_at, status, image_name, error_code, daemon_id, term) VALUES ('web', $1, 'ap-guangzhou', $2, $2, $3, $4, $5,
	CASE WHEN $4 = 'missed' THEN 'DaemonDown' END, 'daemon-a', NULL)`, inst, slot, finished, status,
						"web-"+inst+"-"+slot.Format("0102")); err != nil {
						return err
					}
				}
				_, err := tx.Exec(ctx, `INSERT INTO policy_slots (policy, last_slot) VALUES ('web', $1)
ON CONFLICT (policy) DO UPDATE SET last_slot = GREATEST(policy_slots.last_slot, EXCLUDED.last_slot)`, slot)
				return err
			})
		}
	}
	claimNew := func(status history.Status, slot time.Time, insts ...string) func(context.Context, *history.Store) error {
		return func(ctx context.Context, s *history.Store) error {
			var ps []history.RunClaimParams
			for _, inst := range insts {
				p := history.RunClaimParams{Policy: "web", InstanceID: inst, Region: "ap-guangzhou", ScheduledAt: slot,
					StartedAt: slot, ImageName: "web-" + inst + "-" + slot.Format("0102"), DaemonID: "daemon-a", Status: status}
				if status == history.StatusMissed {
					p.ErrorCode = "DaemonDown"
				}
				ps = append(ps, p)
			}
			_, _, err := s.RunsClaimFire(ctx, ps)
			return err
		}
	}
	runID := func(ctx context.Context, pool *pgxpool.Pool, inst string, slot time.Time) int64 {
		var id int64
		require.NoError(t, pool.QueryRow(ctx, `SELECT id FROM image_runs WHERE policy = 'web' AND instance_id = $1 AND scheduled_at = $2`,
			inst, slot).Scan(&id))
		return id
	}
	requestedOld := func(inst string, slot time.Time) func(context.Context, *pgxpool.Pool) error {
		return func(ctx context.Context, pool *pgxpool.Pool) error {
			_, err := pool.Exec(ctx, `UPDATE image_runs SET status = 'requested', image_id = $2, request_id = 'req-' || $2 WHERE id = $1`,
				runID(ctx, pool, inst, slot), "img-"+inst[4:]+slot.Format("0102"))
			return err
		}
	}
	requestedNew := func(inst string, slot time.Time) func(context.Context, *history.Store) error {
		return func(ctx context.Context, s *history.Store) error {
			img := "img-" + inst[4:] + slot.Format("0102")
			return s.RunRequested(ctx, runID(ctx, s.Pool(), inst, slot), img, "req-"+img)
		}
	}
	availableOld := func(inst string, slot, done time.Time) func(context.Context, *pgxpool.Pool) error {
		return func(ctx context.Context, pool *pgxpool.Pool) error {
			_, err := pool.Exec(ctx, `UPDATE image_runs SET status = 'available', finished_at = $2, image_size_gib = 20 WHERE id = $1`,
				runID(ctx, pool, inst, slot), done)
			return err
		}
	}
	availableNew := func(inst string, slot, done time.Time) func(context.Context, *history.Store) error {
		return func(ctx context.Context, s *history.Store) error {
			return s.RunAvailable(ctx, runID(ctx, s.Pool(), inst, slot), ptr[int64](20), "", done)
		}
	}
	failedOld := func(inst string, slot, done time.Time, code string) func(context.Context, *pgxpool.Pool) error {
		return func(ctx context.Context, pool *pgxpool.Pool) error {
			_, err := pool.Exec(ctx, `UPDATE image_runs SET status = 'failed', finished_at = $2, error_code = $3, error_message = 'it failed' WHERE id = $1`,
				runID(ctx, pool, inst, slot), done, code)
			return err
		}
	}
	failedNew := func(inst string, slot, done time.Time, code string) func(context.Context, *history.Store) error {
		return func(ctx context.Context, s *history.Store) error {
			return s.RunFinish(ctx, history.RunFinishParams{RunID: runID(ctx, s.Pool(), inst, slot), Status: history.StatusFailed,
				ErrorCode: code, ErrorMessage: "it failed", FinishedAt: done})
		}
	}

	steps := []historyStep{
		{"policies",
			exec(`INSERT INTO policies (name, schedule, timezone, interval_seconds, enabled, source_file, source_line, loaded_at)
VALUES ('web', '0 3 * * *', 'Asia/Shanghai', 86400, true, 'p.yaml', 1, $1)`, s1),
			func(ctx context.Context, s *history.Store) error {
				_, err := s.PoliciesSync(ctx, []history.PolicyRow{{Name: "web", Schedule: "0 3 * * *", Timezone: "Asia/Shanghai",
					Interval: day, Enabled: true, SourceFile: "p.yaml", SourceLine: 1, LoadedAt: s1}}, s1)
				return err
			}},
		{"fire 1", claimOld("pending", s1, "ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc"),
			claimNew(history.StatusPending, s1, "ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc")},
		{"a requested", requestedOld("ins-aaaaaaaa", s1), requestedNew("ins-aaaaaaaa", s1)},
		{"a available", availableOld("ins-aaaaaaaa", s1, s1.Add(20*time.Minute)), availableNew("ins-aaaaaaaa", s1, s1.Add(20*time.Minute))},
		{"b failed", failedOld("ins-bbbbbbbb", s1, s1.Add(time.Minute), "InternalError"), failedNew("ins-bbbbbbbb", s1, s1.Add(time.Minute), "InternalError")},
		{"c failed", failedOld("ins-cccccccc", s1, s1.Add(2*time.Minute), "InternalError"), failedNew("ins-cccccccc", s1, s1.Add(2*time.Minute), "InternalError")},
		{"fire 2", claimOld("pending", s2, "ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc"),
			claimNew(history.StatusPending, s2, "ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc")},
		{"b requested", requestedOld("ins-bbbbbbbb", s2), requestedNew("ins-bbbbbbbb", s2)},
		{"b recovers", availableOld("ins-bbbbbbbb", s2, s2.Add(30*time.Minute)), availableNew("ins-bbbbbbbb", s2, s2.Add(30*time.Minute))},
		{"a requested 2", requestedOld("ins-aaaaaaaa", s2), requestedNew("ins-aaaaaaaa", s2)},
		{"a accepted image fails", failedOld("ins-aaaaaaaa", s2, s2.Add(time.Hour), "CREATEFAILED"), failedNew("ins-aaaaaaaa", s2, s2.Add(time.Hour), "CREATEFAILED")},
		{"slot 3 missed", claimOld("missed", s3, "ins-bbbbbbbb", "ins-dddddddd"), claimNew(history.StatusMissed, s3, "ins-bbbbbbbb", "ins-dddddddd")},
		{"a fire without runs",
			func(ctx context.Context, pool *pgxpool.Pool) error {
				return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `INSERT INTO policy_slots (policy, last_slot) VALUES ('db', $1)`, s3); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, `SELECT notification_fire_without_runs('db', $1, 'TargetsUnresolved', 'no answer', now())`, s3)
					return err
				})
			},
			func(ctx context.Context, s *history.Store) error {
				return s.FireWithoutRuns(ctx, "db", s3, "TargetsUnresolved", "no answer")
			}},
		{"RPO evaluated", exec(`SELECT notification_rpo_evaluate($1)`, at),
			func(ctx context.Context, s *history.Store) error { _, err := s.BreachesEvaluate(ctx, at); return err }},
	}
	for _, st := range steps {
		require.NoError(t, st.old(ctx, upgraded), "old: %s", st.what)
		require.NoError(t, st.store(ctx, fresh), "store: %s", st.what)
	}

	// The upgrade, then the same last writes on both: the open fire of slot 2 ends with c.
	up, err := history.Open(ctx, upURL, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(up.Close)
	applied, err := up.Migrate(ctx)
	require.NoError(t, err)
	require.Contains(t, applied, "0012_rules_in_go")
	for _, s := range []*history.Store{up, fresh} {
		require.NoError(t, requestedNew("ins-cccccccc", s2)(ctx, s))
		require.NoError(t, availableNew("ins-cccccccc", s2, s2.Add(90*time.Minute))(ctx, s))
		_, err := s.BreachesEvaluate(ctx, now)
		require.NoError(t, err)
	}

	for _, q := range []string{
		`SELECT policy, instance_id, last_slot, last_status, last_error_code, last_available_image_id,
			last_available_image_name, last_available_slot, overdue FROM coverage ORDER BY 1, 2`,
		`SELECT policy, instance_id, last_slot, last_status, last_available_image_id FROM rpo_breaches ORDER BY 1, 2`,
		`SELECT * FROM daily_coverage ORDER BY 1, 2, 3`,
		`SELECT * FROM latest_images ORDER BY 1`,
		`SELECT * FROM coverage_state ORDER BY 1, 2`,
		`SELECT name, interval_seconds, overdue_seconds FROM policies ORDER BY 1`,
		`SELECT event, policy, instance_id, run_id, slot, status, error_code, error_message, image_id, image_name, detail,
			payload - 'event_id' - 'at', CASE WHEN event LIKE 'fire_%' THEN NULL ELSE at END
		 FROM notifications ORDER BY event, policy, slot, instance_id`,
		`SELECT f.policy, f.slot, expected_runs, outcome, runs, available, unfinished, failed, missed, skipped, errored,
			first_error_code, first_error_message, s.event, e.event, e.detail
		 FROM notification_fires f LEFT JOIN notifications s ON s.id = f.start_notification_id
		 LEFT JOIN notifications e ON e.id = f.end_notification_id ORDER BY 1, 2`,
		`SELECT b.policy, b.instance_id, opened_at, closed_at, closed_by, n.event FROM notification_breaches b
		 LEFT JOIN notifications n ON n.id = b.notification_id ORDER BY 1, 2, 3`,
	} {
		want, got := dump(t, fresh.Pool(), q), dump(t, upgraded, q)
		require.NotEmpty(t, want, q)
		require.Equal(t, want, got, "fresh build (want) and upgraded database (got) differ on\n%s", q)
	}
	// The history did what it was written for: every kind of event was written.
	events := dump(t, fresh.Pool(), `SELECT DISTINCT event FROM notifications ORDER BY 1`)
	require.Equal(t, []string{"[failed]", "[fire_failed]", "[fire_started]", "[missed]", "[recovered]", "[rpo_breach]"}, events)
}

// dump is every row of query q, one string per row.
func dump(t *testing.T, pool *pgxpool.Pool, q string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), q)
	require.NoError(t, err)
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		require.NoError(t, err)
		out = append(out, fmt.Sprint(vals))
	}
	require.NoError(t, rows.Err())
	return out
}

// migrationsBefore is the shipped migrations numbered before version: the schema an earlier
// release left.
func migrationsBefore(t *testing.T, version string) fstest.MapFS {
	t.Helper()
	out := fstest.MapFS{}
	names, err := fs.Glob(migrations.FS, "*.sql")
	require.NoError(t, err)
	for _, name := range names {
		if name < version {
			data, err := fs.ReadFile(migrations.FS, name)
			require.NoError(t, err)
			out[name] = &fstest.MapFile{Data: data}
		}
	}
	return out
}
