package policy

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
)

// MinEvery is the shortest `@every` interval a schedule may use.
const MinEvery = time.Minute

// cronParser accepts the 5-field form and the descriptors (@daily, @hourly, ...). `@every` and the
// CRON_TZ= prefix are handled before it, so their semantics (epoch alignment, zone validation)
// are ours.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule parses a policy schedule: a 5-field cron expression, a descriptor (@yearly,
// @annually, @monthly, @weekly, @daily, @midnight, @hourly) or `@every <duration>` (at least 1m,
// whole seconds, `d` allowed), optionally prefixed by `CRON_TZ=Zone ` (or `TZ=Zone `), which wins
// over loc. Cron fields are matched against the wall clock of the zone; see Schedule for how DST
// gaps and repeats are handled. A nil loc means UTC.
func ParseSchedule(spec string, loc *time.Location) (Schedule, error) {
	if loc == nil {
		loc = time.UTC
	}
	s := strings.TrimSpace(spec)
	if strings.HasPrefix(s, "CRON_TZ=") || strings.HasPrefix(s, "TZ=") {
		eq := strings.IndexByte(s, '=')
		prefix, rest := s[:eq], s[eq+1:]
		sp := strings.IndexAny(rest, " \t")
		if sp < 0 {
			return nil, fmt.Errorf("%s=%s must be followed by a space and the schedule", prefix, rest)
		}
		zone, err := loadZone(rest[:sp])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", prefix, err)
		}
		loc = zone
		s = strings.TrimSpace(rest[sp:])
	}
	if s == "" {
		return nil, fmt.Errorf("empty schedule")
	}
	if f := strings.Fields(s); f[0] == "@every" {
		if len(f) != 2 {
			return nil, fmt.Errorf("@every takes one duration, e.g. @every 6h")
		}
		d, err := ParseDuration(f[1])
		if err != nil {
			return nil, fmt.Errorf("@every: %w", err)
		}
		if d < MinEvery {
			return nil, fmt.Errorf("@every %s is shorter than the minimum %s", f[1], formatDuration(MinEvery))
		}
		if d%time.Second != 0 {
			return nil, fmt.Errorf("@every %s is not a whole number of seconds", f[1])
		}
		return &everySchedule{spec: s, every: d, loc: loc}, nil
	}
	parsed, err := parseCron(s)
	if err != nil {
		return nil, fmt.Errorf("invalid cron expression %q: %s", clip(s), clip(err.Error())) // robfig quotes the fields
	}
	ss, ok := parsed.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("invalid cron expression %q", clip(s))
	}
	wall := *ss
	wall.Location = time.UTC // fields are matched on the wall clock, carried as UTC
	return &cronSchedule{spec: s, wall: &wall, loc: loc, everyHour: hourIsStep(s)}, nil
}

// hourIsStep reports whether a cron expression's hour field is `*` or a step (`*/2`, `1-23/2`):
// such a schedule fires by the wall clock's hours as they come, DST repeats included.
func hourIsStep(spec string) bool {
	f := strings.Fields(spec)
	switch {
	case len(f) == 1:
		return f[0] == "@hourly"
	case len(f) >= 2:
		return f[1] == "*" || strings.Contains(f[1], "/")
	}
	return false
}

// parseCron calls robfig's parser, turning any panic on odd input into an error.
func parseCron(s string) (sched cron.Schedule, err error) {
	defer func() {
		if r := recover(); r != nil {
			sched, err = nil, fmt.Errorf("cannot parse: %v", r)
		}
	}()
	return cronParser.Parse(s)
}

// NextN returns the first n slots of s strictly after after, fewer if the schedule ends (a cron
// expression that matches no date).
func NextN(s Schedule, after time.Time, n int) []time.Time {
	out := make([]time.Time, 0, max(n, 0))
	t := after
	for range n {
		t = s.Next(t)
		if t.IsZero() {
			break
		}
		out = append(out, t)
	}
	return out
}

// everySchedule fires at every multiple of the interval since the Unix epoch, so every daemon and
// every restart agrees on the slots whatever the time it started.
type everySchedule struct {
	spec  string
	every time.Duration
	loc   *time.Location
}

// Next returns the first multiple of the interval strictly after t.
func (s *everySchedule) Next(t time.Time) time.Time {
	step := int64(s.every / time.Second)
	u := t.Unix() // floor: nanoseconds are never negative
	k := u / step
	if u%step < 0 {
		k--
	}
	return time.Unix((k+1)*step, 0).In(s.loc)
}

// String returns the spec the schedule was parsed from.
func (s *everySchedule) String() string { return s.spec }

// cronSchedule matches cron fields against the wall clock of loc, then maps each matching wall
// time back to the instants it names. With a fixed hour field (`0 3 * * *`, `30 1,13 * * *`) a
// wall time skipped by a DST jump fires once at the jump and a repeated wall time fires once, at
// its first occurrence: a daily backup runs once a day. With `*` or a step in the hour field
// (everyHour) the schedule fires at every matching wall time that exists, in both copies of a
// repeated hour, and not at all for a skipped one: `0 * * * *` fires 23 times on a spring-forward
// day and 25 times on a fall-back day, and `*/30 * * * *` leaves no gap. robfig's own Next works
// on instants in the zone and gets both wrong (it skips the gap's slot or fires the repeated one
// twice whatever the hour field).
type cronSchedule struct {
	spec      string
	wall      *cron.SpecSchedule // Location UTC: operates on wall-clock times carried as UTC
	loc       *time.Location
	everyHour bool
}

// maxNextSteps bounds the wall-time steps Next takes to get past t; each step past the first only
// happens for wall times whose instant is not after t (repeated or skipped hours), a few hundred
// at most.
const maxNextSteps = 10000

// maxShift bounds how far a DST change moves the wall clock (in practice 30 minutes to 2 hours).
const maxShift = 3 * time.Hour

// Next returns the first slot strictly after t, or the zero time when the expression matches no
// date in the next five years (e.g. February 30).
func (s *cronSchedule) Next(t time.Time) time.Time {
	if s.everyHour {
		return s.nextEveryHour(t)
	}
	w := wallClock(t, s.loc)
	for range maxNextSteps {
		w = s.wall.Next(w)
		if w.IsZero() {
			return time.Time{}
		}
		if at := instantOfWall(w, s.loc); at.After(t) {
			return at
		}
	}
	return time.Time{}
}

// nextEveryHour is Next for a schedule with `*` or a step in its hour field: the earliest
// instant after t of any matching wall time. Wall order and instant order differ only around a
// backward jump (the repeated hour), so the search starts early enough to see the second copy of
// a repeated hour and, when such a jump lies ahead, looks maxShift past the first match.
func (s *cronSchedule) nextEveryHour(t time.Time) time.Time {
	w := wallClock(t, s.loc)
	_, off := t.In(s.loc).Zone()
	_, end := t.In(s.loc).ZoneBounds()
	backAhead := false
	if !end.IsZero() {
		_, nextOff := end.In(s.loc).Zone()
		if nextOff < off {
			backAhead = true
			if after := wallClock(end, s.loc); after.Before(w) {
				w = after
			}
		}
	}
	w = w.Add(-time.Second) // wall.Next is strictly after
	var best, bestWall time.Time
	for range maxNextSteps {
		w = s.wall.Next(w)
		if w.IsZero() || (!best.IsZero() && w.After(bestWall.Add(maxShift))) {
			break
		}
		for _, at := range instantsOfWall(w, s.loc) {
			if at.After(t) && (best.IsZero() || at.Before(best)) {
				best, bestWall = at, w
			}
		}
		if !best.IsZero() && (!backAhead || end.After(best)) {
			break // no backward jump between t and best: no later wall time comes earlier
		}
	}
	return best
}

// String returns the spec the schedule was parsed from (without any CRON_TZ= prefix).
func (s *cronSchedule) String() string { return s.spec }

// wallClock returns the wall-clock reading of t in loc, carried as a UTC time.
func wallClock(t time.Time, loc *time.Location) time.Time {
	_, off := t.In(loc).Zone()
	return t.Add(time.Duration(off) * time.Second).UTC()
}

// instantOfWall maps a wall-clock time of loc (carried as UTC) to the instant it names: the first
// instant showing that wall time, or, when the wall time is skipped by a forward jump, the instant of
// the jump. It walks the zone periods around the wall time in order, so it is exact for any tzdata.
func instantOfWall(w time.Time, loc *time.Location) time.Time {
	const window = 15 * 60 * 60 // offsets lie within -12h..+14h
	u := w.Unix()
	ns := int64(w.Nanosecond())
	at := time.Unix(u-window, 0).In(loc)
	for {
		_, off := at.Zone()
		start, end := at.ZoneBounds()
		c := u - int64(off)
		if (start.IsZero() || c >= start.Unix()) && (end.IsZero() || c < end.Unix()) {
			return time.Unix(c, ns).In(loc)
		}
		if end.IsZero() || end.Unix() > u+window {
			break
		}
		next := end.In(loc)
		_, nextOff := next.Zone()
		if e := end.Unix(); e+int64(off) <= u && u < e+int64(nextOff) {
			return next // u lies in the gap the jump at end skips
		}
		at = next
	}
	// Unreachable with consistent zone data; Go's own normalisation is a sane answer.
	return time.Date(w.Year(), w.Month(), w.Day(), w.Hour(), w.Minute(), w.Second(), w.Nanosecond(), loc)
}

// instantsOfWall returns every instant whose wall clock in loc reads w (carried as UTC), in
// order: none for a wall time a forward jump skips, two for one a backward jump repeats.
func instantsOfWall(w time.Time, loc *time.Location) []time.Time {
	const window = 15 * 60 * 60
	u := w.Unix()
	ns := int64(w.Nanosecond())
	var out []time.Time
	at := time.Unix(u-window, 0).In(loc)
	for range 64 {
		_, off := at.Zone()
		start, end := at.ZoneBounds()
		if c := u - int64(off); (start.IsZero() || c >= start.Unix()) && (end.IsZero() || c < end.Unix()) {
			out = append(out, time.Unix(c, ns).In(loc))
		}
		if end.IsZero() || end.Unix() > u+window {
			break
		}
		at = end.In(loc)
	}
	return out
}

// zoneCache holds loaded time zones: time.LoadLocation reads and parses tzdata on every call, and a
// directory of a thousand policies names the same few zones.
var zoneCache sync.Map // string -> *time.Location

// loadZone loads an IANA time zone. "Local" and "" are refused: a policy must not depend on the
// host's zone.
func loadZone(name string) (*time.Location, error) {
	if l, ok := zoneCache.Load(name); ok {
		return l.(*time.Location), nil
	}
	if name == "" || name == "Local" {
		return nil, fmt.Errorf("time zone %q: use an IANA name such as UTC or Europe/Berlin", clip(name))
	}
	l, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone %q (want an IANA name such as Europe/Berlin)", clip(name))
	}
	zoneCache.Store(name, l)
	return l, nil
}
