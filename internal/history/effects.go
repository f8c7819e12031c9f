package history

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// runChange is one write of a run in a transaction: its status before (none for a run the
// transaction inserted) and the row after.
type runChange struct {
	before Status // "" for a new run
	run    Run
}

// applyEffects writes what the changes of one transaction mean beside image_runs, in that
// transaction: the latest image of each instance, coverage per (policy, instance) and per day,
// the notification outbox (missed, failed and recovered events, with their digests) and the
// counts and verdicts of the fires the runs belong to. The rules are in rules.go; this file reads
// the rows they need and writes what they decide, so a crash can never leave a run without its
// effects (nor an effect without its run). Fires begun by this transaction are counted by
// fireBegin instead: call applyEffects before beginning them.
func (s *Store) applyEffects(ctx context.Context, tx pgx.Tx, changes []runChange) error {
	var q pipeline
	if err := queueEffects(ctx, tx, &q, changes); err != nil {
		return err
	}
	return q.flush(ctx, tx)
}

// queueEffects is applyEffects with the writes that read nothing back (the inserts of new runs'
// coverage, the fires' counts) queued on q, to be sent with the caller's own statements; what
// must read rows first runs now on tx. The effects are written when q is flushed.
func queueEffects(ctx context.Context, tx pgx.Tx, q *pipeline, changes []runChange) error {
	if len(changes) == 0 {
		return nil
	}
	if err := latestApply(ctx, tx, changes); err != nil {
		return fmt.Errorf("latest images: %w", err)
	}
	prior, err := coverageApply(ctx, tx, q, changes)
	if err != nil {
		return fmt.Errorf("coverage: %w", err)
	}
	if err := daysApply(ctx, tx, q, changes); err != nil {
		return fmt.Errorf("daily coverage: %w", err)
	}
	if err := outboxApply(ctx, tx, changes, prior); err != nil {
		return fmt.Errorf("notifications: %w", err)
	}
	firesApply(q, changes)
	return nil
}

// ---- latest_images: the newest accepted or available run of each instance ----

func latestApply(ctx context.Context, tx pgx.Tx, changes []runChange) error {
	// A run that counts may be its instance's newest: the upsert keeps whichever is newer.
	newest := map[string]Run{}
	for _, c := range changes {
		if !countsLatest(c.run.Status) {
			continue
		}
		if cur, ok := newest[c.run.InstanceID]; !ok || newerRun(c.run, cur) {
			newest[c.run.InstanceID] = c.run
		}
	}
	if len(newest) > 0 {
		runs := sortedByInstance(newest)
		n := len(runs)
		insts, pols, statuses, names, imgs, reqs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		ids, slots := make([]int64, n), make([]time.Time, n)
		for i, r := range runs {
			insts[i], ids[i], pols[i], slots[i] = r.InstanceID, r.ID, r.Policy, r.ScheduledAt
			statuses[i], names[i], imgs[i], reqs[i] = string(r.Status), r.ImageName, r.ImageID, r.RequestID
		}
		if _, err := tx.Exec(ctx, `
INSERT INTO latest_images AS l (instance_id, run_id, policy, scheduled_at, status, image_name, image_id, request_id)
SELECT u.instance_id, u.run_id, u.policy, u.scheduled_at, u.status, u.image_name, NULLIF(u.image_id, ''), NULLIF(u.request_id, '')
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[])
	AS u(instance_id, run_id, policy, scheduled_at, status, image_name, image_id, request_id)
ON CONFLICT (instance_id) DO UPDATE
SET run_id = EXCLUDED.run_id, policy = EXCLUDED.policy, scheduled_at = EXCLUDED.scheduled_at, status = EXCLUDED.status,
	image_name = EXCLUDED.image_name, image_id = EXCLUDED.image_id, request_id = EXCLUDED.request_id
WHERE l.run_id = EXCLUDED.run_id OR (l.scheduled_at, l.run_id) < (EXCLUDED.scheduled_at, EXCLUDED.run_id)`,
			insts, ids, pols, slots, statuses, names, imgs, reqs); err != nil {
			return err
		}
	}
	// A run that stops counting (an accepted image that failed) may have been the newest: its
	// instance's row is recomputed under the row's lock.
	for _, c := range changes {
		if c.before == "" || !countsLatest(c.before) || countsLatest(c.run.Status) {
			continue
		}
		var current int64
		err := tx.QueryRow(ctx, `SELECT run_id FROM latest_images WHERE instance_id = $1 FOR UPDATE`, c.run.InstanceID).Scan(&current)
		if err == pgx.ErrNoRows || (err == nil && current != c.run.ID) {
			continue
		}
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `
UPDATE latest_images l SET run_id = r.id, policy = r.policy, scheduled_at = r.scheduled_at, status = r.status,
	image_name = r.image_name, image_id = r.image_id, request_id = r.request_id
FROM (SELECT * FROM image_runs WHERE instance_id = $1 AND status IN ('requested', 'available')
	ORDER BY scheduled_at DESC, id DESC LIMIT 1) r
WHERE l.instance_id = $1`, c.run.InstanceID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM latest_images WHERE instance_id = $1`, c.run.InstanceID); err != nil {
				return err
			}
		}
	}
	return nil
}

// newerRun orders runs of one instance as latest_images does: later slot, then higher id.
func newerRun(a, b Run) bool {
	if !a.ScheduledAt.Equal(b.ScheduledAt) {
		return a.ScheduledAt.After(b.ScheduledAt)
	}
	return a.ID > b.ID
}

func sortedByInstance(m map[string]Run) []Run {
	out := make([]Run, 0, len(m))
	for _, r := range m {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].InstanceID < out[j].InstanceID })
	return out
}

// ---- coverage_state: per (policy, instance), first and last slot and last available image ----

type pairKey struct{ policy, instance string }

// coveragePrior is a pair's coverage_state before a change: what the recovered rule compares with.
type coveragePrior struct {
	found              bool
	firstSlot          time.Time
	lastAvailableRunID int64
	lastAvailableSlot  time.Time
	lastAvailableAt    time.Time
}

// pairAgg is what a batch of new runs adds to one pair's coverage_state.
type pairAgg struct {
	first, last *Run
	avail       *Run
}

func coverageApply(ctx context.Context, tx pgx.Tx, q *pipeline, changes []runChange) (map[int64]coveragePrior, error) {
	prior := map[int64]coveragePrior{}
	inserts := make([]*Run, 0, len(changes))
	for i := range changes {
		c := &changes[i]
		if c.before == "" {
			inserts = append(inserts, &c.run)
			continue
		}
		p, found, err := coverageUpdate(ctx, tx, c.run)
		if err != nil {
			return nil, err
		}
		if !found {
			inserts = append(inserts, &c.run) // no row yet (history loaded without its answers)
		}
		prior[c.run.ID] = p
	}
	coverageInsert(q, inserts)
	return prior, nil
}

// coverageInsert queues the upsert of new runs into coverage_state, one statement for the batch.
func coverageInsert(q *pipeline, runs []*Run) {
	if len(runs) == 0 {
		return
	}
	aggs := make(map[pairKey]*pairAgg, len(runs))
	keys := make([]pairKey, 0, len(runs))
	for _, r := range runs {
		k := pairKey{r.Policy, r.InstanceID}
		a, ok := aggs[k]
		if !ok {
			a = &pairAgg{first: r, last: r}
			aggs[k] = a
			keys = append(keys, k)
		}
		if r.ScheduledAt.Before(a.first.ScheduledAt) {
			a.first = r
		}
		if r.ScheduledAt.After(a.last.ScheduledAt) {
			a.last = r
		}
		if r.Status == StatusAvailable && (a.avail == nil || newerRun(*r, *a.avail)) {
			a.avail = r
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].policy != keys[j].policy {
			return keys[i].policy < keys[j].policy
		}
		return keys[i].instance < keys[j].instance
	})
	n := len(keys)
	pols, insts, lastStatus, lastCode := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	firsts, lasts := make([]time.Time, n), make([]time.Time, n)
	lastIDs := make([]int64, n)
	availIDs := make([]*int64, n)
	availImgs, availNames := make([]string, n), make([]string, n)
	availSlots, availAts := make([]*time.Time, n), make([]*time.Time, n)
	for i, k := range keys {
		a := aggs[k]
		pols[i], insts[i] = k.policy, k.instance
		firsts[i], lasts[i], lastIDs[i] = a.first.ScheduledAt, a.last.ScheduledAt, a.last.ID
		lastStatus[i], lastCode[i] = string(a.last.Status), a.last.ErrorCode
		if a.avail != nil {
			id, slot := a.avail.ID, a.avail.ScheduledAt
			availIDs[i], availSlots[i], availAts[i] = &id, &slot, a.avail.FinishedAt
			availImgs[i], availNames[i] = a.avail.ImageID, a.avail.ImageName
		}
	}
	q.exec(sqlCoverageInsert, pols, insts, firsts, lasts, lastIDs, lastStatus, lastCode, availIDs, availImgs, availNames, availSlots, availAts)
}

// sqlCoverageInsert upserts new runs' pairs into coverage_state (coverageInsert's columns).
var sqlCoverageInsert = func() string {
	newer := `EXCLUDED.last_slot > c.last_slot`
	avail := `EXCLUDED.last_available_run_id IS NOT NULL AND (c.last_available_run_id IS NULL
		OR (EXCLUDED.last_available_slot, EXCLUDED.last_available_run_id) > (c.last_available_slot, c.last_available_run_id))`
	return `
INSERT INTO coverage_state AS c (policy, instance_id, first_slot, last_slot, last_run_id, last_status, last_error_code,
	last_available_run_id, last_available_image_id, last_available_image_name, last_available_slot, last_available_at)
SELECT u.policy, u.instance_id, u.first_slot, u.last_slot, u.last_run_id, u.last_status, NULLIF(u.last_error_code, ''),
	u.avail_id, NULLIF(u.avail_image_id, ''), NULLIF(u.avail_image_name, ''), u.avail_slot, u.avail_at
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::bigint[], $6::text[], $7::text[],
	$8::bigint[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[])
	AS u(policy, instance_id, first_slot, last_slot, last_run_id, last_status, last_error_code,
		avail_id, avail_image_id, avail_image_name, avail_slot, avail_at)
ON CONFLICT (policy, instance_id) DO UPDATE
SET first_slot = LEAST(c.first_slot, EXCLUDED.first_slot),
	last_slot = GREATEST(c.last_slot, EXCLUDED.last_slot),
	` + pickColumns(newer, "last_run_id", "last_status", "last_error_code") + `,
	` + pickColumns(avail, "last_available_run_id", "last_available_image_id", "last_available_image_name",
		"last_available_slot", "last_available_at")
}()

// pickColumns is the SET list of an upsert that takes the new row's value of each column when
// cond holds, and keeps the existing row's otherwise (the existing row is aliased c).
func pickColumns(cond string, cols ...string) string {
	parts := make([]string, len(cols))
	for i, col := range cols {
		parts[i] = fmt.Sprintf("%[1]s = CASE WHEN %[2]s THEN EXCLUDED.%[1]s ELSE c.%[1]s END", col, cond)
	}
	return strings.Join(parts, ",\n\t")
}

// coverageUpdate applies a change of an existing run to its pair's row, under the row's lock,
// and returns the row as it was. found is false when the pair has no row.
func coverageUpdate(ctx context.Context, tx pgx.Tx, r Run) (coveragePrior, bool, error) {
	var p coveragePrior
	var lastRunID int64
	var laID *int64
	var laSlot, laAt *time.Time
	err := tx.QueryRow(ctx, `SELECT first_slot, last_run_id, last_available_run_id, last_available_slot, last_available_at
FROM coverage_state WHERE policy = $1 AND instance_id = $2 FOR UPDATE`, r.Policy, r.InstanceID).
		Scan(&p.firstSlot, &lastRunID, &laID, &laSlot, &laAt)
	if err == pgx.ErrNoRows {
		return p, false, nil
	}
	if err != nil {
		return p, false, err
	}
	p.found = true
	if laID != nil {
		p.lastAvailableRunID = *laID
		p.lastAvailableSlot = *laSlot
		if laAt != nil {
			p.lastAvailableAt = *laAt
		}
	}
	isLast := lastRunID == r.ID
	takesAvailable := r.Status == StatusAvailable && (p.lastAvailableRunID == 0 || p.lastAvailableRunID == r.ID ||
		newerRun(r, Run{ID: p.lastAvailableRunID, ScheduledAt: p.lastAvailableSlot}))
	if !isLast && !takesAvailable {
		return p, true, nil
	}
	_, err = tx.Exec(ctx, `UPDATE coverage_state SET
	last_status = CASE WHEN $3 THEN $5 ELSE last_status END,
	last_error_code = CASE WHEN $3 THEN NULLIF($6, '') ELSE last_error_code END,
	last_available_run_id = CASE WHEN $4 THEN $7 ELSE last_available_run_id END,
	last_available_image_id = CASE WHEN $4 THEN NULLIF($8, '') ELSE last_available_image_id END,
	last_available_image_name = CASE WHEN $4 THEN $9 ELSE last_available_image_name END,
	last_available_slot = CASE WHEN $4 THEN $10::timestamptz ELSE last_available_slot END,
	last_available_at = CASE WHEN $4 THEN $11::timestamptz ELSE last_available_at END
WHERE policy = $1 AND instance_id = $2`, r.Policy, r.InstanceID, isLast, takesAvailable, string(r.Status), r.ErrorCode,
		r.ID, r.ImageID, r.ImageName, r.ScheduledAt, r.FinishedAt)
	return p, true, err
}

// ---- coverage_days: per (policy, instance, day), the day's best run ----

func daysApply(ctx context.Context, tx pgx.Tx, q *pipeline, changes []runChange) error {
	inserts := make([]*Run, 0, len(changes))
	for i := range changes {
		c := &changes[i]
		if c.before == "" {
			inserts = append(inserts, &c.run)
			continue
		}
		found, err := dayUpdate(ctx, tx, c.run)
		if err != nil {
			return err
		}
		if !found {
			inserts = append(inserts, &c.run)
		}
	}
	daysInsert(q, inserts)
	return nil
}

// dayOf is the SQL expression of the day (in the time zone of policy polExpr) of slot slotExpr.
func dayOf(polExpr, slotExpr string) string {
	return fmt.Sprintf(`(%s AT TIME ZONE COALESCE((SELECT timezone FROM policies WHERE name = %s), 'UTC'))::date`, slotExpr, polExpr)
}

// daysInsert queues the merge of new runs into coverage_days: per (policy, instance, day) of the
// batch, its count and its best run, merged with the day's row.
func daysInsert(q *pipeline, runs []*Run) {
	if len(runs) == 0 {
		return
	}
	n := len(runs)
	pols, insts, statuses, imgs, codes := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	slots, ids := make([]time.Time, n), make([]int64, n)
	for i, r := range runs {
		pols[i], insts[i], statuses[i], imgs[i], codes[i] = r.Policy, r.InstanceID, string(r.Status), r.ImageID, r.ErrorCode
		slots[i], ids[i] = r.ScheduledAt, r.ID
	}
	// A fire writes one run per pair: each run is its day's only new run, and the batch needs no
	// ranking of its own (a walk of missed slots writes several runs of a pair, some on one day).
	onePerPair := true
	seen := make(map[pairKey]bool, n)
	for _, r := range runs {
		k := pairKey{r.Policy, r.InstanceID}
		if seen[k] {
			onePerPair = false
			break
		}
		seen[k] = true
	}
	sql := sqlDaysInsertRanked
	if onePerPair {
		sql = sqlDaysInsertOne
	}
	q.exec(sql, pols, insts, slots, ids, statuses, imgs, codes)
}

// sqlDaysInsertOne and sqlDaysInsertRanked merge new runs into coverage_days (daysInsert's
// columns); the first for a batch of one run per pair, which needs no ranking of its own.
var sqlDaysInsertOne, sqlDaysInsertRanked = daysInsertSQL(true), daysInsertSQL(false)

func daysInsertSQL(onePerPair bool) string {
	beats := fmt.Sprintf(`(%[1]s < %[2]s OR (%[1]s = %[2]s
		AND (SELECT r.scheduled_at FROM image_runs r WHERE r.id = EXCLUDED.run_id) > (SELECT r.scheduled_at FROM image_runs r WHERE r.id = c.run_id)))`,
		dayRankSQL("EXCLUDED.status"), dayRankSQL("c.status"))
	g := `
	SELECT policy, instance_id, day, status, run_id, image_id, error_code, 1 AS runs FROM u`
	if !onePerPair {
		g = `
	SELECT DISTINCT ON (policy, instance_id, day) policy, instance_id, day, status, run_id, image_id, error_code,
		count(*) OVER (PARTITION BY policy, instance_id, day) AS runs
	FROM u ORDER BY policy, instance_id, day, ` + dayRankSQL("status") + `, slot DESC`
	}
	return `
WITH u AS (
	SELECT u.*, (u.slot AT TIME ZONE COALESCE(p.timezone, 'UTC'))::date AS day
	FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::text[], $6::text[], $7::text[])
		AS u(policy, instance_id, slot, run_id, status, image_id, error_code)
	LEFT JOIN policies p ON p.name = u.policy),
g AS (` + g + `)
INSERT INTO coverage_days AS c (policy, instance_id, day, status, run_id, image_id, error_code, runs)
SELECT policy, instance_id, day, status, run_id, NULLIF(image_id, ''), NULLIF(error_code, ''), runs FROM g
ORDER BY policy, day, instance_id
ON CONFLICT (policy, day, instance_id) DO UPDATE
SET runs = c.runs + EXCLUDED.runs,
	` + pickColumns(beats, "status", "run_id", "image_id", "error_code")
}

// dayUpdate applies a change of an existing run to its day's row under the row's lock. found is
// false when the day has no row.
func dayUpdate(ctx context.Context, tx pgx.Tx, r Run) (bool, error) {
	var day time.Time
	var tz string
	var bestID int64
	var bestStatus string
	var bestSlot time.Time
	var runs int
	err := tx.QueryRow(ctx, `
SELECT c.day, COALESCE(p.timezone, 'UTC'), c.run_id, c.status, b.scheduled_at, c.runs
FROM coverage_days c
LEFT JOIN policies p ON p.name = c.policy
JOIN image_runs b ON b.id = c.run_id
WHERE c.policy = $1 AND c.instance_id = $2 AND c.day = `+dayOf("$1::text", "$3::timestamptz")+`
FOR UPDATE OF c`, r.Policy, r.InstanceID, r.ScheduledAt).Scan(&day, &tz, &bestID, &bestStatus, &bestSlot, &runs)
	if err == pgx.ErrNoRows {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	set := func(id int64, status Status, imageID, code string) error {
		_, err := tx.Exec(ctx, `UPDATE coverage_days SET run_id = $4, status = $5, image_id = NULLIF($6, ''), error_code = NULLIF($7, '')
WHERE policy = $1 AND instance_id = $2 AND day = $3`, r.Policy, r.InstanceID, day, id, string(status), imageID, code)
		return err
	}
	switch {
	case bestID == r.ID && (runs == 1 || dayRank(r.Status) <= dayRank(Status(bestStatus))):
		// Still the day's best: only its fields change.
		return true, set(r.ID, r.Status, r.ImageID, r.ErrorCode)
	case bestID == r.ID:
		// The best run got worse (an accepted image failed): another run of the day may beat it now.
		var id int64
		var status, imageID, code string
		err := tx.QueryRow(ctx, `SELECT id, status, COALESCE(image_id, ''), COALESCE(error_code, '') FROM image_runs
WHERE policy = $1 AND instance_id = $2 AND scheduled_at >= ($3::date::timestamp AT TIME ZONE $4)
	AND scheduled_at < (($3::date + 1)::timestamp AT TIME ZONE $4)
ORDER BY `+dayRankSQL("status")+`, scheduled_at DESC LIMIT 1`, r.Policy, r.InstanceID, day, tz).Scan(&id, &status, &imageID, &code)
		if err != nil {
			return true, err
		}
		return true, set(id, Status(status), imageID, code)
	case dayBeats(r.Status, r.ScheduledAt, Status(bestStatus), bestSlot):
		return true, set(r.ID, r.Status, r.ImageID, r.ErrorCode)
	}
	return true, nil
}

// ---- the notification outbox ----

// event is one row to write to notifications.
type event struct {
	Event        string
	Policy       string
	InstanceID   string
	RunID        int64
	Slot         time.Time
	Status       string
	ErrorCode    string
	ErrorMessage string
	ImageID      string
	ImageName    string
	At           *time.Time // nil: the database clock
	Detail       map[string]any
}

// payloadTimeSQL formats a timestamptz expression as payloadTime does.
func payloadTimeSQL(expr string) string {
	return `to_char(` + expr + ` AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')`
}

// insertEvent writes e and its payload (the JSON body every webhook receives: the detail and the
// row's columns, with the event's id so receivers can drop repeats) and returns its id.
func insertEvent(ctx context.Context, tx pgx.Tx, e event) (int64, error) {
	args, err := eventArgs(e)
	if err != nil {
		return 0, err
	}
	var id int64
	err = tx.QueryRow(ctx, sqlInsertEvent, args...).Scan(&id)
	return id, err
}

// eventArgs are the parameters $1–$12 of eventCTE for e.
func eventArgs(e event) ([]any, error) {
	detail := e.Detail
	if detail == nil {
		detail = map[string]any{}
	}
	d, err := json.Marshal(detail)
	if err != nil {
		return nil, err
	}
	var runID *int64
	if e.RunID != 0 {
		runID = &e.RunID
	}
	var slot *time.Time
	if !e.Slot.IsZero() {
		slot = &e.Slot
	}
	return []any{e.Event, e.Policy, e.InstanceID, runID, slot, e.Status, e.ErrorCode, cutBytes(e.ErrorMessage, 1000),
		e.ImageID, e.ImageName, e.At, d}, nil
}

// eventCTE inserts one outbox row with its payload (eventArgs' parameters $1–$12) as the common
// table expression ev, which yields its id. The id is taken only when the row is written.
var eventCTE = `v AS (SELECT nextval(pg_get_serial_sequence('notifications', 'id')) AS id, COALESCE($11::timestamptz, now()) AS at),
ev AS (
	INSERT INTO notifications (id, event, policy, instance_id, run_id, slot, status, error_code, error_message,
		image_id, image_name, at, detail, payload)
	SELECT v.id, $1, $2, NULLIF($3::text, ''), $4, $5, NULLIF($6::text, ''), NULLIF($7::text, ''), NULLIF($8::text, ''),
		NULLIF($9::text, ''), NULLIF($10::text, ''), v.at, $12::jsonb,
		$12::jsonb || jsonb_build_object('event_id', v.id, 'event', $1::text, 'policy', $2::text,
			'instance_id', NULLIF($3::text, ''), 'run_id', $4::bigint, 'slot', ` + payloadTimeSQL("$5::timestamptz") + `,
			'status', NULLIF($6::text, ''), 'error_code', NULLIF($7::text, ''), 'error_message', NULLIF($8::text, ''),
			'image_id', NULLIF($9::text, ''), 'image_name', NULLIF($10::text, ''), 'at', ` + payloadTimeSQL("v.at") + `)
	FROM v RETURNING id)`

// sqlInsertEvent inserts one outbox row and returns its id.
var sqlInsertEvent = "WITH " + eventCTE + "\nSELECT id FROM ev"

// digestGroup is the runs of one transaction that join one missed or failed event.
type digestGroup struct {
	policy string
	slot   time.Time // failed events: the slot
	code   string    // failed events: the error code
	first  Run       // the first run written
	d      digest
	at     *time.Time
	runs   int
}

func (g *digestGroup) add(r Run) {
	if g.runs == 0 {
		g.first = r
	}
	g.runs++
	g.d.join(1, []string{r.InstanceID}, false, r.ScheduledAt, r.ScheduledAt)
	if r.FinishedAt != nil && (g.at == nil || r.FinishedAt.After(*g.at)) {
		t := *r.FinishedAt
		g.at = &t
	}
}

func outboxApply(ctx context.Context, tx pgx.Tx, changes []runChange, prior map[int64]coveragePrior) error {
	var missed, failed []*digestGroup
	missedBy := map[string]*digestGroup{}
	type failedKey struct {
		policy string
		slot   int64
		code   string
	}
	failedBy := map[failedKey]*digestGroup{}
	// Only runs that became missed, failed or available write events; a fire's claim of pending
	// runs has none, and its thousands of runs are not sorted for nothing.
	ordered := make([]*runChange, 0)
	for i := range changes {
		c := &changes[i]
		if c.before != c.run.Status && (c.run.Status == StatusMissed || c.run.Status == StatusFailed || c.run.Status == StatusAvailable) {
			ordered = append(ordered, c)
		}
	}
	sort.SliceStable(ordered, func(i, j int) bool { return ordered[i].run.ID < ordered[j].run.ID })
	for _, c := range ordered {
		if c.before == c.run.Status {
			continue
		}
		switch c.run.Status {
		case StatusMissed:
			g := missedBy[c.run.Policy]
			if g == nil {
				g = &digestGroup{policy: c.run.Policy}
				missedBy[c.run.Policy] = g
				missed = append(missed, g)
			}
			g.add(c.run)
		case StatusFailed:
			k := failedKey{c.run.Policy, c.run.ScheduledAt.UnixMicro(), c.run.ErrorCode}
			g := failedBy[k]
			if g == nil {
				g = &digestGroup{policy: c.run.Policy, slot: c.run.ScheduledAt, code: c.run.ErrorCode}
				failedBy[k] = g
				failed = append(failed, g)
			}
			g.add(c.run)
		}
	}
	for _, g := range missed {
		if err := missedEvent(ctx, tx, g); err != nil {
			return err
		}
	}
	for _, g := range failed {
		if err := failedEvent(ctx, tx, g); err != nil {
			return err
		}
	}
	for _, c := range ordered {
		if c.run.Status == StatusAvailable && c.before != StatusAvailable {
			if err := recoveredEvent(ctx, tx, c.run, prior[c.run.ID]); err != nil {
				return err
			}
		}
	}
	return nil
}

// missedEvent writes the one missed event of a policy's runs missed in this transaction (a walk
// of passed slots records up to a hundred slots of every target at once).
func missedEvent(ctx context.Context, tx pgx.Tx, g *digestGroup) error {
	e := event{Event: EventMissed, Policy: g.policy, InstanceID: g.d.single(), Slot: g.d.LastSlot,
		Status: string(StatusMissed), ErrorCode: g.first.ErrorCode, ErrorMessage: g.first.ErrorMessage, At: g.at,
		Detail: map[string]any{"count": g.d.Count, "first_slot": payloadTime(g.d.FirstSlot), "last_slot": payloadTime(g.d.LastSlot),
			"instance_ids": g.d.IDs, "instance_ids_truncated": g.d.Truncated}}
	if g.runs == 1 {
		e.RunID = g.first.ID
	}
	_, err := insertEvent(ctx, tx, e)
	return err
}

// failedLockKey is the first key of the advisory lock that makes the writers of one failed
// digest (policy, slot, error code) take turns ("fail" in ASCII); one lock per digest written,
// whatever the number of runs.
const failedLockKey = 0x6661696c

// failedEvent adds a slot's runs failed with one code to the failed event of that (policy, slot,
// code) that waits to be sent, or writes it: expired credentials fail every run of a fire at
// once, and that is one webhook with the count and the instances.
func failedEvent(ctx context.Context, tx pgx.Tx, g *digestGroup) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2 || '/' || $3::timestamptz::text || '/' || $4))`,
		failedLockKey, g.policy, g.slot, g.code); err != nil {
		return err
	}
	var id int64
	var raw []byte
	var instance string
	err := tx.QueryRow(ctx, `SELECT id, detail, COALESCE(instance_id, '') FROM notifications
WHERE event = 'failed' AND policy = $1 AND slot = $2 AND error_code IS NOT DISTINCT FROM NULLIF($3, '') AND dispatched_at IS NULL
ORDER BY id LIMIT 1 FOR UPDATE`, g.policy, g.slot, g.code).Scan(&id, &raw, &instance)
	if err == pgx.ErrNoRows {
		e := event{Event: EventFailed, Policy: g.policy, InstanceID: g.d.single(), Slot: g.slot, Status: string(StatusFailed),
			ErrorCode: g.code, ErrorMessage: g.first.ErrorMessage, At: g.at,
			Detail: map[string]any{"count": g.d.Count, "instance_ids": g.d.IDs, "instance_ids_truncated": g.d.Truncated}}
		if g.runs == 1 {
			e.RunID, e.ImageID, e.ImageName = g.first.ID, g.first.ImageID, g.first.ImageName
		}
		_, err := insertEvent(ctx, tx, e)
		return err
	}
	if err != nil {
		return err
	}
	var prev struct {
		Count     int64    `json:"count"`
		IDs       []string `json:"instance_ids"`
		Truncated bool     `json:"instance_ids_truncated"`
	}
	if err := json.Unmarshal(raw, &prev); err != nil {
		return fmt.Errorf("failed event %d: detail: %w", id, err)
	}
	merged := digest{Count: prev.Count, IDs: prev.IDs, Truncated: prev.Truncated}
	merged.join(g.d.Count, g.d.IDs, g.d.Truncated, time.Time{}, time.Time{})
	patch, err := json.Marshal(map[string]any{"count": merged.Count, "instance_ids": merged.IDs, "instance_ids_truncated": merged.Truncated})
	if err != nil {
		return err
	}
	// Several runs: the per-run fields no longer name one thing.
	_, err = tx.Exec(ctx, `UPDATE notifications SET detail = detail || $2::jsonb, instance_id = NULLIF($3, ''),
	run_id = NULL, image_id = NULL, image_name = NULL,
	payload = payload || $2::jsonb || jsonb_build_object('instance_id', NULLIF($3, ''), 'run_id', NULL, 'image_id', NULL, 'image_name', NULL)
WHERE id = $1`, id, patch, merged.single())
	return err
}

// recoveredEvent closes the instance's open RPO breach, if any, and writes a recovered event when
// the run that became available is a recovery (rules.go, recoveredFrom).
func recoveredEvent(ctx context.Context, tx pgx.Tx, r Run, p coveragePrior) error {
	var previous string
	err := tx.QueryRow(ctx, `SELECT status FROM image_runs
WHERE policy = $1 AND instance_id = $2 AND scheduled_at < $3 ORDER BY scheduled_at DESC LIMIT 1`,
		r.Policy, r.InstanceID, r.ScheduledAt).Scan(&previous)
	if err != nil && err != pgx.ErrNoRows {
		return err
	}
	tag, err := tx.Exec(ctx, `UPDATE notification_breaches SET closed_at = COALESCE($3::timestamptz, now()), closed_by = 'recovered'
WHERE policy = $1 AND instance_id = $2 AND closed_at IS NULL`, r.Policy, r.InstanceID, r.FinishedAt)
	if err != nil {
		return err
	}
	overdue := false
	if p.found && r.FinishedAt != nil && (p.lastAvailableRunID == 0 || p.lastAvailableRunID == r.ID || !p.lastAvailableSlot.After(r.ScheduledAt)) {
		since := p.firstSlot
		if p.lastAvailableRunID != 0 && p.lastAvailableRunID != r.ID {
			since = p.lastAvailableAt
		}
		var secs *int64
		if err := tx.QueryRow(ctx, `SELECT overdue_seconds FROM policies WHERE name = $1 AND enabled`, r.Policy).Scan(&secs); err != nil && err != pgx.ErrNoRows {
			return err
		}
		if secs != nil {
			overdue = wasOverdue(since, *r.FinishedAt, time.Duration(*secs)*time.Second)
		}
	}
	reason := recoveredFrom(Status(previous), tag.RowsAffected() > 0, overdue)
	if reason == "" {
		return nil
	}
	var prevStatus any
	if previous != "" {
		prevStatus = previous
	}
	_, err = insertEvent(ctx, tx, event{Event: EventRecovered, Policy: r.Policy, InstanceID: r.InstanceID, RunID: r.ID,
		Slot: r.ScheduledAt, Status: string(r.Status), ImageID: r.ImageID, ImageName: r.ImageName, At: r.FinishedAt,
		Detail: map[string]any{"recovered_from": reason, "previous_status": prevStatus}})
	return err
}

// ---- fires: counts kept as the runs are written, and the verdict ----

type fireKey struct {
	policy string
	slot   int64
}

// fireDelta is what a batch of changes adds to one fire's counts.
type fireDelta struct {
	policy     string
	slot       time.Time
	counts     fireCounts
	firstError *Run
	at         *time.Time
}

// firesApply queues the changes' deltas to their fires' counts; a fire the counts decide ends
// once q is flushed.
func firesApply(q *pipeline, changes []runChange) {
	deltas := map[fireKey]*fireDelta{}
	var keys []fireKey
	for _, c := range changes {
		if c.before == c.run.Status {
			continue
		}
		k := fireKey{c.run.Policy, c.run.ScheduledAt.UnixMicro()}
		d := deltas[k]
		if d == nil {
			d = &fireDelta{policy: c.run.Policy, slot: c.run.ScheduledAt}
			deltas[k] = d
			keys = append(keys, k)
		}
		if c.before == "" {
			d.counts.Runs++
		} else {
			// A status change moves the run from one count to another; the error code of the
			// earlier status is the one the run had then, which counts only for skipped runs.
			d.counts.add(c.before, "", -1)
		}
		d.counts.add(c.run.Status, c.run.ErrorCode, 1)
		if errored(c.run.Status, c.run.ErrorCode) && (d.firstError == nil || c.run.ID < d.firstError.ID) {
			r := c.run
			d.firstError = &r
		}
		if c.run.FinishedAt != nil && (d.at == nil || c.run.FinishedAt.After(*d.at)) {
			t := *c.run.FinishedAt
			d.at = &t
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].policy != keys[j].policy {
			return keys[i].policy < keys[j].policy
		}
		return keys[i].slot < keys[j].slot
	})
	for _, k := range keys {
		if deltas[k].counts == (fireCounts{}) {
			continue // pending to requested: nothing to count
		}
		fireAdd(q, deltas[k])
	}
}

// fireRow is the state of an open fire after an update of its counts.
type fireRow struct {
	counts               fireCounts
	firstCode, firstText string
}

// fireReturning is the RETURNING list scanFire reads, its columns qualified by alias when given.
func fireReturning(alias string) string {
	q := ""
	if alias != "" {
		q = alias + "."
	}
	cols := []string{"runs", "available", "unfinished", "failed", "missed", "skipped", "errored", "expected_runs"}
	for i, c := range cols {
		cols[i] = q + c
	}
	return strings.Join(cols, ", ") + fmt.Sprintf(`, COALESCE(%[1]sfirst_error_code, ''), COALESCE(%[1]sfirst_error_message, '')`, q)
}

// scanFire reads fireReturning, after the leading columns given in first.
func scanFire(row pgx.Row, first ...any) (fireRow, error) {
	var f fireRow
	c := &f.counts
	err := row.Scan(append(first, &c.Runs, &c.Available, &c.Unfinished, &c.Failed, &c.Missed, &c.Skipped, &c.Errored, &c.Expected,
		&f.firstCode, &f.firstText)...)
	return f, err
}

// fireAdd queues d's addition to its fire's counts and, while the fire is open, ends it when the
// counts decide it (an ended fire keeps counting: its row says how its runs ended). A run of no
// fire (imager once) changes nothing.
func fireAdd(q *pipeline, d *fireDelta) {
	var code, text string
	if d.firstError != nil {
		code, text = d.firstError.ErrorCode, cutBytes(d.firstError.ErrorMessage, 1000)
	}
	c := d.counts
	q.queryRow(func(row pgx.Row) error {
		var ended bool
		f, err := scanFire(row, &ended)
		if err == pgx.ErrNoRows || (err == nil && ended) {
			return nil
		}
		if err != nil {
			return err
		}
		q.then(func(ctx context.Context, tx pgx.Tx) error { return fireDecide(ctx, tx, d.policy, d.slot, f, d.at) })
		return nil
	}, sqlFireAdd, d.policy, d.slot, c.Runs, c.Available, c.Unfinished, c.Failed, c.Missed, c.Skipped, c.Errored, code, text)
}

// sqlFireAdd adds a delta to an open or ended fire's counts (fireAdd's parameters).
var sqlFireAdd = `UPDATE notification_fires SET runs = runs + $3, available = available + $4,
	unfinished = unfinished + $5, failed = failed + $6, missed = missed + $7, skipped = skipped + $8, errored = errored + $9,
	first_error_code = CASE WHEN errored = 0 AND $9 > 0 THEN NULLIF($10, '') ELSE first_error_code END,
	first_error_message = CASE WHEN errored = 0 AND $9 > 0 THEN NULLIF($11, '') ELSE first_error_message END
WHERE policy = $1 AND slot = $2
RETURNING outcome IS NOT NULL, ` + fireReturning("")

// fireDecide ends the fire when its counts decide it: its fire_succeeded or fire_failed event
// (the ping's verdict), and the row's outcome.
func fireDecide(ctx context.Context, tx pgx.Tx, policy string, slot time.Time, f fireRow, at *time.Time) error {
	outcome := fireVerdict(f.counts)
	if outcome == "" {
		return nil
	}
	c := f.counts
	e := event{Event: EventFireSucceeded, Policy: policy, Slot: slot, Status: string(StatusAvailable), At: at,
		ErrorCode: f.firstCode, ErrorMessage: f.firstText,
		Detail: map[string]any{"runs": c.Runs, "available": c.Available, "unfinished": c.Unfinished, "failed": c.Failed,
			"missed": c.Missed, "skipped": c.Skipped, "expected_runs": c.Expected}}
	if outcome == fireFail {
		e.Event, e.Status = EventFireFailed, string(StatusFailed)
	}
	id, err := insertEvent(ctx, tx, e)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE notification_fires SET outcome = $3, ended_at = COALESCE($4::timestamptz, now()), end_notification_id = $5
WHERE policy = $1 AND slot = $2`, policy, slot, outcome, at, id)
	return err
}

// sqlFireInsert adds a fire's row once.
const sqlFireInsert = `INSERT INTO notification_fires (policy, slot, expected_runs) VALUES ($1, $2, $3)
ON CONFLICT (policy, slot) DO NOTHING`

// sqlFireStart writes a fire's fire_started event (eventArgs' parameters: $2 is the policy, $5
// the slot) and, in the same statement, counts the slot's runs into the fire's row and links the
// event to it.
var sqlFireStart = "WITH " + eventCTE + `,
c AS (
	SELECT count(*) AS runs,
		count(*) FILTER (WHERE status = 'available') AS available,
		count(*) FILTER (WHERE status IN ('pending', 'requested')) AS unfinished,
		count(*) FILTER (WHERE status = 'failed') AS failed,
		count(*) FILTER (WHERE status = 'missed') AS missed,
		count(*) FILTER (WHERE status = 'skipped') AS skipped,
		count(*) FILTER (WHERE status IN ('failed', 'missed') OR (status = 'skipped' AND error_code IS NOT NULL)) AS errored
	FROM image_runs WHERE policy = $2 AND scheduled_at = $5),
e AS (
	SELECT error_code, error_message FROM image_runs
	WHERE policy = $2 AND scheduled_at = $5 AND (status IN ('failed', 'missed') OR (status = 'skipped' AND error_code IS NOT NULL))
	ORDER BY finished_at, id LIMIT 1)
UPDATE notification_fires f SET start_notification_id = (SELECT id FROM ev), runs = c.runs, available = c.available,
	unfinished = c.unfinished, failed = c.failed, missed = c.missed, skipped = c.skipped, errored = c.errored,
	first_error_code = (SELECT error_code FROM e), first_error_message = (SELECT error_message FROM e)
FROM c WHERE f.policy = $2 AND f.slot = $5
RETURNING ` + fireReturning("f")

// fireBegin records the fire of policy at slot, once: its row, counted from the slot's runs
// (which the caller wrote first, in this transaction), and its fire_started event; then the
// counts may already decide it (a fire whose runs were all missed). expectNone marks a fire
// that wrote no run: it succeeds at once when failCode is empty (nothing to image), and fails
// with failCode and failMessage otherwise. The fire's row is queued on q; the rest runs once q is
// flushed, and only when the row was new.
func fireBegin(q *pipeline, policy string, slot time.Time, expectNone bool, failCode, failMessage string) {
	var expected *int
	if expectNone {
		zero := 0
		expected = &zero
	}
	q.b.Queue(sqlFireInsert, policy, slot, expected).Exec(func(tag pgconn.CommandTag) error {
		if tag.RowsAffected() == 0 {
			return nil // begun before
		}
		q.then(func(ctx context.Context, tx pgx.Tx) error {
			args, err := eventArgs(event{Event: EventFireStarted, Policy: policy, Slot: slot})
			if err != nil {
				return err
			}
			f, err := scanFire(tx.QueryRow(ctx, sqlFireStart, args...))
			if err != nil {
				return err
			}
			if expectNone && failCode != "" {
				f.counts.Errored, f.firstCode, f.firstText = 1, failCode, cutBytes(failMessage, 1000)
			}
			return fireDecide(ctx, tx, policy, slot, f, nil)
		})
		return nil
	})
}
