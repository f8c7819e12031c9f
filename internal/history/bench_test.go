package history_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

// BenchmarkRunClaim measures claiming new slots, the write on the path of every CreateImage.
func BenchmarkRunClaim(b *testing.B) {
	ctx := context.Background()
	s := newStore(b)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		p := claimParams(fmt.Sprintf("policy-%d", i%100), fmt.Sprintf("ins-%08d", i%1000), slot.Add(time.Duration(i)*time.Second))
		if _, claimed, err := s.RunClaim(ctx, p); err != nil || !claimed {
			b.Fatalf("claim %d: claimed=%v err=%v", i, claimed, err)
		}
	}
}

// BenchmarkRunClaimTaken measures claiming a slot another daemon already holds.
func BenchmarkRunClaimTaken(b *testing.B) {
	ctx := context.Background()
	s := newStore(b)
	p := claimParams("web-nightly", "ins-6pb6lrmy", slot)
	_, _, err := s.RunClaim(ctx, p)
	require.NoError(b, err)
	b.ResetTimer()
	for b.Loop() {
		if _, claimed, err := s.RunClaim(ctx, p); err != nil || claimed {
			b.Fatalf("claimed=%v err=%v", claimed, err)
		}
	}
}

// BenchmarkAttemptInsert measures recording one API call and counting it on its run.
func BenchmarkAttemptInsert(b *testing.B) {
	ctx := context.Background()
	s := newStore(b)
	run := claim(b, s, "web-nightly", "ins-6pb6lrmy", slot)
	b.ResetTimer()
	for i := 1; b.Loop(); i++ {
		a := history.Attempt{RunID: run.ID, Attempt: i, Action: "CreateImage", StartedAt: slot, Duration: 80 * time.Millisecond,
			RequestID: "req-" + strconv.Itoa(i), ErrorCode: "RequestLimitExceeded"}
		if err := s.AttemptInsert(ctx, a); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAudit measures docs/audit.md's audit queries over a generated history of
// IMAGER_BENCH_RUNS runs (default 100000; BENCHMARKS.md's history section uses 1000000) across 1,000 policies and
// 10,000 instances imaged daily, one attempt per run, one run in twenty failed.
func BenchmarkAudit(b *testing.B) {
	ctx := context.Background()
	s := newStore(b)
	runs := 100_000
	if v := os.Getenv("IMAGER_BENCH_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(b, err)
		runs = n
	}
	generateHistory(b, s, runs)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lastSlot := base.Add(time.Duration(runs/10000) * 24 * time.Hour)

	b.Run("LastAvailablePerInstance", func(b *testing.B) {
		for b.Loop() {
			rows, err := s.LastAvailablePerInstance(ctx)
			if err != nil || len(rows) == 0 {
				b.Fatalf("rows=%d err=%v", len(rows), err)
			}
		}
	})
	b.Run("FailuresSince24h", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.FailuresSince(ctx, lastSlot.Add(-24*time.Hour)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AttemptsOfRun", func(b *testing.B) {
		for i := int64(1); b.Loop(); i++ {
			if _, err := s.AttemptsOfRun(ctx, i%int64(runs)+1); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("RunsUnfinished", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.RunsUnfinished(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// generateHistory fills the schema with n runs: policy i%1000, instance (i%1000)*10 + (i/1000)%10,
// daily slots; the last hundred runs still requested.
func generateHistory(b *testing.B, s *history.Store, n int) {
	b.Helper()
	ctx := context.Background()
	_, err := s.Pool().Exec(ctx, `
INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at, finished_at, status,
	image_name, image_id, image_size_gib, request_id, error_code, attempts, daemon_id)
SELECT 'policy-' || (i % 1000),
       'ins-' || lpad(((i % 1000) * 10 + (i / 1000) % 10)::text, 8, '0'),
       'ap-guangzhou', ts, ts,
       CASE WHEN st = 'requested' THEN NULL ELSE ts + interval '15 minutes' END,
       st, 'image-' || i, 'img-' || lpad(i::text, 8, '0'),
       CASE WHEN st = 'available' THEN 20 END,
       'req-' || i,
       CASE WHEN st = 'failed' THEN 'CREATEFAILED' END,
       1, 'bench'
FROM (SELECT i, timestamptz '2026-01-01 00:00:00+00' + (i / 10000) * interval '1 day' AS ts,
             CASE WHEN i >= $1 - 100 THEN 'requested' WHEN i % 20 = 0 THEN 'failed' ELSE 'available' END AS st
      FROM generate_series(0, $1 - 1) AS i) g`, n)
	require.NoError(b, err)
	_, err = s.Pool().Exec(ctx, `
INSERT INTO image_attempts (run_id, attempt, action, started_at, duration_ms, request_id, error_code)
SELECT id, 1, 'CreateImage', started_at, 90, request_id, error_code FROM image_runs`)
	require.NoError(b, err)
	// As autovacuum would: statistics, and the visibility map that index-only scans need.
	for _, table := range []string{"image_runs", "image_attempts"} {
		_, err = s.Pool().Exec(ctx, "VACUUM ANALYZE "+table)
		require.NoError(b, err)
	}
}
