package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/scheduler"
)

// loadPolicies loads and validates the policy files, printing every error as file:line: field: message.
func loadPolicies(path string, stderr io.Writer) (*policy.Config, bool) {
	cfg, err := policy.Load(path)
	if err != nil {
		var verr *policy.ValidationError
		if errors.As(err, &verr) {
			fmt.Fprint(stderr, verr.Error())
			if !strings.HasSuffix(verr.Error(), "\n") {
				fmt.Fprintln(stderr)
			}
		} else {
			fmt.Fprintf(stderr, "imager: %v\n", err)
		}
		return cfg, false
	}
	return cfg, true
}

func cmdValidate(_ context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	o.policyFlags(fs)
	count := fs.Int("next", 3, "how many upcoming fire times to print per policy")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	cfg, ok := loadPolicies(o.policies, stderr)
	if cfg != nil {
		printNextFires(stdout, cfg, time.Now(), *count)
	}
	if !ok {
		return exitFail
	}
	fmt.Fprintf(stdout, "%s: %d policies OK\n", o.policies, len(cfg.Policies))
	return exitOK
}

func printNextFires(w io.Writer, cfg *policy.Config, now time.Time, n int) {
	for _, p := range cfg.Policies {
		state := ""
		if !p.Enabled {
			state = " (disabled: never fired)"
		}
		fmt.Fprintf(w, "%s  %q  region %s%s\n", p.Name, p.ScheduleSpec, p.Region, state)
		for _, t := range policy.NextN(p.Schedule, now, n) {
			fmt.Fprintf(w, "  %s  (%s)\n", t.In(p.Location).Format("2006-01-02 15:04 MST"), t.UTC().Format(time.RFC3339))
		}
	}
}

func cmdMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	o.databaseFlags(fs)
	o.logFlags(fs)
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager migrate: %v\n", err)
		return exitUsage
	}
	store, err := history.Open(ctx, o.databaseURL, log)
	if err != nil {
		fmt.Fprintf(stderr, "imager migrate: %v\n", err)
		return exitFail
	}
	defer store.Close()
	applied, err := store.Migrate(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "imager migrate: %v\n", err)
		return exitFail
	}
	if len(applied) == 0 {
		fmt.Fprintln(stdout, "database is up to date")
	}
	for _, v := range applied {
		fmt.Fprintf(stdout, "applied %s\n", v)
	}
	return exitOK
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	o.policyFlags(fs)
	o.databaseFlags(fs)
	o.logFlags(fs)
	o.daemonFlags(fs)
	watch := fs.Bool("watch-policies", envOr("IMAGER_WATCH_POLICIES", "true") != "false",
		"reload the policies when their files change (as a Kubernetes ConfigMap update does); SIGHUP reloads them either way (env IMAGER_WATCH_POLICIES)")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager run: %v\n", err)
		return exitUsage
	}
	if o.leaseTTL < 3*time.Millisecond {
		fmt.Fprintf(stderr, "imager run: --lease-ttl: %s is too short\n", o.leaseTTL)
		return exitUsage
	}
	if err := o.checkWebConfig(); err != nil {
		fmt.Fprintf(stderr, "imager run: %v\n", err)
		return exitUsage
	}
	cfg, ok := loadPolicies(o.policies, stderr)
	if !ok {
		return exitFail
	}
	d, err := openDaemon(ctx, daemonConfig{opts: o, cfg: cfg, pollInterval: o.pollInterval}, log)
	if err != nil {
		fmt.Fprintf(stderr, "imager run: %v\n", err)
		return exitFail
	}
	defer d.close()
	// SIGHUP reloads the policies, and so does a change of their files (--watch-policies). The
	// channel has one slot and neither signal.Notify nor the watcher ever blocks on it, so a burst
	// of signals and changes collapses into one reload.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if *watch {
		watchCtx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		err := watchPolicies(watchCtx, o.policies, func() {
			select {
			case hup <- syscall.SIGHUP:
			default: // a reload is already due
			}
		}, log)
		if err != nil { // e.g. the inotify limits are used up: the daemon runs on, SIGHUP still reloads
			log.Warn().Err(err).Str("policies_path", o.policies).Msg("cannot watch the policy files; only SIGHUP reloads them")
		}
	}
	if err := d.start(ctx); err != nil {
		fmt.Fprintf(stderr, "imager run: %v\n", err)
		return exitFail
	}
	log.Info().Int("policies", len(cfg.Policies)).Str("policies_path", o.policies).Str("daemon_id", d.daemonID).
		Bool("leader", d.elector.Term() != 0).Dur("lease_ttl", d.elector.TTL()).Msg("imager running")
	for {
		select {
		case <-ctx.Done():
			log.Info().Int64("grace_ms", o.shutdownGrace.Milliseconds()).Msg("shutting down: no new fires; waiting for calls in flight, then resigning the lease")
			d.close()
			log.Info().Msg("imager stopped")
			return exitOK
		case <-hup:
			reloadPolicies(d, o.policies, log)
		}
	}
}

// reloadPolicies does all fallible work first; a bad file leaves the running policies in place.
func reloadPolicies(d *daemon, path string, log zerolog.Logger) {
	cfg, err := policy.Load(path)
	if err != nil {
		log.Error().Str("policies_path", path).Str("errors", err.Error()).Msg("policy reload failed; keeping the previous policies")
		return
	}
	if err := d.reload(cfg); err != nil {
		log.Error().Err(err).Str("policies_path", path).Msg("policy reload refused; keeping the previous policies")
		return
	}
	log.Info().Str("policies_path", path).Int("policies", len(cfg.Policies)).Msg("policies reloaded")
}

// canFollowImages asks DescribeImages once about the accepted images before once waits on them:
// an endpoint that cannot describe images (a permanent error such as InvalidAction or
// UnauthorizedOperation) would leave once waiting until image.timeout. Then once reports the
// slots as requested (accepted) and leaves following them to the daemon.
func canFollowImages(ctx context.Context, client *cvm.Client, p *policy.Policy, outs []scheduler.Outcome, log zerolog.Logger) bool {
	in := cvm.DescribeImagesInput{Limit: 1}
	for _, o := range outs {
		if o.Status == history.StatusRequested {
			if o.ImageID != "" {
				in.ImageIDs = []string{o.ImageID}
			} else {
				in.Filters = []cvm.Filter{{Name: "image-name", Values: []string{o.ImageName}}}
			}
			break
		}
	}
	_, err := client.DescribeImages(ctx, p.Region, in)
	if ae, ok := cvm.AsAPIError(err); ok && ae.Class == cvm.ClassPermanent {
		log.Warn().Str("error_code", ae.Code).Str("request_id", ae.RequestID).
			Msg("cannot follow the images (DescribeImages refused): the slots stay requested and the daemon follows them")
		return false
	}
	return true
}

// instanceFlags collects repeated --instance flags.
type instanceFlags []string

func (f *instanceFlags) String() string     { return strings.Join(*f, ",") }
func (f *instanceFlags) Set(v string) error { *f = append(*f, v); return nil }

func cmdOnce(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("once", flag.ContinueOnError)
	o.policyFlags(fs)
	o.databaseFlags(fs)
	o.logFlags(fs)
	o.daemonFlags(fs)
	name := fs.String("policy", "", "the policy to fire (required)")
	var instances instanceFlags
	fs.Var(&instances, "instance", "only this instance of the policy (repeatable); default: all its targets")
	noWait := fs.Bool("no-wait", false, "return once CreateImage is accepted, without following the images until they are usable (the daemon follows them)")
	slotFlag := fs.String("slot", "", "fire this slot (RFC 3339, e.g. 2026-11-26T03:00:00+08:00) instead of the current second: backfills a slot the daemon never ran; a slot already claimed is not sent again")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if *name == "" {
		fmt.Fprintln(stderr, "imager once: --policy is required (see 'imager once --help')")
		return exitUsage
	}
	slot := time.Now()
	if *slotFlag != "" {
		t, err := time.Parse(time.RFC3339, *slotFlag)
		if err != nil {
			fmt.Fprintf(stderr, "imager once: --slot: %q is not an RFC 3339 time such as 2026-11-26T03:00:00Z\n", *slotFlag)
			return exitUsage
		}
		slot = t
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager once: %v\n", err)
		return exitUsage
	}
	if err := o.checkWebConfig(); err != nil {
		fmt.Fprintf(stderr, "imager once: %v\n", err)
		return exitUsage
	}
	cfg, ok := loadPolicies(o.policies, stderr)
	if !ok {
		return exitFail
	}
	if cfg.Policy(*name) == nil {
		fmt.Fprintf(stderr, "imager once: --policy: no policy named %q in %s\n", *name, o.policies)
		return exitUsage
	}
	d, err := openDaemon(ctx, daemonConfig{opts: o, cfg: cfg, noCron: true, pollInterval: o.pollInterval}, log)
	if err != nil {
		fmt.Fprintf(stderr, "imager once: %v\n", err)
		return exitFail
	}
	defer d.close()
	req := onceRequest{policy: cfg.Policy(*name), instances: instances, slot: slot.UTC().Truncate(time.Second), noWait: *noWait}
	// A live leader fires it through its own pool and pace, so the account keeps one pace.
	lease, found, err := d.store.LeaseGet(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "imager once: %v\n", err)
		return exitFail
	}
	// Either way once joins the election: should the leader go away before it took the request,
	// once may take the lease and serve the request itself.
	if err := d.start(ctx); err != nil {
		fmt.Fprintf(stderr, "imager once: %v\n", err)
		return exitFail
	}
	w := d.leading()
	if (found && lease.Live()) || w == nil {
		if w != nil {
			// Elected although the lease looked live a moment ago (its holder just resigned): the
			// request is served by this process's own leader work.
			log.Info().Int64("term", w.term).Msg("the lease was freed meanwhile: serving the request under a lease of its own")
		}
		lease, _, err := d.store.LeaseGet(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "imager once: %v\n", err)
			return exitFail
		}
		return onceThroughLeader(ctx, d, req, lease, stdout, stderr, log)
	}
	log.Info().Int64("term", w.term).Msg("no leader running: firing under a lease of its own")
	outcomes, err := w.runOnceAt(ctx, cfg, *name, instances, slot)
	if err != nil {
		fmt.Fprintf(stderr, "imager once: %v\n", err)
		return exitFail
	}
	// Follow every accepted image until it is usable or failed; the tracker runs the retention
	// pass of each instance before it reports the run terminal.
	var requested []int64
	for _, oc := range outcomes {
		if oc.Status == history.StatusRequested {
			requested = append(requested, oc.RunID)
		}
	}
	p := cfg.Policy(*name)
	follow := len(requested) > 0 && !*noWait && canFollowImages(ctx, d.accountOf(p.Account).client, p, outcomes, log)
	if follow {
		log.Info().Int("images", len(requested)).Msg("waiting for the images to become usable")
		final, err := w.waitTerminal(ctx, cfg, outcomes)
		if err != nil {
			fmt.Fprintf(stderr, "imager once: waiting for images: %v\n", err)
			return exitFail
		}
		for i, oc := range outcomes {
			if r, ok := final[oc.RunID]; ok {
				outcomes[i].Status, outcomes[i].ImageID = r.Status, r.ImageID
				outcomes[i].ErrorCode, outcomes[i].ErrorMessage = r.ErrorCode, r.ErrorMessage
			}
		}
	}
	return printOutcomes(ctx, stdout, outcomes, follow)
}

// printOutcomes prints one line per slot and the summary, and returns once's exit code.
func printOutcomes(ctx context.Context, stdout io.Writer, outcomes []scheduler.Outcome, follow bool) int {
	failed := 0
	for _, oc := range outcomes {
		line := fmt.Sprintf("%-14s %-10s %s", oc.InstanceID, oc.Status, oc.ImageName)
		if oc.ImageID != "" {
			line += " " + oc.ImageID
		}
		if oc.ErrorCode != "" || oc.ErrorMessage != "" {
			line += fmt.Sprintf("  %s: %s", oc.ErrorCode, oc.ErrorMessage)
		}
		// Success is a usable image, or an accepted CreateImage when the images are not followed.
		if oc.Status != history.StatusAvailable && (follow || oc.Status != history.StatusRequested) {
			failed++
		}
		fmt.Fprintln(stdout, line)
	}
	if follow {
		fmt.Fprintf(stdout, "%d slots, %d not available\n", len(outcomes), failed)
	} else {
		fmt.Fprintf(stdout, "%d slots, %d not accepted (images not followed)\n", len(outcomes), failed)
	}
	if failed > 0 || ctx.Err() != nil {
		return exitFail
	}
	return exitOK
}

// printJSON prints v as indented JSON on stdout (a command's --format json); a failure to write is
// the command's error.
func printJSON(stdout, stderr io.Writer, command string, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "imager %s: %v\n", command, err)
		return exitFail
	}
	return exitOK
}
