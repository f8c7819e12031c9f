package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
)

// Restore tests end to end (docs/restore-tests.md): the real binary against the simulator, which
// launches instances from images, runs TAT commands on them and records every launch; the
// assertions count what it launched and what is still running.

// restorePolicies writes the fleet (fired only on request) with one restore test, on schedule.
func (c *cluster) restorePolicies(t *testing.T, schedule string) {
	t.Helper()
	require.NoError(t, os.WriteFile(c.policies, []byte(fmt.Sprintf(`version: 1
api: {create_image_rate: %d, workers: 4}
defaults: {region: ap-guangzhou, timezone: UTC}
policies:
  - name: fleet
    schedule: "0 0 1 1 *"
    instances: [%s]
restore_tests:
  - name: fleet-boots
    policy: fleet
    schedule: %q
    launch: {zone: ap-guangzhou-3, instance_type: S5.SMALL2}
    check: {command: "systemctl is-system-running --wait", timeout: 5m}
    keep_for: 30m
`, fleetRate, strings.Join(c.fleet, ", "), schedule)), 0o600))
}

// running is the simulator's launched instances that are not terminated.
func (c *cluster) running() []cvmsim.Launch {
	var out []cvmsim.Launch
	for _, l := range c.sim.LaunchedInstances() {
		if l.TerminatedAt.IsZero() {
			out = append(out, l)
		}
	}
	return out
}

// TestRestoreTestNow: `imager restore-test NAME --now` launches exactly one instance from the
// latest image of the policy, checks it, terminates it and records passed; with a check that
// exits 3 it records failed with the exit code and a restore_failed event; nothing is left
// running.
func TestRestoreTestNow(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	c.restorePolicies(t, "0 6 * * 0")
	once := exec.Command(c.bin, append(c.args("once", "spool-once"), "--policy", "fleet")...)
	once.Env = c.env()
	out, err := once.CombinedOutput()
	require.NoError(t, err, string(out))

	restoreNow := func() (string, error) {
		cmd := exec.Command(c.bin, "restore-test", "fleet-boots", "--now", "--policies", c.policies,
			"--database-url", c.dbURL, "--cvm-endpoint", c.simURL)
		cmd.Env = c.env()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out2, err := restoreNow()
	require.NoError(t, err, out2)
	require.Contains(t, out2, "Result:           passed")
	launched := c.sim.LaunchedInstances()
	require.Len(t, launched, 1, "one instance launched")
	l := launched[0]
	var latestImage string
	require.NoError(t, c.pool.QueryRow(context.Background(), `SELECT r.image_id FROM restore_tests t
		JOIN image_runs r ON r.id = t.run_id WHERE t.launched_instance_id = $1`, l.InstanceID).Scan(&latestImage))
	require.Equal(t, latestImage, l.ImageID, "launched from the run's image")
	require.Equal(t, "ap-guangzhou-3", l.Zone)
	require.Equal(t, "POSTPAID_BY_HOUR", l.ChargeType)
	require.NotEmpty(t, l.Tags["imager-restore-test"])
	require.Empty(t, c.running(), "terminated after the check")
	var status string
	require.NoError(t, c.pool.QueryRow(context.Background(), `SELECT status FROM restore_tests WHERE launched_instance_id = $1`,
		l.InstanceID).Scan(&status))
	require.Equal(t, "passed", status)

	c.sim.SetCommandResult(func(string, string) cvmsim.CommandOutcome {
		return cvmsim.CommandOutcome{Status: cvmsim.TaskFailed, ExitCode: 3, Output: "degraded\n"}
	})
	out3, err := restoreNow()
	require.Error(t, err, "a failed check: exit 1")
	require.Contains(t, out3, "CheckFailed")
	require.Contains(t, out3, "Check exit code:  3")
	require.Len(t, c.sim.LaunchedInstances(), 2, "the next instance in turn, launched once")
	require.Empty(t, c.running(), "terminated after the failed check too")
	require.Equal(t, 1, c.queryInt(t, `SELECT count(*) FROM restore_tests WHERE status = 'failed' AND error_code = 'CheckFailed' AND exit_code = 3`))
	require.Equal(t, 1, c.queryInt(t, `SELECT count(*) FROM notifications WHERE event = 'restore_failed'`))
	require.Equal(t, 2, c.queryInt(t, `SELECT count(DISTINCT instance_id) FROM restore_tests`), "instances tested in turn")
}

// TestRestoreTestKilledMidCheck: the leader is killed with SIGKILL while its restore test's check
// runs on the launched instance. The next leader's sweep terminates that instance and records the
// test failed; the simulator ends with no instance of imager's running.
func TestRestoreTestKilledMidCheck(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	c.restorePolicies(t, "* * * * *")
	// The check hangs (well within its 5m timeout) until the process running it is gone.
	c.sim.SetCommandResult(func(string, string) cvmsim.CommandOutcome { return cvmsim.CommandOutcome{After: 4 * time.Minute} })
	a := c.start(t, "a", "spool-a", "--lease-ttl", "3s")
	c.waitLeads(t, a, 0)
	once := exec.Command(c.bin, append(c.args("once", "spool-once"), "--policy", "fleet")...)
	once.Env = c.env()
	out, err := once.CombinedOutput()
	require.NoError(t, err, string(out))

	waitUntil(t, "a restore test checking on a launched instance", func() bool {
		return c.queryInt(t, `SELECT count(*) FROM restore_tests WHERE status = 'checking' AND launched_instance_id IS NOT NULL`) == 1
	})
	require.Len(t, c.running(), 1)
	term := c.leaseTerm(t)
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGKILL))
	<-a.done

	b := c.start(t, "b", "spool-b", "--lease-ttl", "3s")
	c.waitLeads(t, b, term)
	waitUntil(t, "the next leader terminates the instance", func() bool { return len(c.running()) == 0 })
	waitUntil(t, "the killed test recorded failed", func() bool {
		return c.queryInt(t, `SELECT count(*) FROM restore_tests WHERE status = 'failed' AND terminated_at IS NOT NULL
			AND launched_instance_id IS NOT NULL AND error_code = 'Interrupted'`) >= 1
	})
	require.Zero(t, c.queryInt(t, `SELECT count(*) FROM restore_tests WHERE launched_instance_id IS NOT NULL AND terminated_at IS NULL
		AND slot < (SELECT max(slot) FROM restore_tests)`), "every older launched instance terminated")
}
