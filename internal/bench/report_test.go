package bench

import (
	"context"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSummarize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		in            []float64
		med, min, max float64
		runs          int
	}{
		{"odd", []float64{3, 1, 2}, 2, 1, 3, 3},
		{"even", []float64{4, 1, 3, 2}, 2.5, 1, 4, 4},
		{"one", []float64{7}, 7, 7, 7, 1},
		{"not measured left out", []float64{math.NaN(), 5, 1}, 3, 1, 5, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := Summarize(tc.in)
			require.Equal(t, Summary{Median: tc.med, Min: tc.min, Max: tc.max, Runs: tc.runs}, s)
		})
	}
	require.True(t, math.IsNaN(Summarize(nil).Median))
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[i] = time.Duration(100-i) * time.Millisecond // unsorted on purpose
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{0, time.Millisecond}, {50, 50 * time.Millisecond}, {95, 95 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}} {
		require.Equal(t, tc.want, Percentile(ds, tc.p), "p%v", tc.p)
	}
	require.Zero(t, Percentile(nil, 50))
	require.Equal(t, 100*time.Millisecond, ds[0], "the input is not sorted in place")
}

func TestChosen(t *testing.T) {
	t.Parallel()
	all, err := chosen(nil)
	require.NoError(t, err)
	require.Equal(t, DefaultNames(), all)
	require.NotContains(t, all, NamePacingDefaults, "opt-in only")
	some, err := chosen([]string{NameHot, NamePacing})
	require.NoError(t, err)
	require.Equal(t, []string{NamePacing, NameHot}, some, "run order, not flag order")
	_, err = chosen([]string{"pacing", "speed"})
	require.ErrorContains(t, err, `unknown benchmark "speed"`)
}

func TestRunRefusesBadConfig(t *testing.T) {
	t.Parallel()
	_, err := Run(context.Background(), Config{Runs: 0})
	require.ErrorContains(t, err, "runs must be at least 1")
	_, err = Run(context.Background(), Config{Runs: 1, Only: []string{"nope"}})
	require.Error(t, err)
}

func TestRunHotOnlyNeedsNoDatabase(t *testing.T) {
	t.Parallel()
	rep, err := Run(context.Background(), Config{Only: []string{NameHot}, Runs: 2, Quick: true})
	require.NoError(t, err)
	require.Nil(t, rep.Pacing)
	require.Nil(t, rep.Fire)
	require.NotNil(t, rep.Hot)
	require.Len(t, rep.Hot.Runs, 2)
	require.Empty(t, rep.Machine.PostgreSQL, "no cluster was started")
	var b strings.Builder
	rep.Markdown(&b)
	require.Contains(t, b.String(), "## 5. Hot pieces")
	require.Contains(t, b.String(), "Quick run")
	require.NotContains(t, b.String(), "## 1. Pacing")
}

func TestCookbookQueries(t *testing.T) {
	t.Parallel()
	readme := []byte("# x\n\n### Audit cookbook\n\nIntro line.\n\nFirst query:\n\n```sql\nSELECT 1\nFROM a;\n```\n\n" +
		"Second (with a remark):\n\n```sql\nSELECT 2;\n```\n\n## Next\n\nOther:\n\n```sql\nSELECT 3;\n```\n")
	qs := CookbookQueries(readme)
	require.Equal(t, []Query{
		{Title: "First query", SQL: "SELECT 1\nFROM a;", Source: "docs"},
		{Title: "Second (with a remark)", SQL: "SELECT 2;", Source: "docs"},
	}, qs)

	merged := mergeQueries([]Query{{Title: "one", SQL: "SELECT 2;", Source: "audit.go"}}, qs)
	require.Equal(t, []string{"one", "First query"}, []string{merged[0].Title, merged[1].Title}, "the README's copy of an audit query is not measured twice")
	require.Len(t, merged, 2)

	real, err := os.ReadFile("../../docs/audit.md")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(CookbookQueries(real)), 4, "docs/audit.md's cookbook is found")
}

// sampleReport is a report as Run returns it, with one target missed.
func sampleReport() *Report {
	lat := []time.Duration{3 * time.Millisecond, 40 * time.Millisecond, 90 * time.Millisecond}
	return &Report{
		Machine: Machine{CPU: "Test CPU", Cores: 2, MemoryMiB: 4096, GoVersion: "go1.26", OSArch: "linux/amd64", PostgreSQL: "15.0"},
		Runs:    3,
		Started: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC),
		Took:    9 * time.Minute,
		Pacing: []PacingScenario{{
			Params: PacingParams{Calls: 300, Limit: 10, Workers: 4, NaiveRetries: 3},
			Runs: []PacingRun{
				{Imager: ClientPacing{Requested: 300, Makespan: 30500 * time.Millisecond, Calls: 300, AdmittedRate: 9.8, MaxInAnySecond: 10, MaxAdmittedInAnySecond: 10},
					Naive: &ClientPacing{Requested: 40, Lost: 260, Makespan: 7 * time.Second, Calls: 1140, Rejected: 1100, AdmittedRate: 5.5, MaxInAnySecond: 300, MaxAdmittedInAnySecond: 10}},
			},
		}, {
			Params: PacingParams{Calls: 3000, Limit: 100, Workers: 16, FaultRate: 0.2, TransientAttempts: 10, NaiveRetries: -1},
			Runs:   []PacingRun{{Imager: ClientPacing{Requested: 3000, Makespan: 46 * time.Second, Calls: 3700, InternalErrors: 700, AdmittedRate: 80, MaxInAnySecond: 99, MaxAdmittedInAnySecond: 99}}},
		}},
		Fire:  &FireBench{Params: FireParams{Policies: 3, Limit: 100, Workers: 4, Lead: time.Second}, Runs: []FireRun{{Latencies: lat, FirstArrival: 4 * time.Millisecond, DrainRate: 98, MaxInAnySecond: 3}}},
		Scale: &ScaleBench{Params: ScaleParams{Policies: 1000, Instances: 10, Idle: time.Minute}, Runs: []ScaleRun{{Validate: 70 * time.Millisecond, Startup: 60 * time.Millisecond, PeakRSS: 26 << 20, IdleCPU: 0.0002}}},
		History: &HistoryBench{
			Params: HistoryParams{Runs: 1000, Instances: 100, WriteRuns: 10, Writers: 2, Samples: 5,
				Queries: []Query{{Title: "Fast", SQL: "SELECT 1;", Source: "audit.go"}, {Title: "Other", SQL: "SELECT 2;", Source: "docs"}}},
			Result: HistoryResult{
				Dataset: Dataset{Runs: 1000, Attempts: 1100, Instances: 100, Policies: 10, Slots: 10, ByStatus: map[string]int{"available": 1000}},
				Runs:    []HistoryRun{{WriteRate: 2000, Queries: []QueryTiming{{Title: "Fast", P50: time.Millisecond, P95: 2 * time.Millisecond, Rows: 1, Samples: 5}, {Title: "Other", P50: time.Second, P95: time.Second, Rows: 1, Samples: 5}}}},
				Plans:   []QueryPlan{{Title: "Fast", Plan: "Result"}, {Title: "Other", Plan: "Seq Scan on image_runs", SeqScans: []string{"image_runs"}}},
			},
		},
		Hot: &HotBench{Pieces: HotPieces(), Runs: [][]HotRun{{{NsPerOp: 900}, {NsPerOp: 50}, {NsPerOp: 5e7}}}},
	}
}

func TestMarkdown(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	sampleReport().Markdown(&b)
	md := b.String()
	for _, want := range []string{
		"# imager benchmarks", "## Machine", "Test CPU (2 logical cores)", "## Targets",
		"## 1. Pacing", "### N = 300 calls at L = 10", "naive SDK median", "`RateLimitExceededMaxRetries = 3`",
		"## 2. Fire latency", "## 3. Scale", "## 4. History", "## 5. Hot pieces", "## Reproducing",
		"| achieved rate / L | 0.980 |",
		"| makespan / (N / L) | 1.533 |", // the fault scenario's 46 s over 30 s
		"**missed** (0 of 1 runs kept it)",
		"Seq Scan on image_runs",
	} {
		require.Contains(t, md, want)
	}
	require.NotContains(t, md, "Quick run")
	// Every table row has as many cells as its header.
	var cols int
	for _, line := range strings.Split(md, "\n") {
		if !strings.HasPrefix(line, "|") {
			cols = 0
			continue
		}
		n := strings.Count(line, "|") - 1
		if cols == 0 {
			cols = n
		}
		require.Equal(t, cols, n, "row %q", line)
	}
	// The README-only query has no target; the audit one's is met.
	require.Contains(t, md, "| history | Fast: p95 (ms) < 50 | 2.0 | met |")
	require.NotContains(t, md, "Other: p95 (ms) < 50")
}

func TestReportNamesTheCommandThatWroteIt(t *testing.T) {
	t.Parallel()
	full := &Report{Runs: 3, Names: Names()}
	require.Equal(t, "`make bench`, i.e. `go run ./cmd/imager-bench --only "+strings.Join(Names(), ",")+" --out BENCHMARKS.md`", full.command())
	def := &Report{Runs: 3, Names: DefaultNames()}
	require.Equal(t, "`go run ./cmd/imager-bench`", def.command())
	one := &Report{Runs: 5, Names: []string{NamePacing}}
	require.Equal(t, "`go run ./cmd/imager-bench --only pacing --runs 5`", one.command())
}
