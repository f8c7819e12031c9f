package history_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
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
		"at": "2026-03-29T03:40:00Z",
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
func fire(t *testing.T, s *history.Store, pol string, at time.Time) {
	t.Helper()
	_, err := s.Pool().Exec(context.Background(), `INSERT INTO policy_slots (policy, last_slot) VALUES ($1, $2)
		ON CONFLICT (policy) DO UPDATE SET last_slot = EXCLUDED.last_slot, updated_at = now()`, pol, at)
	require.NoError(t, err)
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

	// Three expected runs: two available is not the end of the fire.
	fire(t, s, "web", slot)
	require.NoError(t, s.FireExpect(ctx, "web", slot, 3, slot))
	finishRun(t, s, "web", "ins-aaaaaaaa", slot, history.StatusAvailable, "", slot.Add(time.Hour))
	finishRun(t, s, "web", "ins-bbbbbbbb", slot, history.StatusAvailable, "", slot.Add(time.Hour))
	require.Equal(t, []string{"fire_started@" + at}, fireEvents(t, s))
	finishRun(t, s, "web", "ins-cccccccc", slot, history.StatusAvailable, "", slot.Add(2*time.Hour))
	require.Equal(t, []string{"fire_started@" + at, "fire_succeeded@" + at}, fireEvents(t, s))
	// The same slot again (a restart re-recording it) is not a second fire.
	fire(t, s, "web", slot)
	require.Len(t, fireEvents(t, s), 2)

	// Next fire: one failed run ends it as failed at once, with the run's code.
	next := slot.Add(24 * time.Hour)
	nat := next.Format(time.RFC3339)
	fire(t, s, "web", next)
	require.NoError(t, s.FireExpect(ctx, "web", next, 2, next))
	finishRun(t, s, "web", "ins-aaaaaaaa", next, history.StatusFailed, "QuotaExceeded", next.Add(time.Minute))
	got := fireEvents(t, s)
	require.Equal(t, []string{"fire_started@" + nat, "fire_failed@" + nat}, got[2:])
	evs := events(t, s)
	last := evs[len(evs)-1].Payload
	require.Equal(t, "QuotaExceeded", last["error_code"])
	require.Equal(t, float64(1), last["failed"])
	require.Equal(t, float64(2), last["expected_runs"])
	// The other run ending later writes nothing more for the fire.
	finishRun(t, s, "web", "ins-bbbbbbbb", next, history.StatusAvailable, "", next.Add(time.Hour))
	require.Len(t, fireEvents(t, s), 4)

	// A fire whose runs were all skipped before policy_slots moved (a disabled policy) ends when
	// it is recorded: not every slot is available, so it failed.
	third := next.Add(24 * time.Hour)
	p := claimParams("web", "ins-aaaaaaaa", third)
	p.Status, p.ErrorMessage = history.StatusSkipped, "policy disabled"
	_, _, err := s.RunClaim(ctx, p)
	require.NoError(t, err)
	fire(t, s, "web", third)
	got = fireEvents(t, s)
	tat := third.Format(time.RFC3339)
	require.Equal(t, []string{"fire_started@" + tat, "fire_failed@" + tat}, got[4:])

	// A fire with no targets succeeds once the scheduler says so.
	fourth := third.Add(24 * time.Hour)
	fire(t, s, "web", fourth)
	require.NoError(t, s.FireExpect(ctx, "web", fourth, 0, fourth))
	require.Equal(t, "fire_succeeded@"+fourth.Format(time.RFC3339), fireEvents(t, s)[7])

	// Runs of imager once (no fire recorded) write no fire events.
	finishRun(t, s, "web", "ins-aaaaaaaa", fourth.Add(time.Hour), history.StatusAvailable, "", fourth.Add(2*time.Hour))
	require.Len(t, fireEvents(t, s), 8)
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
