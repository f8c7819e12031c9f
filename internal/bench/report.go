package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/imager-dev/imager/internal/hooks"
	"github.com/imager-dev/imager/internal/pace"
)

// target is a bound a figure must keep in every run and, when median is set, a bound its median
// over the runs must keep too (e.g. median ≤ 50 ms and no run above 80 ms).
type target struct {
	op     string // "≤", "<", "≥" or "="
	v      float64
	median *target
}

func (t target) holds(x float64) bool {
	switch t.op {
	case "≤":
		return x <= t.v
	case "<":
		return x < t.v
	case "≥":
		return x >= t.v
	default:
		return x == t.v
	}
}

// metric is one row of a table: a figure over the runs, how to print it, and its target.
type metric struct {
	id     string // key of its note in missNotes when the target is missed
	name   string
	short  string // name in the summary of targets, when not name
	vals   []float64
	format string
	target *target
}

// met reports whether every measured run keeps the target (and the median its bound), and how
// many runs do.
func (m metric) met() (ok bool, kept, measured int) {
	var vals []float64
	for _, v := range m.vals {
		if math.IsNaN(v) {
			continue
		}
		measured++
		vals = append(vals, v)
		if m.target.holds(v) {
			kept++
		}
	}
	ok = measured > 0 && kept == measured
	if ok && m.target.median != nil {
		ok = m.target.median.holds(Summarize(vals).Median)
	}
	return ok, kept, measured
}

func (m metric) fmt(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf(m.format, v)
}

func (m metric) stats() (median, lo, hi string) {
	s := Summarize(m.vals)
	return m.fmt(s.Median), m.fmt(s.Min), m.fmt(s.Max)
}

func (m metric) targetCell() string {
	if m.target == nil {
		return ""
	}
	cell := m.target.op + " " + strconv.FormatFloat(m.target.v, 'g', -1, 64)
	if md := m.target.median; md != nil {
		cell = "median " + md.op + " " + strconv.FormatFloat(md.v, 'g', -1, 64) + ", every run " + cell
	}
	return cell
}

func (m metric) verdict() string {
	if m.target == nil {
		return ""
	}
	ok, kept, measured := m.met()
	switch {
	case measured == 0:
		return "not measured"
	case ok:
		return "met"
	case kept == measured:
		return "**missed** (the median did not keep it)"
	default:
		return fmt.Sprintf("**missed** (%d of %d runs kept it)", kept, measured)
	}
}

// table is a Markdown table. Its first column (first left columns, when set) is aligned left,
// the others right unless text is set.
type table struct {
	header []string
	rows   [][]string
	text   bool
	left   int
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t table) write(w io.Writer) {
	fmt.Fprintln(w, "| "+strings.Join(t.header, " | ")+" |")
	seps := make([]string, len(t.header))
	for i := range seps {
		seps[i] = "---"
		if i >= max(t.left, 1) && !t.text {
			seps[i] = "---:"
		}
	}
	fmt.Fprintln(w, "|"+strings.Join(seps, "|")+"|")
	for _, r := range t.rows {
		fmt.Fprintln(w, "| "+strings.Join(r, " | ")+" |")
	}
	fmt.Fprintln(w)
}

// metricTable renders metrics as | metric | median | min | max | target | result |.
func metricTable(w io.Writer, metrics []metric) {
	t := table{header: []string{"metric", "median", "min", "max", "target", "result"}}
	for _, m := range metrics {
		med, lo, hi := m.stats()
		t.add(m.name, med, lo, hi, m.targetCell(), m.verdict())
	}
	t.write(w)
}

// missNote returns the note of a missed target, falling back to its group's ("history.query.").
func missNote(id string) string {
	if note, ok := missNotes[id]; ok {
		return note
	}
	if strings.HasPrefix(id, "history.query.") {
		return missNotes["history.query."]
	}
	return ""
}

// summaryRow is one line of the report's summary of targets.
type summaryRow struct {
	bench, target, median, verdict string
}

// Markdown renders the report as BENCHMARKS.md.
func (r *Report) Markdown(w io.Writer) {
	var b strings.Builder
	var summary []summaryRow
	var misses []string
	collect := func(bench string, ms []metric) {
		for _, m := range ms {
			if m.target == nil {
				continue
			}
			med, _, _ := m.stats()
			name := m.name
			if m.short != "" {
				name = m.short
			}
			summary = append(summary, summaryRow{bench, name + " " + m.targetCell(), med, m.verdict()})
			if ok, _, measured := m.met(); !ok && measured > 0 {
				if note := missNote(m.id); note != "" && !slices.Contains(misses, note) {
					misses = append(misses, note)
				}
			}
		}
	}

	var body strings.Builder
	if r.Pacing != nil {
		collect("pacing", r.writePacing(&body))
	}
	if r.Fire != nil {
		collect("fire latency", r.writeFire(&body))
	}
	if r.OneFire != nil {
		collect("one fire", r.writeOneFire(&body))
	}
	if r.Hooks != nil {
		collect("hooks", r.writeHooks(&body))
	}
	if r.Scale != nil {
		collect("scale", r.writeScale(&body))
	}
	if r.History != nil {
		collect("history", r.writeHistory(&body))
	}
	if r.Hot != nil {
		r.writeHot(&body)
	}

	b.WriteString("# imager benchmarks\n\n")
	if r.Quick {
		b.WriteString("> **Quick run (`--quick`)**: smoke-test sizes. These figures prove only that the suite runs; they say nothing about imager.\n\n")
	}
	fmt.Fprintf(&b, "Written by `imager-bench` (%s) on %s; the suite took %s. "+
		"Everything runs on this one machine: imager's CVM simulator (real wire format, TC3 signatures, a limit per sliding second) "+
		"and throwaway PostgreSQL databases. Each figure is over **%d runs**: median, min and max. "+
		"A target is met only when every run keeps it.\n\n",
		r.command(), r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Took.Round(time.Second), r.Runs)
	r.writeMachine(&b)
	if len(summary) > 0 {
		b.WriteString("## Targets\n\n")
		t := table{header: []string{"benchmark", "target", "median", "result"}, text: true}
		for _, s := range summary {
			t.add(s.bench, s.target, s.median, s.verdict)
		}
		t.write(&b)
		if len(misses) > 0 {
			b.WriteString("Missed targets, why, and what would fix them:\n\n")
			for _, m := range misses {
				b.WriteString("- " + m + "\n")
			}
			b.WriteString("\n")
		}
	}
	b.WriteString(body.String())
	b.WriteString("## Reproducing\n\n```sh\n" +
		"make bench                                                   # everything, 3 runs: about 13 minutes\n" +
		"go run ./cmd/imager-bench --only pacing --runs 5 --out -     # one benchmark, printed\n" +
		"go run ./cmd/imager-bench --only pacing-defaults --out -     # 20 % faults with imager's default retry settings\n" +
		"go run ./cmd/imager-bench --quick --out -                    # smoke run in seconds\n" +
		"go test -run '^$' -bench . -count 10 ./internal/bench        # the hot pieces as Go benchmarks (benchstat input)\n```\n")
	_, _ = io.WriteString(w, b.String())
}

func (r *Report) writeMachine(w io.Writer) {
	m := r.Machine
	fmt.Fprintln(w, "## Machine")
	fmt.Fprintln(w)
	t := table{header: []string{"", ""}, text: true}
	t.add("CPU", fmt.Sprintf("%s (%d logical cores)", orDash(m.CPU), m.Cores))
	t.add("memory", fmt.Sprintf("%.1f GiB", float64(m.MemoryMiB)/1024))
	t.add("kernel", orDash(m.Kernel))
	t.add("Go", m.GoVersion+" "+m.OSArch)
	if m.PostgreSQL != "" {
		t.add("PostgreSQL", m.PostgreSQL+": a throwaway cluster on loopback, fsync and synchronous_commit off, other settings initdb's defaults (shared_buffers 128 MB)")
	}
	t.write(w)
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// command is the command line that writes this report.
func (r *Report) command() string {
	only := ""
	if len(r.Names) > 0 && !slices.Equal(r.Names, DefaultNames()) {
		only = " --only " + strings.Join(r.Names, ",")
	}
	if slices.Equal(r.Names, Names()) && !r.Quick && r.Runs == 3 {
		return "`make bench`, i.e. `go run ./cmd/imager-bench" + only + " --out BENCHMARKS.md`"
	}
	if r.Quick {
		only += " --quick"
	} else if r.Runs != 3 {
		only += fmt.Sprintf(" --runs %d", r.Runs)
	}
	return "`go run ./cmd/imager-bench" + only + "`"
}

func ptarget(op string, v float64) *target { return &target{op: op, v: v} }

// mtarget is a target on the median (medOp medV) and on every run (op v).
func mtarget(medOp string, medV float64, op string, v float64) *target {
	return &target{op: op, v: v, median: &target{op: medOp, v: medV}}
}

func (r *Report) writePacing(w io.Writer) []metric {
	fmt.Fprint(w, pacingIntro)
	var all []metric
	for _, s := range r.Pacing {
		p := s.Params
		id := "pacing"
		title := fmt.Sprintf("N = %s calls at L = %d per sliding second, %d workers", thousands(p.Calls), p.Limit, p.Workers)
		if p.FaultRate > 0 {
			id = "pacing.fault"
			title += fmt.Sprintf(", %.0f %% InternalError injected", p.FaultRate*100)
		}
		if p.TransientAttempts > 0 || p.TransientInitial > 0 || p.TransientMax > 0 {
			title += ", api.retry.transient: " + transientSettings(p)
		} else if p.FaultRate > 0 {
			title += ", imager's default retry settings"
		}
		if p.Loaded {
			id = "pacing.loaded"
			title += ", on a loaded machine: " + LoadDescription()
		}
		fmt.Fprintf(w, "### %s\n\n", title)
		imager := func(f func(c ClientPacing) float64) []float64 {
			var v []float64
			for _, run := range s.Runs {
				v = append(v, f(run.Imager))
			}
			return v
		}
		naive := func(f func(c ClientPacing) float64) []float64 {
			var v []float64
			for _, run := range s.Runs {
				if run.Naive != nil {
					v = append(v, f(*run.Naive))
				}
			}
			return v
		}
		n, l := float64(p.Calls), float64(p.Limit)
		rows := []pacingRow{
			{id + ".lost", "runs accepted (images requested) of N", "%.0f", func(c ClientPacing) float64 { return float64(c.Requested) }, ptarget("=", n)},
			{id + ".rate", "achieved rate / L", "%.3f", func(c ClientPacing) float64 { return c.RatePerLimit(p.Limit) }, nil},
			{id + ".makespan", "makespan / (N / L)", "%.3f", func(c ClientPacing) float64 { return c.MakespanPerIdeal(p.Calls, p.Limit) }, nil},
			{"", "makespan (s)", "%.2f", func(c ClientPacing) float64 { return c.Makespan.Seconds() }, nil},
			{"", "CreateImage calls sent, retries included", "%.0f", func(c ClientPacing) float64 { return float64(c.Calls) }, nil},
			{id + ".rejected", "RequestLimitExceeded answers", "%.0f", func(c ClientPacing) float64 { return float64(c.Rejected) }, ptarget("=", 0)},
			{"", "InternalError answers (injected)", "%.0f", func(c ClientPacing) float64 { return float64(c.InternalErrors) }, nil},
			{id + ".max", "most calls in any sliding second (rejected ones included)", "%.0f", func(c ClientPacing) float64 { return float64(c.MaxInAnySecond) }, ptarget("≤", l)},
			{"", "most admitted calls in any sliding second", "%.0f", func(c ClientPacing) float64 { return float64(c.MaxAdmittedInAnySecond) }, nil},
		}
		if p.FaultRate > 0 {
			rows[2].tgt = ptarget("≤", 1.3)
			if p.TransientAttempts == 0 && p.TransientInitial == 0 && p.TransientMax == 0 {
				// imager's default retries: the median of the runs within 1.3, none above 1.45.
				rows[2].tgt = mtarget("≤", 1.3, "≤", 1.45)
			}
			// The least makespan the pace allows for the calls this run needed (the first leaves at
			// once, each next one 1/(0.98 L) later), and what the retries waiting at the end added.
			paced := func(c ClientPacing) float64 {
				return float64(max(c.Calls-1, 0)) / (float64(p.Limit) * (1 - pace.DefaultMargin))
			}
			rows = slices.Insert(rows, 4,
				pacingRow{"", "first call after the fire (s): every slot's row is written first", "%.2f",
					func(c ClientPacing) float64 { return c.FirstCall.Seconds() }, nil},
				pacingRow{"", "least makespan the pace allows for the calls sent ((calls − 1) / 0.98 L) / (N / L)", "%.3f",
					func(c ClientPacing) float64 { return paced(c) / (n / l) }, nil},
				pacingRow{"", "makespan beyond the first call and that (s): retries waiting out their backoff with nothing else to send", "%.2f",
					func(c ClientPacing) float64 { return c.Makespan.Seconds() - c.FirstCall.Seconds() - paced(c) }, nil})
		} else if p.Loaded {
			// Jitter widens the spacing by up to 5 % (pace.DefaultMaxMargin), and a lone throttle
			// is forgiven.
			rows[1].tgt = ptarget("≥", 0.95)
			rows[5].tgt = ptarget("≤", 1)
			// The one throttled call allowed is one arrival over L in its second.
			rows[7].tgt = ptarget("≤", l+1)
		} else {
			rows[1].tgt = ptarget("≥", 0.97)
			rows[2].tgt = ptarget("≤", 1.03)
		}
		if p.FaultRate == 0 {
			rows = append(rows, pacingRow{"", "first call after the fire (s): every slot's row is written first", "%.2f",
				func(c ClientPacing) float64 { return c.FirstCall.Seconds() }, nil})
		}
		withNaive := p.NaiveRetries >= 0
		header := []string{"metric", "imager median", "imager min–max", "target (imager)", "imager result"}
		if withNaive {
			header = []string{"metric", "imager median", "imager min–max", "naive SDK median", "naive min–max", "target (imager)", "imager result"}
		}
		t := table{header: header}
		for _, row := range rows {
			m := metric{id: row.id, name: row.name, vals: imager(row.f), format: row.format, target: row.tgt}
			med, lo, hi := m.stats()
			cells := []string{m.name, med, lo + " – " + hi}
			if withNaive {
				nm := metric{vals: naive(row.f), format: row.format}
				nmed, nlo, nhi := nm.stats()
				cells = append(cells, nmed, nlo+" – "+nhi)
			}
			cells = append(cells, m.targetCell(), m.verdict())
			t.add(cells...)
			if row.tgt != nil {
				m.short = fmt.Sprintf("N=%d L=%d%s: %s", p.Calls, p.Limit, faultSuffix(p), m.name)
				all = append(all, m)
			}
		}
		t.write(w)
		if withNaive {
			fmt.Fprintf(w, "Naive client: `RateLimitExceededMaxRetries = %d`, the SDK's default backoff (1 s, 2 s, 4 s: `profile.ExponentialBackoff`, no jitter).\n\n", p.NaiveRetries)
		}
	}
	return all
}

// transientSettings describes api.retry.transient as a pacing scenario sets it.
func transientSettings(p PacingParams) string {
	initial, maxDelay, attempts := "200 ms", "30 s", "no bound"
	if p.TransientInitial > 0 {
		initial = fmtDur(p.TransientInitial)
	}
	if p.TransientMax > 0 {
		maxDelay = fmtDur(p.TransientMax)
	}
	if p.TransientAttempts > 0 {
		attempts = strconv.Itoa(p.TransientAttempts)
	}
	return fmt.Sprintf("initial %s, max %s, attempts %s (imager's defaults: 200 ms, 30 s, no bound by count: until the slot's start window closes)", initial, maxDelay, attempts)
}

// fmtDur prints a duration for people: "60 s", "2 s", "500 ms", "31.1 s".
func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second && d%time.Second == 0:
		return fmt.Sprintf("%d s", d/time.Second)
	case d >= time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	default:
		return fmt.Sprintf("%d ms", d/time.Millisecond)
	}
}

// thousands prints n with commas between groups of three digits.
func thousands(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// pacingRow is one figure of a pacing table, read from each client's result.
type pacingRow struct {
	id, name, format string
	f                func(c ClientPacing) float64
	tgt              *target
}

func faultSuffix(p PacingParams) string {
	var s string
	if p.FaultRate > 0 {
		s = fmt.Sprintf(" %.0f%% faults", p.FaultRate*100)
		if p.TransientAttempts == 0 && p.TransientInitial == 0 && p.TransientMax == 0 {
			s += " (default retries)"
		}
	}
	if p.Loaded {
		s += " loaded"
	}
	return s
}

func (r *Report) writeFire(w io.Writer) []metric {
	p := r.Fire.Params
	fmt.Fprintf(w, fireIntro, thousands(p.Policies), p.Limit, p.Workers, fmtDur(p.Lead))
	var first, p50, p99, last, arrival, drain, maxSec []float64
	for _, run := range r.Fire.Runs {
		first = append(first, ms(run.First()))
		p50 = append(p50, ms(Percentile(run.Latencies, 50)))
		p99 = append(p99, ms(Percentile(run.Latencies, 99)))
		last = append(last, ms(run.Last()))
		arrival = append(arrival, ms(run.FirstArrival))
		drain = append(drain, ratio(run.DrainRate, float64(p.Limit)))
		maxSec = append(maxSec, float64(run.MaxInAnySecond))
	}
	ideal := float64(p.Policies) / float64(p.Limit) * 1000
	metrics := []metric{
		{id: "fire.first", name: "first call of the fire, after the slot (ms)", vals: first, format: "%.1f", target: mtarget("≤", 50, "≤", 80)},
		{name: "first call's arrival at the simulator, after the slot (ms)", vals: arrival, format: "%.1f"},
		{name: "p50 of the policies' first calls (ms)", vals: p50, format: "%.0f"},
		{name: "p99 of the policies' first calls (ms)", vals: p99, format: "%.0f"},
		{name: fmt.Sprintf("last policy's first call (ms; N/L = %.0f ms)", ideal), vals: last, format: "%.0f"},
		{id: "fire.drain", name: "first calls per second while draining / L", vals: drain, format: "%.3f", target: ptarget("≥", 0.97)},
		{id: "fire.max", name: "most calls in any sliding second", vals: maxSec, format: "%.0f", target: ptarget("≤", float64(p.Limit))},
	}
	metricTable(w, metrics)
	return metrics
}

const oneFireIntro = `## One fire of %s targets

One policy whose selector matches %s instances fires once on a default PostgreSQL (no raised
max_locks_per_transaction): RunsClaimFire writes every slot row, with what the store keeps beside
them (coverage per instance and day, the fire with its counts, fire_started), in one transaction
before the first call. Then the fire's runs become available one by one, as the tracker writes
them: each write updates the run, its latest image and coverage, and the fire's counts, whose
verdict never recounts the fire. A write's cost is the mean over the %s writes that end at the
given completion count; flat means the fire's size does not slow its writes.

`

func (r *Report) writeOneFire(w io.Writer) []metric {
	p := r.OneFire.Params
	fmt.Fprintf(w, oneFireIntro, thousands(p.Targets), thousands(p.Targets), thousands(p.Window))
	var claim []float64
	per := map[int][]float64{}
	var growth []float64
	for _, run := range r.OneFire.Runs {
		claim = append(claim, run.Claim.Seconds())
		for _, c := range p.Windows {
			per[c] = append(per[c], float64(run.PerWrite[c])/float64(time.Millisecond))
		}
		if n := len(p.Windows); n >= 2 {
			growth = append(growth, ratio(float64(run.PerWrite[p.Windows[n-1]]), float64(run.PerWrite[p.Windows[0]])))
		}
	}
	metrics := []metric{
		{id: "onefire.claim", name: fmt.Sprintf("claim of %s slot rows (s)", thousands(p.Targets)), vals: claim, format: "%.2f", target: ptarget("<", 3)},
	}
	for _, c := range p.Windows {
		metrics = append(metrics, metric{name: fmt.Sprintf("terminal write at %s completions (ms per write)", thousands(c)), vals: per[c], format: "%.2f"})
	}
	if n := len(p.Windows); n >= 2 {
		metrics = append(metrics, metric{id: "onefire.flat",
			name: fmt.Sprintf("write cost at %s / at %s completions", thousands(p.Windows[n-1]), thousands(p.Windows[0])),
			vals: growth, format: "%.2f", target: ptarget("≤", 1.5)})
	}
	metricTable(w, metrics)
	return metrics
}

const hooksIntro = `## Hooks: how long an instance stays frozen

One fire of a policy with a pre and a post hook over %d instances, at %d CreateImage calls per
second (%d workers), through the real scheduler, the simulator's CVM and TAT APIs (each task runs
%s) and a fresh database. An instance is frozen from the end of its pre task to the start of its
post task, as the simulator recorded them; "beyond the round trip" subtracts the instance's
CreateImage call time in the client. The pre hooks run in waves of half create_image_rate
instances (docs/policies.md "Hooks"), so no instance waits frozen behind the whole fire.

`

func (r *Report) writeHooks(w io.Writer) []metric {
	p := r.Hooks.Params
	fmt.Fprintf(w, hooksIntro, p.Instances, p.Limit, p.Workers, fmtDur(p.TaskTime))
	var f50, f99, e50, e99, maxCreate, maxTAT []float64
	for _, run := range r.Hooks.Runs {
		f50 = append(f50, Percentile(run.Frozen, 50).Seconds())
		f99 = append(f99, Percentile(run.Frozen, 99).Seconds())
		e50 = append(e50, Percentile(run.Extra, 50).Seconds())
		e99 = append(e99, Percentile(run.Extra, 99).Seconds())
		maxCreate = append(maxCreate, float64(run.MaxCreateInAnySecond))
		maxTAT = append(maxTAT, float64(run.MaxTATInAnySecond))
	}
	metrics := []metric{
		{name: "frozen, p50 (s)", vals: f50, format: "%.3f"},
		{name: "frozen, p99 (s)", vals: f99, format: "%.3f"},
		{name: "frozen beyond the CreateImage round trip, p50 (s)", vals: e50, format: "%.3f"},
		{id: "hooks.frozen", name: "frozen beyond the CreateImage round trip, p99 (s)", short: "frozen beyond the round trip, p99 (s)",
			vals: e99, format: "%.3f", target: ptarget("≤", 2)},
		{name: "CreateImage calls in the densest second", vals: maxCreate, format: "%.0f", target: ptarget("≤", float64(p.Limit))},
		{name: "TAT calls in the densest second", vals: maxTAT, format: "%.0f", target: ptarget("≤", float64(hooks.DefaultRate))},
	}
	metricTable(w, metrics)
	return metrics
}

func (r *Report) writeScale(w io.Writer) []metric {
	p := r.Scale.Params
	fmt.Fprintf(w, scaleIntro, thousands(p.Policies), p.Instances, thousands(p.Policies*p.Instances), len(r.Scale.Runs), fmtDur(p.Idle))
	var validate, startup, rss, cpu []float64
	for _, run := range r.Scale.Runs {
		validate = append(validate, run.Validate.Seconds())
		startup = append(startup, run.Startup.Seconds())
		rss = append(rss, float64(run.PeakRSS)/(1<<20))
		cpu = append(cpu, run.IdleCPU*100)
	}
	metrics := []metric{
		{id: "scale.validate", name: "`imager validate` wall time (s)", vals: validate, format: "%.3f", target: ptarget("<", 1)},
		{id: "scale.startup", name: "daemon start-up to \"imager running\" (s)", vals: startup, format: "%.3f", target: ptarget("<", 2)},
		{id: "scale.rss", name: "peak RSS, VmHWM (MiB)", vals: rss, format: "%.1f", target: ptarget("<", 64)},
		{id: "scale.cpu", name: fmt.Sprintf("idle CPU over %s (%% of one core)", fmtDur(p.Idle)), vals: cpu, format: "%.3f", target: ptarget("<", 1)},
	}
	metricTable(w, metrics)
	return metrics
}

func (r *Report) writeHistory(w io.Writer) []metric {
	p, res := r.History.Params, r.History.Result
	ds := res.Dataset
	var statuses []string
	for _, s := range []string{"available", "requested", "pending", "failed", "skipped", "missed"} {
		if n := ds.ByStatus[s]; n > 0 {
			statuses = append(statuses, fmt.Sprintf("%s %s", s, thousands(n)))
		}
	}
	fmt.Fprintf(w, historyIntro, thousands(ds.Runs), thousands(ds.Attempts), thousands(ds.Deletions), thousands(ds.Instances),
		thousands(ds.Policies), ds.Slots, strings.Join(statuses, ", "), fmtDur(ds.Took), thousands(p.WriteRuns), p.Writers,
		p.Samples, fmtDur(p.SampleBudget))

	var writes []float64
	for _, run := range res.Runs {
		writes = append(writes, run.WriteRate)
	}
	metrics := []metric{{name: "write path: runs recorded per second (RunClaim + AttemptInsert + RunRequested)", vals: writes, format: "%.0f"}}
	var stmts []float64
	for _, v := range writes {
		stmts = append(stmts, 3*v)
	}
	metrics = append(metrics, metric{name: "write path: statements per second", vals: stmts, format: "%.0f"})
	rowsOf := map[string]int{}
	for i, q := range p.Queries {
		var p50, p95 []float64
		for _, run := range res.Runs {
			if i < len(run.Queries) {
				p50 = append(p50, ms(run.Queries[i].P50))
				p95 = append(p95, ms(run.Queries[i].P95))
				rowsOf[q.Title] = run.Queries[i].Rows
			}
		}
		var tgt *target
		if q.Source != "docs" {
			tgt = ptarget("<", 50)
		}
		name := fmt.Sprintf("%s [%s, %d rows]", q.Title, q.Source, rowsOf[q.Title])
		metrics = append(metrics,
			metric{name: name + ": p50 (ms)", vals: p50, format: "%.1f"},
			metric{id: "history.query." + q.Title, name: name + ": p95 (ms)", short: shortTitle(q.Title) + ": p95 (ms)",
				vals: p95, format: "%.1f", target: tgt})
	}
	metricTable(w, metrics)
	for _, m := range metrics {
		if !strings.HasPrefix(m.id, "history.query.") || m.target != nil {
			continue
		}
		title := strings.TrimPrefix(m.id, "history.query.")
		if s := Summarize(m.vals); s.Median > 50 {
			note := slowReadmeNotes[title]
			if note == "" {
				note = "its plan is below."
			}
			fmt.Fprintf(w, "- docs/audit.md query \"%s\": p95 %.0f ms (no target: `imager demo` does not print it); %s\n", title, s.Median, note)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprint(w, historyPlansIntro)
	for i, plan := range res.Plans {
		q := p.Queries[i]
		uses := "no index"
		if len(plan.Indexes) > 0 {
			uses = "`" + strings.Join(plan.Indexes, "`, `") + "`"
		}
		if len(plan.SeqScans) > 0 {
			uses += "; reads whole: `" + strings.Join(plan.SeqScans, "`, `") + "`"
		}
		fmt.Fprintf(w, "**%s** [%s] — uses %s; %d rows, executed in %.1f ms by the server (EXPLAIN ANALYZE, timing off)\n\n```sql\n%s\n```\n\n```\n%s\n```\n\n",
			q.Title, q.Source, uses, plan.Rows, ms(plan.Execution), strings.TrimSpace(q.SQL), plan.Plan)
	}
	var tracked []metric
	for _, m := range metrics {
		if m.target != nil {
			tracked = append(tracked, m)
		}
	}
	return tracked
}

func (r *Report) writeHot(w io.Writer) {
	fmt.Fprint(w, hotIntro)
	t := table{header: []string{"piece", "what", "ns/op median", "min – max", "allocs/op", "B/op"}, left: 2}
	for i, piece := range r.Hot.Pieces {
		var ns []float64
		var allocs, bytes int64
		for _, run := range r.Hot.Runs {
			ns = append(ns, run[i].NsPerOp)
			allocs, bytes = run[i].AllocsPerOp, run[i].BytesPerOp
		}
		s := Summarize(ns)
		t.add(piece.Name, piece.What, fmtNs(s.Median), fmtNs(s.Min)+" – "+fmtNs(s.Max), fmt.Sprint(allocs), fmt.Sprint(bytes))
	}
	t.write(w)
}

func fmtNs(v float64) string {
	switch {
	case math.IsNaN(v):
		return "–"
	case v >= 1e6:
		return fmt.Sprintf("%.2f ms", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1f µs", v/1e3)
	default:
		return fmt.Sprintf("%.0f ns", v)
	}
}
