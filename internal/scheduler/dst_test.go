package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// TestCronAcrossDST2027 drives the cron loop on the fake clock across the 2027 transitions of
// America/New_York, Europe/Berlin and Australia/Lord_Howe (a 30-minute shift) and checks the
// slots it records: fixed hours fire once (at the jump, or at the first of two occurrences),
// wildcard and step hours fire at every wall time that exists, in both copies of a repeated hour.
func TestCronAcrossDST2027(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, zone, spec string
		from, to         string // UTC
		want             []string
	}{
		{name: "New York fall-back, hourly: 01:00 EDT and 01:00 EST", zone: "America/New_York", spec: "0 * * * *",
			from: "2027-11-07T04:30:00Z", to: "2027-11-07T08:30:00Z",
			want: []string{"2027-11-07T05:00:00Z", "2027-11-07T06:00:00Z", "2027-11-07T07:00:00Z", "2027-11-07T08:00:00Z"}},
		{name: "New York fall-back, fixed 01:30: once, EDT", zone: "America/New_York", spec: "30 1 * * *",
			from: "2027-11-07T04:30:00Z", to: "2027-11-07T08:30:00Z",
			want: []string{"2027-11-07T05:30:00Z"}},
		{name: "New York spring-forward, hourly: no 02:00", zone: "America/New_York", spec: "0 * * * *",
			from: "2027-03-14T05:30:00Z", to: "2027-03-14T08:30:00Z",
			want: []string{"2027-03-14T06:00:00Z", "2027-03-14T07:00:00Z", "2027-03-14T08:00:00Z"}},
		{name: "Berlin spring-forward, fixed 02:30: at the jump", zone: "Europe/Berlin", spec: "30 2 * * *",
			from: "2027-03-28T00:00:00Z", to: "2027-03-28T03:00:00Z",
			want: []string{"2027-03-28T01:00:00Z"}},
		{name: "Berlin fall-back, every 30 minutes: no gap", zone: "Europe/Berlin", spec: "*/30 * * * *",
			from: "2027-10-31T00:15:00Z", to: "2027-10-31T02:15:00Z",
			want: []string{"2027-10-31T00:30:00Z", "2027-10-31T01:00:00Z", "2027-10-31T01:30:00Z", "2027-10-31T02:00:00Z"}},
		{name: "Lord Howe fall-back, every 30 minutes: 01:30 twice", zone: "Australia/Lord_Howe", spec: "*/30 * * * *",
			from: "2027-04-03T14:15:00Z", to: "2027-04-03T16:15:00Z",
			want: []string{"2027-04-03T14:30:00Z", "2027-04-03T15:00:00Z", "2027-04-03T15:30:00Z", "2027-04-03T16:00:00Z"}},
		{name: "Lord Howe spring-forward, fixed 02:15: at the 30-minute jump", zone: "Australia/Lord_Howe", spec: "15 2 * * *",
			from: "2027-10-02T15:00:00Z", to: "2027-10-02T16:00:00Z",
			want: []string{"2027-10-02T15:30:00Z"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			loc, err := time.LoadLocation(tc.zone)
			require.NoError(t, err)
			p := testPolicy("dst", "ins-dst00001")
			p.Location = loc
			p.Enabled = false // skipped rows: the slots without the API
			p.ScheduleSpec = tc.spec
			p.Schedule, err = policy.ParseSchedule(tc.spec, loc)
			require.NoError(t, err)
			from, _ := time.Parse(time.RFC3339, tc.from)
			to, _ := time.Parse(time.RFC3339, tc.to)
			h := newHarnessAt(t, from, testConfig(10, 1, p))
			h.start()
			for h.clk.Now().Before(to) {
				require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1)) // the cron timer: the last fire is recorded
				h.clk.Advance(time.Minute)
			}
			require.NoError(t, h.clk.BlockUntilContext(h.ctx, 1))
			runs, _, _ := h.hist.snapshot()
			got := make([]string, len(runs))
			for i, r := range runs {
				require.Equal(t, history.StatusSkipped, r.Status)
				got[i] = r.ScheduledAt.UTC().Format(time.RFC3339)
			}
			require.Equal(t, tc.want, got)
		})
	}
}
