package history_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/migrate"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/migrations"
)

// event is a notifications row as the tests read it.
type event struct {
	ID      int64
	Event   string
	Policy  string
	Inst    string
	Payload map[string]any
}

func events(t *testing.T, s *history.Store) []event {
	t.Helper()
	rows, err := s.Pool().Query(context.Background(),
		`SELECT id, event, policy, COALESCE(instance_id, ''), payload::text FROM notifications ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	var out []event
	for rows.Next() {
		var e event
		var payload string
		require.NoError(t, rows.Scan(&e.ID, &e.Event, &e.Policy, &e.Inst, &payload))
		require.NoError(t, json.Unmarshal([]byte(payload), &e.Payload))
		out = append(out, e)
	}
	require.NoError(t, rows.Err())
	return out
}

func eventNames(evs []event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Event+":"+e.Inst)
	}
	return out
}

func TestNotificationFailedPayload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	r := claim(t, s, "web", "ins-aaaaaaaa", slot)
	require.NoError(t, s.RunRequested(ctx, r.ID, "img-aaaa1111", "req-1"))
	done := slot.Add(40 * time.Minute)
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: r.ID, Status: history.StatusFailed,
		ErrorCode: "CREATEFAILED", ErrorMessage: "image state CREATEFAILED", FinishedAt: done}))
	// An unrelated column change does not write a second event.
	_, err := s.Pool().Exec(ctx, `UPDATE image_runs SET attempts = attempts + 1 WHERE id = $1`, r.ID)
	require.NoError(t, err)

	evs := events(t, s)
	require.Len(t, evs, 1)
	require.Equal(t, map[string]any{
		"event_id": float64(evs[0].ID), "event": "failed", "policy": "web", "instance_id": "ins-aaaaaaaa",
		"run_id": float64(r.ID), "slot": "2026-03-29T03:00:00Z", "status": "failed", "error_code": "CREATEFAILED",
		"error_message": "image state CREATEFAILED", "image_id": "img-aaaa1111", "image_name": r.ImageName,
		"at": "2026-03-29T03:40:00Z", "count": float64(1), "instance_ids": []any{"ins-aaaaaaaa"},
		"instance_ids_truncated": false,
	}, evs[0].Payload)

	n, err := s.NotificationsPending(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "not fanned out yet")

	// A missed slot claimed as such is an event too; pending and skipped are not.
	p := claimParams("web", "ins-bbbbbbbb", slot)
	p.Status, p.ErrorMessage = history.StatusMissed, "daemon was down"
	_, _, err = s.RunClaim(ctx, p)
	require.NoError(t, err)
	p = claimParams("web", "ins-cccccccc", slot)
	p.Status, p.ErrorMessage = history.StatusSkipped, "policy disabled"
	_, _, err = s.RunClaim(ctx, p)
	require.NoError(t, err)
	require.Equal(t, []string{"failed:ins-aaaaaaaa", "missed:ins-bbbbbbbb"}, eventNames(events(t, s)))
}

func TestNotificationRecoveredOnce(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	h := time.Hour
	finishRun(t, s, "web", "ins-aaaaaaaa", slot, history.StatusAvailable, "", slot.Add(h))
	finishRun(t, s, "web", "ins-aaaaaaaa", slot.Add(24*h), history.StatusFailed, "Timeout", slot.Add(25*h))
	rec := finishRun(t, s, "web", "ins-aaaaaaaa", slot.Add(48*h), history.StatusAvailable, "", slot.Add(49*h))
	finishRun(t, s, "web", "ins-aaaaaaaa", slot.Add(72*h), history.StatusAvailable, "", slot.Add(73*h))
	// A missed slot, then an image: recovered again.
	finishRun(t, s, "web", "ins-aaaaaaaa", slot.Add(96*h), history.StatusMissed, "", slot.Add(96*h))
	finishRun(t, s, "web", "ins-aaaaaaaa", slot.Add(120*h), history.StatusAvailable, "", slot.Add(121*h))

	evs := events(t, s)
	require.Equal(t, []string{"failed:ins-aaaaaaaa", "recovered:ins-aaaaaaaa", "missed:ins-aaaaaaaa", "recovered:ins-aaaaaaaa"}, eventNames(evs))
	require.Equal(t, float64(rec.ID), evs[1].Payload["run_id"])
	require.Equal(t, "available", evs[1].Payload["status"])
	require.Equal(t, rec.ImageID, evs[1].Payload["image_id"])
	require.Equal(t, "previous_run_failed", evs[1].Payload["recovered_from"])
	require.Equal(t, "failed", evs[1].Payload["previous_status"])
}

func TestNotificationRecoveredAfterOverdue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	day := 24 * time.Hour
	_, err := s.PoliciesSync(ctx, []history.PolicyRow{{Name: "web", Schedule: "0 3 * * *", Timezone: "UTC",
		Interval: day, Enabled: true, SourceFile: "a.yaml", SourceLine: 3, LoadedAt: slot}}, slot)
	require.NoError(t, err)
	finishRun(t, s, "web", "ins-aaaaaaaa", slot, history.StatusAvailable, "", slot.Add(time.Hour))
	// Slots skipped in between (no failure), the next image three days later: it was overdue.
	finishRun(t, s, "web", "ins-aaaaaaaa", slot.Add(3*day), history.StatusAvailable, "", slot.Add(3*day+time.Hour))
	// Next day on time: nothing.
	finishRun(t, s, "web", "ins-aaaaaaaa", slot.Add(4*day), history.StatusAvailable, "", slot.Add(4*day+time.Hour))
	evs := events(t, s)
	require.Equal(t, []string{"recovered:ins-aaaaaaaa"}, eventNames(evs))
	require.Equal(t, "overdue", evs[0].Payload["recovered_from"])
}

func TestNotificationRPOBreachOncePerBreach(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	// rpo_breaches compares with the database's now(): the fixture is laid out backwards from it.
	now := time.Now().UTC().Truncate(time.Second)
	day := 24 * time.Hour
	_, err := s.PoliciesSync(ctx, []history.PolicyRow{{Name: "web", Schedule: "0 3 * * *", Timezone: "UTC",
		Interval: day, Enabled: true, SourceFile: "a.yaml", SourceLine: 3, LoadedAt: now}}, now)
	require.NoError(t, err)
	avail := finishRun(t, s, "web", "ins-aaaaaaaa", now.Add(-3*day), history.StatusAvailable, "", now.Add(-3*day+time.Hour))
	finishRun(t, s, "web", "ins-aaaaaaaa", now.Add(-2*day), history.StatusSkipped, "", now.Add(-2*day))
	finishRun(t, s, "web", "ins-bbbbbbbb", now.Add(-2*day), history.StatusSkipped, "", now.Add(-2*day))
	finishRun(t, s, "web", "ins-bbbbbbbb", now.Add(-time.Hour), history.StatusAvailable, "", now.Add(-time.Minute))

	n, err := s.BreachesEvaluate(ctx, now)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	for range 3 {
		n, err = s.BreachesEvaluate(ctx, now.Add(time.Minute))
		require.NoError(t, err)
		require.Zero(t, n, "an open breach is not notified again")
	}
	evs := events(t, s)
	require.Equal(t, []string{"rpo_breach:ins-aaaaaaaa"}, eventNames(evs[1:]), "after ins-b's recovery")
	b := evs[1].Payload
	require.Equal(t, avail.ImageID, b["image_id"])
	require.Equal(t, "skipped", b["status"])
	require.Equal(t, now.Add(-3*day).Format(time.RFC3339), b["last_available_slot"])
	require.Nil(t, b["run_id"])

	// The instance gets an image: the breach closes with a recovered event.
	finishRun(t, s, "web", "ins-aaaaaaaa", now.Add(-time.Hour), history.StatusAvailable, "", now.Add(-time.Minute))
	n, err = s.BreachesEvaluate(ctx, now.Add(2*time.Minute))
	require.NoError(t, err)
	require.Zero(t, n)
	evs = events(t, s)
	require.Equal(t, "recovered:ins-aaaaaaaa", eventNames(evs)[len(evs)-1])
	require.Equal(t, "rpo_breach", evs[len(evs)-1].Payload["recovered_from"])

	var open, recovered int
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT count(*) FILTER (WHERE closed_at IS NULL),
		count(*) FILTER (WHERE closed_by = 'recovered') FROM notification_breaches`).Scan(&open, &recovered))
	require.Equal(t, 0, open)
	require.Equal(t, 1, recovered)
}

// fire moves policy_slots to at, as the scheduler does at every fire.
// claimFire claims one fire of pol at `at` on instances as the scheduler does (RunsClaimFire: its
// runs, then policy_slots moves to the slot), with status for every run, and returns the runs.
func claimFire(t *testing.T, s *history.Store, pol string, at time.Time, status history.Status, instances ...string) []history.Run {
	t.Helper()
	ps := make([]history.RunClaimParams, len(instances))
	for i, inst := range instances {
		ps[i] = claimParams(pol, inst, at)
		ps[i].Status = status
		if status != history.StatusPending {
			ps[i].ErrorMessage = "policy disabled"
		}
	}
	runs, _, err := s.RunsClaimFire(context.Background(), ps)
	require.NoError(t, err)
	return runs
}

func fireEvents(t *testing.T, s *history.Store) []string {
	t.Helper()
	var out []string
	for _, e := range events(t, s) {
		if e.Policy == "web" && (e.Event == history.EventFireStarted || e.Event == history.EventFireSucceeded || e.Event == history.EventFireFailed) {
			out = append(out, e.Event+"@"+e.Payload["slot"].(string))
		}
	}
	return out
}

func TestNotificationFireEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	at := slot.Format(time.RFC3339)

	// A fire of three runs: two available is not the end of the fire.
	runs := claimFire(t, s, "web", slot, history.StatusPending, "ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc")
	endRun(t, s, runs[0], history.StatusAvailable, "", slot.Add(time.Hour))
	endRun(t, s, runs[1], history.StatusAvailable, "", slot.Add(time.Hour))
	require.Equal(t, []string{"fire_started@" + at}, fireEvents(t, s))
	endRun(t, s, runs[2], history.StatusAvailable, "", slot.Add(2*time.Hour))
	require.Equal(t, []string{"fire_started@" + at, "fire_succeeded@" + at}, fireEvents(t, s))
	// The same slot claimed again (a restart re-recording it) is not a second fire.
	claimFire(t, s, "web", slot, history.StatusPending, "ins-aaaaaaaa")
	require.Len(t, fireEvents(t, s), 2)

	// Next fire: one failed run ends it as failed at once, with the run's code.
	next := slot.Add(24 * time.Hour)
	nat := next.Format(time.RFC3339)
	runs = claimFire(t, s, "web", next, history.StatusPending, "ins-aaaaaaaa", "ins-bbbbbbbb")
	endRun(t, s, runs[0], history.StatusFailed, "QuotaExceeded", next.Add(time.Minute))
	got := fireEvents(t, s)
	require.Equal(t, []string{"fire_started@" + nat, "fire_failed@" + nat}, got[2:])
	evs := events(t, s)
	last := evs[len(evs)-1].Payload
	require.Equal(t, "QuotaExceeded", last["error_code"])
	require.Equal(t, float64(1), last["failed"])
	require.Equal(t, float64(2), last["runs"])
	// The other run ending later writes nothing more for the fire.
	endRun(t, s, runs[1], history.StatusAvailable, "", next.Add(time.Hour))
	require.Len(t, fireEvents(t, s), 4)

	// A fire whose runs are all skipped when claimed (a disabled policy) ends when it is
	// recorded: not every slot is available, so it failed.
	third := next.Add(24 * time.Hour)
	tat := third.Format(time.RFC3339)
	claimFire(t, s, "web", third, history.StatusSkipped, "ins-aaaaaaaa")
	got = fireEvents(t, s)
	require.Equal(t, []string{"fire_started@" + tat, "fire_failed@" + tat}, got[4:])

	// A mark is not a fire: policy_slots moved to a slot without runs (a policy seen for the
	// first time, a walk that found no targets) begins nothing, and nothing waits for a verdict.
	fourth := third.Add(24 * time.Hour)
	require.NoError(t, s.PolicySlotSet(ctx, "web", fourth))
	require.NoError(t, s.PolicySlotsSet(ctx, map[string]time.Time{"web": fourth.Add(time.Hour), "db": fourth}))
	require.Len(t, fireEvents(t, s), 6)
	var open int
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT count(*) FROM notification_fires WHERE outcome IS NULL`).Scan(&open))
	require.Zero(t, open)
	last2, err := s.PolicySlots(ctx)
	require.NoError(t, err)
	require.Equal(t, fourth.Add(time.Hour), last2["web"], "marks still move the last handled slot")
	require.Equal(t, fourth, last2["db"])

	// A fire with no targets begins and succeeds at once; one whose targets could not be
	// resolved begins and fails with the code and message. Recording either again adds nothing.
	fifth := fourth.Add(24 * time.Hour)
	require.NoError(t, s.FireWithoutRuns(ctx, "web", fifth, "", ""))
	require.NoError(t, s.FireWithoutRuns(ctx, "web", fifth, "", ""))
	fat := fifth.Format(time.RFC3339)
	require.Equal(t, []string{"fire_started@" + fat, "fire_succeeded@" + fat}, fireEvents(t, s)[6:])
	sixth := fifth.Add(24 * time.Hour)
	require.NoError(t, s.FireWithoutRuns(ctx, "web", sixth, "TargetsUnresolved", "DescribeInstances: AuthFailure"))
	require.NoError(t, s.FireWithoutRuns(ctx, "web", sixth, "TargetsUnresolved", "again"))
	sat := sixth.Format(time.RFC3339)
	require.Equal(t, []string{"fire_started@" + sat, "fire_failed@" + sat}, fireEvents(t, s)[8:])
	evs = events(t, s)
	last = evs[len(evs)-1].Payload
	require.Equal(t, "TargetsUnresolved", last["error_code"])
	require.Equal(t, "DescribeInstances: AuthFailure", last["error_message"])
	require.Equal(t, float64(0), last["runs"])
	last2, err = s.PolicySlots(ctx)
	require.NoError(t, err)
	require.Equal(t, sixth, last2["web"])

	// Runs of imager once (no fire recorded) write no fire events.
	finishRun(t, s, "web", "ins-aaaaaaaa", sixth.Add(time.Hour), history.StatusAvailable, "", sixth.Add(2*time.Hour))
	require.Len(t, fireEvents(t, s), 10)
}

// TestMigrationEndsMarkFires: 0011 removes the never-ending fires that marks began before it,
// and keeps real fires.
func TestMigrationEndsMarkFires(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := mustPool(t, pgtest.NewDatabase(t))
	_, err := migrate.ApplyFS(ctx, pool, migrationsBefore(t, "0011"))
	require.NoError(t, err)
	// A mark (no run) and a real fire (a run, then policy_slots), as the earlier scheduler wrote them.
	_, err = pool.Exec(ctx, `INSERT INTO policy_slots (policy, last_slot) VALUES ('mark', $1)`, slot)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO image_runs (policy, instance_id, region, scheduled_at, started_at, status, image_name, daemon_id)
		VALUES ('real', 'ins-aaaaaaaa', 'ap-guangzhou', $1, $1, 'pending', 'real-1', 'd')`, slot)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO policy_slots (policy, last_slot) VALUES ('real', $1)`, slot)
	require.NoError(t, err)
	fires := func() []string {
		rows, err := pool.Query(ctx, `SELECT policy FROM notification_fires ORDER BY policy`)
		require.NoError(t, err)
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return out
	}
	require.Equal(t, []string{"mark", "real"}, fires(), "before 0011 a mark began a fire")

	applied, err := migrate.ApplyFS(ctx, pool, migrations.FS)
	require.NoError(t, err)
	require.Equal(t, "0011_fire_needs_runs", applied[0])
	require.Equal(t, []string{"real"}, fires())
}

func TestNotificationDeliveryRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	finishRun(t, s, "web", "ins-aaaaaaaa", slot, history.StatusFailed, "Timeout", slot.Add(time.Hour))
	pending, err := s.NotificationsUndispatched(ctx, 10)
	require.NoError(t, err)
	require.Len(t, pending, 1)
	require.Equal(t, history.EventFailed, pending[0].Event)

	zero := 0
	now := slot.Add(2 * time.Hour)
	targets := []history.DeliveryTarget{
		{Target: "webhook/0123456789abcdef", Kind: history.TargetWebhook, Index: &zero, Host: "https://hooks.example"},
		{Target: "webhook/fedcba9876543210", Kind: history.TargetWebhook, Host: "http://other.example"},
	}
	require.NoError(t, s.NotificationDispatch(ctx, pending[0].ID, targets, now))
	require.ErrorIs(t, s.NotificationDispatch(ctx, pending[0].ID, targets, now), history.ErrConflict, "dispatched once")
	require.ErrorIs(t, s.NotificationDispatch(ctx, pending[0].ID, []history.DeliveryTarget{{Target: "x"}}, now), history.ErrInvalid)

	due, err := s.DeliveriesDue(ctx, now.Add(-time.Second), 10)
	require.NoError(t, err)
	require.Empty(t, due, "not due before its time")
	due, err = s.DeliveriesDue(ctx, now, 10)
	require.NoError(t, err)
	require.Len(t, due, 2)
	require.JSONEq(t, string(due[0].Payload), string(due[1].Payload))
	n, err := s.NotificationsPending(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, n)

	require.NoError(t, s.DeliveryRecord(ctx, history.DeliveryResult{ID: due[0].ID, Status: history.DeliveryPending,
		Attempted: true, At: now, NextAttemptAt: now.Add(time.Minute), ResponseCode: 500, Error: "HTTP 500"}))
	require.NoError(t, s.DeliveryRecord(ctx, history.DeliveryResult{ID: due[0].ID, Status: history.DeliveryDelivered,
		Attempted: true, At: now.Add(time.Minute), ResponseCode: 204}))
	require.ErrorIs(t, s.DeliveryRecord(ctx, history.DeliveryResult{ID: due[0].ID, Status: history.DeliveryFailed, At: now}), history.ErrConflict)
	require.NoError(t, s.DeliveryRecord(ctx, history.DeliveryResult{ID: due[1].ID, Status: history.DeliveryFailed,
		At: now, Error: "webhook no longer configured"}))
	require.ErrorIs(t, s.DeliveryRecord(ctx, history.DeliveryResult{ID: due[1].ID, Status: "odd", At: now}), history.ErrInvalid)

	var attempts, code int
	var status string
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT attempts, last_response_code, status FROM notification_deliveries WHERE id = $1`,
		due[0].ID).Scan(&attempts, &code, &status))
	require.Equal(t, 2, attempts)
	require.Equal(t, 204, code)
	require.Equal(t, "delivered", status)
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT attempts, status FROM notification_deliveries WHERE id = $1`,
		due[1].ID).Scan(&attempts, &status))
	require.Equal(t, 0, attempts)
	require.Equal(t, "failed", status)
	n, err = s.NotificationsPending(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}

// missedEvents is events limited to missed ones (a claim also starts and ends fires).
func missedEvents(t *testing.T, s *history.Store) []event {
	t.Helper()
	var out []event
	for _, e := range events(t, s) {
		if e.Event == history.EventMissed {
			out = append(out, e)
		}
	}
	return out
}

// TestNotificationMissedRunsOfOneTransactionAreOneEvent: the walk over passed slots records the
// missed runs of a policy in one transaction; they make one missed event, not one per run.
func TestNotificationMissedRunsOfOneTransactionAreOneEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	missed := func(inst string, at time.Time) history.RunClaimParams {
		p := claimParams("web", inst, at)
		p.Status, p.ErrorCode, p.ErrorMessage = history.StatusMissed, "Missed", "slot passed while no imager leader was running"
		return p
	}
	h := time.Hour
	// Three slots of two instances, and one run of another policy, in one transaction.
	var ps []history.RunClaimParams
	for i := range 3 {
		ps = append(ps, missed("ins-aaaaaaaa", slot.Add(time.Duration(i)*h)), missed("ins-bbbbbbbb", slot.Add(time.Duration(i)*h)))
	}
	other := missed("ins-cccccccc", slot)
	other.Policy = "db"
	ps = append(ps, other)
	_, _, err := s.RunsClaimFire(ctx, ps)
	require.NoError(t, err)

	evs := missedEvents(t, s)
	require.Len(t, evs, 2, "one event per policy")
	web, db := evs[0], evs[1]
	require.Equal(t, map[string]any{
		"event_id": float64(web.ID), "event": "missed", "policy": "web", "instance_id": nil, "run_id": nil,
		"slot": "2026-03-29T05:00:00Z", "status": "missed", "error_code": "Missed",
		"error_message": "slot passed while no imager leader was running", "image_id": nil, "image_name": nil,
		"at":    web.Payload["at"],
		"count": float64(6), "first_slot": "2026-03-29T03:00:00Z", "last_slot": "2026-03-29T05:00:00Z",
		"instance_ids": []any{"ins-aaaaaaaa", "ins-bbbbbbbb"}, "instance_ids_truncated": false,
	}, web.Payload)
	// A lone missed run keeps its per-run fields.
	require.Equal(t, "ins-cccccccc", db.Payload["instance_id"])
	require.NotNil(t, db.Payload["run_id"])
	require.Equal(t, float64(1), db.Payload["count"])
	require.Equal(t, []any{"ins-cccccccc"}, db.Payload["instance_ids"])

	// One instance over several slots keeps its id; the list stops at 100 instances and says so.
	ps = ps[:0]
	for i := range 3 {
		ps = append(ps, missed("ins-dddddddd", slot.Add(time.Duration(10+i)*h)))
	}
	for i := range 101 {
		ps = append(ps, missed(fmt.Sprintf("ins-e%07d", i), slot.Add(12*h)))
	}
	_, _, err = s.RunsClaimFire(ctx, ps)
	require.NoError(t, err)
	evs = missedEvents(t, s)
	require.Len(t, evs, 3, "another transaction is another event")
	last := evs[2].Payload
	require.Equal(t, float64(104), last["count"])
	require.Nil(t, last["instance_id"])
	require.Len(t, last["instance_ids"], 100)
	require.Equal(t, "ins-dddddddd", last["instance_ids"].([]any)[0])
	require.Equal(t, true, last["instance_ids_truncated"])

	// Separate transactions of one instance (the daemon recording each slot as it passes) are
	// separate events, each with its run.
	for i := range 2 {
		_, _, err := s.RunClaim(ctx, missed("ins-ffffffff", slot.Add(time.Duration(20+i)*h)))
		require.NoError(t, err)
	}
	evs = missedEvents(t, s)
	require.Len(t, evs, 5)
	require.Equal(t, "ins-ffffffff", evs[4].Payload["instance_id"])
	require.Equal(t, float64(1), evs[4].Payload["count"])
}

func TestNotificationsPruneKeepsWhatIsStillNeeded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	day := 24 * time.Hour
	// Four failed runs, four events: delivered, still pending, never fanned out, fanned out to no
	// target.
	for i, inst := range []string{"ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc", "ins-dddddddd"} {
		finishRun(t, s, "web", inst, slot.Add(time.Duration(i)*time.Hour), history.StatusFailed, "Timeout", slot.Add(5*time.Hour))
	}
	evs := events(t, s)
	require.Len(t, evs, 4)
	now := slot.Add(6 * time.Hour)
	hook := []history.DeliveryTarget{{Target: "webhook/0123456789abcdef", Kind: history.TargetWebhook, Host: "https://hooks.example"}}
	require.NoError(t, s.NotificationDispatch(ctx, evs[0].ID, hook, now))
	require.NoError(t, s.NotificationDispatch(ctx, evs[1].ID, hook, now))
	require.NoError(t, s.NotificationDispatch(ctx, evs[3].ID, nil, now))
	due, err := s.DeliveriesDue(ctx, now, 10)
	require.NoError(t, err)
	require.Len(t, due, 2)
	require.NoError(t, s.DeliveryRecord(ctx, history.DeliveryResult{ID: due[0].ID, Status: history.DeliveryDelivered,
		Attempted: true, At: now, ResponseCode: 204}))
	// A closed breach and an open one; an ended fire and an open one.
	_, err = s.Pool().Exec(ctx, `
INSERT INTO notification_breaches (policy, instance_id, opened_at, closed_at, closed_by) VALUES
	('web', 'ins-aaaaaaaa', now() - interval '100 days', now() - interval '95 days', 'recovered'),
	('web', 'ins-bbbbbbbb', now() - interval '100 days', NULL, NULL);
INSERT INTO notification_fires (policy, slot, started_at, outcome, ended_at) VALUES
	('web', '2020-01-01T03:00:00Z', now() - interval '100 days', 'fail', now() - interval '95 days'),
	('web', '2020-01-02T03:00:00Z', now() - interval '100 days', NULL, NULL)`)
	require.NoError(t, err)

	// Nothing is old enough yet.
	pruned, err := s.NotificationsPrune(ctx, 90*day)
	require.NoError(t, err)
	require.Equal(t, history.NotificationsPruned{Breaches: 1, Fires: 1}, pruned, "the breach and fire were written old")
	require.Len(t, events(t, s), 4)

	_, err = s.Pool().Exec(ctx, `UPDATE notifications SET created_at = now() - interval '91 days'`)
	require.NoError(t, err)
	pruned, err = s.NotificationsPrune(ctx, 90*day)
	require.NoError(t, err)
	require.Equal(t, history.NotificationsPruned{Events: 2}, pruned)
	var left []int64
	for _, e := range events(t, s) {
		left = append(left, e.ID)
	}
	require.Equal(t, []int64{evs[1].ID, evs[2].ID}, left, "the pending delivery's event and the undispatched one stay")
	var deliveries, breaches, fires int
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM notification_deliveries),
	(SELECT count(*) FROM notification_breaches), (SELECT count(*) FROM notification_fires)`).Scan(&deliveries, &breaches, &fires))
	require.Equal(t, 1, deliveries, "the delivered one went with its event")
	require.Equal(t, 1, breaches, "the open breach stays")
	require.Equal(t, 1, fires, "the open fire stays")
	require.Equal(t, 4, countRuns(t, s), "runs are never pruned")

	_, err = s.NotificationsPrune(ctx, 0)
	require.ErrorIs(t, err, history.ErrInvalid)
}

// TestNotificationFailedRunsOfOneSlotAndCodeShareTheUnsentEvent: failures of one slot with one
// code join the failed event until the notifier fans it out; another code, or a failure after the
// fan-out, is another event.
func TestNotificationFailedRunsOfOneSlotAndCodeShareTheUnsentEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	failedEvents := func() []event {
		var out []event
		for _, e := range events(t, s) {
			if e.Event == history.EventFailed {
				out = append(out, e)
			}
		}
		return out
	}
	done := slot.Add(time.Hour)
	for _, inst := range []string{"ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc"} {
		finishRun(t, s, "web", inst, slot, history.StatusFailed, "AuthFailure", done)
	}
	finishRun(t, s, "web", "ins-dddddddd", slot, history.StatusFailed, "Timeout", done)
	evs := failedEvents()
	require.Len(t, evs, 2, "one event per error code")
	auth := evs[0].Payload
	require.Equal(t, "AuthFailure", auth["error_code"])
	require.Equal(t, float64(3), auth["count"])
	require.Equal(t, []any{"ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc"}, auth["instance_ids"])
	require.Nil(t, auth["instance_id"])
	require.Nil(t, auth["run_id"])
	require.Equal(t, "2026-03-29T03:00:00Z", auth["slot"])
	require.Equal(t, "ins-dddddddd", evs[1].Payload["instance_id"], "a lone failure keeps its run")
	require.NotNil(t, evs[1].Payload["run_id"])

	// Once fanned out, the event is closed: the next failure starts another.
	require.NoError(t, s.NotificationDispatch(ctx, evs[0].ID, nil, done))
	finishRun(t, s, "web", "ins-eeeeeeee", slot, history.StatusFailed, "AuthFailure", done)
	evs = failedEvents()
	require.Len(t, evs, 3)
	require.Equal(t, float64(3), evs[0].Payload["count"], "a sent event does not change")
	require.Equal(t, "ins-eeeeeeee", evs[2].Payload["instance_id"])

	// Slots a rule failed in one claim (the quota gate refusing a fire) are one event.
	var ps []history.RunClaimParams
	for i := range 120 {
		p := claimParams("db", fmt.Sprintf("ins-q%07d", i), slot)
		p.Status, p.ErrorCode, p.ErrorMessage = history.StatusFailed, "ImageQuotaExceeded", "no room for the image"
		ps = append(ps, p)
	}
	_, _, err := s.RunsClaimFire(ctx, ps)
	require.NoError(t, err)
	evs = failedEvents()
	require.Len(t, evs, 4)
	quota := evs[3].Payload
	require.Equal(t, float64(120), quota["count"])
	require.Len(t, quota["instance_ids"], 100)
	require.Equal(t, true, quota["instance_ids_truncated"])
	require.Equal(t, "no room for the image", quota["error_message"])
}
