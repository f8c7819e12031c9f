package main

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// The leader prunes the history (history.keep) shortly after it is elected, then every
// historyPruneEvery. A prune that fails is logged and tried again at the next one.
const (
	historyPruneFirstAfter = time.Minute
	historyPruneEvery      = time.Hour
	// historyPruneTimeout bounds one prune; what it deleted before stays deleted, and the next
	// prune goes on from there.
	historyPruneTimeout = 30 * time.Minute
)

// historyKeep is the keep of cfg's history block; a hand-built Config without one gets the default.
func historyKeep(cfg *policy.Config) time.Duration {
	if cfg == nil || cfg.History.Keep <= 0 {
		return policy.DefaultHistoryKeep
	}
	return cfg.History.Keep
}

// pruneHistoryLoop is the leader's history prune under w's term; it returns when leadership
// ends, or demotes this process when a prune is fenced (another replica leads).
func (d *daemon) pruneHistoryLoop(ctx context.Context, w *leaderWork) {
	store := d.store.WithTerm(w.term)
	log := d.log.With().Str("component", "history-prune").Int64("term", w.term).Logger()
	wait := historyPruneFirstAfter
	for {
		t := d.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.Chan():
		}
		wait = historyPruneEvery
		opCtx, cancel := context.WithTimeout(ctx, historyPruneTimeout)
		err := pruneHistoryOnce(opCtx, store, history.HistoryPruneParams{Keep: historyKeep(d.cfg.Load()),
			Now: d.clock.Now(), DaemonID: d.daemonID}, d.clock.Now, log)
		cancel()
		if errors.Is(err, history.ErrFenced) {
			d.elector.Demote()
			return
		}
	}
}

// pruneHistoryOnce runs one prune and logs what it deleted per table: at info when it went
// through, at warn (with what it deleted before) when it failed; nothing when leadership ended
// meanwhile (context canceled).
func pruneHistoryOnce(ctx context.Context, store *history.Store, p history.HistoryPruneParams, now func() time.Time, log zerolog.Logger) error {
	start := now()
	got, err := store.HistoryPrune(ctx, p)
	ev := log.Info()
	switch {
	case err != nil && errors.Is(err, context.Canceled):
		return err
	case err != nil:
		ev = log.Warn().Err(err)
	}
	ev.Int64("runs_deleted", got.Runs).Int64("run_attempts_deleted", got.RunAttempts).
		Int64("deletions_deleted", got.Deletions).Int64("deletion_attempts_deleted", got.DeletionAttempts).
		Int64("coverage_days_deleted", got.CoverageDays).Int64("replicas_deleted", got.Replicas).
		Int64("fire_requests_deleted", got.FireRequests).Int64("keep_s", int64(p.Keep.Seconds())).
		Int64("elapsed_ms", now().Sub(start).Milliseconds())
	if err != nil {
		ev.Msg("history prune failed; what it deleted stays deleted, the rest is tried at the next prune")
	} else {
		ev.Msg("history pruned")
	}
	return err
}
