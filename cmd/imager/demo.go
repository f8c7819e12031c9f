package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	tccommon "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/scheduler"
)

//go:embed demo.yaml
var demoPolicies []byte

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	o.logFlags(fs) // console and warn unless IMAGER_LOG_* or the flags say otherwise
	faultRate := fs.Float64("fault-rate", 0.1, "share of CreateImage calls the simulator answers with InternalError (retried by imager)")
	keep := fs.Duration("keep-running", 0, "after the audit, keep the daemon running on its schedules this long (0 = exit)")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager demo: %v\n", err)
		return exitUsage
	}
	if err := runDemo(ctx, demoSettings{faultRate: *faultRate, keepRunning: *keep}, log, stdout); err != nil {
		fmt.Fprintf(stderr, "imager demo: %v\n", err)
		return exitFail
	}
	return exitOK
}

// demoSettings are the knobs of a demo run.
type demoSettings struct {
	faultRate   float64
	keepRunning time.Duration
}

// runDemo runs the real daemon wiring against the simulator and a throwaway PostgreSQL, fires
// every demo policy at once (so they share one pool and one pace), and prints the audit.
func runDemo(ctx context.Context, s demoSettings, log zerolog.Logger, out io.Writer) error {
	cfg, err := policy.LoadBytes("demo.yaml", demoPolicies)
	if err != nil {
		return fmt.Errorf("built-in demo policies: %w", err)
	}

	fmt.Fprintln(out, "imager demo: starting a throwaway PostgreSQL and the CVM simulator ...")
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{Logger: log})
	if err != nil {
		return err
	}
	defer cluster.Stop()
	dbURL, err := cluster.CreateDatabase(ctx, "imager")
	if err != nil {
		return err
	}

	sim := cvmsim.New(cvmsim.Options{ImageReadyAfter: time.Second, Logger: log}) // cvmsim sets its component
	endpoint, err := sim.Start()
	if err != nil {
		return err
	}
	defer sim.Close()
	for _, p := range cfg.Policies {
		for _, id := range p.Instances {
			in := cvmsim.Instance{ID: id, Region: p.Region, State: "RUNNING"}
			switch id {
			case "ins-gone0001":
				continue // deleted since the policy was written: InvalidInstanceId.NotFound
			case "ins-old00001":
				in.Unsupported = true // InvalidInstance.NotSupported
			}
			sim.AddInstance(in)
		}
	}
	sim.SetFaults(cvmsim.Faults{InternalErrorRate: s.faultRate, Actions: []string{cvmsim.ActionCreateImage}})

	spool, err := os.MkdirTemp("", "imager-demo-spool-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(spool)
	opts := options{databaseURL: dbURL, cvmEndpoint: endpoint, spoolDir: spool, shutdownGrace: 5 * time.Second}
	cred := tccommon.NewCredential(cvmsim.DefaultSecretID, cvmsim.DefaultSecretKey)
	d, err := openDaemon(ctx, daemonConfig{opts: opts, cfg: cfg, credential: cred, pollInterval: 500 * time.Millisecond}, log)
	if err != nil {
		return err
	}
	defer d.close()
	if err := d.start(ctx); err != nil {
		return err
	}
	w := d.leading()
	if w == nil {
		return errors.New("the demo daemon did not become leader of its own database")
	}

	fmt.Fprintf(out, "imager demo: firing %d policies at once through one pool paced to %d CreateImage calls/s; the simulator answers %.0f%% of them with InternalError ...\n",
		len(cfg.Policies), cfg.API.CreateImageRate, s.faultRate*100)
	started := time.Now()
	var wg sync.WaitGroup
	results := make([][]scheduler.Outcome, len(cfg.Policies))
	errs := make([]error, len(cfg.Policies))
	for i, p := range cfg.Policies {
		wg.Go(func() { results[i], errs[i] = w.sched.RunOnce(ctx, p.Name, nil) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	elapsed := time.Since(started)
	if err := waitUsable(ctx, w, out, slices.Concat(results...)); err != nil {
		return err
	}
	// Two more fires of web-nightly (keep_last: 2): the tracker's retention pass after each
	// prunes the oldest image of every instance.
	for range 2 {
		fmt.Fprintln(out, "imager demo: firing web-nightly again (retention keeps the 2 newest images per instance) ...")
		outs, err := w.sched.RunOnce(ctx, "web-nightly", nil)
		if err != nil {
			return err
		}
		if err := waitUsable(ctx, w, out, outs); err != nil {
			return err
		}
	}

	calls, throttled := 0, 0
	for _, c := range sim.Calls() {
		if c.Action == cvmsim.ActionCreateImage {
			calls++
			if c.Code == "RequestLimitExceeded" {
				throttled++
			}
		}
	}
	fmt.Fprintf(out, "\nPacing seen by the simulator: %d CreateImage calls (the first fire took %.1fs), at most %d in any sliding second (limit %d), %d rejected with RequestLimitExceeded.\n",
		calls, elapsed.Seconds(), sim.MaxInAnySecond(cvmsim.ActionCreateImage), cfg.API.CreateImageRate, throttled)

	if err := printAudit(ctx, out, dbURL); err != nil {
		return err
	}
	if s.keepRunning > 0 {
		fmt.Fprintf(out, "\nimager demo: the daemon keeps running on its schedules for %s (Ctrl-C stops it) ...\n", s.keepRunning)
		select {
		case <-ctx.Done():
		case <-time.After(s.keepRunning):
		}
	}
	return nil
}

// waitUsable follows the accepted images of outs until each is NORMAL or failed.
func waitUsable(ctx context.Context, w *leaderWork, out io.Writer, outs []scheduler.Outcome) error {
	var ids []int64
	for _, o := range outs {
		if o.Status == history.StatusRequested {
			ids = append(ids, o.RunID)
		}
	}
	fmt.Fprintf(out, "imager demo: %d images accepted; following them with DescribeImages until they are usable ...\n", len(ids))
	w.tracker.Kick()
	_, err := w.tracker.WaitTerminal(ctx, ids)
	return err
}

// printAudit runs the README's audit cookbook against the demo database.
func printAudit(ctx context.Context, out io.Writer, dbURL string) error {
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	for _, q := range history.Cookbook {
		fmt.Fprintf(out, "\n-- %s\n", q.Title)
		if err := printQuery(ctx, out, pool, q.SQL); err != nil {
			return fmt.Errorf("%s: %w", q.Title, err)
		}
	}
	return nil
}

func printQuery(ctx context.Context, out io.Writer, pool *pgxpool.Pool, sql string) error {
	rows, err := pool.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	var table [][]string
	var header []string
	for _, f := range rows.FieldDescriptions() {
		header = append(header, f.Name)
	}
	table = append(table, header)
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return err
		}
		row := make([]string, len(vals))
		for i, v := range vals {
			switch t := v.(type) {
			case nil:
				row[i] = ""
			case time.Time:
				row[i] = t.UTC().Format("2006-01-02 15:04:05Z")
			default:
				row[i] = fmt.Sprint(t)
			}
		}
		table = append(table, row)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	widths := make([]int, len(header))
	for _, r := range table {
		for i, c := range r {
			widths[i] = max(widths[i], min(len(c), 60))
		}
	}
	for n, r := range table {
		for i, c := range r {
			if len(c) > 60 {
				c = c[:57] + "..."
			}
			fmt.Fprintf(out, "%-*s  ", widths[i], c)
		}
		fmt.Fprintln(out)
		if n == 0 {
			for i := range header {
				fmt.Fprintf(out, "%s  ", strings.Repeat("-", widths[i]))
			}
			fmt.Fprintln(out)
		}
	}
	fmt.Fprintf(out, "(%d rows)\n", len(table)-1)
	return nil
}
