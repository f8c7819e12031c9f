package history

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/imager-dev/imager/internal/policy"
)

// PolicyRow is one row of the policies table: a policy as the daemon loaded it, so SQL (the
// coverage view) knows what is supposed to happen.
type PolicyRow struct {
	Name            string
	Schedule        string
	Timezone        string        // IANA zone the schedule fires in
	Interval        time.Duration // between the two most recent slots at load time; whole seconds, > 0
	Enabled         bool
	SourceFile      string
	SourceLine      int
	LoadedAt        time.Time
	RemovedAt       *time.Time // set on rows of policies no longer loaded (PoliciesList only)
	TimezoneInvalid bool       // set by PoliciesSync when PostgreSQL did not know Timezone (UTC was stored)
}

// PolicyRows builds the policies rows of a loaded configuration at now. The time zone is the one
// the schedule fires in (a CRON_TZ= prefix wins over timezone:). The interval is the gap between
// the two most recent slots at or before now; a schedule with fewer than two past slots in the
// last ten years uses the gap between its next two.
func PolicyRows(cfg *policy.Config, now time.Time) []PolicyRow {
	rows := make([]PolicyRow, 0, len(cfg.Policies))
	for _, p := range cfg.Policies {
		tz := "UTC"
		if next := p.Schedule.Next(now); !next.IsZero() {
			if name := next.Location().String(); name != "" && name != "Local" {
				tz = name
			}
		}
		rows = append(rows, PolicyRow{
			Name: p.Name, Schedule: p.ScheduleSpec, Timezone: tz, Interval: scheduleInterval(p.Schedule, now),
			Enabled: p.Enabled, SourceFile: p.File, SourceLine: p.Line, LoadedAt: now,
		})
	}
	return rows
}

// scheduleInterval returns the gap between the two most recent slots at or before now. Schedules
// only step forwards, so it looks back over a window that doubles until it holds two slots.
func scheduleInterval(s policy.Schedule, now time.Time) time.Duration {
	const maxWindow = 10 * 366 * 24 * time.Hour
	for window := 2 * policy.MinEvery; window <= maxWindow; window *= 2 {
		var prev, last time.Time
		for t := s.Next(now.Add(-window)); !t.IsZero() && !t.After(now); t = s.Next(t) {
			prev, last = last, t
		}
		if !prev.IsZero() {
			return wholeSeconds(last.Sub(prev))
		}
	}
	if next := policy.NextN(s, now, 2); len(next) == 2 {
		return wholeSeconds(next[1].Sub(next[0]))
	}
	return 24 * time.Hour // a schedule that never fires: any positive interval will do
}

func wholeSeconds(d time.Duration) time.Duration {
	d = d.Round(time.Second)
	if d < time.Second {
		return time.Second
	}
	return d
}

// PoliciesSync replaces the loaded set in the policies table, in one transaction: every row given
// is inserted or updated (removed_at cleared); a policy loaded before and missing from rows keeps
// its row, marked with removed_at = at, so its history stays explained and coverage leaves it out.
// A policy whose time zone changed has its daily_coverage days recomputed in that zone.
//
// A time zone PostgreSQL does not know (its zone database may be older than Go's) is stored as
// UTC and reported through the TimezoneInvalid field of the returned rows.
func (s *Store) PoliciesSync(ctx context.Context, rows []PolicyRow, at time.Time) ([]PolicyRow, error) {
	out := make([]PolicyRow, len(rows))
	copy(out, rows)
	known := map[string]bool{}
	for i, r := range out {
		if r.Name == "" || r.Interval < time.Second {
			return nil, fmt.Errorf("sync policies: policy %q: a name and an interval of at least 1s are required: %w", r.Name, ErrInvalid)
		}
		ok, seen := known[r.Timezone]
		if !seen {
			ok = s.timezoneKnown(ctx, r.Timezone)
			known[r.Timezone] = ok
		}
		if !ok {
			out[i].Timezone, out[i].TimezoneInvalid = "UTC", true
		}
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// One writer at a time: two replicas reloading at once must not interleave their sets.
		if _, err := tx.Exec(ctx, `LOCK TABLE policies IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return err
		}
		n := len(out)
		names, schedules, zones := make([]string, n), make([]string, n), make([]string, n)
		intervals, overdue, lines := make([]int64, n), make([]int64, n), make([]int32, n)
		enabled, files, loaded := make([]bool, n), make([]string, n), make([]time.Time, n)
		for i, r := range out {
			names[i], schedules[i], zones[i] = r.Name, r.Schedule, r.Timezone
			intervals[i], lines[i] = int64(r.Interval/time.Second), int32(r.SourceLine)
			overdue[i] = int64((OverdueAfter(r.Interval) + time.Second - 1) / time.Second)
			enabled[i], files[i], loaded[i] = r.Enabled, r.SourceFile, r.LoadedAt
		}
		// One statement for the whole set; it returns the policies whose days were computed in
		// another zone (or in UTC before the policy had a row), read before the upsert.
		rows, err := tx.Query(ctx, `
WITH input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::boolean[], $6::text[], $7::int[], $8::timestamptz[], $9::bigint[])
		AS u(name, schedule, timezone, interval_seconds, enabled, source_file, source_line, loaded_at, overdue_seconds)),
upsert AS (
	INSERT INTO policies (name, schedule, timezone, interval_seconds, overdue_seconds, enabled, source_file, source_line, loaded_at, removed_at)
	SELECT name, schedule, timezone, interval_seconds, overdue_seconds, enabled, source_file, source_line, loaded_at, NULL FROM input
	ON CONFLICT (name) DO UPDATE SET schedule = EXCLUDED.schedule, timezone = EXCLUDED.timezone,
		interval_seconds = EXCLUDED.interval_seconds, overdue_seconds = EXCLUDED.overdue_seconds, enabled = EXCLUDED.enabled, source_file = EXCLUDED.source_file,
		source_line = EXCLUDED.source_line, loaded_at = EXCLUDED.loaded_at, removed_at = NULL)
SELECT i.name FROM input i LEFT JOIN policies p ON p.name = i.name
WHERE COALESCE(p.timezone, 'UTC') <> i.timezone`, names, schedules, zones, intervals, enabled, files, lines, loaded, overdue)
		if err != nil {
			return err
		}
		rezoned, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(rezoned) > 0 {
			if err := rebuildDays(ctx, tx, rezoned); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `UPDATE policies SET removed_at = $2 WHERE removed_at IS NULL AND NOT (name = ANY($1))`, names, at)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sync policies: %w", s.translate(err))
	}
	return out, nil
}

// timezoneKnown reports whether PostgreSQL accepts tz as a time zone name.
func (s *Store) timezoneKnown(ctx context.Context, tz string) bool {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)`, tz).Scan(&ok)
	return err == nil && ok
}

// PoliciesList returns every row of the policies table, loaded or removed, by name.
func (s *Store) PoliciesList(ctx context.Context) ([]PolicyRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, schedule, timezone, interval_seconds, enabled, source_file,
	source_line, loaded_at, removed_at FROM policies ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", s.translate(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (PolicyRow, error) {
		var r PolicyRow
		var secs int64
		err := row.Scan(&r.Name, &r.Schedule, &r.Timezone, &secs, &r.Enabled, &r.SourceFile, &r.SourceLine,
			&r.LoadedAt, &r.RemovedAt)
		r.Interval = time.Duration(secs) * time.Second
		r.LoadedAt = r.LoadedAt.UTC()
		if r.RemovedAt != nil {
			t := r.RemovedAt.UTC()
			r.RemovedAt = &t
		}
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", s.translate(err))
	}
	return out, nil
}

// PolicyKnown reports whether name is a policy imager knows of: in the policies table (loaded or
// removed) or in image_runs.
func (s *Store) PolicyKnown(ctx context.Context, name string) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM policies WHERE name = $1)
	OR EXISTS (SELECT 1 FROM image_runs WHERE policy = $1)`, name).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("look up policy %q: %w", name, s.translate(err))
	}
	return ok, nil
}
