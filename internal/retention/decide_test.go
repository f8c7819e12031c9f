package retention

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// The rules alone, on verified images; the package tests run them against the simulator.
func TestDecide(t *testing.T) {
	t.Parallel()
	const day = 24 * time.Hour
	now := time.Date(2026, 11, 10, 3, 0, 0, 0, time.UTC)
	// ages in days of the verified images, newest first.
	images := func(ages ...int) []candidate {
		out := make([]candidate, len(ages))
		for i, a := range ages {
			out[i] = candidate{run: history.Run{ScheduledAt: now.Add(-time.Duration(a) * day)}}
		}
		return out
	}
	tests := []struct {
		name string
		r    policy.Retention
		ages []int
		want []string
	}{
		{"keep_last 2 of four", policy.Retention{KeepLast: 2, MinKeep: 1}, []int{1, 2, 3, 4},
			[]string{"", "", "keep_last 2: 3rd newest available image", "keep_last 2: 4th newest available image"}},
		{"keep_last 2 of two", policy.Retention{KeepLast: 2, MinKeep: 1}, []int{1, 2}, []string{"", ""}},
		{"max_age: only the old ones", policy.Retention{MaxAge: 30 * day, MinKeep: 1}, []int{1, 29, 31, 40},
			[]string{"", "", "max_age 30d: slot 2026-10-10T03:00:00Z is 31d old", "max_age 30d: slot 2026-10-01T03:00:00Z is 40d old"}},
		{"max_age never takes the newest", policy.Retention{MaxAge: 30 * day, MinKeep: 1}, []int{50, 60},
			[]string{"", "max_age 30d: slot 2026-09-11T03:00:00Z is 60d old"}},
		{"max_age stops at min_keep", policy.Retention{MaxAge: 30 * day, MinKeep: 3}, []int{40, 50, 60, 70},
			[]string{"", "", "", "max_age 30d: slot 2026-09-01T03:00:00Z is 70d old"}},
		{"min_keep 0 still keeps the newest", policy.Retention{KeepLast: 1, MaxAge: day}, []int{5, 6},
			[]string{"", "keep_last 1: 2nd newest available image"}},
		{"keep_last first, then max_age", policy.Retention{KeepLast: 3, MaxAge: 30 * day, MinKeep: 1}, []int{1, 35, 36, 37},
			[]string{"", "max_age 30d: slot 2026-10-06T03:00:00Z is 35d old", "max_age 30d: slot 2026-10-05T03:00:00Z is 36d old",
				"keep_last 3: 4th newest available image"}},
		{"exactly max_age old is kept", policy.Retention{MaxAge: 30 * day, MinKeep: 1}, []int{1, 30}, []string{"", ""}},
		{"nothing", policy.Retention{KeepLast: 2, MinKeep: 1}, nil, []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := tc.r
			require.Equal(t, tc.want, decide(&r, now, images(tc.ages...)))
		})
	}
}

func TestTagsDisagree(t *testing.T) {
	t.Parallel()
	slot := time.Date(2026, 11, 9, 3, 0, 0, 0, time.UTC)
	run := history.Run{InstanceID: "ins-web00001", ScheduledAt: slot}
	ours := []cvm.Tag{{Key: "imager-policy", Value: "web"}, {Key: "imager-instance", Value: "ins-web00001"},
		{Key: "imager-slot", Value: "2026-11-09T03:00:00Z"}, {Key: "team", Value: "ops"}}
	tests := []struct {
		name string
		tags []cvm.Tag
		want string
	}{
		{"agree", ours, ""},
		{"someone else's image", []cvm.Tag{{Key: "team", Value: "ops"}}, "image has no imager tags"},
		{"another policy", []cvm.Tag{ours[1], ours[2], {Key: "imager-policy", Value: "db"}},
			`imager-policy is "db", history says "web"`},
		{"another instance", []cvm.Tag{ours[0], ours[2], {Key: "imager-instance", Value: "ins-web00002"}},
			`imager-instance is "ins-web00002", history says "ins-web00001"`},
		{"another slot", []cvm.Tag{ours[0], ours[1], {Key: "imager-slot", Value: "2026-11-08T03:00:00Z"}},
			`imager-slot is "2026-11-08T03:00:00Z", history says "2026-11-09T03:00:00Z"`},
		{"slot tag removed", ours[:2], "no imager-slot tag"},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, tagsDisagree(cvm.Image{Tags: tc.tags}, "web", run), tc.name)
	}
}

func TestFormat(t *testing.T) {
	t.Parallel()
	for n, want := range map[int]string{1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th",
		21: "21st", 22: "22nd", 23: "23rd", 101: "101st", 111: "111th"} {
		require.Equal(t, want, ordinal(n))
	}
	for d, want := range map[time.Duration]string{
		30 * 24 * time.Hour:             "30d",
		40*24*time.Hour + 6*time.Hour:   "40d6h",
		36 * time.Hour:                  "1d12h",
		12 * time.Hour:                  "12h",
		90 * time.Minute:                "1h30m",
		45*time.Minute + 10*time.Second: "45m",
		10 * time.Second:                "0m",
	} {
		require.Equal(t, want, formatDuration(d))
	}
}
