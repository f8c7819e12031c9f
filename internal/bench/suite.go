package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// The benchmarks Run knows, in the order it runs them.
const (
	NamePacing  = "pacing"
	NameFire    = "fire"
	NameScale   = "scale"
	NameHistory = "history"
	NameHot     = "hot"
	// NameOneFire is one policy firing at 50,000 targets: the claim, and the cost of a terminal
	// write at 1,000 and 10,000 completions.
	NameOneFire = "one-fire"
	// NamePacingDefaults is the 20 %-fault pacing scenario with imager's default retry settings.
	// It is not part of the default set (it would push the suite past ten minutes): ask for it
	// with Config.Only.
	NamePacingDefaults = "pacing-defaults"
	// NamePacingLoaded is the N=300, L=10 pacing scenario on a loaded machine (StartLoad). It is
	// not part of the default set either: it slows everything else on the machine.
	NamePacingLoaded = "pacing-loaded"
)

// DefaultNames lists the benchmarks Run runs when Config.Only is empty, in run order.
func DefaultNames() []string {
	return []string{NamePacing, NameFire, NameOneFire, NameHooks, NameScale, NameHistory, NameHot}
}

// Names lists every benchmark Run knows, in run order.
func Names() []string {
	return []string{NamePacing, NamePacingLoaded, NamePacingDefaults, NameFire, NameOneFire, NameHooks, NameScale, NameHistory, NameHot}
}

// Config chooses what Run measures.
type Config struct {
	// Only names the benchmarks to run (see Names); empty runs DefaultNames.
	Only []string
	// Runs is how many times each benchmark runs; the report gives median, min and max over them.
	Runs int
	// Quick shrinks every benchmark to a smoke run of a few seconds; its figures mean nothing.
	Quick bool
	// Binary is the imager executable the scale benchmark runs; empty builds cmd/imager
	// (BuildImager) into a temporary directory when the scale benchmark is chosen.
	Binary string
	// AuditQueries are docs/audit.md's audit queries as imager demo prints them (history.Cookbook, internal/history/cookbook.go).
	AuditQueries []Query
	// Cookbook are the queries of docs/audit.md's audit cookbook (CookbookQueries); those that are not
	// among AuditQueries are measured too.
	Cookbook []Query
	// NewDatabase gives each benchmark a fresh database; nil starts a throwaway cluster for the run.
	NewDatabase func(ctx context.Context) (string, error)
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// Logger receives the logs of the components under test; the zero value discards them.
	Logger zerolog.Logger
}

// Scenarios are the parameters of every benchmark at one size.
type Scenarios struct {
	Pacing         []PacingParams
	PacingLoaded   []PacingParams
	PacingDefaults []PacingParams
	Fire           FireParams
	OneFire        OneFireParams
	Hooks          HooksParams
	Scale          ScaleParams
	History        HistoryParams
}

// FullScenarios are the sizes BENCHMARKS.md reports. The fire-latency and the larger pacing scenarios run at
// 100 calls per second: at 10 per second they would take ten times as long and show nothing more.
func FullScenarios() Scenarios {
	return Scenarios{
		Pacing: []PacingParams{
			{Calls: 300, Limit: 10, Workers: 4, NaiveRetries: 3, Seed: 1},
			{Calls: 3000, Limit: 100, Workers: 16, NaiveRetries: 3, Seed: 2},
			{Calls: 3000, Limit: 100, Workers: 16, FaultRate: 0.2, TransientAttempts: 10,
				TransientInitial: 100 * time.Millisecond, TransientMax: time.Second, NaiveRetries: -1, Seed: 3},
		},
		PacingLoaded: []PacingParams{
			{Calls: 300, Limit: 10, Workers: 4, NaiveRetries: -1, Seed: 1, Loaded: true},
		},
		PacingDefaults: []PacingParams{
			{Calls: 3000, Limit: 100, Workers: 16, FaultRate: 0.2, NaiveRetries: -1, Seed: 3},
		},
		Fire:    FireParams{Policies: 1000, Limit: 100, Workers: 16, Lead: 2 * time.Second},
		OneFire: OneFireParams{Targets: 50_000, Windows: []int{1000, 10_000}, Window: 1000},
		Hooks:   HooksParams{Instances: 100, Limit: 10, Workers: 4, TaskTime: 300 * time.Millisecond},
		Scale:   ScaleParams{Policies: 1000, Instances: 10, Idle: 60 * time.Second},
		History: HistoryParams{
			Runs: 1_000_000, Instances: 10_000, WriteRuns: 5000, Writers: 16,
			Samples: 20, SampleBudget: 1500 * time.Millisecond,
		},
	}
}

// QuickScenarios are smoke-test sizes: every code path, in seconds.
func QuickScenarios() Scenarios {
	return Scenarios{
		Pacing: []PacingParams{
			{Calls: 20, Limit: 50, Workers: 4, NaiveRetries: 3, Seed: 1},
			{Calls: 20, Limit: 50, Workers: 4, FaultRate: 0.2, TransientAttempts: 10,
				TransientInitial: 20 * time.Millisecond, TransientMax: 100 * time.Millisecond, NaiveRetries: -1, Seed: 3},
		},
		PacingLoaded: []PacingParams{
			{Calls: 20, Limit: 50, Workers: 4, NaiveRetries: -1, Seed: 1, Loaded: true},
		},
		PacingDefaults: []PacingParams{
			{Calls: 20, Limit: 50, Workers: 4, FaultRate: 0.2, NaiveRetries: -1, Seed: 3},
		},
		Fire:    FireParams{Policies: 5, Limit: 50, Workers: 4, Lead: 500 * time.Millisecond},
		OneFire: OneFireParams{Targets: 500, Windows: []int{100, 300}, Window: 100},
		Hooks:   HooksParams{Instances: 12, Limit: 50, Workers: 4, TaskTime: 10 * time.Millisecond},
		Scale:   ScaleParams{Policies: 5, Instances: 2},
		History: HistoryParams{
			Runs: 4000, Instances: 100, WriteRuns: 50, Writers: 4, Samples: 3,
		},
	}
}

// PacingScenario is one pacing scenario and its runs.
type PacingScenario struct {
	Params PacingParams
	Runs   []PacingRun
}

// FireBench is the fire-latency benchmark's parameters and runs.
type FireBench struct {
	Params FireParams
	Runs   []FireRun
}

// OneFireBench is the one-fire benchmark's parameters and runs.
type OneFireBench struct {
	Params OneFireParams
	Runs   []OneFireResult
}

// ScaleBench is the scale benchmark's parameters and runs.
type ScaleBench struct {
	Params ScaleParams
	Runs   []ScaleRun
}

// HistoryBench is the history benchmark's parameters and result.
type HistoryBench struct {
	Params HistoryParams
	Result HistoryResult
}

// HotBench is the hot pieces and their runs (Runs[run][piece]).
type HotBench struct {
	Pieces []HotPiece
	Runs   [][]HotRun
}

// HooksBench is the hooks benchmark's parameters and runs.
type HooksBench struct {
	Params HooksParams
	Runs   []HooksRun
}

// Report is everything one Run measured. Markdown renders it.
type Report struct {
	Machine Machine
	Runs    int
	Quick   bool
	Started time.Time
	Took    time.Duration
	Names   []string // the benchmarks run, in run order

	Pacing  []PacingScenario // nil when not run
	Fire    *FireBench
	OneFire *OneFireBench
	Hooks   *HooksBench
	Scale   *ScaleBench
	History *HistoryBench
	Hot     *HotBench
}

// Run runs the chosen benchmarks cfg.Runs times each and returns the report. It starts one
// throwaway PostgreSQL cluster for the whole run unless cfg.NewDatabase is set.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	only, err := chosen(cfg.Only)
	if err != nil {
		return nil, err
	}
	if cfg.Runs < 1 {
		return nil, fmt.Errorf("runs must be at least 1, not %d", cfg.Runs)
	}
	progress := cfg.Progress
	if progress == nil {
		progress = io.Discard
	}
	say := func(format string, args ...any) { fmt.Fprintf(progress, "bench: "+format+"\n", args...) }
	sc := FullScenarios()
	if cfg.Quick {
		sc = QuickScenarios()
	}
	rep := &Report{Machine: DescribeMachine(), Runs: cfg.Runs, Quick: cfg.Quick, Started: time.Now(), Names: only}
	env := Env{NewDatabase: cfg.NewDatabase, Binary: cfg.Binary, Logger: cfg.Logger}
	needsDB := slices.ContainsFunc(only, func(n string) bool { return n != NameHot })
	if env.NewDatabase == nil && needsDB {
		say("starting a throwaway PostgreSQL cluster")
		cluster, err := StartCluster(ctx, cfg.Logger)
		if err != nil {
			return nil, err
		}
		defer cluster.Stop()
		env.NewDatabase = cluster.NewDatabase
		rep.Machine.PostgreSQL = cluster.Version()
	}

	if env.Binary == "" && slices.Contains(only, NameScale) {
		say("building cmd/imager for the scale benchmark")
		dir, err := os.MkdirTemp("", "imager-bench-bin-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if env.Binary, err = BuildImager(ctx, dir); err != nil {
			return nil, err
		}
	}

	for _, name := range only {
		switch name {
		case NamePacing, NamePacingLoaded, NamePacingDefaults:
			scenarios := sc.Pacing
			switch name {
			case NamePacingLoaded:
				scenarios = sc.PacingLoaded
			case NamePacingDefaults:
				scenarios = sc.PacingDefaults
			}
			for _, p := range scenarios {
				s := PacingScenario{Params: p}
				for run := range cfg.Runs {
					p := p
					p.Seed += int64(run) // each run its own draw of faults, the same draws on every rerun
					r, err := RunPacing(ctx, env, p)
					if err != nil {
						return nil, err
					}
					say("pacing N=%d L=%d fault=%.0f%% loaded=%t run %d/%d: imager %s", p.Calls, p.Limit, p.FaultRate*100, p.Loaded, run+1, cfg.Runs, describePacing(r.Imager, p))
					if r.Naive != nil {
						say("pacing N=%d L=%d run %d/%d: naive %s", p.Calls, p.Limit, run+1, cfg.Runs, describePacing(*r.Naive, p))
					}
					s.Runs = append(s.Runs, r)
				}
				rep.Pacing = append(rep.Pacing, s)
			}
		case NameFire:
			fb := &FireBench{Params: sc.Fire}
			for run := range cfg.Runs {
				r, err := RunFire(ctx, env, sc.Fire)
				if err != nil {
					return nil, err
				}
				say("fire %d policies run %d/%d: first %s, p50 %s, p99 %s, last %s", sc.Fire.Policies, run+1, cfg.Runs,
					r.First().Round(time.Microsecond), Percentile(r.Latencies, 50).Round(time.Millisecond),
					Percentile(r.Latencies, 99).Round(time.Millisecond), r.Last().Round(time.Millisecond))
				fb.Runs = append(fb.Runs, r)
			}
			rep.Fire = fb
		case NameOneFire:
			ob := &OneFireBench{Params: sc.OneFire}
			for run := range cfg.Runs {
				r, err := RunOneFire(ctx, env, sc.OneFire)
				if err != nil {
					return nil, err
				}
				var parts []string
				for _, w := range sc.OneFire.Windows {
					parts = append(parts, fmt.Sprintf("write at %d completions %s", w, r.PerWrite[w].Round(time.Microsecond)))
				}
				say("one fire of %d targets run %d/%d: claim %s; %s", sc.OneFire.Targets, run+1, cfg.Runs,
					r.Claim.Round(time.Millisecond), strings.Join(parts, ", "))
				ob.Runs = append(ob.Runs, r)
			}
			rep.OneFire = ob
		case NameHooks:
			hb := &HooksBench{Params: sc.Hooks}
			for run := range cfg.Runs {
				r, err := RunHooks(ctx, env, sc.Hooks)
				if err != nil {
					return nil, err
				}
				say("hooks %d instances run %d/%d: frozen p50 %s p99 %s; beyond the CreateImage round trip p50 %s p99 %s",
					sc.Hooks.Instances, run+1, cfg.Runs, Percentile(r.Frozen, 50).Round(time.Millisecond),
					Percentile(r.Frozen, 99).Round(time.Millisecond), Percentile(r.Extra, 50).Round(time.Millisecond),
					Percentile(r.Extra, 99).Round(time.Millisecond))
				hb.Runs = append(hb.Runs, r)
			}
			rep.Hooks = hb
		case NameScale:
			say("scale %d policies x %d instances: %d daemons, idle window %s", sc.Scale.Policies, sc.Scale.Instances, cfg.Runs, sc.Scale.Idle)
			runs, err := RunScale(ctx, env, sc.Scale, cfg.Runs)
			if err != nil {
				return nil, err
			}
			for i, r := range runs {
				say("scale run %d/%d: validate %s, start-up %s, peak RSS %.1f MiB, idle CPU %.3f%%", i+1, cfg.Runs,
					r.Validate.Round(time.Millisecond), r.Startup.Round(time.Millisecond), float64(r.PeakRSS)/(1<<20), r.IdleCPU*100)
			}
			rep.Scale = &ScaleBench{Params: sc.Scale, Runs: runs}
		case NameHistory:
			p := sc.History
			p.Queries = mergeQueries(cfg.AuditQueries, cfg.Cookbook)
			say("history: generating %d runs over %d instances, then %d measurements", p.Runs, p.Instances, cfg.Runs)
			res, err := RunHistory(ctx, env, p, cfg.Runs)
			if err != nil {
				return nil, err
			}
			say("history: generated %d runs and %d attempts in %s", res.Dataset.Runs, res.Dataset.Attempts, res.Dataset.Took.Round(time.Millisecond))
			for i, r := range res.Runs {
				var parts []string
				for _, q := range r.Queries {
					parts = append(parts, fmt.Sprintf("%s p95 %s", shortTitle(q.Title), q.P95.Round(100*time.Microsecond)))
				}
				say("history run %d/%d: writes %.0f runs/s; %s", i+1, cfg.Runs, r.WriteRate, strings.Join(parts, "; "))
			}
			rep.History = &HistoryBench{Params: p, Result: res}
		case NameHot:
			hb := &HotBench{Pieces: HotPieces()}
			for run := range cfg.Runs {
				r, err := RunHot(cfg.Quick)
				if err != nil {
					return nil, err
				}
				say("hot pieces run %d/%d done", run+1, cfg.Runs)
				hb.Runs = append(hb.Runs, r)
			}
			rep.Hot = hb
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	rep.Took = time.Since(rep.Started)
	return rep, nil
}

// chosen validates the names in only and returns them in run order (all when empty).
func chosen(only []string) ([]string, error) {
	if len(only) == 0 {
		return DefaultNames(), nil
	}
	var out []string
	for _, n := range Names() {
		if slices.Contains(only, n) {
			out = append(out, n)
		}
	}
	for _, n := range only {
		if !slices.Contains(Names(), n) {
			return nil, fmt.Errorf("unknown benchmark %q (known: %s)", n, strings.Join(Names(), ", "))
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no benchmark chosen")
	}
	return out, nil
}

func describePacing(c ClientPacing, p PacingParams) string {
	return fmt.Sprintf("%d/%d requested in %s (%.3f x N/L), rate %.3f L, %d calls (%d granted), %d rejected, max %d (admitted %d) in any second, first call after %s, last outcome %s after the last call",
		c.Requested, p.Calls, c.Makespan.Round(time.Millisecond), c.MakespanPerIdeal(p.Calls, p.Limit),
		c.RatePerLimit(p.Limit), c.Calls, c.Grants, c.Rejected, c.MaxInAnySecond, c.MaxAdmittedInAnySecond,
		c.FirstCall.Round(time.Millisecond), c.Tail.Round(time.Millisecond))
}

// shortTitle is the part of a query title before its first parenthesis or comma.
func shortTitle(s string) string {
	if i := strings.IndexAny(s, "(,"); i > 0 {
		return strings.TrimSpace(s[:i])
	}
	return s
}
