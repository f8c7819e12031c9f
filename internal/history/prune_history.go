package history

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// History pruning (policy file `history.keep`, `imager prune-history`): the rows that no longer
// change are deleted once they are older than keep, in small fenced transactions, so that the
// history tables stop growing while every answer the commands and views give stays. The
// notification tables are pruned by NotificationsPrune (`notify.keep`), not here.

// historyPruneBatch is how many rows one transaction of HistoryPrune deletes at most, so a first
// prune of a long history never holds its locks for long (tests lower it).
var historyPruneBatch = 1000

// ProcessKeep is how long the rows of processes and of imager once requests stay once they are
// over: a replicas row not seen for that long, and a fire request finished that long ago.
const ProcessKeep = 24 * time.Hour

// runTerminal is the SQL list of the run statuses that no longer change.
const runTerminal = `('available', 'failed', 'missed', 'skipped')`

// runPrunable is the condition a run r must meet to be pruned, with the cutoff as parameter $1:
// finished, with a slot older than the cutoff, not an answer (the last run or last available run
// of its (policy, instance) in coverage_state, nor the image to restore its instance from in
// latest_images), not available with an image imager has not deleted (retention still weighs
// that image: a run pruned before its image would leave the image to nobody), and without a copy
// that is still being made or is available and not deleted (the copy's row goes with its run, and
// the copies' retention weighs that copy as retention weighs the run's image).
const runPrunable = `r.scheduled_at < $1 AND r.status IN ` + runTerminal + `
	AND r.id NOT IN (SELECT c.last_run_id FROM coverage_state c)
	AND r.id NOT IN (SELECT c.last_available_run_id FROM coverage_state c WHERE c.last_available_run_id IS NOT NULL)
	AND r.id NOT IN (SELECT l.run_id FROM latest_images l)
	AND NOT (r.status = 'available' AND r.image_id IS NOT NULL AND NOT EXISTS (
		SELECT 1 FROM image_deletions dd WHERE dd.image_id = r.image_id AND dd.status = 'deleted'))
	AND NOT EXISTS (SELECT 1 FROM image_copies cp WHERE cp.run_id = r.id AND cp.deleted_at IS NULL
		AND (cp.status IN ('requested', 'syncing') OR (cp.status = 'available' AND cp.image_id IS NOT NULL)))`

// deletionDone is the condition a deletion d must meet before its runs are weighed: deleted (a
// pending or failed one is retried at the next retention pass) and finished before the cutoff $1.
const deletionDone = `d.status = 'deleted' AND d.finished_at < $1`

// deletionRunless says that no run of d's image is left in image_runs, and, for the deletion of a
// copy, that the copy's row is gone (copy_id is set to NULL when its run is pruned). A deletion
// goes only after the row that made its image: while that row stays, its deleted deletion is what
// tells retention the image is gone.
const deletionRunless = `d.copy_id IS NULL AND NOT EXISTS (SELECT 1 FROM image_runs r
	WHERE r.policy = d.policy AND r.instance_id = d.instance_id AND r.image_id = d.image_id)`

// deletionRunlessAfterRuns is deletionRunless as it will hold once the prunable runs are gone:
// what a dry run counts.
const deletionRunlessAfterRuns = `NOT EXISTS (SELECT 1 FROM image_runs r
	WHERE r.policy = d.policy AND r.instance_id = d.instance_id AND r.image_id = d.image_id
		AND NOT (` + runPrunable + `))
	AND (d.copy_id IS NULL OR EXISTS (SELECT 1 FROM image_copies cp JOIN image_runs r ON r.id = cp.run_id
		WHERE cp.id = d.copy_id AND ` + runPrunable + `))`

// HistoryPruneParams says what HistoryPrune removes.
type HistoryPruneParams struct {
	// Keep is how long finished runs, deleted images' deletions and coverage days stay (the
	// policy file's history.keep). It must be positive.
	Keep time.Duration
	// Now is the time the ages are measured from (the caller's clock).
	Now time.Time
	// DaemonID is the caller's replicas row, never pruned.
	DaemonID string
	// DryRun counts what would go, with the same conditions, and deletes nothing.
	DryRun bool
}

// HistoryPruned counts, per table, the rows HistoryPrune deleted (or, dry run, would delete).
type HistoryPruned struct {
	Runs             int64 // image_runs
	RunAttempts      int64 // image_attempts of those runs
	Copies           int64 // image_copies of those runs
	Deletions        int64 // image_deletions
	DeletionAttempts int64 // image_attempts of those deletions
	CoverageDays     int64 // coverage_days
	Replicas         int64 // replicas
	FireRequests     int64 // fire_requests
}

// Total is the number of rows counted in every table.
func (p HistoryPruned) Total() int64 {
	return p.Runs + p.RunAttempts + p.Copies + p.Deletions + p.DeletionAttempts + p.CoverageDays + p.Replicas + p.FireRequests
}

// HistoryPrune deletes the history that no longer changes once it is older than p.Keep, measured
// from p.Now:
//   - coverage_days of days before the cutoff's (UTC) date;
//   - image_runs finished, with a slot before the cutoff, that are no answer (coverage_state's
//     last run and last available run of their pair, latest_images' run of their instance) and
//     not available with an image imager has not deleted, nor with a copy being made or available
//     and not deleted; with their image_attempts and image_copies. Pending and requested runs stay
//     however old;
//   - image_deletions deleted before the cutoff whose image has no run (and, for a copy, no copy
//     row) left, with their attempts (a pending or failed deletion is retried, and stays);
//   - replicas rows not seen for ProcessKeep (never p.DaemonID's), and fire requests done or
//     failed ProcessKeep ago.
//
// Each table is pruned in transactions of at most a batch of rows, each fenced like a claim (with
// a term, nothing is deleted unless it is the live lease's: ErrFenced); rows locked by another
// transaction are left for the next prune. The counts are those of the batches committed, also
// when an error stops the prune. With p.DryRun nothing is deleted and the counts are what a prune
// would delete now.
func (s *Store) HistoryPrune(ctx context.Context, p HistoryPruneParams) (HistoryPruned, error) {
	var out HistoryPruned
	if p.Keep <= 0 || p.Now.IsZero() {
		return out, fmt.Errorf("prune history: keep %s and a reference time are required: %w", p.Keep, ErrInvalid)
	}
	cutoff := p.Now.Add(-p.Keep)
	// coverage_days.day is a calendar date (in the policy's time zone): a day goes once the whole
	// UTC day before the cutoff's has passed, whatever the zone.
	cutoffDay := cutoff.UTC().Format(time.DateOnly)
	processCutoff := p.Now.Add(-ProcessKeep)
	if p.DryRun {
		return s.historyPruneCount(ctx, cutoff, cutoffDay, processCutoff, p.DaemonID)
	}
	var err error
	// Days, runs, then deletions: no trigger recomputes anything when a run goes (effects.go
	// keeps coverage as runs are written), so each table is pruned by its own rule.
	if out.CoverageDays, err = s.pruneCoverageDays(ctx, cutoffDay); err != nil {
		return out, err
	}
	if out.Runs, out.RunAttempts, out.Copies, err = s.pruneRuns(ctx, cutoff); err != nil {
		return out, err
	}
	if out.Deletions, out.DeletionAttempts, err = s.pruneDeletions(ctx, cutoff); err != nil {
		return out, err
	}
	if out.Replicas, err = s.pruneSimple(ctx, "prune replicas", `DELETE FROM replicas WHERE daemon_id IN (
	SELECT daemon_id FROM replicas WHERE seen_at < $1 AND daemon_id <> $2
	ORDER BY daemon_id LIMIT $3 FOR UPDATE SKIP LOCKED)`, processCutoff, p.DaemonID); err != nil {
		return out, err
	}
	if out.FireRequests, err = s.pruneSimple(ctx, "prune fire requests", `DELETE FROM fire_requests WHERE id IN (
	SELECT id FROM fire_requests WHERE status IN ('done', 'failed') AND finished_at < $1
	ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)`, processCutoff); err != nil {
		return out, err
	}
	return out, nil
}

// historyPruneCount counts what HistoryPrune would delete, in one snapshot.
func (s *Store) historyPruneCount(ctx context.Context, cutoff time.Time, cutoffDay string, processCutoff time.Time, daemonID string) (HistoryPruned, error) {
	var out HistoryPruned
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT
	(SELECT count(*) FROM image_runs r WHERE `+runPrunable+`),
	(SELECT count(*) FROM image_attempts a WHERE a.run_id IN (SELECT r.id FROM image_runs r WHERE `+runPrunable+`)),
	(SELECT count(*) FROM image_copies cp WHERE cp.run_id IN (SELECT r.id FROM image_runs r WHERE `+runPrunable+`))`,
			cutoff).Scan(&out.Runs, &out.RunAttempts, &out.Copies); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT
	(SELECT count(*) FROM image_deletions d WHERE `+deletionDone+` AND `+deletionRunlessAfterRuns+`),
	(SELECT count(*) FROM image_attempts a WHERE a.deletion_id IN (
		SELECT d.id FROM image_deletions d WHERE `+deletionDone+` AND `+deletionRunlessAfterRuns+`))`,
			cutoff).Scan(&out.Deletions, &out.DeletionAttempts); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT
	(SELECT count(*) FROM coverage_days WHERE day < $1::date),
	(SELECT count(*) FROM replicas WHERE seen_at < $2 AND daemon_id <> $3),
	(SELECT count(*) FROM fire_requests WHERE status IN ('done', 'failed') AND finished_at < $2)`,
			cutoffDay, processCutoff, daemonID).Scan(&out.CoverageDays, &out.Replicas, &out.FireRequests)
	})
	if err != nil {
		return HistoryPruned{}, fmt.Errorf("prune history (dry run): %w", s.translate(err))
	}
	return out, nil
}

// pruneBatches calls batch in one fenced transaction at a time until it reports that it found
// fewer rows than a batch (more false), and returns the sum of what the batches deleted.
func (s *Store) pruneBatches(ctx context.Context, what string, batch func(tx pgx.Tx) (deleted, extra int64, more bool, err error)) (deleted, extra int64, err error) {
	for {
		var n, x int64
		more := false
		err := s.fencedTx(ctx, what, func(tx pgx.Tx) error {
			var err error
			n, x, more, err = batch(tx)
			return err
		})
		if err != nil {
			return deleted, extra, err
		}
		deleted, extra = deleted+n, extra+x
		if !more {
			return deleted, extra, nil
		}
	}
}

// pruneRuns deletes the prunable runs, their attempts and their copies, oldest slot first. The
// walk goes on from the last run of the previous batch, so the old runs that stay are read once
// per prune.
func (s *Store) pruneRuns(ctx context.Context, cutoff time.Time) (runs, attempts, copies int64, err error) {
	afterSlot, afterID := time.Time{}, int64(0)
	runs, attempts, err = s.pruneBatches(ctx, "prune image runs", func(tx pgx.Tx) (int64, int64, bool, error) {
		rows, err := tx.Query(ctx, `SELECT r.id, r.scheduled_at FROM image_runs r
WHERE `+runPrunable+` AND (r.scheduled_at, r.id) > ($2::timestamptz, $3::bigint)
ORDER BY r.scheduled_at, r.id LIMIT $4
FOR UPDATE OF r SKIP LOCKED`, cutoff, afterSlot, afterID, historyPruneBatch)
		if err != nil {
			return 0, 0, false, err
		}
		var ids []int64
		_, err = pgx.ForEachRow(rows, []any{&afterID, &afterSlot}, func() error {
			ids = append(ids, afterID)
			return nil
		})
		if err != nil || len(ids) == 0 {
			return 0, 0, false, err
		}
		// The attempts first, by name: the cascade of image_attempts_run_id would delete them too,
		// but then they could not be counted.
		tag, err := tx.Exec(ctx, `DELETE FROM image_attempts WHERE run_id = ANY($1)`, ids)
		if err != nil {
			return 0, 0, false, err
		}
		attempts := tag.RowsAffected()
		// The copies too (the cascade would delete them uncounted): their deletions keep their
		// rows, with copy_id set to NULL, until pruneDeletions.
		if tag, err = tx.Exec(ctx, `DELETE FROM image_copies WHERE run_id = ANY($1)`, ids); err != nil {
			return 0, 0, false, err
		}
		batchCopies := tag.RowsAffected()
		if tag, err = tx.Exec(ctx, `DELETE FROM image_runs WHERE id = ANY($1)`, ids); err != nil {
			return 0, 0, false, err
		}
		copies += batchCopies
		return tag.RowsAffected(), attempts, len(ids) == historyPruneBatch, nil
	})
	return runs, attempts, copies, err
}

// pruneDeletions deletes the deletions done before the cutoff whose image has no run left, and
// their attempts, in id order from where the previous batch ended.
func (s *Store) pruneDeletions(ctx context.Context, cutoff time.Time) (deletions, attempts int64, err error) {
	afterID := int64(0)
	return s.pruneBatches(ctx, "prune image deletions", func(tx pgx.Tx) (int64, int64, bool, error) {
		rows, err := tx.Query(ctx, `SELECT d.id FROM image_deletions d
WHERE `+deletionDone+` AND `+deletionRunless+` AND d.id > $2
ORDER BY d.id LIMIT $3
FOR UPDATE OF d SKIP LOCKED`, cutoff, afterID, historyPruneBatch)
		if err != nil {
			return 0, 0, false, err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(ids) == 0 {
			return 0, 0, false, err
		}
		afterID = ids[len(ids)-1]
		tag, err := tx.Exec(ctx, `DELETE FROM image_attempts WHERE deletion_id = ANY($1)`, ids)
		if err != nil {
			return 0, 0, false, err
		}
		attempts := tag.RowsAffected()
		if tag, err = tx.Exec(ctx, `DELETE FROM image_deletions WHERE id = ANY($1)`, ids); err != nil {
			return 0, 0, false, err
		}
		return tag.RowsAffected(), attempts, len(ids) == historyPruneBatch, nil
	})
}

// pruneCoverageDays deletes the coverage days before cutoffDay, walking the primary key from
// where the previous batch ended.
func (s *Store) pruneCoverageDays(ctx context.Context, cutoffDay string) (int64, error) {
	var afterPolicy, afterInstance string
	afterDay := time.Time{}
	n, _, err := s.pruneBatches(ctx, "prune coverage days", func(tx pgx.Tx) (int64, int64, bool, error) {
		rows, err := tx.Query(ctx, `SELECT policy, day, instance_id FROM coverage_days
WHERE day < $1::date AND (policy, day, instance_id) > ($2::text, $3::date, $4::text)
ORDER BY policy, day, instance_id LIMIT $5
FOR UPDATE SKIP LOCKED`, cutoffDay, afterPolicy, afterDay, afterInstance, historyPruneBatch)
		if err != nil {
			return 0, 0, false, err
		}
		var pols, insts []string
		var days []time.Time
		_, err = pgx.ForEachRow(rows, []any{&afterPolicy, &afterDay, &afterInstance}, func() error {
			pols, days, insts = append(pols, afterPolicy), append(days, afterDay), append(insts, afterInstance)
			return nil
		})
		if err != nil || len(pols) == 0 {
			return 0, 0, false, err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM coverage_days WHERE (policy, day, instance_id) IN (
	SELECT * FROM unnest($1::text[], $2::date[], $3::text[]))`, pols, days, insts)
		if err != nil {
			return 0, 0, false, err
		}
		return tag.RowsAffected(), 0, len(pols) == historyPruneBatch, nil
	})
	return n, err
}

// pruneSimple runs a DELETE of at most a batch of rows (its last parameter, after args) until a
// batch deletes fewer.
func (s *Store) pruneSimple(ctx context.Context, what, sql string, args ...any) (int64, error) {
	n, _, err := s.pruneBatches(ctx, what, func(tx pgx.Tx) (int64, int64, bool, error) {
		tag, err := tx.Exec(ctx, sql, append(args, historyPruneBatch)...)
		if err != nil {
			return 0, 0, false, err
		}
		return tag.RowsAffected(), 0, tag.RowsAffected() == int64(historyPruneBatch), nil
	})
	return n, err
}
