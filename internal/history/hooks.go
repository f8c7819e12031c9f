package history

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Hooks (docs/policies.md "Hooks"): the commands a policy's hooks: block runs on an instance
// through TAT before its CreateImage (pre) and after it is answered (post). Every command is one
// row of hook_runs, written before the RunCommand call that carries it; its end is written with
// its hook_failed event in one transaction.

// EventHookFailed is the notification event of a hook that did not succeed; its detail names the
// phase.
const EventHookFailed = "hook_failed"

// MaxHookOutputBytes is how much of a command's output hook_runs keeps (its first bytes).
const MaxHookOutputBytes = 4096

// HookPhase is hook_runs.phase.
type HookPhase string

// Hook phases.
const (
	HookPre  HookPhase = "pre"
	HookPost HookPhase = "post"
)

// HookStatus is hook_runs.status.
type HookStatus string

// Hook statuses: requested and running are open, the others final.
const (
	HookRequested    HookStatus = "requested"     // RunCommand is being or was called
	HookRunning      HookStatus = "running"       // TAT took the command (invocation known)
	HookSuccess      HookStatus = "success"       // the task ended SUCCESS
	HookFailed       HookStatus = "failed"        // the task ended FAILED or another unsuccessful status
	HookTimeout      HookStatus = "timeout"       // the task ran past its timeout
	HookAgentOffline HookStatus = "agent_offline" // the instance's agent was not online or not installed
	HookError        HookStatus = "error"         // TAT refused or lost the command
)

// Final reports whether a hook in status st will not change any more.
func (st HookStatus) Final() bool { return st != HookRequested && st != HookRunning }

// Ran reports whether the command of a pre hook that ended in st may have run on the instance,
// so its post hook is due: every status but agent_offline and error (the command was never
// delivered).
func (st HookStatus) Ran() bool { return st != HookAgentOffline && st != HookError }

// HookRun is one row of hook_runs.
type HookRun struct {
	ID           int64
	RunID        int64
	Account      string
	Policy       string
	InstanceID   string
	Region       string
	Phase        HookPhase
	Status       HookStatus
	InvocationID string
	TaskID       string
	TaskStatus   string
	ExitCode     *int
	Output       string
	ErrorCode    string
	ErrorMessage string
	RequestedAt  time.Time
	StartedAt    *time.Time
	FinishedAt   *time.Time
}

// HookResult is the end of one hook command (HookRunFinish).
type HookResult struct {
	ID           int64
	Status       HookStatus // a final status
	TaskID       string
	TaskStatus   string
	ExitCode     *int
	Output       string // clipped to MaxHookOutputBytes here
	ErrorCode    string // required unless Status is success
	ErrorMessage string
	StartedAt    time.Time // zero: unknown
	FinishedAt   time.Time // required
}

const hookColumns = `id, run_id, account, policy, instance_id, region, phase, status, COALESCE(invocation_id, ''),
	COALESCE(task_id, ''), COALESCE(task_status, ''), exit_code, COALESCE(output, ''), COALESCE(error_code, ''),
	COALESCE(error_message, ''), requested_at, started_at, finished_at`

func scanHook(row pgx.Row) (HookRun, error) {
	var h HookRun
	var phase, status string
	err := row.Scan(&h.ID, &h.RunID, &h.Account, &h.Policy, &h.InstanceID, &h.Region, &phase, &status, &h.InvocationID,
		&h.TaskID, &h.TaskStatus, &h.ExitCode, &h.Output, &h.ErrorCode, &h.ErrorMessage, &h.RequestedAt, &h.StartedAt,
		&h.FinishedAt)
	if err != nil {
		return HookRun{}, err
	}
	h.Phase, h.Status = HookPhase(phase), HookStatus(status)
	h.RequestedAt = h.RequestedAt.UTC()
	for _, t := range []**time.Time{&h.StartedAt, &h.FinishedAt} {
		if *t != nil {
			u := (*t).UTC()
			*t = &u
		}
	}
	return h, nil
}

func queryHooks(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args ...any) ([]HookRun, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (HookRun, error) { return scanHook(row) })
}

// HookRunsRequest records, before the RunCommand call that carries them, the phase's command for
// each run of runIDs, requested at at: a row in status requested with the run's account, policy,
// instance and region. It returns the rows it wrote, in the order of runIDs; a run that has the
// phase's row already, or does not exist, gets none (each phase runs at most once per run). A
// post row is written only for a run whose pre hook may have run (a pre row whose status is not
// agent_offline or error: HookStatus.Ran): the post hook undoes what the pre hook did. Fenced like
// an outcome write.
func (s *Store) HookRunsRequest(ctx context.Context, phase HookPhase, runIDs []int64, at time.Time) ([]HookRun, error) {
	if (phase != HookPre && phase != HookPost) || at.IsZero() {
		return nil, fmt.Errorf("record %s hooks: a phase and a request time are required: %w", phase, ErrInvalid)
	}
	if len(runIDs) == 0 {
		return nil, nil
	}
	var out []HookRun
	err := s.outcomeTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = queryHooks(ctx, tx, `
WITH ins AS (
	INSERT INTO hook_runs (run_id, account, policy, instance_id, region, phase, requested_at)
	SELECT r.id, r.account, r.policy, r.instance_id, r.region, $2, $3
	FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, n)
	JOIN image_runs r ON r.id = u.id
	WHERE $2 = 'pre' OR EXISTS (SELECT 1 FROM hook_runs p
		WHERE p.run_id = r.id AND p.phase = 'pre' AND p.status NOT IN ('agent_offline', 'error'))
	ORDER BY u.n
	ON CONFLICT (run_id, phase) DO NOTHING
	RETURNING *)
SELECT `+hookColumns+` FROM ins ORDER BY array_position($1::bigint[], run_id)`, runIDs, string(phase), at)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("record %s hooks of %d runs: %w", phase, len(runIDs), err)
	}
	return out, nil
}

// HookRunsInvoked records that TAT took the command of the requested hooks ids as invocation
// invocationID: they become running. Hooks no longer requested are left as they are. Fenced.
func (s *Store) HookRunsInvoked(ctx context.Context, ids []int64, invocationID string) error {
	if len(ids) == 0 || invocationID == "" {
		return fmt.Errorf("record hook invocation: hooks and an invocation id are required: %w", ErrInvalid)
	}
	err := s.outcomeTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE hook_runs SET status = 'running', invocation_id = $2, updated_at = now()
WHERE id = ANY($1) AND status = 'requested'`, ids, invocationID)
		return err
	})
	if err != nil {
		return fmt.Errorf("record invocation %s of %d hooks: %w", invocationID, len(ids), err)
	}
	return nil
}

// HookRunFinish records the end of hook r.ID and returns the row after. A hook that did not
// succeed gets its hook_failed event in the same transaction (detail: the phase, the task, the
// exit code). The output is clipped to its first MaxHookOutputBytes, as valid UTF-8 without NUL
// bytes. A hook already final is left as it is (a late or repeated answer) and returned. Fenced.
func (s *Store) HookRunFinish(ctx context.Context, r HookResult) (HookRun, error) {
	switch {
	case !r.Status.Final() || r.FinishedAt.IsZero():
		return HookRun{}, fmt.Errorf("finish hook %d: a final status and a time are required: %w", r.ID, ErrInvalid)
	case r.Status != HookSuccess && r.ErrorCode == "":
		return HookRun{}, fmt.Errorf("finish hook %d: status %s needs an error code: %w", r.ID, r.Status, ErrInvalid)
	}
	var out HookRun
	err := s.outcomeTx(ctx, func(tx pgx.Tx) error {
		h, err := scanHook(tx.QueryRow(ctx, `SELECT `+hookColumns+` FROM hook_runs WHERE id = $1 FOR UPDATE`, r.ID))
		if err != nil {
			return notFound(err)
		}
		if h.Status.Final() {
			out = h
			return nil
		}
		var started *time.Time
		if !r.StartedAt.IsZero() {
			started = &r.StartedAt
		}
		out, err = scanHook(tx.QueryRow(ctx, `UPDATE hook_runs SET status = $2, task_id = COALESCE(NULLIF($3, ''), task_id),
	task_status = NULLIF($4, ''), exit_code = $5, output = NULLIF($6, ''), error_code = NULLIF($7, ''),
	error_message = NULLIF($8, ''), started_at = COALESCE($9, started_at), finished_at = $10, updated_at = now()
WHERE id = $1 RETURNING `+hookColumns, r.ID, string(r.Status), r.TaskID, r.TaskStatus, r.ExitCode,
			ClipHookOutput(r.Output), r.ErrorCode, cutBytes(r.ErrorMessage, 1000), started, r.FinishedAt))
		if err != nil || out.Status == HookSuccess {
			return err
		}
		return hookFailedEvent(ctx, tx, out)
	})
	if err != nil {
		return HookRun{}, fmt.Errorf("finish hook %d: %w", r.ID, err)
	}
	return out, nil
}

// hookFailedEvent writes the hook_failed event of h, with the run's slot and image name.
func hookFailedEvent(ctx context.Context, tx pgx.Tx, h HookRun) error {
	var slot time.Time
	var imageName string
	if err := tx.QueryRow(ctx, `SELECT scheduled_at, image_name FROM image_runs WHERE id = $1`, h.RunID).
		Scan(&slot, &imageName); err != nil {
		return err
	}
	detail := map[string]any{"phase": string(h.Phase), "hook_run_id": h.ID, "account": h.Account, "region": h.Region,
		"hook_status": string(h.Status)}
	for k, v := range map[string]string{"invocation_id": h.InvocationID, "task_id": h.TaskID, "task_status": h.TaskStatus} {
		if v != "" {
			detail[k] = v
		}
	}
	if h.ExitCode != nil {
		detail["exit_code"] = *h.ExitCode
	}
	_, err := insertEvent(ctx, tx, event{Event: EventHookFailed, Policy: h.Policy, InstanceID: h.InstanceID, RunID: h.RunID,
		Slot: slot.UTC(), Status: string(h.Status), ErrorCode: h.ErrorCode, ErrorMessage: h.ErrorMessage,
		ImageName: imageName, At: h.FinishedAt, Detail: detail})
	return err
}

// HookRunsPostDue lists the pre hooks of account (every account for "") whose post hook is due
// and was never requested: a pre hook that may have run (HookStatus.Ran, open ones included: the
// daemon that sent it may have stopped before its answer) without a post row, oldest first. A
// leader sends their post hooks at once when it starts (a crash between the two).
func (s *Store) HookRunsPostDue(ctx context.Context, account string) ([]HookRun, error) {
	out, err := queryHooks(ctx, s.pool, `SELECT `+hookColumns+` FROM hook_runs p
WHERE p.phase = 'pre' AND p.status NOT IN ('agent_offline', 'error') AND ($1 = '' OR p.account = $1)
	AND NOT EXISTS (SELECT 1 FROM hook_runs q WHERE q.run_id = p.run_id AND q.phase = 'post')
ORDER BY p.requested_at, p.run_id`, account)
	if err != nil {
		return nil, fmt.Errorf("list pre hooks without a post: %w", s.translate(err))
	}
	return out, nil
}

// HookRunsOfRuns returns the hooks of runs, by run id, pre before post.
func (s *Store) HookRunsOfRuns(ctx context.Context, runIDs []int64) (map[int64][]HookRun, error) {
	list, err := queryHooks(ctx, s.pool, `SELECT `+hookColumns+` FROM hook_runs WHERE run_id = ANY($1)
ORDER BY run_id, phase DESC`, runIDs)
	if err != nil {
		return nil, fmt.Errorf("list hooks of %d runs: %w", len(runIDs), s.translate(err))
	}
	out := make(map[int64][]HookRun, len(runIDs))
	for _, h := range list {
		out[h.RunID] = append(out[h.RunID], h)
	}
	return out, nil
}

// ClipHookOutput is a command's output as hook_runs keeps it: its first MaxHookOutputBytes bytes,
// cut at a character boundary, with invalid UTF-8 replaced and NUL bytes (which text cannot hold)
// dropped.
func ClipHookOutput(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	s = strings.ReplaceAll(s, "\x00", "")
	return cutBytes(s, MaxHookOutputBytes)
}

// The Recorder passes the hook writes to the store: they are never spooled. A hook row is written
// before its command is sent, so a write the database cannot take holds the command back (the
// pre hook is not sent, the instance is not frozen); an end that cannot be written leaves the
// row open, and a post due is found again at the next start (HookRunsPostDue).

// HookRunsRequest is Store.HookRunsRequest; never spooled.
func (r *Recorder) HookRunsRequest(ctx context.Context, phase HookPhase, runIDs []int64, at time.Time) ([]HookRun, error) {
	return r.store.HookRunsRequest(ctx, phase, runIDs, at)
}

// HookRunsInvoked is Store.HookRunsInvoked; never spooled.
func (r *Recorder) HookRunsInvoked(ctx context.Context, ids []int64, invocationID string) error {
	return r.store.HookRunsInvoked(ctx, ids, invocationID)
}

// HookRunFinish is Store.HookRunFinish; never spooled.
func (r *Recorder) HookRunFinish(ctx context.Context, res HookResult) (HookRun, error) {
	return r.store.HookRunFinish(ctx, res)
}

// HookRunsPostDue is Store.HookRunsPostDue.
func (r *Recorder) HookRunsPostDue(ctx context.Context, account string) ([]HookRun, error) {
	return r.store.HookRunsPostDue(ctx, account)
}
