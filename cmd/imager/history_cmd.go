package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"regexp"
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
	account := fs.String("account", "", "only runs and deletions made with this account (accounts: in the policy file; image_runs.account)")
	format := fs.String("format", "table", "table, json or csv (json and csv use the column names of image_runs, with each run's copies)")
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
	if *account != "" && !accountNameRe.MatchString(*account) {
		fmt.Fprintf(stderr, "imager history: --account: %q is not an account name (1 to 32 of a-z, 0-9 and -)\n", quoteShort(*account))
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
	if *account != "" {
		known, err := store.AccountKnown(ctx, *account)
		if err != nil {
			fmt.Fprintf(stderr, "imager history: %v\n", err)
			return exitFail
		}
		if !known {
			fmt.Fprintf(stderr, "imager history: unknown account %q: no run was made with it\n", *account)
			return exitFail
		}
	}
	h := historyReport{store: store, since: since, sinceText: *sinceFlag, now: time.Now(),
		filter: history.RunFilter{Since: time.Now().Add(-since), Policy: *name, Instance: *instance, Status: status,
			Account: *account, Limit: *limit}}
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

// accountNameRe is the form of an account name (docs/policies.md "Accounts").
var accountNameRe = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)

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

// deletions lists the deletions decided in the window that pass the filters, with the account
// of each (image_deletions.account) by deletion id.
func (h *historyReport) deletions(ctx context.Context) ([]history.Deletion, map[int64]string, error) {
	all, err := h.store.DeletionsRecent(ctx, h.filter.Since)
	if err != nil {
		return nil, nil, err
	}
	var out []history.Deletion
	var ids []int64
	for _, d := range all {
		if h.keep(d.Policy, d.InstanceID) {
			out = append(out, d)
			ids = append(ids, d.ID)
		}
	}
	accounts, err := h.store.DeletionAccounts(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	if h.filter.Account != "" {
		kept := out[:0]
		for _, d := range out {
			if accounts[d.ID] == h.filter.Account {
				kept = append(kept, d)
			}
		}
		out = kept
	}
	return out, accounts, nil
}

// runIDs is the ids of runs, in order.
func runIDs(runs []history.RunListed) []int64 {
	ids := make([]int64, len(runs))
	for i, r := range runs {
		ids[i] = r.ID
	}
	return ids
}

// listRuns lists the runs the filters select with their copies, read in one query.
func (h *historyReport) listRuns(ctx context.Context) ([]history.RunListed, map[int64][]history.Copy, error) {
	runs, err := h.store.RunsList(ctx, h.filter)
	if err != nil {
		return nil, nil, err
	}
	copies, err := h.store.CopiesOfRuns(ctx, runIDs(runs))
	if err != nil {
		return nil, nil, err
	}
	return runs, copies, nil
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
	runs, copies, err := h.listRuns(ctx)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SLOT (UTC)\tPOLICY\tACCOUNT\tINSTANCE\tSTATUS\tIMAGE\tNAME\tATTEMPTS\tCOPIES\tERROR")
	for _, r := range runs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.ScheduledAt.Format("2006-01-02 15:04:05"), r.Policy,
			r.Account, r.InstanceID, r.Status, dash(r.ImageID), r.ImageName, r.CreateImageAttempts,
			copiesText(copies[r.ID]), errorText(r.Run))
	}
	w.Flush()

	from := h.filter.Since
	failures, err := h.store.FailuresSince(ctx, from)
	if err != nil {
		return err
	}
	if failures, err = h.keepRuns(ctx, failures); err != nil {
		return err
	}
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
	if lastFailed, err = h.keepRuns(ctx, lastFailed); err != nil {
		return err
	}
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
	if last, err = h.keepRuns(ctx, last); err != nil {
		return err
	}
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

	dels, accounts, err := h.deletions(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nImages imager decided to delete in the last %s: %d\n", h.sinceText, len(dels))
	if len(dels) > 0 {
		w = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "DECIDED (UTC)\tPOLICY\tACCOUNT\tINSTANCE\tIMAGE\tNAME\tSTATUS\tREASON\tERROR")
		for _, d := range dels {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.RequestedAt.Format("2006-01-02 15:04:05"), d.Policy,
				accounts[d.ID], d.InstanceID, d.ImageID, d.ImageName, d.Status, d.Reason, joinCode(d.ErrorCode, d.ErrorMessage))
		}
		w.Flush()
	}
	return nil
}

// keepRuns keeps the runs that pass the filters: --policy, --instance and, read in one query for
// the runs left, --account.
func (h *historyReport) keepRuns(ctx context.Context, runs []history.Run) ([]history.Run, error) {
	var out []history.Run
	var ids []int64
	for _, r := range runs {
		if h.keep(r.Policy, r.InstanceID) {
			out = append(out, r)
			ids = append(ids, r.ID)
		}
	}
	if h.filter.Account == "" {
		return out, nil
	}
	accounts, err := h.store.RunAccounts(ctx, ids)
	if err != nil {
		return nil, err
	}
	kept := out[:0]
	for _, r := range out {
		if accounts[r.ID] == h.filter.Account {
			kept = append(kept, r)
		}
	}
	return kept, nil
}

// copyState is a copy's status as imager history prints it: deleted once retention deleted it.
func copyState(c history.Copy) string {
	if c.DeletedAt != nil {
		return "deleted"
	}
	return string(c.Status)
}

// copiesText is the table's COPIES cell: region:status per copy, a failed copy with its error
// code in parentheses; "-" for none.
func copiesText(copies []history.Copy) string {
	if len(copies) == 0 {
		return "-"
	}
	parts := make([]string, len(copies))
	for i, c := range copies {
		parts[i] = c.Region + ":" + copyState(c)
		if c.Status == history.CopyStatusFailed && c.ErrorCode != "" {
			parts[i] += "(" + c.ErrorCode + ")"
		}
	}
	return strings.Join(parts, " ")
}

// copiesCSV is the csv's copies field: region:status:image_id:error_code per copy, joined by ";"
// (empty parts for an image id not known yet and no error; "" for no copies).
func copiesCSV(copies []history.Copy) string {
	parts := make([]string, len(copies))
	for i, c := range copies {
		parts[i] = strings.Join([]string{c.Region, copyState(c), c.ImageID, c.ErrorCode}, ":")
	}
	return strings.Join(parts, ";")
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
	Account             string     `json:"account"`
	CreateImageAttempts int        `json:"create_image_attempts"`
	Copies              []copyJSON `json:"copies"`
	Hooks               []hookJSON `json:"hooks"`
}

// hookJSON is one hook command of a run in --format json, under the column names of hook_runs.
type hookJSON struct {
	Phase        string     `json:"phase"`
	Status       string     `json:"status"`
	InvocationID *string    `json:"invocation_id"`
	TaskID       *string    `json:"task_id"`
	TaskStatus   *string    `json:"task_status"`
	ExitCode     *int       `json:"exit_code"`
	Output       *string    `json:"output"`
	ErrorCode    *string    `json:"error_code"`
	ErrorMessage *string    `json:"error_message"`
	RequestedAt  time.Time  `json:"requested_at"`
	StartedAt    *time.Time `json:"started_at"`
	FinishedAt   *time.Time `json:"finished_at"`
}

// copyJSON is one copy of a run in --format json, under the column names of image_copies.
type copyJSON struct {
	Region      string     `json:"region"`
	ImageID     *string    `json:"image_id"`
	ImageName   string     `json:"image_name"`
	Status      string     `json:"status"`
	ErrorCode   *string    `json:"error_code"`
	RequestedAt time.Time  `json:"requested_at"`
	AvailableAt *time.Time `json:"available_at"`
	DeletedAt   *time.Time `json:"deleted_at"`
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
	Account      string     `json:"account"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func toRunJSON(r history.RunListed, copies []history.Copy) runJSON {
	out := runJSON{ID: r.ID, Policy: r.Policy, InstanceID: r.InstanceID, Region: r.Region, ScheduledAt: r.ScheduledAt,
		StartedAt: r.StartedAt, FinishedAt: r.FinishedAt, Status: string(r.Status), ImageName: r.ImageName,
		ImageID: nullable(r.ImageID), ImageSizeGiB: r.ImageSizeGiB, RequestID: nullable(r.RequestID),
		ErrorCode: nullable(r.ErrorCode), ErrorMessage: nullable(r.ErrorMessage), Attempts: r.Attempts,
		DaemonID: r.DaemonID, UpdatedAt: r.UpdatedAt, Term: r.Term, Account: r.Account,
		CreateImageAttempts: r.CreateImageAttempts, Copies: []copyJSON{}}
	for _, c := range copies {
		out.Copies = append(out.Copies, copyJSON{Region: c.Region, ImageID: nullable(c.ImageID), ImageName: c.ImageName,
			Status: string(c.Status), ErrorCode: nullable(c.ErrorCode), RequestedAt: c.RequestedAt,
			AvailableAt: c.AvailableAt, DeletedAt: c.DeletedAt})
	}
	return out
}

// writeJSON prints one object: {"runs": [...], "deletions": [...]}.
func (h *historyReport) writeJSON(ctx context.Context, stdout io.Writer) error {
	runs, copies, err := h.listRuns(ctx)
	if err != nil {
		return err
	}
	hookRuns, err := h.store.HookRunsOfRuns(ctx, runIDs(runs))
	if err != nil {
		return err
	}
	dels, accounts, err := h.deletions(ctx)
	if err != nil {
		return err
	}
	out := struct {
		Runs      []runJSON      `json:"runs"`
		Deletions []deletionJSON `json:"deletions"`
	}{Runs: []runJSON{}, Deletions: []deletionJSON{}}
	for _, r := range runs {
		j := toRunJSON(r, copies[r.ID])
		j.Hooks = []hookJSON{}
		for _, hr := range hookRuns[r.ID] {
			j.Hooks = append(j.Hooks, hookJSON{Phase: string(hr.Phase), Status: string(hr.Status),
				InvocationID: nullable(hr.InvocationID), TaskID: nullable(hr.TaskID), TaskStatus: nullable(hr.TaskStatus),
				ExitCode: hr.ExitCode, Output: nullable(hr.Output), ErrorCode: nullable(hr.ErrorCode),
				ErrorMessage: nullable(hr.ErrorMessage), RequestedAt: hr.RequestedAt, StartedAt: hr.StartedAt,
				FinishedAt: hr.FinishedAt})
		}
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
			Attempts: d.Attempts, Account: accounts[d.ID]})
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// runCSVColumns are the CSV header: image_runs' columns, then create_image_attempts, account and
// copies (copiesCSV); the later columns come last so the earlier ones keep their positions.
var runCSVColumns = []string{"id", "policy", "instance_id", "region", "scheduled_at", "started_at", "finished_at",
	"status", "image_name", "image_id", "image_size_gib", "request_id", "error_code", "error_message", "attempts",
	"daemon_id", "updated_at", "term", "create_image_attempts", "account", "copies"}

// writeCSV prints the runs (only: one table per CSV) with a header row; NULL is an empty field.
func (h *historyReport) writeCSV(ctx context.Context, stdout io.Writer) error {
	runs, copies, err := h.listRuns(ctx)
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
			num(r.Term), strconv.Itoa(r.CreateImageAttempts), r.Account, copiesCSV(copies[r.ID])}
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
