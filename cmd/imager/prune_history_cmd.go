package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/leader"
)

// cmdPruneHistory is `imager prune-history`: the leader's hourly history prune, by hand. A dry
// run only reads. A prune takes the leader lease for its duration, as imager once does when no
// daemon leads, so its deletions are fenced like the leader's and no daemon leads meanwhile; with
// a leader running it refuses, since that leader prunes every hour anyway.
func cmdPruneHistory(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("prune-history", flag.ContinueOnError)
	o.policyFlags(fs)
	o.databaseFlags(fs)
	o.logFlags(fs)
	dryRun := fs.Bool("dry-run", false, "count, per table, the rows older than history.keep that would be deleted; delete nothing. "+
		"Without it the command takes the leader lease for as long as it prunes (no daemon leads meanwhile) and refuses "+
		"while a leader is running: the leader prunes every hour by itself")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "imager prune-history: %v\n", err)
		return exitFail
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager prune-history: %v\n", err)
		return exitUsage
	}
	cfg, ok := loadPolicies(o.policies, stderr)
	if !ok {
		return exitFail
	}
	store, err := history.Open(ctx, o.databaseURL, log.With().Str("component", "history").Logger())
	if err != nil {
		return fail(err)
	}
	defer store.Close()
	if _, err := store.Migrate(ctx); err != nil {
		return fail(fmt.Errorf("migrate: %w", err))
	}
	hostname, _ := os.Hostname()
	daemonID := fmt.Sprintf("%s/%d/%d", hostname, os.Getpid(), time.Now().UnixNano())
	p := history.HistoryPruneParams{Keep: historyKeep(cfg), Now: time.Now(), DaemonID: daemonID, DryRun: *dryRun}
	if *dryRun {
		got, err := store.HistoryPrune(ctx, p)
		if err != nil {
			return fail(err)
		}
		printHistoryPruned(stdout, p, got)
		return exitOK
	}

	el, err := leader.New(leader.Options{Store: store, Holder: history.LeaseHolder{DaemonID: daemonID, Host: hostname, PID: os.Getpid()},
		Version: version, Once: true, Logger: log.With().Str("component", "leader").Logger()})
	if err != nil {
		return fail(err)
	}
	if err := el.Start(ctx); err != nil {
		return fail(err)
	}
	defer el.Stop()
	term := el.Term()
	if term == 0 {
		lease, found, err := store.LeaseGet(ctx)
		switch {
		case err != nil:
			return fail(err)
		case found && lease.Live():
			return fail(fmt.Errorf("a leader is running (%s, term %d): it prunes the history every hour by history.keep; "+
				"see what would go with --dry-run, or stop every imager process to prune now", lease.DaemonID, lease.Term))
		default:
			return fail(errors.New("cannot take the leader lease (see the log above); nothing deleted"))
		}
	}
	p.Now = time.Now()
	got, err := store.WithTerm(term).HistoryPrune(ctx, p)
	printHistoryPruned(stdout, p, got)
	if err != nil {
		return fail(err)
	}
	log.Info().Int64("term", term).Int64("rows_deleted", got.Total()).Msg("history pruned")
	return exitOK
}

// printHistoryPruned prints one line per table with the rows that went (or would go) and why.
func printHistoryPruned(stdout io.Writer, p history.HistoryPruneParams, got history.HistoryPruned) {
	cutoff := p.Now.Add(-p.Keep).UTC().Truncate(time.Second)
	fmt.Fprintf(stdout, "history.keep %s: rows older than %s\n", fmtKeep(p.Keep), cutoff.Format(time.RFC3339))
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TABLE\tROWS\tWHAT")
	for _, r := range []struct {
		table string
		n     int64
		what  string
	}{
		{"image_runs", got.Runs, "finished runs with a slot before then (answers and images not deleted stay)"},
		{"image_attempts", got.RunAttempts, "API calls of those runs"},
		{"image_copies", got.Copies, "copies of those runs in other regions (deleted or failed)"},
		{"image_deletions", got.Deletions, "deletions done before then whose image's run is gone (or goes now)"},
		{"image_attempts", got.DeletionAttempts, "API calls of those deletions"},
		{"coverage_days", got.CoverageDays, "days before then"},
		{"replicas", got.Replicas, "processes not seen for " + fmtKeep(history.ProcessKeep)},
		{"fire_requests", got.FireRequests, "imager once requests finished " + fmtKeep(history.ProcessKeep) + " ago"},
	} {
		fmt.Fprintf(w, "%s\t%d\t%s\n", r.table, r.n, r.what)
	}
	_ = w.Flush()
	if p.DryRun {
		fmt.Fprintf(stdout, "%d rows would be deleted (dry run: nothing deleted)\n", got.Total())
	} else {
		fmt.Fprintf(stdout, "%d rows deleted\n", got.Total())
	}
}

// fmtKeep prints a duration in whole days when it is one ("400d"), else as Go does.
func fmtKeep(d time.Duration) string {
	const day = 24 * time.Hour
	if d >= day && d%day == 0 {
		return fmt.Sprintf("%dd", d/day)
	}
	return d.String()
}
