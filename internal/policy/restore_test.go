package policy

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRestoreTests(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/restore/good.yaml")
	require.NoError(t, err)
	require.Len(t, cfg.RestoreTests, 2)

	w := cfg.RestoreTest("web-weekly")
	require.NotNil(t, w)
	require.Equal(t, "web-nightly", w.Policy)
	require.Equal(t, "ap-guangzhou", w.Region)
	require.False(t, w.Copy)
	require.Equal(t, 1, w.Sample)
	require.Equal(t, RestoreLaunch{Zone: "ap-guangzhou-3", InstanceType: "S5.SMALL2", VpcID: "vpc-xxxx", SubnetID: "subnet-xxxx",
		SecurityGroupIDs: []string{"sg-xxxx"}}, w.Launch)
	require.Equal(t, RestoreCheck{Command: "systemctl is-system-running --wait", CommandType: "SHELL", Timeout: 5 * time.Minute}, w.Check)
	require.Equal(t, 30*time.Minute, w.KeepFor)
	require.Equal(t, 12, w.Line)
	// The schedule runs in the policy's time zone: Sunday 06:00 in Shanghai is 22:00 UTC on Saturday.
	sat := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	require.Equal(t, time.Date(2026, 12, 5, 22, 0, 0, 0, time.UTC), w.Schedule.Next(sat).UTC())

	// Three instances one a week: every instance within three weeks.
	turn, ok := w.TurnInterval(3, sat)
	require.True(t, ok)
	require.Equal(t, 3*7*24*time.Hour, turn)
	turn, _ = w.TurnInterval(0, sat)
	require.Equal(t, 7*24*time.Hour, turn, "no instance known yet: one round")

	// Defaults, and a copy_to region.
	dr := cfg.RestoreTest("web-dr")
	require.Equal(t, "ap-singapore", dr.Region)
	require.True(t, dr.Copy)
	require.Equal(t, DefaultRestoreSample, dr.Sample)
	require.Equal(t, DefaultRestoreCheckTimeout, dr.Check.Timeout)
	require.Equal(t, DefaultRestoreKeepFor, dr.KeepFor)
	require.Equal(t, RestoreLaunch{Zone: "ap-singapore-1"}, dr.Launch)

	require.Nil(t, cfg.RestoreTest("nope"))
	require.Len(t, cfg.RestoreTestsOf(DefaultAccount), 2)
	require.Empty(t, cfg.RestoreTestsOf("other"))

	// Files without the block have none.
	cfg, err = Load("testdata/good/full.yaml")
	require.NoError(t, err)
	require.Empty(t, cfg.RestoreTests)
}

func TestRestoreTestsBad(t *testing.T) {
	t.Parallel()
	cases := map[string][]wantErr{
		"bad.yaml": {
			{line: 9, field: "restore_tests[0].name", msg: `"Bad_Name" is not a restore test name`},
			{line: 10, field: "restore_tests[0].policy", msg: `no policy is named "nope" (policies: web-nightly)`},
			{line: 16, field: "restore_tests[1].region", msg: `"ap-singapore" is neither policy web-nightly's region (ap-guangzhou) nor one of its copy_to regions`},
			{line: 17, field: "restore_tests[1].schedule", msg: "end of range (8) above maximum (6)"},
			{line: 18, field: "restore_tests[1].sample", msg: "0 is out of range 1..100"},
			{line: 19, field: "restore_tests[1].launch.instance_type", msg: `"s5.small" is not an instance type`},
			{line: 19, field: "restore_tests[1].launch.subnet_id", msg: "required with vpc_id"},
			{line: 19, field: "restore_tests[1].launch.zone", msg: "required: the availability zone"},
			{line: 20, field: "restore_tests[1].check.command", msg: "must not be empty"},
			{line: 20, field: "restore_tests[1].check.timeout", msg: "keep_for 30m must exceed check.timeout 1h30m by at least 1m"},
			{line: 24, field: "restore_tests[2].launch.security_group_ids[1]", msg: `duplicate "sg-1"`},
			{line: 24, field: "restore_tests[2].launch.security_group_ids[2]", msg: `"group" is not a security group id`},
			{line: 24, field: "restore_tests[2].launch.subnet_id", msg: `"net-1" is not a subnet id`},
			{line: 24, field: "restore_tests[2].launch.zone", msg: `"ap-shanghai-2" is not in region ap-guangzhou`},
			{line: 25, field: "restore_tests[2].check.command_type", msg: `"BASH" is not SHELL or POWERSHELL`},
			{line: 26, field: "restore_tests[2].keep_for", msg: "keep_for 20m must exceed check.timeout 30m"},
			{line: 27, field: "restore_tests[3].check", msg: "required: check.command"},
			{line: 27, field: "restore_tests[3].name", msg: `duplicate restore test name "wrong-zone" (already defined at testdata/restore/bad.yaml:21)`},
			{line: 31, field: "restore_tests[3].chek", msg: `unknown key "chek" (did you mean "check"?)`},
			{line: 32, field: "restore_tests[4].policy", msg: "required: the policy whose latest image is tested"},
			{line: 34, field: "restore_tests[4].launch.zone", msg: `"ap-guangzhou" is not an availability zone`},
			{line: 35, field: "restore_tests[4].check.command", msg: "required"},
			{line: 36, field: "restore_tests[4].keep_for", msg: "keep_for 10m must exceed check.timeout 10m"},
			{line: 37, field: "restore_tests[5].check", msg: "required"},
			{line: 37, field: "restore_tests[5].launch", msg: "required"},
			{line: 37, field: "restore_tests[5].policy", msg: "required"},
			{line: 37, field: "restore_tests[5].schedule", msg: "required"},
			{line: 38, field: "restore_tests[6]", msg: `expected a restore test (a mapping with name, policy, schedule, launch, check), got the string "just-a-string"`},
		},
		// A test of a policy that is declared but invalid is not reported again, and not kept.
		"bad-policy.yaml": {
			{line: 3, field: "policies[0].region", msg: "required"},
		},
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := requireErrors(t, filepath.Join("testdata", "restore", name), want)
			require.Empty(t, cfg.RestoreTests, "no test of the file is valid")
		})
	}
}
