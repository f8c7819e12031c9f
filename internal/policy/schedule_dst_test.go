package policy

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// transition2027 is one DST change of 2027 in a zone.
type transition2027 struct {
	zone string
	day  string // local date of the change
	fwd  bool   // spring forward (a skipped span) or fall back (a repeated span)
}

var transitions2027 = []transition2027{
	{zone: "America/New_York", day: "2027-03-14", fwd: true},     // 02:00 EST -> 03:00 EDT
	{zone: "America/New_York", day: "2027-11-07", fwd: false},    // 02:00 EDT -> 01:00 EST
	{zone: "Europe/Berlin", day: "2027-03-28", fwd: true},        // 02:00 CET -> 03:00 CEST
	{zone: "Europe/Berlin", day: "2027-10-31", fwd: false},       // 03:00 CEST -> 02:00 CET
	{zone: "Australia/Lord_Howe", day: "2027-10-03", fwd: true},  // 02:00 +10:30 -> 02:30 +11
	{zone: "Australia/Lord_Howe", day: "2027-04-04", fwd: false}, // 02:00 +11 -> 01:30 +10:30
}

// slotsOnDay returns the slots of s whose local date in loc is day.
func slotsOnDay(t *testing.T, s Schedule, loc *time.Location, day string) []time.Time {
	t.Helper()
	d, err := time.ParseInLocation("2006-01-02", day, loc)
	require.NoError(t, err)
	var out []time.Time
	for cur := s.Next(d.Add(-time.Second)); cur.Format("2006-01-02") <= day; cur = s.Next(cur) {
		if cur.Format("2006-01-02") == day {
			out = append(out, cur)
		}
	}
	return out
}

// TestScheduleDST2027Counts counts the fires of wildcard-hour schedules on each 2027 transition
// day: every matching wall time that exists fires, both copies of a repeated one included.
func TestScheduleDST2027Counts(t *testing.T) {
	t.Parallel()
	want := map[string]map[string]int{ // spec -> zone/day -> fires
		"0 * * * *": {
			"America/New_York 2027-03-14": 23, "America/New_York 2027-11-07": 25,
			"Europe/Berlin 2027-03-28": 23, "Europe/Berlin 2027-10-31": 25,
			// Lord Howe shifts by 30 minutes: 02:00 is skipped in spring; in autumn 01:30-01:59
			// repeats, which holds no full hour.
			"Australia/Lord_Howe 2027-10-03": 23, "Australia/Lord_Howe 2027-04-04": 24,
		},
		"@hourly": {
			"America/New_York 2027-03-14": 23, "America/New_York 2027-11-07": 25,
			"Europe/Berlin 2027-03-28": 23, "Europe/Berlin 2027-10-31": 25,
			"Australia/Lord_Howe 2027-10-03": 23, "Australia/Lord_Howe 2027-04-04": 24,
		},
		"*/30 * * * *": {
			"America/New_York 2027-03-14": 46, "America/New_York 2027-11-07": 50,
			"Europe/Berlin 2027-03-28": 46, "Europe/Berlin 2027-10-31": 50,
			"Australia/Lord_Howe 2027-10-03": 47, "Australia/Lord_Howe 2027-04-04": 49,
		},
		"30 2 * * *": { // fixed hour: once a day whatever happens
			"America/New_York 2027-03-14": 1, "America/New_York 2027-11-07": 1,
			"Europe/Berlin 2027-03-28": 1, "Europe/Berlin 2027-10-31": 1,
			"Australia/Lord_Howe 2027-10-03": 1, "Australia/Lord_Howe 2027-04-04": 1,
		},
		"45 1 * * *": {
			"America/New_York 2027-03-14": 1, "America/New_York 2027-11-07": 1,
			"Europe/Berlin 2027-03-28": 1, "Europe/Berlin 2027-10-31": 1,
			"Australia/Lord_Howe 2027-10-03": 1, "Australia/Lord_Howe 2027-04-04": 1,
		},
	}
	for spec, days := range want {
		for _, tr := range transitions2027 {
			key := tr.zone + " " + tr.day
			t.Run(spec+" "+key, func(t *testing.T) {
				t.Parallel()
				loc := mustZone(t, tr.zone)
				s, err := ParseSchedule(spec, loc)
				require.NoError(t, err)
				got := slotsOnDay(t, s, loc, tr.day)
				require.Len(t, got, days[key], "slots: %v", got)
				for i := 1; i < len(got); i++ {
					require.True(t, got[i].After(got[i-1]))
				}
			})
		}
	}
}

// TestScheduleDST2027Instants pins the instant of fixed-hour slots in skipped and repeated spans
// and the both-copies rule of wildcard hours.
func TestScheduleDST2027Instants(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, zone, spec, day string
		want                  []string // UTC
	}{
		{name: "NY 02:30 skipped: fires at the jump, 03:00 EDT", zone: "America/New_York", spec: "30 2 * * *", day: "2027-03-14",
			want: []string{"2027-03-14T07:00:00Z"}},
		{name: "NY 01:45 repeated: first occurrence (EDT)", zone: "America/New_York", spec: "45 1 * * *", day: "2027-11-07",
			want: []string{"2027-11-07T05:45:00Z"}},
		{name: "NY */30 on fall-back night: both copies of 01:00 and 01:30", zone: "America/New_York", spec: "*/30 0-3/1 * * *", day: "2027-11-07",
			want: []string{"2027-11-07T04:00:00Z", "2027-11-07T04:30:00Z", "2027-11-07T05:00:00Z", "2027-11-07T05:30:00Z",
				"2027-11-07T06:00:00Z", "2027-11-07T06:30:00Z", "2027-11-07T07:00:00Z", "2027-11-07T07:30:00Z", "2027-11-07T08:00:00Z", "2027-11-07T08:30:00Z"}},
		{name: "NY */30 on spring-forward night: 02:00 and 02:30 do not exist", zone: "America/New_York", spec: "*/30 0-3/1 * * *", day: "2027-03-14",
			want: []string{"2027-03-14T05:00:00Z", "2027-03-14T05:30:00Z", "2027-03-14T06:00:00Z", "2027-03-14T06:30:00Z", "2027-03-14T07:00:00Z", "2027-03-14T07:30:00Z"}},
		{name: "Berlin 02:30 skipped: fires at 03:00 CEST", zone: "Europe/Berlin", spec: "30 2 * * *", day: "2027-03-28",
			want: []string{"2027-03-28T01:00:00Z"}},
		{name: "Berlin 02:30 repeated: first occurrence (CEST)", zone: "Europe/Berlin", spec: "30 2 * * *", day: "2027-10-31",
			want: []string{"2027-10-31T00:30:00Z"}},
		{name: "Berlin hour range on fall-back: a range is fixed hours, 02:00 once", zone: "Europe/Berlin", spec: "0 1-3 * * *", day: "2027-10-31",
			want: []string{"2027-10-30T23:00:00Z", "2027-10-31T00:00:00Z", "2027-10-31T02:00:00Z"}},
		{name: "Berlin step hour on fall-back: 02:00 twice", zone: "Europe/Berlin", spec: "0 1-3/1 * * *", day: "2027-10-31",
			want: []string{"2027-10-30T23:00:00Z", "2027-10-31T00:00:00Z", "2027-10-31T01:00:00Z", "2027-10-31T02:00:00Z"}},
		{name: "Lord Howe 02:15 skipped: fires at the jump, 02:30 +11", zone: "Australia/Lord_Howe", spec: "15 2 * * *", day: "2027-10-03",
			want: []string{"2027-10-02T15:30:00Z"}},
		{name: "Lord Howe 01:45 repeated: first occurrence (+11)", zone: "Australia/Lord_Howe", spec: "45 1 * * *", day: "2027-04-04",
			want: []string{"2027-04-03T14:45:00Z"}},
		{name: "Lord Howe */15 hours 1-2 on fall-back: 01:30 and 01:45 twice", zone: "Australia/Lord_Howe", spec: "*/15 1-2/1 * * *", day: "2027-04-04",
			want: []string{"2027-04-03T14:00:00Z", "2027-04-03T14:15:00Z", "2027-04-03T14:30:00Z", "2027-04-03T14:45:00Z",
				"2027-04-03T15:00:00Z", "2027-04-03T15:15:00Z", // 01:30 and 01:45 again at +10:30
				"2027-04-03T15:30:00Z", "2027-04-03T15:45:00Z", "2027-04-03T16:00:00Z", "2027-04-03T16:15:00Z"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			loc := mustZone(t, tc.zone)
			s, err := ParseSchedule(tc.spec, loc)
			require.NoError(t, err)
			got := slotsOnDay(t, s, loc, tc.day)
			gotUTC := make([]string, len(got))
			for i, g := range got {
				gotUTC[i] = g.UTC().Format(time.RFC3339)
			}
			require.Equal(t, tc.want, gotUTC)
		})
	}
}
