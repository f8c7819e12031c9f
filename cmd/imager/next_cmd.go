package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/targets"
)

// nextFire is one line of `imager next --format json`.
type nextFire struct {
	Policy  string `json:"policy"`
	Slot    string `json:"slot"`  // RFC 3339, UTC
	Local   string `json:"local"` // RFC 3339 with the policy zone's offset
	Zone    string `json:"zone"`
	InMin   int64  `json:"in_minutes"` // minutes after --from (or now)
	Enabled bool   `json:"enabled"`    // false: the policy is loaded but never fired
}

// cmdNext prints each policy's upcoming fires from now, or from --from, with the number of targets
// each would have now. Fire times follow the DST rules of docs/design.md "Daylight saving".
func cmdNext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("next", flag.ContinueOnError)
	o.policyFlags(fs)
	o.logFlags(fs)
	o.endpointFlag(fs)
	count := fs.Int("count", 3, "upcoming fires to show per policy")
	offline := fs.Bool("offline", false, "do not ask the API: count only the listed instances, leave selectors unresolved")
	from := fs.String("from", "", "compute fires after this instant (RFC 3339, e.g. 2027-11-07T00:00:00-04:00) instead of now")
	only := fs.String("policy", "", "only this policy")
	format := fs.String("format", "table", "output: table, or json (one line per fire)")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	start := time.Now()
	if *from != "" {
		t, err := time.Parse(time.RFC3339, *from)
		if err != nil {
			fmt.Fprintf(stderr, "imager next: --from %q: want an RFC 3339 time such as 2027-11-07T00:00:00-04:00 or 2027-03-28T00:00:00Z\n", *from)
			return exitUsage
		}
		start = t
	}
	if *count < 1 || *count > 10000 {
		fmt.Fprintf(stderr, "imager next: --count %d: want 1 to 10000\n", *count)
		return exitUsage
	}
	if *format != "table" && *format != "json" {
		fmt.Fprintf(stderr, "imager next: --format %q: want table or json\n", *format)
		return exitUsage
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager next: %v\n", err)
		return exitUsage
	}
	cfg, ok := loadPolicies(o.policies, stderr)
	if !ok {
		return exitFail
	}
	policies := cfg.Policies
	if *only != "" {
		p := cfg.Policy(*only)
		if p == nil {
			fmt.Fprintf(stderr, "imager next: --policy: no policy named %q in %s\n", *only, o.policies)
			return exitUsage
		}
		policies = []*policy.Policy{p}
	}

	if *format == "json" {
		enc := json.NewEncoder(stdout)
		for _, p := range policies {
			for _, t := range policy.NextN(p.Schedule, start, *count) {
				if err := enc.Encode(nextFire{Policy: p.Name, Slot: t.UTC().Format(time.RFC3339),
					Local: t.In(p.Location).Format(time.RFC3339), Zone: t.In(p.Location).Location().String(),
					InMin: int64(t.Sub(start) / time.Minute), Enabled: p.Enabled}); err != nil {
					fmt.Fprintf(stderr, "imager next: %v\n", err)
					return exitFail
				}
			}
		}
		return exitOK
	}

	// One resolver per account: each lists the instances its own credentials see.
	resolvers := map[string]*targets.Resolver{}
	if !*offline {
		for _, a := range configAccounts(cfg) {
			client, err := newAccountClient(o, a, nil, log, nil)
			switch {
			case err != nil && *from != "":
				// A preview from a given instant needs no API: say so and go on offline.
				fmt.Fprintf(stderr, "imager next: targets not resolved (%v); showing fire times only\n", err)
			case err != nil:
				fmt.Fprintf(stderr, "imager next: %v (or use --offline)\n", err)
				return exitFail
			default:
				defer client.Close()
				resolvers[a.Name] = targets.NewResolver(targets.Options{CVM: client, Logger: log.With().Str("component", "targets").Logger()})
			}
		}
	}
	code := exitOK
	for _, p := range policies {
		targetsNow := fmt.Sprintf("%d listed instances", len(p.Instances))
		resolver := resolvers[p.Account]
		if len(resolvers) == 1 && resolver == nil {
			for _, r := range resolvers {
				resolver = r
			}
		}
		switch {
		case resolver != nil:
			ids, skipped, err := resolver.Resolve(ctx, p)
			if err != nil {
				targetsNow = fmt.Sprintf("targets unknown: %v", err)
				code = exitFail
				break
			}
			targetsNow = fmt.Sprintf("%d targets now", len(ids))
			if len(skipped) > 0 {
				targetsNow += fmt.Sprintf(", %d listed instances gone (would be skipped)", len(skipped))
			}
		case p.Select != nil:
			targetsNow += " + selector (not resolved)"
		}
		state := ""
		if !p.Enabled {
			state = ", disabled: never fired"
		}
		fmt.Fprintf(stdout, "%s  %q  %s  (%s%s)\n", p.Name, p.ScheduleSpec, p.Region, targetsNow, state)
		for _, t := range policy.NextN(p.Schedule, start, *count) {
			fmt.Fprintf(stdout, "  %s  %s  (in %s)\n", t.In(p.Location).Format("2006-01-02 15:04 MST -07:00"),
				t.UTC().Format("15:04Z"), t.Sub(start).Round(time.Minute))
		}
	}
	return code
}
