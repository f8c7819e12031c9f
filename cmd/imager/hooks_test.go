package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
)

// TestHooksThroughTheBinary: `imager once` fires a policy with hooks (docs/policies.md "Hooks")
// against the simulator. Each imaged instance ran the pre command, then got its CreateImage,
// then the post command; the instance whose agent is offline gets no CreateImage and no post,
// and a failed run AgentOffline; `imager history --format json` lists each run's hooks.
func TestHooksThroughTheBinary(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 6)
	offline := c.fleet[5]
	c.sim.SetAgentState(offline, cvmsim.AgentOffline)
	require.NoError(t, os.WriteFile(c.policies, []byte(fmt.Sprintf(`version: 1
api: {create_image_rate: %d, workers: 4}
defaults: {region: ap-guangzhou, timezone: UTC}
policies:
  - name: fleet
    schedule: "0 0 1 1 *"
    instances: [%s]
    hooks:
      pre: {command: "fsfreeze --freeze /data", timeout: 30s}
      post: {command: "fsfreeze --unfreeze /data", timeout: 30s}
`, fleetRate, strings.Join(c.fleet, ", "))), 0o600))

	once := exec.Command(c.bin, append(c.args("once", "spool-once"), "--policy", "fleet")...)
	once.Env = c.env()
	out, err := once.CombinedOutput()
	require.Error(t, err, "one slot is not available: exit 1")
	require.Contains(t, string(out), "6 slots, 1 not available")

	// The simulator's record: per instance, the pre task's end, the CreateImage, the post's start.
	type span struct{ preEnd, create, postStart int64 }
	by := map[string]*span{}
	for _, id := range c.fleet {
		by[id] = &span{}
	}
	for _, task := range c.sim.Tasks() {
		s := by[task.InstanceID]
		require.NotNil(t, s, "a task on %s", task.InstanceID)
		switch task.Content {
		case "fsfreeze --freeze /data":
			require.Zero(t, s.preEnd, "one pre per instance")
			s.preEnd = task.FinishedAt.UnixNano()
		case "fsfreeze --unfreeze /data":
			require.Zero(t, s.postStart, "one post per instance")
			s.postStart = task.StartedAt.UnixNano()
		}
	}
	for _, call := range c.sim.Calls() {
		if call.Action == cvmsim.ActionCreateImage && call.Code == "" {
			id, _ := call.Params["InstanceId"].(string)
			by[id].create = call.At.UnixNano()
		}
	}
	for _, id := range c.fleet[:5] {
		s := by[id]
		require.True(t, s.preEnd > 0 && s.create > s.preEnd && s.postStart > s.create,
			"%s: pre end %d < CreateImage %d < post start %d", id, s.preEnd, s.create, s.postStart)
	}
	require.Equal(t, span{}, *by[offline], "the offline instance: no task ran, no CreateImage")

	hist := exec.Command(c.bin, "history", "--policy", "fleet", "--since", "1h", "--format", "json", "--database-url", c.dbURL)
	hist.Env = c.env()
	raw, err := hist.Output()
	require.NoError(t, err)
	var doc struct {
		Runs []struct {
			InstanceID string `json:"instance_id"`
			Status     string `json:"status"`
			ErrorCode  string `json:"error_code"`
			Hooks      []struct {
				Phase, Status string
				TaskID        *string `json:"task_id"`
			} `json:"hooks"`
		} `json:"runs"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc), string(raw))
	require.Len(t, doc.Runs, 6)
	for _, r := range doc.Runs {
		if r.InstanceID == offline {
			require.Equal(t, "failed", r.Status)
			require.Equal(t, "AgentOffline", r.ErrorCode)
			require.Len(t, r.Hooks, 1, "the pre only: no post for a command that never ran")
			require.Equal(t, "agent_offline", r.Hooks[0].Status)
			continue
		}
		require.Equal(t, "available", r.Status, r.InstanceID)
		require.Len(t, r.Hooks, 2, r.InstanceID)
		for i, phase := range []string{"pre", "post"} {
			require.Equal(t, phase, r.Hooks[i].Phase)
			require.Equal(t, "success", r.Hooks[i].Status)
			require.NotNil(t, r.Hooks[i].TaskID)
		}
	}
}
