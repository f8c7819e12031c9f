package policy

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRegionNames(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"ap-guangzhou", "ap-shanghai-fsi", "na-siliconvalley", "eu-frankfurt", "ap-singapore", "sa-saopaulo", "ap-beijing-fsi"} {
		require.True(t, regionRe.MatchString(s), s)
	}
	for _, s := range []string{"", "ap", "ap-", "ap-g", "AP-GUANGZHOU", "ap_guangzhou", "ap-guangzhou-3", "ap-guangzhou-", "ap--x", "apx-guangzhou",
		"ap-guangzhou-fsi-2", "ap-shanghai-f", " ap-guangzhou", "ap-guangzhou\n", "ap-guang zhou", "ap-1"} {
		require.False(t, regionRe.MatchString(s), "%q", s)
	}
	require.Equal(t, []string{"ap-guangzhou-3", "ap-guangzhou"}, zoneRe.FindStringSubmatch("ap-guangzhou-3"))
	require.Equal(t, []string{"ap-shanghai-fsi-2", "ap-shanghai-fsi"}, zoneRe.FindStringSubmatch("ap-shanghai-fsi-2"))
	require.Nil(t, zoneRe.FindStringSubmatch("ap-guangzhou"))
}

func TestCopyTo(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/copies/good.yaml")
	require.NoError(t, err)
	const day = 24 * time.Hour

	// From defaults: an entry without retention takes the policy's (its own copy of it).
	p := cfg.Policy("inherits")
	require.Equal(t, []CopyTarget{
		{Region: "ap-singapore", Retention: &Retention{KeepLast: 3, MinKeep: 1}},
		{Region: "ap-shanghai", Retention: &Retention{KeepLast: 7, MinKeep: 1, DeleteSnapshots: true}},
	}, p.CopyTo)
	require.NotSame(t, p.Retention, p.CopyTo[1].Retention)

	// The policy's list replaces the defaults' whole; an entry's retention stands alone (not merged
	// with the policy's); `retention:` with no value: copies never pruned.
	p = cfg.Policy("own")
	require.Equal(t, &Retention{KeepLast: 7, MaxAge: 30 * day, MinKeep: 2, DeleteSnapshots: true}, p.Retention)
	require.Equal(t, []CopyTarget{
		{Region: "eu-frankfurt", Retention: &Retention{KeepLast: 7, MaxAge: 30 * day, MinKeep: 2, DeleteSnapshots: true}},
		{Region: "na-siliconvalley", Retention: &Retention{MaxAge: 90 * day, MinKeep: 1}},
		{Region: "ap-shanghai-fsi"},
	}, p.CopyTo)

	require.Empty(t, cfg.Policy("cleared").CopyTo, "copy_to: [] clears the defaults")
	require.Empty(t, cfg.Policy("cleared-null").CopyTo, "copy_to: with no value clears the defaults")
	require.Equal(t, []CopyTarget{{Region: "ap-beijing"}}, cfg.Policy("no-retention").CopyTo, "the policy keeps everything: so do its copies")

	// Without copy_to anywhere: none.
	cfg, err = Load("testdata/good/full.yaml")
	require.NoError(t, err)
	for _, p := range cfg.Policies {
		require.Nil(t, p.CopyTo, p.Name)
	}
}

func TestCopyToBad(t *testing.T) {
	t.Parallel()
	cases := map[string][]wantErr{
		"bad.yaml": {
			{line: 9, field: "policies[0].copy_to[0].region", msg: "required: the region to copy each image to"},
			{line: 10, field: "policies[0].copy_to[1].region", msg: `"ap-guangzhou-3" is an availability zone, not a region: use ap-guangzhou`},
			{line: 11, field: "policies[0].copy_to[2].region", msg: `"AP-SINGAPORE" is not a region (e.g. ap-guangzhou, ap-shanghai-fsi)`},
			{line: 13, field: "policies[0].copy_to[4].region", msg: `duplicate region "ap-singapore" (also at line 12)`},
			{line: 14, field: "policies[0].copy_to[5]", msg: `expected a mapping such as {region: ap-singapore, retention: {keep_last: 3}}, got the string "ap-tokyo"`},
			{line: 15, field: "policies[0].copy_to[6].region", msg: `"ap-guangzhou" is the policy's own region: copy_to lists the other regions its images are copied to`},
			{line: 16, field: "policies[0].copy_to[7].retension", msg: `unknown key "retension" (did you mean "retention"?)`},
			{line: 17, field: "policies[0].copy_to[8].retention.keep_last", msg: "-1 is out of range 0..1000000"},
			{line: 18, field: "policies[0].copy_to[9]", msg: "got nothing (null)"},
			{line: 24, field: "policies[1].copy_to[0].retention", msg: "retention keeps everything: set keep_last or max_age"},
			{line: 26, field: "policies[1].copy_to[1].retention.keep_last", msg: "keep_last 1 is less than min_keep 2"},
			{line: 28, field: "policies[1].copy_to[2].retention.max_age", msg: `max_age 12h is shorter than the 1d between slots of "@daily"`},
			{line: 30, field: "policies[1].copy_to[3].retention", msg: `expected a mapping, got "7"`},
			{line: 34, field: "policies[2].copy_to", msg: `expected a list of regions to copy to, such as [{region: ap-singapore}], got the string "ap-singapore"`},
		},
		// Problems of an inherited list that depend on the policy are reported at the policy.
		"defaults.yaml": {
			{line: 9, field: "policies[0].copy_to[0].retention.max_age", msg: "max_age 12h is shorter than the 1d between slots of \"@daily\" (set in defaults at testdata/copies/defaults.yaml:6)"},
			{line: 9, field: "policies[0].copy_to[1].region", msg: `"ap-shanghai" is the policy's own region (set in defaults at testdata/copies/defaults.yaml:7)`},
		},
		"defaults-bad.yaml": {
			{line: 6, field: "defaults.copy_to[1].region", msg: `duplicate region "ap-singapore" (also at line 5)`},
		},
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := requireErrors(t, filepath.Join("testdata", "copies", name), want)
			switch name {
			case "defaults.yaml":
				require.Equal(t, []string{"overrides"}, policyNames(cfg), "its own list replaces the defaults'")
				require.Equal(t, []CopyTarget{{Region: "ap-beijing"}}, cfg.Policy("overrides").CopyTo)
			case "defaults-bad.yaml":
				require.Equal(t, []string{"overrides"}, policyNames(cfg), "a policy inheriting the bad list is not good")
			}
		})
	}
}
