package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const dstPolicies = `version: 1
defaults: {region: ap-guangzhou}
policies:
  - name: ny-hourly
    schedule: "0 * * * *"
    timezone: America/New_York
    instances: [ins-6pb6lrmy]
  - name: ny-nightly
    schedule: "30 1 * * *"
    timezone: America/New_York
    instances: [ins-6pb6lrmy]
  - name: berlin-nightly
    schedule: "30 2 * * *"
    timezone: Europe/Berlin
    instances: [ins-6pb6lrmy]
  - name: berlin-half-hourly
    schedule: "*/30 * * * *"
    timezone: Europe/Berlin
    instances: [ins-6pb6lrmy]
`

func runNext(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "p.yaml")
	require.NoError(t, os.WriteFile(path, []byte(dstPolicies), 0o600))
	var stdout, stderr bytes.Buffer
	code := dispatch(context.Background(), append([]string{"next", "--policies", path}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestNextFromShowsTheDSTRules: `imager next --from` previews fires offline, without credentials,
// and shows the DST rules of docs/design.md for New York and Berlin.
func TestNextFromShowsTheDSTRules(t *testing.T) {
	t.Setenv("TENCENTCLOUD_SECRET_ID", "")
	t.Setenv("TENCENTCLOUD_SECRET_KEY", "")
	t.Setenv("HOME", t.TempDir())
	cases := []struct {
		name string
		args []string
		want []string // slot UTC | local
	}{
		{name: "New York fall-back: an hourly schedule fires in both 01:00s",
			args: []string{"--policy", "ny-hourly", "--from", "2027-11-07T00:30:00-04:00", "--count", "3"},
			want: []string{"2027-11-07T05:00:00Z|2027-11-07T01:00:00-04:00", "2027-11-07T06:00:00Z|2027-11-07T01:00:00-05:00", "2027-11-07T07:00:00Z|2027-11-07T02:00:00-05:00"}},
		{name: "New York fall-back: a nightly 01:30 fires once",
			args: []string{"--policy", "ny-nightly", "--from", "2027-11-07T00:30:00-04:00", "--count", "2"},
			want: []string{"2027-11-07T05:30:00Z|2027-11-07T01:30:00-04:00", "2027-11-08T06:30:00Z|2027-11-08T01:30:00-05:00"}},
		{name: "New York spring-forward: no 02:00",
			args: []string{"--policy", "ny-hourly", "--from", "2027-03-14T00:30:00-05:00", "--count", "3"},
			want: []string{"2027-03-14T06:00:00Z|2027-03-14T01:00:00-05:00", "2027-03-14T07:00:00Z|2027-03-14T03:00:00-04:00", "2027-03-14T08:00:00Z|2027-03-14T04:00:00-04:00"}},
		{name: "Berlin spring-forward: 02:30 fires at the jump",
			args: []string{"--policy", "berlin-nightly", "--from", "2027-03-28T00:00:00+01:00", "--count", "2"},
			want: []string{"2027-03-28T01:00:00Z|2027-03-28T03:00:00+02:00", "2027-03-29T00:30:00Z|2027-03-29T02:30:00+02:00"}},
		{name: "Berlin fall-back: every 30 minutes through both 02:00s",
			args: []string{"--policy", "berlin-half-hourly", "--from", "2027-10-31T02:00:00+02:00", "--count", "4"},
			want: []string{"2027-10-31T00:30:00Z|2027-10-31T02:30:00+02:00", "2027-10-31T01:00:00Z|2027-10-31T02:00:00+01:00",
				"2027-10-31T01:30:00Z|2027-10-31T02:30:00+01:00", "2027-10-31T02:00:00Z|2027-10-31T03:00:00+01:00"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runNext(t, append(tc.args, "--format", "json")...)
			require.Equal(t, exitOK, code, stderr)
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
				var f nextFire
				require.NoError(t, json.Unmarshal([]byte(line), &f))
				got = append(got, f.Slot+"|"+f.Local)
			}
			require.Equal(t, tc.want, got)

			// The table says the same, without credentials.
			code, stdout, stderr = runNext(t, tc.args...)
			require.Equal(t, exitOK, code, stderr)
			require.Contains(t, stderr, "targets not resolved")
			require.Equal(t, len(tc.want)+1, strings.Count(stdout, "\n"))
		})
	}
}

func TestNextBadFlags(t *testing.T) {
	for flag, args := range map[string][]string{
		"--from":   {"--from", "2027-11-07 00:30"},
		"--count":  {"--count", "0"},
		"--format": {"--format", "yaml"},
		"--policy": {"--policy", "nope", "--offline"},
	} {
		code, _, stderr := runNext(t, args...)
		require.Equal(t, exitUsage, code, flag)
		require.Contains(t, stderr, flag, "the message names the flag")
	}
}
