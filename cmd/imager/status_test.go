package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/history"
)

// TestOnceWithoutLeaderTakesTheLeaseAndStatusShowsIt: with no daemon, once fires under a lease
// of its own and resigns it at the end; imager status then shows the last holder (lease
// expired), the once process as stopped, and each policy's last and next slot.
func TestOnceWithoutLeaderTakesTheLeaseAndStatusShowsIt(t *testing.T) {
	e := newE2E(t)
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-stat0001", Region: "ap-guangzhou"})
	policies := e.writePolicies(t, `version: 1
defaults: {region: ap-guangzhou, timezone: UTC}
policies:
  - {name: web, schedule: "0 3 * * *", instances: [ins-stat0001]}
  - {name: off, schedule: "0 4 * * *", instances: [ins-stat0001], enabled: false, copy_to: [{region: ap-singapore}, {region: ap-shanghai}]}
`)
	code, stdout, stderr := e.imager(t, append(e.daemonArgs("once", policies), "--policy", "web")...)
	require.Equalf(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	require.Contains(t, stderr, "no leader running: firing under a lease of its own")
	require.Contains(t, stderr, "resigned the leader lease")

	slot := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	_, err := connect(t, e.dbURL).Exec(context.Background(),
		`INSERT INTO policy_slots (policy, last_slot, term) VALUES ('web', $1, 1)`, slot)
	require.NoError(t, err)

	code, stdout, stderr = e.imager(t, "status", "--policies", policies, "--database-url", e.dbURL, "--format", "json")
	require.Equalf(t, 0, code, "stderr:\n%s", stderr)
	var rep statusReport
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep))
	require.NotNil(t, rep.Leader)
	require.Equal(t, int64(1), rep.Leader.Term)
	require.False(t, rep.Leader.Live, "once resigned")
	require.False(t, rep.Leader.ExpiresAt.After(rep.Now))
	require.Len(t, rep.Replicas, 1)
	require.Equal(t, history.RoleStopped, rep.Replicas[0].Role)
	require.Equal(t, rep.Leader.DaemonID, rep.Replicas[0].DaemonID)
	require.Len(t, rep.Policies, 2)
	require.Equal(t, "web", rep.Policies[0].Name)
	require.Equal(t, slot, rep.Policies[0].LastSlot.UTC())
	require.Equal(t, 3, rep.Policies[0].NextSlot.Hour())
	require.True(t, rep.Policies[0].NextSlot.After(rep.Now))
	require.Nil(t, rep.Policies[1].LastSlot)
	require.Nil(t, rep.Policies[1].NextSlot, "disabled: never fired")
	require.Equal(t, "default", rep.Policies[0].Account, "no accounts: block: the default account")
	require.Equal(t, []string{}, rep.Policies[0].CopyTo)
	require.Equal(t, []string{"ap-singapore", "ap-shanghai"}, rep.Policies[1].CopyTo)

	code, stdout, _ = e.imager(t, "status", "--policies", policies, "--database-url", e.dbURL)
	require.Equal(t, 0, code)
	require.Contains(t, stdout, "leader:   none live; the last was "+rep.Leader.DaemonID+" (term 1)")
	require.Contains(t, stdout, "2026-11-26T03:00:00Z")
	require.Contains(t, stdout, "never (disabled)")
	require.Regexp(t, `POLICY +ACCOUNT +LAST SLOT +NEXT SLOT +COPY TO\n`, stdout)
	require.Regexp(t, `  off +default +never +never \(disabled\) +ap-singapore,ap-shanghai\n`, stdout)

	code, _, stderr = e.imager(t, "status", "--policies", policies, "--database-url", e.dbURL, "--format", "xml")
	require.Equal(t, exitUsage, code)
	require.Contains(t, stderr, `--format: "xml" is not one of table, json`)
}
