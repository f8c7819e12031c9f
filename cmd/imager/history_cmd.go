package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// runStatuses are the values of image_runs.status, in the order imager history reports them.
var runStatuses = []history.Status{history.StatusAvailable, history.StatusRequested, history.StatusPending,
	history.StatusFailed, history.StatusSkipped, history.StatusMissed}

// cmdHistory answers "was every instance imaged, and if not, why?" without writing SQL: recent
// runs, failures with their codes, the last good image per instance and the images pruned.
func cmdHistory(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	o.databaseFlags(fs)
	o.logFlags(fs)
	sinceFlag := fs.String("since", "24h", "how far back to look (a duration such as 36h or 7d)")
	name := fs.String("policy", "", "only this policy")
	instance := fs.String("instance", "", "only this instance (ins-xxxxxxxx)")
	statusFlag := fs.String("status", "", "only runs in this status: available, requested, pending, failed, skipped or missed")
	format := fs.String("format", "table", "table, json or csv (json and csv use the column names of image_runs)")
	limit := fs.Int("limit", 50, "recent runs to list (0 = all)")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	since, err := policy.ParseDuration(*sinceFlag)
	if err != nil || since <= 0 {
		fmt.Fprintf(stderr, "imager history: --since: %q is not a positive duration such as 24h or 7d\n", *sinceFlag)
		return exitUsage
	}
	status := history.Status(*statusFlag)
	if status != "" && !validStatus(status) {
		fmt.Fprintf(stderr, "imager history: --status: %q is not one of available, requested, pending, failed, skipped, missed\n", quoteShort(*statusFlag))
		return exitUsage
	}
	if *format != "table" && *format != "json" && *format != "csv" {
		fmt.Fprintf(stderr, "imager history: --format: %q is not one of table, json, csv\n", quoteShort(*format))
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
	if *name != "" {
		known, err := store.PolicyKnown(ctx, *name)
		if err != nil {
			fmt.Fprintf(stderr, "imager history: %v\n", err)
			return exitFail
		}
		if !known {
			fmt.Fprintf(stderr, "imager history: unknown policy %q: it has no runs and no daemon has loaded it\n", quoteShort(*name))
			return exitFail
		}
	}
	h := historyReport{store: store, since: since, sinceText: *sinceFlag, now: time.Now(),
		filter: history.RunFilter{Since: time.Now().Add(-since), Policy: *name, Instance: *instance, Status: status, Limit: *limit}}
	switch *format {
	case "json":
		err = h.writeJSON(ctx, stdout)
	case "csv":
		err = h.writeCSV(ctx, stdout)
	default:
		err = h.writeTable(ctx, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "imager history: %v\n", err)
		return exitFail
	}
	return exitOK
}

func validStatus(s history.Status) bool {
	for _, st := range runStatuses {
		if s == st {
			return true
		}
	}
	return false
}

// quoteShort shortens a value quoted in an error to at most 80 characters.
func quoteShort(s string) string {
	if r := []rune(s); len(r) > 80 {
		return string(r[:77]) + "..."
	}
	return s
}

type historyReport struct {
	store     *history.Store
	since     time.Duration
	sinceText string
	now       time.Time
	filter    history.RunFilter
}

// keep reports whether a run or deletion of (policy, instance) passes the --policy and
// --instance filters.
func (h *historyReport) keep(policy, instance string) bool {
	return (h.filter.Policy == "" || policy == h.filter.Policy) && (h.filter.Instance == "" || instance == h.filter.Instance)
}

// deletions lists the deletions decided in the window that pass the filters.
func (h *historyReport) deletions(ctx context.Context) ([]history.Deletion, error) {
	all, err := h.store.DeletionsRecent(ctx, h.filter.Since)
	if err != nil {
		return nil, err
	}
	var out []history.Deletion
	for _, d := range all {
		if h.keep(d.Policy, d.InstanceID) {
			out = append(out, d)
		}
	}
	return out, nil
}

func (h *historyReport) writeTable(ctx context.Context, stdout io.Writer) error {
	counts, err := h.store.RunStatusCounts(ctx, h.filter)
	if err != nil {
		return err
	}
	var total int64
	for _, n := range counts {
		total += n
	}
	fmt.Fprintf(stdout, "Runs with a slot in the last %s: %d", h.sinceText, total)
	for _, st := range runStatuses {
		if counts[st] > 0 {
			fmt.Fprintf(stdout, ", %d %s", counts[st], st)
		}
	}
	fmt.Fprintln(stdout)
	runs, err := h.store.RunsList(ctx, h.filter)
	if err != nil {
		return err
	}
	copies, err := h.copiesOf(ctx, runs)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SLOT (UTC)\tPOLICY\tINSTANCE\tSTATUS\tIMAGE\tNAME\tATTEMPTS\tCOPIES\tERROR")
	for _, r := range runs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.ScheduledAt.Format("2006-01-02 15:04:05"), r.Policy,
			r.InstanceID, r.Status, dash(r.ImageID), r.ImageName, r.CreateImageAttempts, dash(copiesText(copies[r.ID])), errorText(r.Run))
	}
	w.Flush()

	from := h.filter.Since
	failures, err := h.store.FailuresSince(ctx, from)
	if err != nil {
		return err
	}
	failures = h.keepRuns(failures)
	fmt.Fprintf(stdout, "\nFailures in the last %s: %d\n", h.sinceText, len(failures))
	w = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, r := range failures {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.ScheduledAt.Format("2006-01-02 15:04:05"), r.Policy, r.InstanceID, errorText(r))
	}
	w.Flush()

	lastFailed, err := h.store.LastFailedPerInstance(ctx, from)
	if err != nil {
		return err
	}
	lastFailed = h.keepRuns(lastFailed)
	fmt.Fprintf(stdout, "\nInstances whose last image in the last %s failed: %d\n", h.sinceText, len(lastFailed))
	w = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, r := range lastFailed {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.InstanceID, r.Policy, r.ScheduledAt.Format("2006-01-02 15:04:05"), errorText(r))
	}
	w.Flush()

	last, err := h.store.LastAvailablePerInstance(ctx)
	if err != nil {
		return err
	}
	last = h.keepRuns(last)
	fmt.Fprintf(stdout, "\nLast good image per instance: %d instances\n", len(last))
	w = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "INSTANCE\tPOLICY\tIMAGE\tNAME\tAGE")
	for _, r := range last {
		age := "?"
		if r.FinishedAt != nil {
			age = formatAge(h.now.Sub(*r.FinishedAt))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.InstanceID, r.Policy, r.ImageID, r.ImageName, age)
	}
	w.Flush()

	dels, err := h.deletions(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nImages imager decided to delete in the last %s: %d\n", h.sinceText, len(dels))
	if len(dels) > 0 {
		w = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "DECIDED (UTC)\tPOLICY\tINSTANCE\tIMAGE\tNAME\tSTATUS\tREASON\tERROR")
		for _, d := range dels {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.RequestedAt.Format("2006-01-02 15:04:05"), d.Policy,
				d.InstanceID, d.ImageID, d.ImageName, d.Status, d.Reason, joinCode(d.ErrorCode, d.ErrorMessage))
		}
		w.Flush()
	}
	return nil
}

func (h *historyReport) keepRuns(runs []history.Run) []history.Run {
	var out []history.Run
	for _, r := range runs {
		if h.keep(r.Policy, r.InstanceID) {
			out = append(out, r)
		}
	}
	return out
}

// runJSON is one run in --format json: the columns of image_runs under their own names, plus the
// number of CreateImage calls (attempts counts every API call of the run).
type runJSON struct {
	ID                  int64      `json:"id"`
	Policy              string     `json:"policy"`
	InstanceID          string     `json:"instance_id"`
	Region              string     `json:"region"`
	ScheduledAt         time.Time  `json:"scheduled_at"`
	StartedAt           time.Time  `json:"started_at"`
	FinishedAt          *time.Time `json:"finished_at"`
	Status              string     `json:"status"`
	ImageName           string     `json:"image_name"`
	ImageID             *string    `json:"image_id"`
	ImageSizeGiB        *int64     `json:"image_size_gib"`
	RequestID           *string    `json:"request_id"`
	ErrorCode           *string    `json:"error_code"`
	ErrorMessage        *string    `json:"error_message"`
	Attempts            int        `json:"attempts"`
	DaemonID            string     `json:"daemon_id"`
	UpdatedAt           time.Time  `json:"updated_at"`
	Term                *int64     `json:"term"`
	CreateImageAttempts int        `json:"create_image_attempts"`
	Copies              []copyJSON `json:"copies"`
}

// copyJSON is one copy of a run's image in another region (image_copies), in --format json.
type copyJSON struct {
	Region       string     `json:"region"`
	ImageID      *string    `json:"image_id"`
	ImageName    string     `json:"image_name"`
	Status       string     `json:"status"`
	ErrorCode    *string    `json:"error_code"`
	ErrorMessage *string    `json:"error_message"`
	RequestedAt  time.Time  `json:"requested_at"`
	AvailableAt  *time.Time `json:"available_at"`
	DeletedAt    *time.Time `json:"deleted_at"`
}

func toCopiesJSON(cs []history.Copy) []copyJSON {
	out := make([]copyJSON, 0, len(cs))
	for _, c := range cs {
		out = append(out, copyJSON{Region: c.Region, ImageID: nullable(c.ImageID), ImageName: c.ImageName,
			Status: string(c.Status), ErrorCode: nullable(c.ErrorCode), ErrorMessage: nullable(c.ErrorMessage),
			RequestedAt: c.RequestedAt, AvailableAt: c.AvailableAt, DeletedAt: c.DeletedAt})
	}
	return out
}

// copiesText is a run's copies in one field: region:status[:image_id], with ";" between copies
// and "deleted" for a copy retention deleted (the table's COPIES column and the CSV's copies).
func copiesText(cs []history.Copy) string {
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		p := c.Region + ":" + string(c.Status)
		if c.DeletedAt != nil {
			p = c.Region + ":deleted"
		}
		if c.ImageID != "" {
			p += ":" + c.ImageID
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ";")
}

// copiesOf reads the copies of the listed runs in one query.
func (h *historyReport) copiesOf(ctx context.Context, runs []history.RunListed) (map[int64][]history.Copy, error) {
	ids := make([]int64, len(runs))
	for i, r := range runs {
		ids[i] = r.ID
	}
	return h.store.CopiesOfRuns(ctx, ids)
}

// deletionJSON is one deletion in --format json, under the column names of image_deletions.
type deletionJSON struct {
	ID           int64      `json:"id"`
	ImageID      string     `json:"image_id"`
	ImageName    string     `json:"image_name"`
	Policy       string     `json:"policy"`
	InstanceID   string     `json:"instance_id"`
	Region       string     `json:"region"`
	RunID        *int64     `json:"run_id"`
	Reason       string     `json:"reason"`
	RequestedAt  time.Time  `json:"requested_at"`
	FinishedAt   *time.Time `json:"finished_at"`
	Status       string     `json:"status"`
	RequestID    *string    `json:"request_id"`
	ErrorCode    *string    `json:"error_code"`
	ErrorMessage *string    `json:"error_message"`
	Attempts     int        `json:"attempts"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func toRunJSON(r history.RunListed) runJSON {
	return runJSON{ID: r.ID, Policy: r.Policy, InstanceID: r.InstanceID, Region: r.Region, ScheduledAt: r.ScheduledAt,
		StartedAt: r.StartedAt, FinishedAt: r.FinishedAt, Status: string(r.Status), ImageName: r.ImageName,
		ImageID: nullable(r.ImageID), ImageSizeGiB: r.ImageSizeGiB, RequestID: nullable(r.RequestID),
		ErrorCode: nullable(r.ErrorCode), ErrorMessage: nullable(r.ErrorMessage), Attempts: r.Attempts,
		DaemonID: r.DaemonID, UpdatedAt: r.UpdatedAt, Term: r.Term, CreateImageAttempts: r.CreateImageAttempts}
}

// writeJSON prints one object: {"runs": [...], "deletions": [...]}.
func (h *historyReport) writeJSON(ctx context.Context, stdout io.Writer) error {
	runs, err := h.store.RunsList(ctx, h.filter)
	if err != nil {
		return err
	}
	dels, err := h.deletions(ctx)
	if err != nil {
		return err
	}
	copies, err := h.copiesOf(ctx, runs)
	if err != nil {
		return err
	}
	out := struct {
		Runs      []runJSON      `json:"runs"`
		Deletions []deletionJSON `json:"deletions"`
	}{Runs: []runJSON{}, Deletions: []deletionJSON{}}
	for _, r := range runs {
		j := toRunJSON(r)
		j.Copies = toCopiesJSON(copies[r.ID])
		out.Runs = append(out.Runs, j)
	}
	for _, d := range dels {
		var runID *int64
		if d.RunID != 0 {
			runID = &d.RunID
		}
		out.Deletions = append(out.Deletions, deletionJSON{ID: d.ID, ImageID: d.ImageID, ImageName: d.ImageName,
			Policy: d.Policy, InstanceID: d.InstanceID, Region: d.Region, RunID: runID, Reason: d.Reason,
			RequestedAt: d.RequestedAt, FinishedAt: d.FinishedAt, Status: string(d.Status),
			RequestID: nullable(d.RequestID), ErrorCode: nullable(d.ErrorCode), ErrorMessage: nullable(d.ErrorMessage),
			Attempts: d.Attempts})
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// runCSVColumns are the CSV header: image_runs' columns, then create_image_attempts and the
// run's copies (copiesText).
var runCSVColumns = []string{"id", "policy", "instance_id", "region", "scheduled_at", "started_at", "finished_at",
	"status", "image_name", "image_id", "image_size_gib", "request_id", "error_code", "error_message", "attempts",
	"daemon_id", "updated_at", "term", "create_image_attempts", "copies"}

// writeCSV prints the runs (only: one table per CSV) with a header row; NULL is an empty field.
func (h *historyReport) writeCSV(ctx context.Context, stdout io.Writer) error {
	runs, err := h.store.RunsList(ctx, h.filter)
	if err != nil {
		return err
	}
	copies, err := h.copiesOf(ctx, runs)
	if err != nil {
		return err
	}
	w := csv.NewWriter(stdout)
	if err := w.Write(runCSVColumns); err != nil {
		return err
	}
	ts := func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	num := func(n *int64) string {
		if n == nil {
			return ""
		}
		return strconv.FormatInt(*n, 10)
	}
	for _, r := range runs {
		rec := []string{strconv.FormatInt(r.ID, 10), r.Policy, r.InstanceID, r.Region, ts(&r.ScheduledAt),
			ts(&r.StartedAt), ts(r.FinishedAt), string(r.Status), r.ImageName, r.ImageID, num(r.ImageSizeGiB),
			r.RequestID, r.ErrorCode, r.ErrorMessage, strconv.Itoa(r.Attempts), r.DaemonID, ts(&r.UpdatedAt),
			num(r.Term), strconv.Itoa(r.CreateImageAttempts), copiesText(copies[r.ID])}
		if err := w.Write(rec); err != nil {
			return err
		}
	}
	w.Flush()
	return w.Error()
}

// formatAge renders an age in days and hours ("2d 3h"); under a day in hours and minutes
// ("5h 12m"), under an hour in minutes ("42m").
func formatAge(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Minute)
	days, hours, mins := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour), int(d%time.Hour/time.Minute)
	switch {
	case days > 0:
		return fmt.Sprintf("%dd %dh", days, hours)
	case hours > 0:
		return fmt.Sprintf("%dh %dm", hours, mins)
	default:
		return fmt.Sprintf("%dm", mins)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func joinCode(code, msg string) string {
	switch {
	case code != "" && msg != "":
		return code + ": " + msg
	default:
		return code + msg
	}
}

func errorText(r history.Run) string { return joinCode(r.ErrorCode, r.ErrorMessage) }
