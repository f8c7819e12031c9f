package history

import (
	"context"
	"fmt"
	"time"
)

// Replica roles (replicas.role).
const (
	RoleLeader  = "leader"
	RoleStandby = "standby"
	RoleOnce    = "once"
	RoleStopped = "stopped"
)

// Replica is one imager process seen on this database.
type Replica struct {
	DaemonID  string
	Host      string
	PID       int
	Role      string
	Version   string
	StartedAt time.Time
	// SeenAt is when the process last reported (database clock); ignored by ReplicaSeen.
	SeenAt time.Time
}

// ReplicaSeen records that r is alive in role r.Role, now by the database's clock.
func (s *Store) ReplicaSeen(ctx context.Context, r Replica) error {
	switch {
	case r.DaemonID == "" || r.StartedAt.IsZero():
		return fmt.Errorf("record replica: daemon id and start time are required: %w", ErrInvalid)
	case r.Role != RoleLeader && r.Role != RoleStandby && r.Role != RoleOnce && r.Role != RoleStopped:
		return fmt.Errorf("record replica %s: role %q: %w", r.DaemonID, r.Role, ErrInvalid)
	}
	_, err := s.pool.Exec(ctx, `
INSERT INTO replicas (daemon_id, host, pid, role, version, started_at, seen_at)
VALUES ($1, $2, $3, $4, $5, $6, now())
ON CONFLICT (daemon_id) DO UPDATE SET role = EXCLUDED.role, version = EXCLUDED.version, seen_at = now()`,
		r.DaemonID, r.Host, int32(r.PID), r.Role, r.Version, r.StartedAt)
	if err != nil {
		return fmt.Errorf("record replica %s: %w", r.DaemonID, s.translate(err))
	}
	return nil
}

// ReplicasSeen lists the processes seen within the last `within` by the database's clock,
// leader first, then by daemon id.
func (s *Store) ReplicasSeen(ctx context.Context, within time.Duration) ([]Replica, error) {
	rows, err := s.pool.Query(ctx, `
SELECT daemon_id, host, pid, role, version, started_at, seen_at FROM replicas
WHERE seen_at > now() - $1 * interval '1 millisecond'
ORDER BY role <> 'leader', daemon_id`, within.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", s.translate(err))
	}
	defer rows.Close()
	var out []Replica
	for rows.Next() {
		var r Replica
		var pid int32
		if err := rows.Scan(&r.DaemonID, &r.Host, &pid, &r.Role, &r.Version, &r.StartedAt, &r.SeenAt); err != nil {
			return nil, fmt.Errorf("list replicas: %w", s.translate(err))
		}
		r.PID = int(pid)
		r.StartedAt, r.SeenAt = r.StartedAt.UTC(), r.SeenAt.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list replicas: %w", s.translate(err))
	}
	return out, nil
}

// PolicySlotLast is the latest slot the scheduler handled for one policy (policy_slots).
type PolicySlotLast struct {
	Policy   string
	LastSlot time.Time
	Term     int64 // 0 when recorded without leadership
}

// PolicySlotsLast lists the latest slot handled per policy (imager status).
func (s *Store) PolicySlotsLast(ctx context.Context) (map[string]PolicySlotLast, error) {
	rows, err := s.pool.Query(ctx, `SELECT policy, last_slot, COALESCE(term, 0) FROM policy_slots`)
	if err != nil {
		return nil, fmt.Errorf("list policy slots: %w", s.translate(err))
	}
	defer rows.Close()
	out := map[string]PolicySlotLast{}
	for rows.Next() {
		var p PolicySlotLast
		if err := rows.Scan(&p.Policy, &p.LastSlot, &p.Term); err != nil {
			return nil, fmt.Errorf("list policy slots: %w", s.translate(err))
		}
		p.LastSlot = p.LastSlot.UTC()
		out[p.Policy] = p
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list policy slots: %w", s.translate(err))
	}
	return out, nil
}
