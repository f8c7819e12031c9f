package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/jonboulle/clockwork"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/restore"
	"github.com/imager-dev/imager/internal/tat"
)

// cmdRestoreTest is `imager restore-test NAME --now`: it runs one restore test at once in this
// process (docs/restore-tests.md) with the credentials of its policy's account, waits for its
// outcome and prints it. Exit 0 only when the check passed.
func cmdRestoreTest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("restore-test", flag.ContinueOnError)
	o.policyFlags(fs)
	o.databaseFlags(fs)
	o.logFlags(fs)
	o.endpointFlag(fs)
	now := fs.Bool("now", false, "run the test now (required: the daemon runs it on its schedule)")
	format := fs.String("format", "table", "table or json")
	name := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	switch {
	case name == "":
		fmt.Fprintln(stderr, "imager restore-test: the test's name is required: imager restore-test NAME --now")
		return exitUsage
	case !*now:
		fmt.Fprintln(stderr, "imager restore-test: --now is required (the daemon runs each test on its schedule)")
		return exitUsage
	case *format != "table" && *format != "json":
		fmt.Fprintf(stderr, "imager restore-test: --format: %q is neither table nor json\n", quoteShort(*format))
		return exitUsage
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager restore-test: %v\n", err)
		return exitUsage
	}
	cfg, ok := loadPolicies(o.policies, stderr)
	if !ok {
		return exitFail
	}
	rt := cfg.RestoreTest(name)
	if rt == nil {
		var names []string
		for _, t := range cfg.RestoreTests {
			names = append(names, t.Name)
		}
		fmt.Fprintf(stderr, "imager restore-test: no restore test named %q in %s (restore_tests: %s)\n",
			quoteShort(name), o.policies, strings.Join(names, ", "))
		return exitUsage
	}
	account := cfg.Policy(rt.Policy).Account
	a := cfg.Account(account)
	client, err := newAccountClient(o, a, nil, log, nil)
	if err != nil {
		fmt.Fprintf(stderr, "imager restore-test: %v\n", err)
		return exitFail
	}
	defer client.Close()
	store, err := history.Open(ctx, o.databaseURL, log)
	if err != nil {
		fmt.Fprintf(stderr, "imager restore-test: %v\n", err)
		return exitFail
	}
	defer store.Close()
	if _, err := store.Migrate(ctx); err != nil {
		fmt.Fprintf(stderr, "imager restore-test: migrate: %v\n", err)
		return exitFail
	}
	clock := clockwork.NewRealClock()
	tester := restore.New(restore.Options{
		History: store, Account: a.Name, CVM: client, TAT: tat.New(client), Config: func() *policy.Config { return cfg },
		Clock: clock, Logger: log.With().Str("component", "restore").Str("account", a.Name).Logger(),
	})
	if err := restore.SyncConfigs(ctx, store, cfg, clock.Now()); err != nil {
		log.Warn().Err(err).Msg("cannot record the loaded restore tests in restore_test_configs")
	}
	fmt.Fprintf(stderr, "imager restore-test: running %s (policy %s, account %s): launch, wait for the agent, check, terminate ...\n",
		rt.Name, rt.Policy, a.Name)
	res, err := tester.RunNow(ctx, name)
	if err != nil {
		fmt.Fprintf(stderr, "imager restore-test: %v\n", err)
		return exitFail
	}
	if *format == "json" {
		if code := printJSON(stdout, stderr, "restore-test", restoreJSON(res)); code != exitOK {
			return code
		}
	} else {
		w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(w, "Test:\t%s (row %d)\n", res.Test, res.ID)
		fmt.Fprintf(w, "Result:\t%s\n", res.Status)
		if res.ErrorCode != "" {
			fmt.Fprintf(w, "Error:\t%s: %s\n", res.ErrorCode, res.ErrorMessage)
		}
		fmt.Fprintf(w, "Policy:\t%s\n", res.Policy)
		fmt.Fprintf(w, "Instance tested:\t%s\n", res.InstanceID)
		fmt.Fprintf(w, "Image:\t%s in %s\n", res.ImageID, res.Region)
		fmt.Fprintf(w, "Launched:\t%s\n", dash(res.LaunchedInstanceID))
		if res.ExitCode != nil {
			fmt.Fprintf(w, "Check exit code:\t%d\n", *res.ExitCode)
		}
		fmt.Fprintf(w, "Terminated:\t%t\n", res.Terminated)
		w.Flush()
		if res.Output != "" {
			fmt.Fprintf(stdout, "\nCheck output (first 4 KiB):\n%s\n", res.Output)
		}
	}
	if !res.Passed() {
		return exitFail
	}
	return exitOK
}

// restoreJSON is a restore test's result under the column names of restore_tests.
func restoreJSON(r restore.Result) map[string]any {
	return map[string]any{
		"id": r.ID, "test": r.Test, "slot": r.Slot, "policy": r.Policy, "instance_id": r.InstanceID,
		"image_id": r.ImageID, "region": r.Region, "launched_instance_id": nullable(r.LaunchedInstanceID),
		"status": string(r.Status), "error_code": nullable(r.ErrorCode), "error_message": nullable(r.ErrorMessage),
		"exit_code": r.ExitCode, "output": nullable(r.Output), "terminated": r.Terminated,
	}
}
