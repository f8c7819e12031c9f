package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// cmdHistory answers "was every instance imaged, and if not, why?" without writing SQL: recent
// runs, failures with their codes, and the last good image per instance.
func cmdHistory(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	o.databaseFlags(fs)
	o.logFlags(fs)
	sinceFlag := fs.String("since", "24h", "how far back to look (a duration such as 36h or 7d)")
	name := fs.String("policy", "", "only this policy")
	limit := fs.Int("limit", 50, "recent runs to list (0 = all)")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	since, err := policy.ParseDuration(*sinceFlag)
	if err != nil || since <= 0 {
		fmt.Fprintf(stderr, "imager history: --since: %q is not a positive duration such as 24h or 7d\n", *sinceFlag)
		return exitUsage
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager history: %v\n", err)
		return exitUsage
	}
	store, err := history.Open(ctx, o.databaseURL, log)
	if err != nil {
		fmt.Fprintf(stderr, "imager history: %v\n", err)
		return exitFail
	}
	defer store.Close()
	from := time.Now().Add(-since)
	keep := func(runs []history.Run) []history.Run {
		if *name == "" {
			return runs
		}
		var out []history.Run
		for _, r := range runs {
			if r.Policy == *name {
				out = append(out, r)
			}
		}
		return out
	}

	recent, err := store.RunsRecent(ctx, from, 0)
	if err != nil {
		fmt.Fprintf(stderr, "imager history: %v\n", err)
		return exitFail
	}
	recent = keep(recent)
	counts := map[history.Status]int{}
	for _, r := range recent {
		counts[r.Status]++
	}
	fmt.Fprintf(stdout, "Runs with a slot in the last %s: %d", *sinceFlag, len(recent))
	for _, st := range []history.Status{history.StatusAvailable, history.StatusRequested, history.StatusPending,
		history.StatusFailed, history.StatusSkipped, history.StatusMissed} {
		if counts[st] > 0 {
			fmt.Fprintf(stdout, ", %d %s", counts[st], st)
		}
	}
	fmt.Fprintln(stdout)
	if *limit > 0 && len(recent) > *limit {
		recent = recent[:*limit]
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SLOT (UTC)\tPOLICY\tINSTANCE\tSTATUS\tIMAGE\tATTEMPTS\tERROR")
	for _, r := range recent {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.ScheduledAt.UTC().Format("2006-01-02 15:04:05"), r.Policy,
			r.InstanceID, r.Status, firstOf(r.ImageID, r.ImageName), r.Attempts, errorText(r))
	}
	w.Flush()

	failures, err := store.FailuresSince(ctx, from)
	if err != nil {
		fmt.Fprintf(stderr, "imager history: %v\n", err)
		return exitFail
	}
	failures = keep(failures)
	fmt.Fprintf(stdout, "\nFailures in the last %s: %d\n", *sinceFlag, len(failures))
	w = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, r := range failures {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.ScheduledAt.UTC().Format("2006-01-02 15:04:05"), r.Policy, r.InstanceID, errorText(r))
	}
	w.Flush()

	lastFailed, err := store.LastFailedPerInstance(ctx, from)
	if err != nil {
		fmt.Fprintf(stderr, "imager history: %v\n", err)
		return exitFail
	}
	lastFailed = keep(lastFailed)
	fmt.Fprintf(stdout, "\nInstances whose last image in the last %s failed: %d\n", *sinceFlag, len(lastFailed))
	w = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, r := range lastFailed {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.InstanceID, r.Policy, r.ScheduledAt.UTC().Format("2006-01-02 15:04:05"), errorText(r))
	}
	w.Flush()

	last, err := store.LastAvailablePerInstance(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "imager history: %v\n", err)
		return exitFail
	}
	last = keep(last)
	fmt.Fprintf(stdout, "\nLast good image per instance: %d instances\n", len(last))
	w = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "INSTANCE\tPOLICY\tIMAGE\tNAME\tAGE")
	for _, r := range last {
		age := "?"
		if r.FinishedAt != nil {
			age = time.Since(*r.FinishedAt).Round(time.Minute).String()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.InstanceID, r.Policy, r.ImageID, r.ImageName, age)
	}
	w.Flush()
	return exitOK
}

func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func errorText(r history.Run) string {
	switch {
	case r.ErrorCode != "" && r.ErrorMessage != "":
		return r.ErrorCode + ": " + r.ErrorMessage
	default:
		return r.ErrorCode + r.ErrorMessage
	}
}
