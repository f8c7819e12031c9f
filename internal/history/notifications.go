package history

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Notification events (notifications.event). The store writes failed, missed, recovered and the
// fire events in the transaction of the run's outcome (effects.go); BreachesEvaluate writes
// rpo_breach.
const (
	EventFailed        = "failed"         // a run failed
	EventMissed        = "missed"         // a slot was missed
	EventRecovered     = "recovered"      // available again after a failed or missed run, or overdue
	EventRPOBreach     = "rpo_breach"     // an instance entered rpo_breaches
	EventFireStarted   = "fire_started"   // a policy fired (policy_slots moved): ping <url>/start
	EventFireSucceeded = "fire_succeeded" // every run of the fire available: ping <url>
	EventFireFailed    = "fire_failed"    // the fire did not make every image: ping <url>/fail
	EventCopyFailed    = "copy_failed"    // a copy in another region failed (copies.go)
	EventCopyRecovered = "copy_recovered" // a copy available in a region after a failed copy there (copies.go)
)

// Delivery statuses (notification_deliveries.status).
const (
	DeliveryPending   = "pending"
	DeliveryDelivered = "delivered"
	DeliveryFailed    = "failed"
)

// Delivery target kinds (notification_deliveries.target_kind).
const (
	TargetWebhook = "webhook"
	TargetPing    = "ping"
)

// Notification is one row of the notifications outbox: an event not yet fanned out to targets.
type Notification struct {
	ID         int64
	Event      string
	Policy     string
	InstanceID string
	At         time.Time
	CreatedAt  time.Time
}

// DeliveryTarget is one place a notification goes: a webhook or a policy's ping. It names the
// target without its URL (a URL is a secret).
type DeliveryTarget struct {
	Target string // stable name: webhook/<hash> or ping/<policy>/<hash>
	Kind   string // TargetWebhook or TargetPing
	Index  *int   // position in notify.webhooks; nil for a ping
	Host   string // scheme://host
}

// Delivery is one pending (notification, target) pair due for a request.
type Delivery struct {
	ID             int64
	NotificationID int64
	Event          string
	Policy         string
	Target         string
	Kind           string
	Attempts       int       // requests made before this one
	CreatedAt      time.Time // when the event was fanned out to the target
	Payload        []byte    // the JSON body
}

// DeliveryResult is the outcome of one delivery step.
type DeliveryResult struct {
	ID            int64
	Status        string    // DeliveryPending (retry at NextAttemptAt), DeliveryDelivered or DeliveryFailed
	Attempted     bool      // a request was made (counted in attempts); false when the target is gone
	At            time.Time // when the request was sent (or the decision taken)
	NextAttemptAt time.Time // for DeliveryPending
	ResponseCode  int       // HTTP status; 0 when no answer came
	Error         string    // why it failed; never a URL
}

// NotificationsUndispatched returns up to limit events (oldest first) not yet fanned out.
func (s *Store) NotificationsUndispatched(ctx context.Context, limit int) ([]Notification, error) {
	rows, err := s.pool.Query(ctx, `
SELECT id, event, policy, COALESCE(instance_id, ''), at, created_at FROM notifications
WHERE dispatched_at IS NULL ORDER BY id LIMIT $1`, limitArg(limit))
	if err != nil {
		return nil, fmt.Errorf("undispatched notifications: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Notification, error) {
		var n Notification
		err := row.Scan(&n.ID, &n.Event, &n.Policy, &n.InstanceID, &n.At, &n.CreatedAt)
		n.At, n.CreatedAt = n.At.UTC(), n.CreatedAt.UTC()
		return n, err
	})
	if err != nil {
		return nil, fmt.Errorf("undispatched notifications: %w", s.translate(err))
	}
	return out, nil
}

// NotificationDispatch fans event id out: one pending delivery per target, due at at, and the
// event marked dispatched, in one transaction. Fanning out twice adds no second delivery to a
// target. No targets is fine: the event is then only recorded.
func (s *Store) NotificationDispatch(ctx context.Context, id int64, targets []DeliveryTarget, at time.Time) error {
	for _, t := range targets {
		if t.Target == "" || (t.Kind != TargetWebhook && t.Kind != TargetPing) || t.Host == "" {
			return fmt.Errorf("dispatch notification %d: target %q of kind %q: %w", id, t.Target, t.Kind, ErrInvalid)
		}
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		for _, t := range targets {
			if _, err := tx.Exec(ctx, `
INSERT INTO notification_deliveries (notification_id, target, target_kind, target_index, target_host, created_at, next_attempt_at)
VALUES ($1, $2, $3, $4, $5, $6, $6)
ON CONFLICT (notification_id, target) DO NOTHING`, id, t.Target, t.Kind, t.Index, t.Host, at); err != nil {
				return err
			}
		}
		tag, err := tx.Exec(ctx, `UPDATE notifications SET dispatched_at = $2 WHERE id = $1 AND dispatched_at IS NULL`, id, at)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrConflict
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("dispatch notification %d: %w", id, s.translate(err))
	}
	return nil
}

// DeliveriesDue returns up to limit pending deliveries whose next attempt is due at now, oldest
// first, with the payload to send.
func (s *Store) DeliveriesDue(ctx context.Context, now time.Time, limit int) ([]Delivery, error) {
	rows, err := s.pool.Query(ctx, `
SELECT d.id, d.notification_id, n.event, n.policy, d.target, d.target_kind, d.attempts, d.created_at, n.payload::text
FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
WHERE d.status = 'pending' AND d.next_attempt_at <= $1
ORDER BY d.next_attempt_at, d.id LIMIT $2`, now, limitArg(limit))
	if err != nil {
		return nil, fmt.Errorf("due deliveries: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Delivery, error) {
		var d Delivery
		var payload string
		err := row.Scan(&d.ID, &d.NotificationID, &d.Event, &d.Policy, &d.Target, &d.Kind, &d.Attempts, &d.CreatedAt, &payload)
		d.Payload = []byte(payload)
		d.CreatedAt = d.CreatedAt.UTC()
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("due deliveries: %w", s.translate(err))
	}
	return out, nil
}

// DeliveryRecord records one step of a pending delivery: a request's answer and what comes
// next (a retry at NextAttemptAt, delivered, or failed for good).
func (s *Store) DeliveryRecord(ctx context.Context, r DeliveryResult) error {
	var next, delivered *time.Time
	switch r.Status {
	case DeliveryPending:
		if r.NextAttemptAt.IsZero() {
			return fmt.Errorf("record delivery %d: a retry needs its time: %w", r.ID, ErrInvalid)
		}
		next = &r.NextAttemptAt
	case DeliveryDelivered:
		delivered = &r.At
	case DeliveryFailed:
	default:
		return fmt.Errorf("record delivery %d: status %q: %w", r.ID, r.Status, ErrInvalid)
	}
	if r.At.IsZero() {
		return fmt.Errorf("record delivery %d: no time: %w", r.ID, ErrInvalid)
	}
	var code *int
	if r.ResponseCode != 0 {
		code = &r.ResponseCode
	}
	attempted := 0
	var lastAttempt *time.Time
	if r.Attempted {
		attempted, lastAttempt = 1, &r.At
	}
	tag, err := s.pool.Exec(ctx, `
UPDATE notification_deliveries SET status = $2, attempts = attempts + $3,
	last_attempt_at = COALESCE($4, last_attempt_at),
	last_response_code = CASE WHEN $3 = 1 THEN $5 ELSE last_response_code END,
	last_error = NULLIF($6, ''), next_attempt_at = $7, delivered_at = $8
WHERE id = $1 AND status = 'pending'`,
		r.ID, r.Status, attempted, lastAttempt, code, cutBytes(r.Error, 1000), next, delivered)
	if err != nil {
		return fmt.Errorf("record delivery %d: %w", r.ID, s.translate(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("record delivery %d: not pending: %w", r.ID, ErrConflict)
	}
	return nil
}

// NotificationsPending counts what waits for delivery: pending deliveries and events not yet
// fanned out (imager_notifications_pending).
func (s *Store) NotificationsPending(ctx context.Context) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM notification_deliveries WHERE status = 'pending')
     + (SELECT count(*) FROM notifications WHERE dispatched_at IS NULL)`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("pending notifications: %w", s.translate(err))
	}
	return n, nil
}

// rpoLockKey is the advisory lock that makes RPO evaluations take turns ("rpoo" in ASCII).
const rpoLockKey = 0x72706f6f

// BreachesEvaluate compares rpo_breaches with the open breaches: an instance newly in the view
// gets one rpo_breach event, and a breach whose instance left the view otherwise than by
// recovering is closed. It returns how many breaches it opened. The leader calls it periodically.
func (s *Store) BreachesEvaluate(ctx context.Context, at time.Time) (int, error) {
	type breach struct {
		policy, instance, status, code, imageID, imageName string
		lastSlot, lastAvailableSlot                        *time.Time
		ageSeconds                                         *float64
	}
	opened := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, rpoLockKey); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE notification_breaches nb SET closed_at = $1, closed_by = 'resolved'
WHERE closed_at IS NULL
	AND NOT EXISTS (SELECT 1 FROM rpo_breaches r WHERE r.policy = nb.policy AND r.instance_id = nb.instance_id)`, at); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT r.policy, r.instance_id, r.last_slot, COALESCE(r.last_status, ''),
	COALESCE(r.last_error_code, ''), COALESCE(r.last_available_image_id, ''), COALESCE(r.last_available_image_name, ''),
	r.last_available_slot, extract(epoch FROM r.last_available_age)::float8
FROM rpo_breaches r
WHERE NOT EXISTS (SELECT 1 FROM notification_breaches nb
	WHERE nb.policy = r.policy AND nb.instance_id = r.instance_id AND nb.closed_at IS NULL)
ORDER BY r.policy, r.instance_id`)
		if err != nil {
			return err
		}
		found, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (breach, error) {
			var b breach
			err := row.Scan(&b.policy, &b.instance, &b.lastSlot, &b.status, &b.code, &b.imageID, &b.imageName,
				&b.lastAvailableSlot, &b.ageSeconds)
			return b, err
		})
		if err != nil {
			return err
		}
		for _, b := range found {
			var slot time.Time
			if b.lastSlot != nil {
				slot = *b.lastSlot
			}
			var lastAvailable, age any
			if b.lastAvailableSlot != nil {
				lastAvailable = payloadTime(*b.lastAvailableSlot)
			}
			if b.ageSeconds != nil {
				age = int64(*b.ageSeconds)
			}
			id, err := insertEvent(ctx, tx, event{Event: EventRPOBreach, Policy: b.policy, InstanceID: b.instance, Slot: slot,
				Status: b.status, ErrorCode: b.code, ImageID: b.imageID, ImageName: b.imageName, At: &at,
				Detail: map[string]any{"last_available_slot": lastAvailable, "last_available_age_seconds": age}})
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO notification_breaches (policy, instance_id, opened_at, notification_id)
VALUES ($1, $2, $3, $4)`, b.policy, b.instance, at, id); err != nil {
				return err
			}
		}
		opened = len(found)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("evaluate RPO breaches: %w", s.translate(err))
	}
	return opened, nil
}

// cutBytes cuts s to at most n bytes on a rune boundary.
func cutBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// NotificationsPruned counts what one NotificationsPrune deleted.
type NotificationsPruned struct {
	Events   int64 // notifications, with their deliveries
	Breaches int64 // closed notification_breaches rows
	Fires    int64 // ended notification_fires rows
}

// notificationsPruneBatch bounds the events one DELETE removes, so a first prune of a long
// history does not hold its locks for long.
const notificationsPruneBatch = 5000

// NotificationsPrune deletes what the notification tables no longer need once it is older than
// keep by the database clock: events fanned out whose every delivery has ended (delivered or
// failed), with those deliveries; RPO breaches closed that long ago; and fires that ended that long
// ago. An event with a delivery still pending stays, however old. image_runs is never touched.
func (s *Store) NotificationsPrune(ctx context.Context, keep time.Duration) (NotificationsPruned, error) {
	var out NotificationsPruned
	if keep <= 0 {
		return out, fmt.Errorf("prune notifications: keep %s: %w", keep, ErrInvalid)
	}
	secs := keep.Seconds()
	for {
		tag, err := s.pool.Exec(ctx, `
DELETE FROM notifications WHERE id IN (
	SELECT n.id FROM notifications n
	WHERE n.created_at < now() - make_interval(secs => $1) AND n.dispatched_at IS NOT NULL
		AND NOT EXISTS (SELECT 1 FROM notification_deliveries d WHERE d.notification_id = n.id AND d.status = 'pending')
	ORDER BY n.id LIMIT $2)`, secs, notificationsPruneBatch)
		if err != nil {
			return out, fmt.Errorf("prune notifications: %w", s.translate(err))
		}
		out.Events += tag.RowsAffected()
		if tag.RowsAffected() < notificationsPruneBatch {
			break
		}
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM notification_breaches
WHERE closed_at < now() - make_interval(secs => $1)`, secs)
	if err != nil {
		return out, fmt.Errorf("prune notification breaches: %w", s.translate(err))
	}
	out.Breaches = tag.RowsAffected()
	tag, err = s.pool.Exec(ctx, `DELETE FROM notification_fires
WHERE ended_at < now() - make_interval(secs => $1)`, secs)
	if err != nil {
		return out, fmt.Errorf("prune notification fires: %w", s.translate(err))
	}
	out.Fires = tag.RowsAffected()
	return out, nil
}
