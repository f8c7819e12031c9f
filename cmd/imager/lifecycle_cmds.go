package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	tccommon "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/retention"
)

// newAccountClient builds account a's CVM client from --cvm-endpoint and --api-timeout, signed
// as accountCredential says (cred: a test's or the demo's simulator key for the default chain),
// logging with the account. An error names the account but no secret.
func newAccountClient(o options, a *policy.Account, cred tccommon.CredentialIface, log zerolog.Logger,
	onCall func(action, code string, elapsed time.Duration)) (*cvm.Client, error) {
	cred, err := accountCredential(a, cred)
	if err != nil {
		return nil, err
	}
	c, err := cvm.New(cvm.Config{Endpoint: o.cvmEndpoint, Timeout: o.apiTimeout, Credential: cred,
		Logger: log.With().Str("account", a.Name).Logger(), OnCall: onCall})
	if err != nil {
		return nil, fmt.Errorf("account %s: %w", a.Name, err)
	}
	return c, nil
}

func cmdPrune(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("prune", flag.ContinueOnError)
	o.policyFlags(fs)
	o.databaseFlags(fs)
	o.logFlags(fs)
	o.endpointFlag(fs)
	name := fs.String("policy", "", "only this policy (default: every policy with retention)")
	dryRun := fs.Bool("dry-run", false, "list each image that would be deleted and why; delete nothing")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager prune: %v\n", err)
		return exitUsage
	}
	cfg, ok := loadPolicies(o.policies, stderr)
	if !ok {
		return exitFail
	}
	if *name != "" {
		p := cfg.Policy(*name)
		if p == nil {
			fmt.Fprintf(stderr, "imager prune: --policy: no policy named %q in %s\n", *name, o.policies)
			return exitUsage
		}
		if p.Retention == nil {
			fmt.Fprintf(stderr, "imager prune: --policy: policy %q has no retention rule; nothing to prune\n", *name)
			return exitUsage
		}
	}
	store, err := history.Open(ctx, o.databaseURL, log)
	if err != nil {
		fmt.Fprintf(stderr, "imager prune: %v\n", err)
		return exitFail
	}
	defer store.Close()
	if _, err := store.Migrate(ctx); err != nil {
		fmt.Fprintf(stderr, "imager prune: migrate: %v\n", err)
		return exitFail
	}
	// One pruner per account, each with the account's client, weighing the images made with it.
	var pruners []*retention.Pruner
	accts := configAccounts(cfg)
	for _, a := range accts {
		if *name != "" && cfg.Policy(*name).Account != a.Name && len(accts) > 1 {
			continue
		}
		client, err := newAccountClient(o, a, nil, log, nil)
		if err != nil {
			fmt.Fprintf(stderr, "imager prune: %v\n", err)
			return exitFail
		}
		defer client.Close()
		pruners = append(pruners, retention.NewPruner(retention.Options{
			CVM: client, History: store, Config: func() *policy.Config { return cfg }, Account: servedAccount(len(accts), a.Name),
			Clock: clockwork.NewRealClock(), Logger: log.With().Str("component", "retention").Str("account", a.Name).Logger(),
		}))
	}

	var decisions []retention.Decision
	for _, pruner := range pruners {
		ds, err := pruner.Plan(ctx, *name)
		if err != nil {
			fmt.Fprintf(stderr, "imager prune: %v\n", err)
			return exitFail
		}
		decisions = append(decisions, ds...)
	}
	verb := "would delete"
	if !*dryRun {
		verb = "deleting"
	}
	for _, d := range decisions {
		fmt.Fprintf(stdout, "%s %s %s (%s/%s): %s\n", verb, d.ImageID, d.ImageName, d.Policy, d.InstanceID, d.Reason)
	}
	if *dryRun {
		fmt.Fprintf(stdout, "%d images would be deleted (dry run: nothing deleted)\n", len(decisions))
		return exitOK
	}
	var deleted int
	for _, pruner := range pruners {
		var n int
		if *name != "" {
			n, err = pruner.PrunePolicy(ctx, *name)
		} else {
			n, err = pruner.PruneAll(ctx)
		}
		deleted += n
		if err != nil {
			break
		}
	}
	fmt.Fprintf(stdout, "%d images deleted\n", deleted)
	if err != nil {
		fmt.Fprintf(stderr, "imager prune: %v\n", err)
		return exitFail
	}
	return exitOK
}
