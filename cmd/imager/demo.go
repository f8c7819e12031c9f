package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	tccommon "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/copies"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/metrics"
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
	var keep keepRunningFlag
	fs.Var(&keep, "keep-running", "after the audit, keep the daemon, the simulator and the database running (with a policy that fires every minute) "+
		"until Ctrl-C, or for this long (e.g. --keep-running=30m); prints how to point the other commands at them")
	listen := fs.String("listen", "", "with --keep-running: address for the status page, /metrics, /healthz and /readyz (default 127.0.0.1:9090, or a free port if it is taken)")
	o.webConfigFlag(fs)
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	for _, f := range []struct {
		name string
		set  bool
	}{{"--listen", *listen != ""}, {"--web-config", o.webConfig != ""}} {
		if f.set && !keep.on {
			fmt.Fprintf(stderr, "imager demo: %s needs --keep-running (the demo exits after the audit otherwise)\n", f.name)
			return exitUsage
		}
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager demo: %v\n", err)
		return exitUsage
	}
	if _, err := metrics.ValidateWebConfig(o.webConfig); err != nil { // before the cluster starts
		fmt.Fprintf(stderr, "imager demo: --web-config %v\n", err)
		return exitUsage
	}
	s := demoSettings{faultRate: *faultRate, keepRunning: keep.on, keepFor: keep.d, listen: *listen, webConfig: o.webConfig}
	if err := runDemo(ctx, s, log, stdout); err != nil {
		fmt.Fprintf(stderr, "imager demo: %v\n", err)
		return exitFail
	}
	return exitOK
}

// cmdSim is `imager demo --keep-running`: the simulator, a database and a leading daemon to point
// the other commands at.
func cmdSim(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cmdDemo(ctx, append([]string{"--keep-running"}, args...), stdout, stderr)
}

// keepRunningFlag is --keep-running: alone (or =true) until Ctrl-C, =DURATION for that long,
// =false or =0 not at all.
type keepRunningFlag struct {
	on bool
	d  time.Duration // 0: until the context ends
}

func (f *keepRunningFlag) IsBoolFlag() bool { return true }

func (f *keepRunningFlag) String() string {
	switch {
	case f == nil || !f.on:
		return "false"
	case f.d == 0:
		return "true"
	}
	return f.d.String()
}

func (f *keepRunningFlag) Set(v string) error {
	if b, err := strconv.ParseBool(v); err == nil {
		f.on, f.d = b, 0
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("%q is neither true/false nor a duration such as 30m", quoteShort(v))
	}
	f.on, f.d = d > 0, d
	return nil
}

// demoSettings are the knobs of a demo run.
type demoSettings struct {
	faultRate float64
	// keepRunning keeps everything up after the audit, with demoMinutely added, until ctx ends
	// or keepFor (when > 0) has passed.
	keepRunning bool
	keepFor     time.Duration
	listen      string // with keepRunning; "" = 127.0.0.1:9090 or a free port
	webConfig   string // with keepRunning: --web-config for listen
	// onRunning, when set, is called once everything is up in keep-running mode (tests).
	onRunning func(demoEndpoints)
}

// demoEndpoints is what `imager demo --keep-running` prints for the other commands.
type demoEndpoints struct {
	CVMEndpoint string
	DatabaseURL string
	Listen      string // host:port
	Scheme      string // http, or https with a --web-config that turns TLS on
	Policies    string // the policy file the demo daemon runs, demoMinutely included
}

// demoMinutely is the policy added in keep-running mode: it fires every minute, so there is
// always something new in history, on the page and in the metrics. ins-old00001 cannot be imaged
// (InvalidInstance.NotSupported): it fails every minute and is in rpo_breaches after 90 s.
const demoMinutely = `
  - name: demo-minutely
    schedule: "* * * * *"
    instances: [ins-min00001, ins-min00002, ins-min00003, ins-old00001]
    retention:
      keep_last: 3
`

// runDemo runs the real daemon wiring against the simulator and a throwaway PostgreSQL, fires
// every demo policy at once (so they share one pool and one pace), and prints the audit.
func runDemo(ctx context.Context, s demoSettings, log zerolog.Logger, out io.Writer) error {
	cfg, err := policy.LoadBytes("demo.yaml", demoPolicies)
	if err != nil {
		return fmt.Errorf("built-in demo policies: %w", err)
	}
	// In keep-running mode the simulator knows the instances of demoMinutely too; the policy
	// itself is loaded after the audit, so the audit's figures stay those of the three demo
	// policies.
	simCfg := cfg
	var live []byte
	if s.keepRunning {
		live = append(slices.Clip(demoPolicies), demoMinutely...)
		if simCfg, err = policy.LoadBytes("demo.yaml", live); err != nil {
			return fmt.Errorf("built-in demo policies: %w", err)
		}
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
	seen := map[string]bool{}
	for _, p := range simCfg.Policies {
		for _, id := range p.Instances {
			if seen[id] {
				continue
			}
			seen[id] = true
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
	if s.keepRunning {
		opts.listen, opts.webConfig = s.listen, s.webConfig
		if opts.listen == "" {
			opts.listen = freeListen("127.0.0.1:9090")
		}
	}
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
		wg.Go(func() { results[i], errs[i] = w.runOnce(ctx, cfg, p.Name, nil) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	elapsed := time.Since(started)
	if err := waitUsable(ctx, w, cfg, out, slices.Concat(results...)); err != nil {
		return err
	}
	// Two more fires of web-nightly (keep_last: 2): the tracker's retention pass after each
	// prunes the oldest image of every instance.
	for range 2 {
		fmt.Fprintln(out, "imager demo: firing web-nightly again (retention keeps the 2 newest images per instance) ...")
		outs, err := w.runOnce(ctx, cfg, "web-nightly", nil)
		if err != nil {
			return err
		}
		if err := waitUsable(ctx, w, cfg, out, outs); err != nil {
			return err
		}
	}

	if err := waitCopies(ctx, d.store, w, cfg, out); err != nil {
		return err
	}
	if err := demoRestoreTest(ctx, w, out); err != nil {
		return err
	}

	calls, throttled, syncs := 0, 0, 0
	for _, c := range sim.Calls() {
		if c.Action == cvmsim.ActionSyncImages && c.Code == "" {
			syncs++
		}
		if c.Action == cvmsim.ActionCreateImage {
			calls++
			if c.Code == "RequestLimitExceeded" {
				throttled++
			}
		}
	}
	fmt.Fprintf(out, "\nPacing seen by the simulator: %d CreateImage calls (the first fire took %.1fs), at most %d in any sliding second (limit %d), %d rejected with RequestLimitExceeded.\n",
		calls, elapsed.Seconds(), sim.MaxInAnySecond(cvmsim.ActionCreateImage), cfg.API.CreateImageRate, throttled)
	fmt.Fprintf(out, "Copies seen by the simulator: %d SyncImages calls answered, at most %d in any sliding second (limit %d).\n",
		syncs, sim.MaxInAnySecond(cvmsim.ActionSyncImages), copies.DefaultSyncRate)
	fmt.Fprintln(out, hooksSeen(sim))

	if err := printAudit(ctx, out, dbURL); err != nil {
		return err
	}
	if !s.keepRunning {
		return nil
	}
	return keepDemoRunning(ctx, s, d, out, demoEndpoints{CVMEndpoint: endpoint, DatabaseURL: dbURL, Listen: d.metrics.Addr(), Scheme: d.metrics.Scheme()}, live)
}

// keepDemoRunning loads demoMinutely into the running daemon (from a file it prints, so `imager
// run` can be pointed at the same policies), prints how to use what runs, and waits for ctx (Ctrl-C)
// or s.keepFor. The caller's defers stop the daemon and the simulator and remove the cluster.
func keepDemoRunning(ctx context.Context, s demoSettings, d *daemon, out io.Writer, e demoEndpoints, live []byte) error {
	dir, err := os.MkdirTemp("", "imager-demo-policies-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	e.Policies = filepath.Join(dir, "policies.yaml")
	if err := os.WriteFile(e.Policies, live, 0o644); err != nil {
		return err
	}
	cfg, err := policy.Load(e.Policies)
	if err != nil {
		return fmt.Errorf("built-in demo policies: %w", err)
	}
	if err := d.reload(cfg); err != nil {
		return fmt.Errorf("load demo-minutely: %w", err)
	}
	until := "until Ctrl-C"
	if s.keepFor > 0 {
		until = "for " + s.keepFor.String() + " (or until Ctrl-C)"
	}
	fmt.Fprintf(out, `
imager demo keeps running %s; demo-minutely fires every minute (ins-old00001 fails every time).
Ctrl-C stops the daemon and the simulator and removes the throwaway PostgreSQL cluster.

  simulator endpoint   %s
  database URL         %s
  listen               %s://%s/   (status page; /metrics, /healthz, /readyz)
  policies             %s

In another shell:

  export DATABASE_URL='%s'
  export IMAGER_POLICIES=%s IMAGER_CVM_ENDPOINT=%s
  export TENCENTCLOUD_SECRET_ID=%s TENCENTCLOUD_SECRET_KEY=%s
  imager status
  imager history --policy demo-minutely --since 1h
  imager history --status failed --format json
  imager latest --instance ins-min00001
  curl -s %s://%s/metrics | grep '^imager_'
  imager run --listen 127.0.0.1:0   # a second replica: stands by while the demo leads
%s`, until, e.CVMEndpoint, e.DatabaseURL, e.Scheme, e.Listen, e.Policies,
		e.DatabaseURL, e.Policies, e.CVMEndpoint, cvmsim.DefaultSecretID, cvmsim.DefaultSecretKey, e.Scheme, e.Listen, webConfigNote(s.webConfig))
	if s.onRunning != nil {
		s.onRunning(e)
	}
	var timeout <-chan time.Time
	if s.keepFor > 0 {
		t := time.NewTimer(s.keepFor)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ctx.Done():
	case <-timeout:
	}
	fmt.Fprintln(out, "\nimager demo: stopping; removing the throwaway PostgreSQL cluster ...")
	return nil
}

// webConfigNote tells how to reach a listen address secured by --web-config.
func webConfigNote(path string) string {
	if path == "" {
		return ""
	}
	return "\n--web-config " + path + " secures the listen address: curl needs -u USER (basic auth) and --cacert CA (a self-signed certificate).\n"
}

// freeListen returns addr when it can be listened on now, else a free port on 127.0.0.1.
func freeListen(addr string) string {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "127.0.0.1:0"
	}
	_ = ln.Close()
	return addr
}

// waitUsable follows the accepted images of outs until each is NORMAL or failed.
func waitUsable(ctx context.Context, w *leaderWork, cfg *policy.Config, out io.Writer, outs []scheduler.Outcome) error {
	var ids []int64
	for _, o := range outs {
		if o.Status == history.StatusRequested {
			ids = append(ids, o.RunID)
		}
	}
	fmt.Fprintf(out, "imager demo: %d images accepted; following them with DescribeImages until they are usable ...\n", len(ids))
	_, err := w.waitTerminal(ctx, cfg, outs)
	return err
}

// copiesSettleWithin bounds the demo's wait for its copies in other regions.
const copiesSettleWithin = time.Minute

// waitCopies waits until every available image of the demo's policies with copy_to has its copies
// made (available or failed), kicking the copier, and says how many are available where.
func waitCopies(ctx context.Context, store *history.Store, w *leaderWork, cfg *policy.Config, out io.Writer) error {
	var wants []history.CopyWant
	for _, p := range cfg.Policies {
		if len(p.CopyTo) == 0 {
			continue
		}
		want := history.CopyWant{Policy: p.Name}
		for _, t := range p.CopyTo {
			want.Regions = append(want.Regions, t.Region)
		}
		wants = append(wants, want)
	}
	if len(wants) == 0 {
		return nil
	}
	fmt.Fprintln(out, "imager demo: copying the usable images to their copy_to regions (SyncImages, its own pace) ...")
	ctx, cancel := context.WithTimeout(ctx, copiesSettleWithin)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		due, err := store.CopiesDue(ctx, wants, 1)
		if err != nil {
			return err
		}
		pending, err := store.CopiesPending(ctx, 1)
		if err != nil {
			return err
		}
		over, err := copiesOverKeepLast(ctx, store, cfg)
		if err != nil {
			return err
		}
		if len(due) == 0 && len(pending) == 0 && over == 0 {
			break
		}
		w.copier.Kick()
		select {
		case <-ctx.Done():
			return fmt.Errorf("the demo's copies did not settle within %s", copiesSettleWithin)
		case <-tick.C:
		}
	}
	var n int
	var regions []string
	if err := store.Pool().QueryRow(ctx, `SELECT count(*), COALESCE(array_agg(DISTINCT region ORDER BY region), '{}')
FROM image_copies WHERE status = 'available' AND deleted_at IS NULL`).Scan(&n, &regions); err != nil {
		return err
	}
	fmt.Fprintf(out, "imager demo: %d copies available in %s (older ones pruned by the copy_to retention)\n", n, strings.Join(regions, ", "))
	return nil
}

// copiesOverKeepLast counts the (policy, instance, region) pairs holding more available copies
// than their copy_to entry's keep_last: the copier's retention has yet to prune them.
func copiesOverKeepLast(ctx context.Context, store *history.Store, cfg *policy.Config) (int, error) {
	total := 0
	for _, p := range cfg.Policies {
		for _, t := range p.CopyTo {
			if t.Retention == nil || t.Retention.KeepLast == 0 {
				continue
			}
			var n int
			if err := store.Pool().QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM image_copies
WHERE policy = $1 AND region = $2 AND status = 'available' AND deleted_at IS NULL
GROUP BY instance_id HAVING count(*) > $3) o`, p.Name, t.Region, t.Retention.KeepLast).Scan(&n); err != nil {
				return 0, err
			}
			total += n
		}
	}
	return total, nil
}

// printAudit runs the audit cookbook (docs/audit.md) against the demo database.
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

// hooksSeen says what the simulator saw of the hooks: their TAT tasks, and whether each instance's
// CreateImage came after its pre task ended and before its post task started.
func hooksSeen(sim *cvmsim.Server) string {
	type window struct{ preEnd, postStart time.Time }
	by := map[string]*window{}
	pre, post := 0, 0
	for _, t := range sim.Tasks() {
		w := by[t.InstanceID]
		if w == nil {
			w = &window{}
			by[t.InstanceID] = w
		}
		switch {
		case strings.Contains(t.Content, "--unfreeze"):
			post++
			w.postStart = t.StartedAt
		case strings.Contains(t.Content, "--freeze"):
			pre++
			w.preEnd = t.FinishedAt
		}
	}
	inside := 0
	for _, c := range sim.Calls() {
		id, _ := c.Params["InstanceId"].(string)
		if w := by[id]; c.Action == cvmsim.ActionCreateImage && c.Code == "" && w != nil &&
			!w.preEnd.IsZero() && !w.postStart.IsZero() && c.At.After(w.preEnd) && c.At.Before(w.postStart) {
			inside++
		}
	}
	return fmt.Sprintf("Hooks seen by the simulator: %d pre and %d post TAT tasks (db-fsi); %d CreateImage calls between their instance's pre end and post start.",
		pre, post, inside)
}

// demoRestoreTest runs the demo's restore test once and says how it went.
func demoRestoreTest(ctx context.Context, w *leaderWork, out io.Writer) error {
	fmt.Fprintln(out, "imager demo: restore test web-weekly: launching an instance from the latest image of web-nightly, checking it through TAT, terminating it ...")
	res, err := w.units[0].tester.RunNow(ctx, "web-weekly")
	if err != nil {
		return err
	}
	exit := "none"
	if res.ExitCode != nil {
		exit = strconv.Itoa(*res.ExitCode)
	}
	fmt.Fprintf(out, "imager demo: restore test web-weekly %s: %s launched from %s (the image of %s), check exit code %s, terminated %t\n",
		res.Status, res.LaunchedInstanceID, res.ImageID, res.InstanceID, exit, res.Terminated)
	return nil
}
