package policy

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func mustZone(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	require.NoError(t, err)
	return loc
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestScheduleDST(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		zone  string
		spec  string
		after string // RFC 3339
		want  []string
	}{
		{
			name: "Berlin spring 02:30 fires once at the jump (03:00 CEST)",
			zone: "Europe/Berlin", spec: "30 2 * * *", after: "2026-03-28T10:00:00Z",
			want: []string{"2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"},
		},
		{
			name: "Berlin spring: three slots in the gap collapse into one",
			zone: "Europe/Berlin", spec: "0,20,40 2 * * *", after: "2026-03-28T23:00:00Z",
			want: []string{"2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z", "2026-03-30T00:20:00Z"},
		},
		{
			name: "Berlin spring: a slot in the gap and one at 03:00 are one slot",
			zone: "Europe/Berlin", spec: "30 2,3 * * *", after: "2026-03-28T23:00:00Z",
			want: []string{"2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"},
		},
		{
			name: "Berlin fall 02:30 fires once, at the first occurrence (CEST)",
			zone: "Europe/Berlin", spec: "30 2 * * *", after: "2026-10-24T10:00:00Z",
			want: []string{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"},
		},
		{
			name: "Berlin fall 01:30 is not repeated: fires once",
			zone: "Europe/Berlin", spec: "30 1 * * *", after: "2026-10-24T10:00:00Z",
			want: []string{"2026-10-24T23:30:00Z", "2026-10-26T00:30:00Z"},
		},
		{
			name: "Berlin fall: after the first 02:30, the second 02:30 does not fire",
			zone: "Europe/Berlin", spec: "30 2 * * *", after: "2026-10-25T00:30:00Z",
			want: []string{"2026-10-26T01:30:00Z"},
		},
		{
			name: "Berlin fall: inside the second occurrence, the next slot is tomorrow",
			zone: "Europe/Berlin", spec: "30 2 * * *", after: "2026-10-25T01:10:00Z", // 02:10 CET
			want: []string{"2026-10-26T01:30:00Z"},
		},
		{
			name: "New York spring 02:30 fires once at 03:00 EDT",
			zone: "America/New_York", spec: "30 2 * * *", after: "2026-03-07T05:00:00Z",
			want: []string{"2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"},
		},
		{
			name: "New York fall 01:30 fires once at the first occurrence (EDT)",
			zone: "America/New_York", spec: "30 1 * * *", after: "2026-10-31T12:00:00Z",
			want: []string{"2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"},
		},
		{
			name: "Sao Paulo 2018: midnight does not exist, the daily slot fires at 01:00",
			zone: "America/Sao_Paulo", spec: "0 0 * * *", after: "2018-11-03T12:00:00Z",
			want: []string{"2018-11-04T03:00:00Z", "2018-11-05T02:00:00Z"},
		},
		{
			name: "Lord Howe: 30-minute jump",
			zone: "Australia/Lord_Howe", spec: "15 2 * * *", after: "2026-10-03T00:00:00Z", // 2026-10-04 02:00 -> 02:30
			want: []string{"2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"},
		},
		{
			name: "UTC: plain daily",
			zone: "UTC", spec: "@daily", after: "2026-03-29T00:00:00Z",
			want: []string{"2026-03-30T00:00:00Z", "2026-03-31T00:00:00Z"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := ParseSchedule(tc.spec, mustZone(t, tc.zone))
			require.NoError(t, err)
			got := NextN(s, utc(tc.after), len(tc.want))
			require.Len(t, got, len(tc.want))
			for i, w := range tc.want {
				require.True(t, got[i].Equal(utc(w)), "slot %d: got %s (%s), want %s", i, got[i].UTC().Format(time.RFC3339), got[i], w)
				require.Equal(t, tc.zone, got[i].Location().String(), "slots are reported in the schedule's zone")
			}
		})
	}
}

// TestScheduleEvery15MinutesAcrossDST walks every slot of a 15-minute schedule across both
// transitions of a year and checks there are no duplicates, no backwards steps and no gap: the
// hour field is `*`, so both copies of the repeated hour fire and every gap is 15 minutes.
func TestScheduleEvery15MinutesAcrossDST(t *testing.T) {
	t.Parallel()
	cases := []struct {
		zone      string
		springDay string // local date of the forward jump
		fallDay   string // local date of the backward jump
	}{
		{zone: "Europe/Berlin", springDay: "2026-03-29", fallDay: "2026-10-25"},
		{zone: "America/New_York", springDay: "2026-03-08", fallDay: "2026-11-01"},
	}
	for _, tc := range cases {
		t.Run(tc.zone, func(t *testing.T) {
			t.Parallel()
			loc := mustZone(t, tc.zone)
			s, err := ParseSchedule("*/15 * * * *", loc)
			require.NoError(t, err)
			start := time.Date(2026, 3, 1, 0, 0, 0, 0, loc)
			end := time.Date(2026, 11, 30, 0, 0, 0, 0, loc)
			seen := map[int64]bool{}
			perDay := map[string]int{}
			prev := s.Next(start)
			for cur := s.Next(prev); cur.Before(end); prev, cur = cur, s.Next(cur) {
				require.True(t, cur.After(prev), "backwards or repeated slot %s after %s", cur, prev)
				require.False(t, seen[cur.Unix()], "duplicate slot %s", cur)
				seen[cur.Unix()] = true
				require.Equal(t, 15*time.Minute, cur.Sub(prev), "gap before %s", cur.UTC())
				perDay[cur.Format("2006-01-02")]++
			}
			require.Equal(t, 23*4, perDay[tc.springDay], "the short day has 23 hours of slots")
			require.Equal(t, 25*4, perDay[tc.fallDay], "the long day has 25 hours of slots")
		})
	}
}

// TestScheduleNextProperties checks on random instants around transitions in several zones that
// Next is strictly after t, monotonic, and never skips a slot (Next(t) is the first slot after t).
func TestScheduleNextProperties(t *testing.T) {
	t.Parallel()
	zones := []string{"Europe/Berlin", "America/New_York", "America/Sao_Paulo", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Apia", "UTC"}
	specs := []string{"*/15 * * * *", "30 2 * * *", "0 0 * * *", "0 * * * *", "5 1-3 * * *", "0 3 * * 0", "@every 7m", "@hourly"}
	rng := rand.New(rand.NewPCG(1, 2))
	base := utc("2011-01-01T00:00:00Z").Unix()
	span := utc("2027-01-01T00:00:00Z").Unix() - base
	for _, z := range zones {
		loc := mustZone(t, z)
		for _, spec := range specs {
			s, err := ParseSchedule(spec, loc)
			require.NoError(t, err)
			for range 200 {
				t1 := time.Unix(base+rng.Int64N(span), rng.Int64N(1e9))
				t2 := t1.Add(time.Duration(rng.Int64N(int64(3 * time.Hour))))
				n1, n2 := s.Next(t1), s.Next(t2)
				require.True(t, n1.After(t1), "%s %s: Next(%s)=%s not after", z, spec, t1, n1)
				require.False(t, n2.Before(n1), "%s %s: not monotonic: Next(%s)=%s, Next(%s)=%s", z, spec, t1, n1, t2, n2)
				// No slot between t1 and n1: stepping back one second before n1 still yields n1.
				if back := n1.Add(-time.Second); back.After(t1) {
					require.True(t, s.Next(back).Equal(n1), "%s %s: slot skipped between %s and %s", z, spec, t1, n1)
				}
			}
		}
	}
}

func TestScheduleEvery(t *testing.T) {
	t.Parallel()
	berlin := mustZone(t, "Europe/Berlin")
	cases := []struct {
		spec  string
		after string
		want  []string
	}{
		{"@every 6h", "2026-03-29T01:23:45Z", []string{"2026-03-29T06:00:00Z", "2026-03-29T12:00:00Z", "2026-03-29T18:00:00Z"}},
		{"@every 6h", "2026-03-29T06:00:00Z", []string{"2026-03-29T12:00:00Z"}}, // strictly after
		{"@every 90m", "2026-01-01T00:00:00Z", []string{"2026-01-01T01:30:00Z", "2026-01-01T03:00:00Z"}},
		{"@every 1d", "2026-03-28T23:59:59Z", []string{"2026-03-29T00:00:00Z", "2026-03-30T00:00:00Z"}},
		{"@every 7m", "1970-01-01T00:00:00Z", []string{"1970-01-01T00:07:00Z"}},
		{"@every 7m", "1969-12-31T23:59:00Z", []string{"1970-01-01T00:00:00Z"}},
		{"CRON_TZ=Asia/Tokyo @every 1h", "2026-03-29T00:30:00Z", []string{"2026-03-29T01:00:00Z"}},
	}
	for _, tc := range cases {
		s, err := ParseSchedule(tc.spec, berlin)
		require.NoError(t, err, tc.spec)
		got := NextN(s, utc(tc.after), len(tc.want))
		for i, w := range tc.want {
			require.True(t, got[i].Equal(utc(w)), "%s after %s: slot %d is %s, want %s", tc.spec, tc.after, i, got[i].UTC(), w)
		}
	}

	// Two daemons started at different instants agree on the slots.
	s, err := ParseSchedule("@every 45m", nil)
	require.NoError(t, err)
	a := NextN(s, utc("2026-05-01T10:03:00Z"), 5)
	b := NextN(s, utc("2026-05-01T10:31:59Z"), 4)
	require.Equal(t, a[1:], b)
	for _, slot := range a {
		require.Zero(t, slot.Unix()%(45*60), "slot %s is not a multiple of 45m since the epoch", slot)
	}
}

func TestScheduleCronTZ(t *testing.T) {
	t.Parallel()
	berlin := mustZone(t, "Europe/Berlin")
	for _, spec := range []string{"CRON_TZ=America/New_York 0 9 * * *", "TZ=America/New_York 0 9 * * *", "  CRON_TZ=America/New_York   0 9 * * *"} {
		s, err := ParseSchedule(spec, berlin)
		require.NoError(t, err, spec)
		// 2026-03-10: New York is already on EDT (UTC-4), Berlin still on CET.
		got := s.Next(utc("2026-03-10T00:00:00Z"))
		require.True(t, got.Equal(utc("2026-03-10T13:00:00Z")), "%s: got %s", spec, got.UTC())
		require.Equal(t, "America/New_York", got.Location().String())
	}
	// Without the prefix the policy's zone applies.
	s, err := ParseSchedule("0 9 * * *", berlin)
	require.NoError(t, err)
	require.True(t, s.Next(utc("2026-03-10T00:00:00Z")).Equal(utc("2026-03-10T08:00:00Z")))
	// The CRON_TZ zone gets the DST treatment too.
	s, err = ParseSchedule("CRON_TZ=America/New_York 30 2 * * *", berlin)
	require.NoError(t, err)
	require.True(t, s.Next(utc("2026-03-08T00:00:00Z")).Equal(utc("2026-03-08T07:00:00Z")))
}

func TestScheduleDescriptors(t *testing.T) {
	t.Parallel()
	after := utc("2026-03-11T10:20:30Z") // a Wednesday
	cases := map[string]string{
		"@hourly":    "2026-03-11T11:00:00Z",
		"@daily":     "2026-03-12T00:00:00Z",
		"@midnight":  "2026-03-12T00:00:00Z",
		"@weekly":    "2026-03-15T00:00:00Z",
		"@monthly":   "2026-04-01T00:00:00Z",
		"@yearly":    "2027-01-01T00:00:00Z",
		"@annually":  "2027-01-01T00:00:00Z",
		"0 3 * * *":  "2026-03-12T03:00:00Z",
		"0 3 29 2 *": "2028-02-29T03:00:00Z",
	}
	for spec, want := range cases {
		s, err := ParseSchedule(spec, time.UTC)
		require.NoError(t, err, spec)
		require.True(t, s.Next(after).Equal(utc(want)), "%s: got %s want %s", spec, s.Next(after), want)
	}
}

func TestParseScheduleErrors(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"":                               "empty schedule",
		"0 3 * *":                        "expected exactly 5 fields, found 4",
		"0 0 3 * * *":                    "expected exactly 5 fields, found 6",
		"0 3 * * 8":                      "above maximum",
		"61 * * * *":                     "above maximum",
		"@fortnightly":                   "unrecognized descriptor",
		"@every 30s":                     "shorter than the minimum 1m",
		"@every 1m30.5s":                 "not a whole number of seconds",
		"@every":                         "@every takes one duration",
		"@every 5 minutes":               "@every takes one duration",
		"@every soon":                    "invalid duration",
		"CRON_TZ=Mars/Olympus 0 3 * * *": `unknown time zone "Mars/Olympus"`,
		"CRON_TZ=UTC":                    "must be followed by a space",
		"TZ=Local 0 3 * * *":             "use an IANA name",
		"CRON_TZ=UTC \t":                 "must be followed by a space",
	}
	for spec, want := range cases {
		_, err := ParseSchedule(spec, time.UTC)
		require.Error(t, err, spec)
		require.Contains(t, err.Error(), want, spec)
	}
}

func TestScheduleNeverFires(t *testing.T) {
	t.Parallel()
	s, err := ParseSchedule("0 0 30 2 *", time.UTC)
	require.NoError(t, err)
	require.True(t, s.Next(utc("2026-01-01T00:00:00Z")).IsZero())
	require.Empty(t, NextN(s, utc("2026-01-01T00:00:00Z"), 3))
}
