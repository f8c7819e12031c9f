package history_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

func TestHookRunsLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	ok := claim(t, s, "db-nightly", "ins-hook0001", slot)
	bad := claim(t, s, "db-nightly", "ins-hook0002", slot)
	off := claim(t, s, "db-nightly", "ins-hook0003", slot)
	at := slot.Add(time.Second)

	pre, err := s.HookRunsRequest(ctx, history.HookPre, []int64{ok.ID, bad.ID, off.ID}, at)
	require.NoError(t, err)
	require.Len(t, pre, 3)
	for i, r := range []history.Run{ok, bad, off} {
		require.Equal(t, r.ID, pre[i].RunID)
		require.Equal(t, history.HookRequested, pre[i].Status)
		require.Equal(t, "default", pre[i].Account)
		require.Equal(t, r.InstanceID, pre[i].InstanceID)
		require.Equal(t, "ap-guangzhou", pre[i].Region)
		require.Equal(t, at, pre[i].RequestedAt)
	}
	// Each phase runs once per run.
	again, err := s.HookRunsRequest(ctx, history.HookPre, []int64{ok.ID}, at)
	require.NoError(t, err)
	require.Empty(t, again)

	require.NoError(t, s.HookRunsInvoked(ctx, []int64{pre[0].ID, pre[1].ID}, "inv-00000001"))
	long := strings.Repeat("é", 3000) + "\x00tail" // 6000 bytes, a NUL the column cannot hold
	done, err := s.HookRunFinish(ctx, history.HookResult{ID: pre[0].ID, Status: history.HookSuccess, TaskID: "invt-1",
		TaskStatus: "SUCCESS", ExitCode: ptr(0), Output: long, StartedAt: at, FinishedAt: at.Add(2 * time.Second)})
	require.NoError(t, err)
	require.Equal(t, history.HookSuccess, done.Status)
	require.Equal(t, "inv-00000001", done.InvocationID)
	require.LessOrEqual(t, len(done.Output), history.MaxHookOutputBytes)
	require.Equal(t, strings.Repeat("é", 2048), done.Output)
	_, err = s.HookRunFinish(ctx, history.HookResult{ID: pre[1].ID, Status: history.HookFailed, TaskID: "invt-2",
		TaskStatus: "FAILED", ExitCode: ptr(3), Output: "disk busy\n", ErrorCode: "PreHookFailed",
		ErrorMessage: "pre hook exited 3", FinishedAt: at.Add(3 * time.Second)})
	require.NoError(t, err)
	_, err = s.HookRunFinish(ctx, history.HookResult{ID: pre[2].ID, Status: history.HookAgentOffline,
		ErrorCode: "AgentOffline", ErrorMessage: "agent not online", FinishedAt: at})
	require.NoError(t, err)
	// A late answer changes nothing.
	late, err := s.HookRunFinish(ctx, history.HookResult{ID: pre[0].ID, Status: history.HookFailed, ErrorCode: "X", FinishedAt: at.Add(time.Hour)})
	require.NoError(t, err)
	require.Equal(t, history.HookSuccess, late.Status)

	// Post hooks are due where the pre hook ran: not on the agent-offline instance.
	due, err := s.HookRunsPostDue(ctx, "")
	require.NoError(t, err)
	require.Equal(t, []int64{ok.ID, bad.ID}, []int64{due[0].RunID, due[1].RunID})
	due, err = s.HookRunsPostDue(ctx, "other-account")
	require.NoError(t, err)
	require.Empty(t, due)
	post, err := s.HookRunsRequest(ctx, history.HookPost, []int64{ok.ID, bad.ID, off.ID}, at.Add(5*time.Second))
	require.NoError(t, err)
	require.Len(t, post, 2, "no post for a pre that never ran")
	due, err = s.HookRunsPostDue(ctx, "")
	require.NoError(t, err)
	require.Empty(t, due)

	_, err = s.HookRunFinish(ctx, history.HookResult{ID: post[1].ID, Status: history.HookTimeout, TaskStatus: "TIMEOUT",
		ErrorCode: "PostHookTimeout", ErrorMessage: "post hook ran past 30s", FinishedAt: at.Add(40 * time.Second)})
	require.NoError(t, err)

	// One hook_failed event per unsuccessful hook, naming its phase.
	var events []struct {
		Instance, Code string
		Detail         []byte
	}
	rows, err := s.Pool().Query(ctx, `SELECT instance_id, error_code, detail FROM notifications WHERE event = 'hook_failed' ORDER BY id`)
	require.NoError(t, err)
	for rows.Next() {
		var e struct {
			Instance, Code string
			Detail         []byte
		}
		require.NoError(t, rows.Scan(&e.Instance, &e.Code, &e.Detail))
		events = append(events, e)
	}
	require.NoError(t, rows.Err())
	require.Len(t, events, 3)
	phases := []string{}
	for _, e := range events {
		var d map[string]any
		require.NoError(t, json.Unmarshal(e.Detail, &d))
		phases = append(phases, d["phase"].(string))
	}
	require.Equal(t, []string{"ins-hook0002", "ins-hook0003", "ins-hook0002"}, []string{events[0].Instance, events[1].Instance, events[2].Instance})
	require.Equal(t, []string{"PreHookFailed", "AgentOffline", "PostHookTimeout"}, []string{events[0].Code, events[1].Code, events[2].Code})
	require.Equal(t, []string{"pre", "pre", "post"}, phases)

	by, err := s.HookRunsOfRuns(ctx, []int64{bad.ID})
	require.NoError(t, err)
	require.Len(t, by[bad.ID], 2)
	require.Equal(t, history.HookPre, by[bad.ID][0].Phase)
	require.Equal(t, 3, *by[bad.ID][0].ExitCode)
	require.Equal(t, history.HookTimeout, by[bad.ID][1].Status)
}

func TestHookRunsInvalid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	_, err := s.HookRunsRequest(ctx, "during", []int64{1}, slot)
	require.ErrorIs(t, err, history.ErrInvalid)
	_, err = s.HookRunFinish(ctx, history.HookResult{ID: 1, Status: history.HookRunning, FinishedAt: slot})
	require.ErrorIs(t, err, history.ErrInvalid)
	_, err = s.HookRunFinish(ctx, history.HookResult{ID: 1, Status: history.HookFailed, FinishedAt: slot})
	require.ErrorIs(t, err, history.ErrInvalid, "a failure needs its code")
	_, err = s.HookRunFinish(ctx, history.HookResult{ID: 12345, Status: history.HookSuccess, FinishedAt: slot})
	require.ErrorIs(t, err, history.ErrNotFound)
}

func TestHookRunsFenced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	r := claim(t, s, "db-nightly", "ins-hook0001", slot)
	l, ok, err := s.LeaseAcquire(ctx, history.LeaseHolder{DaemonID: "a", Host: "h", PID: 1}, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	stale := s.WithTerm(l.Term + 1)
	_, err = stale.HookRunsRequest(ctx, history.HookPre, []int64{r.ID}, slot)
	require.ErrorIs(t, err, history.ErrFenced)
	pre, err := s.WithTerm(l.Term).HookRunsRequest(ctx, history.HookPre, []int64{r.ID}, slot)
	require.NoError(t, err)
	require.Len(t, pre, 1)
	_, err = stale.HookRunFinish(ctx, history.HookResult{ID: pre[0].ID, Status: history.HookSuccess, FinishedAt: slot})
	require.ErrorIs(t, err, history.ErrFenced)
}
