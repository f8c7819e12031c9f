package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Notification channels (LISTEN/NOTIFY) of the leader lease and of fire requests.
const (
	// LeaseChannel is notified when the leader resigns, so a standby takes over at once.
	LeaseChannel = "imager_leader"
	// FireRequestChannel is notified when imager once asks the leader to fire a policy.
	FireRequestChannel = "imager_fire_requests"
)

// LeaseHolder identifies the process that takes or holds the lease.
type LeaseHolder struct {
	DaemonID string
	Host     string
	PID      int
}

// Lease is the leader lease as the database sees it. Every time is the database clock.
type Lease struct {
	Term       int64
	DaemonID   string
	Host       string
	PID        int
	AcquiredAt time.Time
	RenewedAt  time.Time
	ExpiresAt  time.Time
	// Now is the database's now() when the lease was read or written.
	Now time.Time
}

// Live reports whether the lease had not expired when it was read (by the database clock).
func (l Lease) Live() bool { return l.ExpiresAt.After(l.Now) }

const leaseColumns = `term, daemon_id, host, pid, acquired_at, renewed_at, expires_at, now()`

func scanLease(row pgx.Row) (Lease, error) {
	var l Lease
	var pid int32
	if err := row.Scan(&l.Term, &l.DaemonID, &l.Host, &pid, &l.AcquiredAt, &l.RenewedAt, &l.ExpiresAt, &l.Now); err != nil {
		return Lease{}, err
	}
	l.PID = int(pid)
	l.AcquiredAt, l.RenewedAt, l.ExpiresAt, l.Now = l.AcquiredAt.UTC(), l.RenewedAt.UTC(), l.ExpiresAt.UTC(), l.Now.UTC()
	return l, nil
}

func ttlMillis(ttl time.Duration) int64 { return ttl.Milliseconds() }

// LeaseAcquire takes the lease for h when nobody holds it or it has expired by the database's
// clock; the new term is the old one plus one (1 for the first holder). acquired is false, with
// the current lease, when another holder's lease is live. A holder never takes its own live
// lease again this way: it renews it (LeaseRenew).
func (s *Store) LeaseAcquire(ctx context.Context, h LeaseHolder, ttl time.Duration) (lease Lease, acquired bool, err error) {
	if h.DaemonID == "" || ttl <= 0 {
		return Lease{}, false, fmt.Errorf("acquire lease: daemon id and a positive TTL are required: %w", ErrInvalid)
	}
	l, err := scanLease(s.pool.QueryRow(ctx, `
INSERT INTO leader_lease AS l (name, term, daemon_id, host, pid, acquired_at, renewed_at, expires_at)
VALUES ($1, 1, $2, $3, $4, now(), now(), now() + $5 * interval '1 millisecond')
ON CONFLICT (name) DO UPDATE SET term = l.term + 1, daemon_id = EXCLUDED.daemon_id, host = EXCLUDED.host,
	pid = EXCLUDED.pid, acquired_at = now(), renewed_at = now(), expires_at = EXCLUDED.expires_at
WHERE l.expires_at <= now()
RETURNING `+leaseColumns, LeaseName, h.DaemonID, h.Host, int32(h.PID), ttlMillis(ttl)))
	if err == nil {
		return l, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, false, fmt.Errorf("acquire lease: %w", s.translate(err))
	}
	l, found, err := s.LeaseGet(ctx)
	if err != nil {
		return Lease{}, false, err
	}
	if !found {
		// Deleted between the two statements (by hand): the next attempt inserts it.
		return Lease{}, false, nil
	}
	return l, false, nil
}

// LeaseRenew extends the lease of term by ttl from the database's now(). It is ErrFenced when
// the lease is no longer term (another replica took it after it expired).
func (s *Store) LeaseRenew(ctx context.Context, daemonID string, term int64, ttl time.Duration) (Lease, error) {
	l, err := scanLease(s.pool.QueryRow(ctx, `
UPDATE leader_lease SET renewed_at = now(), expires_at = now() + $4 * interval '1 millisecond'
WHERE name = $1 AND term = $2 AND daemon_id = $3
RETURNING `+leaseColumns, LeaseName, term, daemonID, ttlMillis(ttl)))
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, fmt.Errorf("renew lease of term %d: %w", term, ErrFenced)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("renew lease of term %d: %w", term, s.translate(err))
	}
	return l, nil
}

// LeaseResign ends the lease of term now (expires_at = the database's now()) and notifies
// LeaseChannel so that a standby takes over without waiting for its next poll. Resigning a
// term that is no longer current changes nothing.
func (s *Store) LeaseResign(ctx context.Context, daemonID string, term int64) (resigned bool, err error) {
	tag, err := s.pool.Exec(ctx, `
WITH r AS (
	UPDATE leader_lease SET expires_at = now() WHERE name = $1 AND term = $2 AND daemon_id = $3 RETURNING term
)
SELECT pg_notify($4, term::text) FROM r`, LeaseName, term, daemonID, LeaseChannel)
	if err != nil {
		return false, fmt.Errorf("resign lease of term %d: %w", term, s.translate(err))
	}
	return tag.RowsAffected() > 0, nil
}

// LeaseGet reads the lease; found is false when nobody ever took it.
func (s *Store) LeaseGet(ctx context.Context) (lease Lease, found bool, err error) {
	l, err := scanLease(s.pool.QueryRow(ctx, `SELECT `+leaseColumns+` FROM leader_lease WHERE name = $1`, LeaseName))
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, fmt.Errorf("read lease: %w", s.translate(err))
	}
	return l, true, nil
}

// Listen LISTENs on channels on a connection of its own (outside the pool, which it would
// otherwise hold a connection of for good) and calls fn for each notification, until ctx ends
// (nil) or the connection fails (the error; call Listen again). ready, when not nil, is called
// once the LISTEN commands are in place, so a caller can check for what it may have missed before.
func (s *Store) Listen(ctx context.Context, channels []string, ready func(), fn func(channel, payload string)) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("listen: %w", translate(err))
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	for _, ch := range channels {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("listen on %s: %w", ch, translate(err))
		}
	}
	if ready != nil {
		ready()
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("wait for notification: %w", translate(err))
		}
		fn(n.Channel, n.Payload)
	}
}
