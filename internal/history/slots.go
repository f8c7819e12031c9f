package history

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/imager-dev/imager/internal/policy"
)

// queueFence queues, first on q, the lock of the lease row in share mode (so a replica taking the
// lease over waits for this transaction, and then sees its rows) and the check that s's term is
// the lease's and the lease is live by the database clock. q's flush then fails with ErrFenced
// when it is not, before any work that waited for the answer runs.
func (s *Store) queueFence(q *pipeline) {
	if s.term == 0 {
		return
	}
	q.queryRow(func(row pgx.Row) error {
		var ok bool
		err := row.Scan(&ok)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && !ok) {
			q.fenced = true // no lease at all (nobody leads), or not s's
			return nil
		}
		return err
	}, sqlClaimFence, LeaseName, s.term)
}

// sqlClaimFence locks the lease row in share mode and says whether term $2 holds it, live.
const sqlClaimFence = `SELECT term = $2::bigint AND expires_at > now() FROM leader_lease WHERE name = $1 FOR SHARE`

// claimFenceSQL is the condition, in a statement sent after sqlClaimFence, that the term
// (parameter $n, NULL when unfenced) still holds the live lease: a claim queued behind the fence
// writes nothing, and takes no id, when it is fenced.
func claimFenceSQL(n int) string {
	return fmt.Sprintf(`($%[1]d::bigint IS NULL OR EXISTS (SELECT 1 FROM leader_lease
	WHERE name = '%[2]s' AND term = $%[1]d::bigint AND expires_at > now()))`, n, LeaseName)
}

// pipelinedTx runs fn in one transaction whose pipeline starts with the fence (queueFence), and
// flushes what fn left queued. It names the work (what) in its error: ErrFenced stays
// recognisable, anything else is translated.
func (s *Store) pipelinedTx(ctx context.Context, what string, fn func(ctx context.Context, tx pgx.Tx, q *pipeline) error) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var q pipeline
		s.queueFence(&q)
		if err := fn(ctx, tx, &q); err != nil {
			return err
		}
		return q.flush(ctx, tx)
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrFenced):
		return fmt.Errorf("%s: %w", what, ErrFenced)
	default:
		return fmt.Errorf("%s: %w", what, s.translate(err))
	}
}

// fencedTx runs fn in one transaction behind the fence, and names the work (what) in its error
// like pipelinedTx.
func (s *Store) fencedTx(ctx context.Context, what string, fn func(tx pgx.Tx) error) error {
	return s.pipelinedTx(ctx, what, func(ctx context.Context, tx pgx.Tx, q *pipeline) error {
		if err := q.flush(ctx, tx); err != nil {
			return err
		}
		return fn(tx)
	})
}

// termArg is the term stored on rows a fenced store writes: NULL when unfenced.
func (s *Store) termArg() *int64 {
	if s.term == 0 {
		return nil
	}
	t := s.term
	return &t
}

// checkClaim refuses a claim the schema cannot hold.
func checkClaim(p RunClaimParams) error {
	switch {
	case p.Status != StatusPending && p.Status != StatusSkipped && p.Status != StatusMissed && p.Status != StatusFailed:
		return fmt.Errorf("claim run: status %q: %w", p.Status, ErrInvalid)
	case p.Policy == "" || p.InstanceID == "" || p.ScheduledAt.IsZero() || p.StartedAt.IsZero():
		return fmt.Errorf("claim run: policy, instance, slot and start time are required: %w", ErrInvalid)
	}
	return nil
}

const claimInsert = `
INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at, finished_at, status,
	image_name, error_code, error_message, daemon_id, term, account, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULLIF($9, ''), NULLIF($10, ''), $11, $12, $13, now())
ON CONFLICT (policy, instance_id, scheduled_at) DO NOTHING
RETURNING ` + runColumns

const claimSelect = `SELECT ` + runColumns + ` FROM image_runs
WHERE policy = $1 AND instance_id = $2 AND scheduled_at = $3`

// claimInsertMany inserts the slot rows of one fire in one statement, in the order given (their
// ids follow it), skipping slots that already have a row, and returns each new row's id and key.
var claimInsertMany = `
INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at, finished_at, status,
	image_name, error_code, error_message, daemon_id, term, account, updated_at)
SELECT c.policy, c.instance_id, c.region, c.scheduled_at, c.started_at, c.finished_at, c.status,
	c.image_name, NULLIF(c.error_code, ''), NULLIF(c.error_message, ''), c.daemon_id, $12, c.account, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[],
	$7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $13::text[]) WITH ORDINALITY
	AS c(policy, instance_id, region, scheduled_at, started_at, finished_at, status, image_name,
		error_code, error_message, daemon_id, account, ord)
WHERE ` + claimFenceSQL(12) + `
ORDER BY c.ord
ON CONFLICT (policy, instance_id, scheduled_at) DO NOTHING
RETURNING id, policy, instance_id, scheduled_at`

// claimedRun is the row claimInsertMany wrote for p with id, as the database holds it (times to
// the microsecond, in UTC): the claim reads back only the ids of the rows it wrote.
func claimedRun(id int64, p RunClaimParams) Run {
	r := Run{ID: id, Policy: p.Policy, InstanceID: p.InstanceID, Region: p.Region,
		ScheduledAt: p.ScheduledAt.Truncate(time.Microsecond).UTC(), StartedAt: p.StartedAt.Truncate(time.Microsecond).UTC(),
		Status: p.Status, ImageName: p.ImageName, ErrorCode: p.ErrorCode, ErrorMessage: p.ErrorMessage, DaemonID: p.DaemonID,
		Account: claimAccount(p)}
	if p.Status.Terminal() {
		finished := r.StartedAt
		r.FinishedAt = &finished
	}
	return r
}

// claimSelectMany reads the rows of the given slot keys.
const claimSelectMany = `SELECT ` + runColumns + ` FROM image_runs
WHERE (policy, instance_id, scheduled_at) IN (
	SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]))`

// claimKey identifies a slot row. PostgreSQL keeps microseconds, so the slot is compared at that
// precision.
type claimKey struct {
	policy, instance string
	slotMicros       int64
}

func keyOf(policy, instance string, slot time.Time) claimKey {
	return claimKey{policy, instance, slot.UnixMicro()}
}

// runsByKey collects the runs of a query selecting runColumns, by slot key.
func runsByKey(rows pgx.Rows, err error) (map[claimKey]Run, error) {
	if err != nil {
		return nil, err
	}
	runs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Run, error) { return scanRun(row) })
	if err != nil {
		return nil, err
	}
	out := make(map[claimKey]Run, len(runs))
	for _, r := range runs {
		out[keyOf(r.Policy, r.InstanceID, r.ScheduledAt)] = r
	}
	return out, nil
}

// claimAccount is the account a claim records: p.Account, or policy.DefaultAccount when empty.
func claimAccount(p RunClaimParams) string {
	if p.Account == "" {
		return policy.DefaultAccount
	}
	return p.Account
}

// claimArrays is ps as the column arrays of claimInsertMany, the term, and the accounts.
func (s *Store) claimArrays(ps []RunClaimParams) []any {
	n := len(ps)
	pols, insts, regions := make([]string, n), make([]string, n), make([]string, n)
	slots, starts, finishes := make([]time.Time, n), make([]time.Time, n), make([]*time.Time, n)
	statuses, names, codes, msgs, daemons := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	accounts := make([]string, n)
	for i, p := range ps {
		pols[i], insts[i], regions[i] = p.Policy, p.InstanceID, p.Region
		slots[i], starts[i] = p.ScheduledAt, p.StartedAt
		if p.Status.Terminal() {
			finishes[i] = &ps[i].StartedAt
		}
		statuses[i], names[i], codes[i], msgs[i], daemons[i] = string(p.Status), p.ImageName, p.ErrorCode, p.ErrorMessage, p.DaemonID
		accounts[i] = claimAccount(p)
	}
	return []any{pols, insts, regions, slots, starts, finishes, statuses, names, codes, msgs, daemons, s.termArg(), accounts}
}

func (s *Store) claimArgs(p RunClaimParams) []any {
	var finishedAt *time.Time
	if p.Status.Terminal() {
		finishedAt = &p.StartedAt
	}
	return []any{p.Policy, p.InstanceID, p.Region, p.ScheduledAt, p.StartedAt, finishedAt, string(p.Status),
		p.ImageName, p.ErrorCode, p.ErrorMessage, p.DaemonID, s.termArg(), claimAccount(p)}
}

// RunsClaimFire writes every slot row of one fire (one per target, pending for those to send and
// terminal for those a rule decided not to send) in one transaction, before any call is made, and
// moves each policy's last handled slot (policy_slots) forward to the latest scheduled (not
// Manual) slot among them.
// For each params it returns the row and whether this call inserted it; a slot claimed before
// keeps its row (claimed false). The claim is fenced: with a term (WithTerm) that is not the live
// lease's, nothing is written and the error is ErrFenced.
func (s *Store) RunsClaimFire(ctx context.Context, ps []RunClaimParams) ([]Run, []bool, error) {
	for _, p := range ps {
		if err := checkClaim(p); err != nil {
			return nil, nil, err
		}
	}
	if len(ps) == 0 {
		return nil, nil, nil
	}
	runs := make([]Run, len(ps))
	claimed := make([]bool, len(ps))
	what := fmt.Sprintf("claim %d slots of %s at %s", len(ps), ps[0].Policy, ps[0].ScheduledAt.UTC().Format(time.RFC3339))
	latest := map[string]time.Time{}
	for _, p := range ps {
		if p.Manual {
			continue
		}
		if t, ok := latest[p.Policy]; !ok || p.ScheduledAt.After(t) {
			latest[p.Policy] = p.ScheduledAt
		}
	}
	// Three round trips: the fence, the slot rows and policy_slots; then the rows' effects and the
	// fires begun; then each new fire's start (docs/design.md "Fire latency").
	err := s.pipelinedTx(ctx, what, func(ctx context.Context, tx pgx.Tx, q *pipeline) error {
		inserted := map[claimKey]int64{}
		q.query(func(rows pgx.Rows) error {
			var id int64
			var pol, inst string
			var at time.Time
			_, err := pgx.ForEachRow(rows, []any{&id, &pol, &inst, &at}, func() error {
				inserted[keyOf(pol, inst, at)] = id
				return nil
			})
			return err
		}, claimInsertMany, s.claimArrays(ps)...)
		moved := s.queueUpsertSlots(q, latest)
		if err := q.flush(ctx, tx); err != nil {
			return err
		}
		// Match the inserted rows to their params by slot key; a key given twice is claimed by its
		// first params only. Params whose row was not inserted (claimed before) read it back.
		var pols, insts []string
		var slots []time.Time
		for i, p := range ps {
			k := keyOf(p.Policy, p.InstanceID, p.ScheduledAt)
			if id, ok := inserted[k]; ok {
				runs[i], claimed[i] = claimedRun(id, p), true
				delete(inserted, k)
				continue
			}
			pols, insts, slots = append(pols, p.Policy), append(insts, p.InstanceID), append(slots, p.ScheduledAt)
		}
		if len(pols) > 0 {
			found, err := runsByKey(tx.Query(ctx, claimSelectMany, pols, insts, slots))
			if err != nil {
				return err
			}
			for i, p := range ps {
				if claimed[i] {
					continue
				}
				r, ok := found[keyOf(p.Policy, p.InstanceID, p.ScheduledAt)]
				if !ok {
					return fmt.Errorf("slot of %s on %s at %s was neither inserted nor found", p.Policy, p.InstanceID, p.ScheduledAt.UTC().Format(time.RFC3339))
				}
				runs[i] = r
			}
		}
		var changes []runChange
		for i := range ps {
			if claimed[i] {
				changes = append(changes, runChange{run: runs[i]})
			}
		}
		if err := queueEffects(ctx, tx, q, changes); err != nil {
			return err
		}
		// A policy moved to a slot it wrote runs for: that is a fire (its ping's /start). The fire
		// is begun after the runs' effects, which count only fires begun before.
		for _, pol := range *moved {
			fireBegin(q, pol, latest[pol], false, "", "")
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return runs, claimed, nil
}

// PolicySlotSet records slot as handled for policy without firing it: a policy seen for the first
// time, or a walk that recorded nothing. The last handled slot only moves forward. It is fenced
// like a claim. A slot moved to this way begins no fire: only RunsClaimFire and FireWithoutRuns do.
func (s *Store) PolicySlotSet(ctx context.Context, policy string, slot time.Time) error {
	return s.PolicySlotsSet(ctx, map[string]time.Time{policy: slot})
}

// PolicySlotsSet is PolicySlotSet for many policies, in one statement: a first start with
// thousands of policies marks them all in one round trip.
func (s *Store) PolicySlotsSet(ctx context.Context, slots map[string]time.Time) error {
	if len(slots) == 0 {
		return nil
	}
	for p, at := range slots {
		if p == "" || at.IsZero() {
			return fmt.Errorf("record last slot: policy and slot are required: %w", ErrInvalid)
		}
	}
	what := fmt.Sprintf("record the last slots of %d policies", len(slots))
	if len(slots) == 1 {
		for p := range slots {
			what = "record last slot of " + p
		}
	}
	return s.pipelinedTx(ctx, what, func(ctx context.Context, tx pgx.Tx, q *pipeline) error {
		s.queueUpsertSlots(q, slots)
		return nil
	})
}

// queueUpsertSlots queues the move of policy_slots forward to slots (policy → slot); a policy's
// last slot never moves back. Once q is flushed, the result holds the policies whose last slot
// moved, sorted.
func (s *Store) queueUpsertSlots(q *pipeline, slots map[string]time.Time) *[]string {
	moved := new([]string)
	if len(slots) == 0 {
		return moved
	}
	pols := make([]string, 0, len(slots))
	for p := range slots {
		pols = append(pols, p)
	}
	sort.Strings(pols)
	ats := make([]time.Time, len(pols))
	for i, p := range pols {
		ats[i] = slots[p]
	}
	q.query(func(rows pgx.Rows) (err error) {
		*moved, err = pgx.CollectRows(rows, pgx.RowTo[string])
		sort.Strings(*moved)
		return err
	}, sqlUpsertSlots, pols, ats, s.termArg())
	return moved
}

// sqlUpsertSlots moves policy_slots forward ($1 policies, sorted; $2 their slots; $3 the term) and
// returns the policies whose last slot moved. A row that does not move is still locked (ON
// CONFLICT locks it), and keeps the term that recorded its slot. Rows are taken in policy order, so
// concurrent writers take them in one order.
const sqlUpsertSlots = `
INSERT INTO policy_slots AS s (policy, last_slot, term, updated_at)
SELECT p, at, $3, now() FROM unnest($1::text[], $2::timestamptz[]) AS u (p, at) ORDER BY p
ON CONFLICT (policy) DO UPDATE SET last_slot = EXCLUDED.last_slot, term = EXCLUDED.term, updated_at = now()
	WHERE EXCLUDED.last_slot > s.last_slot
RETURNING policy`

// FireWithoutRuns records the fire of policy at slot that wrote no run, in one fenced
// transaction: policy_slots moves to slot, and the fire begins and ends at once
// (fireBegin in effects.go). With code empty the
// policy had no targets and the fire succeeded (a ping gets /start, then its bare URL); with a
// code it failed with that code and message (/start, then /fail).
func (s *Store) FireWithoutRuns(ctx context.Context, policy string, slot time.Time, code, message string) error {
	if policy == "" || slot.IsZero() {
		return fmt.Errorf("record a fire without runs: policy and slot are required: %w", ErrInvalid)
	}
	what := fmt.Sprintf("record the fire of %s at %s (no runs)", policy, slot.UTC().Format(time.RFC3339))
	return s.pipelinedTx(ctx, what, func(ctx context.Context, tx pgx.Tx, q *pipeline) error {
		s.queueUpsertSlots(q, map[string]time.Time{policy: slot})
		fireBegin(q, policy, slot, true, code, message)
		return nil
	})
}

// PreviousTargets returns the instances of policy's latest slot before `before` that has runs,
// sorted, less those the API reported gone (InvalidInstanceId.NotFound): the targets a fire falls
// back on when its selector cannot be resolved. None when the policy has no runs yet.
func (s *Store) PreviousTargets(ctx context.Context, policy string, before time.Time) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT instance_id FROM image_runs
WHERE policy = $1
  AND scheduled_at = (SELECT max(scheduled_at) FROM image_runs WHERE policy = $1 AND scheduled_at < $2)
  AND error_code IS DISTINCT FROM 'InvalidInstanceId.NotFound'
ORDER BY instance_id`, policy, before)
	if err != nil {
		return nil, fmt.Errorf("read the previous targets of %s: %w", policy, s.translate(err))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read the previous targets of %s: %w", policy, s.translate(err))
	}
	return ids, nil
}

// PolicySlots returns, per policy, the latest slot handled (policy_slots.last_slot, UTC).
func (s *Store) PolicySlots(ctx context.Context) (map[string]time.Time, error) {
	rows, err := s.pool.Query(ctx, `SELECT policy, last_slot FROM policy_slots`)
	if err != nil {
		return nil, fmt.Errorf("read last slots: %w", s.translate(err))
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var p string
		var at time.Time
		if err := rows.Scan(&p, &at); err != nil {
			return nil, fmt.Errorf("read last slots: %w", s.translate(err))
		}
		out[p] = at.UTC()
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read last slots: %w", s.translate(err))
	}
	return out, nil
}

// RunsInProgress returns, per instance of instances, the latest run of policy with a slot before
// before that is still pending or requested: its image is still being made (`concurrency:
// forbid`).
func (s *Store) RunsInProgress(ctx context.Context, policy string, instances []string, before time.Time) (map[string]Run, error) {
	out := map[string]Run{}
	if len(instances) == 0 {
		return out, nil
	}
	runs, err := s.queryRuns(ctx, sqlRunsInProgress, policy, instances, before)
	if err != nil {
		return nil, fmt.Errorf("runs in progress of %s: %w", policy, err)
	}
	for _, r := range runs {
		out[r.InstanceID] = r
	}
	return out, nil
}

// sqlRunsInProgress is each instance's newest unfinished run of a policy before a slot.
const sqlRunsInProgress = `SELECT DISTINCT ON (instance_id) ` + runColumns + ` FROM image_runs
WHERE policy = $1 AND instance_id = ANY($2) AND scheduled_at < $3 AND status IN ('pending', 'requested')
ORDER BY instance_id, scheduled_at DESC`

// RunsTakeOver records that daemonID, under s's term, now owns the unfinished runs ids (a new
// leader reconciling what an earlier one left): image_runs.term and daemon_id are set. It is
// fenced like a claim (ErrFenced, nothing changed). Runs that finished meanwhile are left alone;
// it returns how many were taken over.
func (s *Store) RunsTakeOver(ctx context.Context, ids []int64, daemonID string) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	var n int64
	err := s.fencedTx(ctx, fmt.Sprintf("take over %d runs", len(ids)), func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE image_runs SET term = $2, daemon_id = $3, updated_at = now()
WHERE id = ANY($1) AND status IN ('pending', 'requested')`, ids, s.termArg(), daemonID)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
