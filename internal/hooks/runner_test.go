package hooks_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/hooks"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/tat"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const region = "ap-guangzhou"

// runOnSim runs cmd on instances against the simulator on a fake clock, advancing the clock
// whenever the runner waits on it, and returns the outcomes by instance and the invocations.
func runOnSim(t *testing.T, sim *cvmsim.Server, clk *clockwork.FakeClock, client *cvm.Client, cmd hooks.Command, instances []string) (map[string]hooks.Result, map[string][]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard only
	defer cancel()
	r := hooks.New(hooks.Options{TAT: tat.New(client), Clock: clk, PollInterval: time.Second, Logger: zerolog.Nop()})
	results := map[string]hooks.Result{}
	invoked := map[string][]string{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, cmd, instances, hooks.Handler{
			Invoked: func(insts []string, inv string, _ time.Time) { invoked[inv] = append(invoked[inv], insts...) },
			Done: func(res hooks.Result) {
				_, dup := results[res.InstanceID]
				require.False(t, dup, "%s told twice", res.InstanceID)
				results[res.InstanceID] = res
			},
		})
	}()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			bctx, bcancel := context.WithCancel(ctx)
			res := make(chan error, 1)
			go func() { res <- clk.BlockUntilContext(bctx, 1) }()
			select {
			case err := <-res:
				bcancel()
				if err != nil {
					return
				}
				clk.Advance(100 * time.Millisecond)
			case <-done:
				bcancel()
				<-res
				return
			}
		}
	})
	<-done
	wg.Wait()
	require.NoError(t, ctx.Err())
	return results, invoked
}

func newSim(t *testing.T, result cvmsim.CommandResultFunc) (*cvmsim.Server, *clockwork.FakeClock, *cvm.Client) {
	t.Helper()
	clk := clockwork.NewFakeClockAt(time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC))
	sim := cvmsim.New(cvmsim.Options{Clock: clk, MaxClockSkew: -1, Logger: zerolog.Nop(), TaskStartAfter: time.Second, CommandResult: result})
	url, err := sim.Start()
	require.NoError(t, err)
	t.Cleanup(sim.Close)
	client, err := cvm.New(cvm.Config{Endpoint: url, Credential: common.NewCredential(cvmsim.DefaultSecretID, cvmsim.DefaultSecretKey),
		Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(client.Close)
	return sim, clk, client
}

// TestRunnerOutcomes runs one command on 203 instances: two RunCommands (200 and the rest), the
// instance without an agent and the one whose agent is offline told apart and left out, and each
// task's end reported as TAT reports it, within TAT's rate.
func TestRunnerOutcomes(t *testing.T) {
	t.Parallel()
	const failing, slow, offline, noAgent = "ins-fail0001", "ins-slow0001", "ins-off00001", "ins-none0001"
	sim, clk, client := newSim(t, func(id, _ string) cvmsim.CommandOutcome {
		switch id {
		case failing:
			return cvmsim.CommandOutcome{Status: cvmsim.TaskFailed, ExitCode: 4, Output: "no such file\n", After: 2 * time.Second}
		case slow:
			return cvmsim.CommandOutcome{After: time.Hour}
		}
		return cvmsim.CommandOutcome{Output: "frozen\n", After: 3 * time.Second}
	})
	var instances []string
	for i := range 199 {
		instances = append(instances, fmt.Sprintf("ins-ok%06d", i))
	}
	instances = append(instances, failing, slow, offline, noAgent)
	for _, id := range instances {
		sim.AddInstance(cvmsim.Instance{ID: id, Region: region})
	}
	sim.SetAgentState(offline, cvmsim.AgentOffline)
	sim.SetAgentState(noAgent, cvmsim.AgentNotInstalled)

	results, invoked := runOnSim(t, sim, clk, client, hooks.Command{Region: region, Name: "imager-pre-db", Content: "fsfreeze -f /data",
		Timeout: 30 * time.Second, Username: "root"}, instances)
	require.Len(t, results, len(instances))
	require.Len(t, invoked, 2, "one invocation per 200 instances")
	n := 0
	for _, insts := range invoked {
		require.LessOrEqual(t, len(insts), tat.MaxInstances)
		n += len(insts)
	}
	require.Equal(t, len(instances)-2, n, "the offline agents are left out")

	ok := results["ins-ok000007"]
	require.Equal(t, hooks.StatusSuccess, ok.Status)
	require.Equal(t, 0, *ok.ExitCode)
	require.Equal(t, "frozen\n", ok.Output)
	require.Equal(t, tat.TaskSuccess, ok.TaskStatus)
	require.NotEmpty(t, ok.TaskID)
	require.Equal(t, 3*time.Second, ok.FinishedAt.Sub(ok.StartedAt))

	require.Equal(t, hooks.StatusFailed, results[failing].Status)
	require.Equal(t, 4, *results[failing].ExitCode)
	require.Contains(t, results[failing].Message, "exited 4")
	require.Equal(t, hooks.StatusTimeout, results[slow].Status)
	require.Equal(t, tat.TaskTimeout, results[slow].TaskStatus)
	require.Equal(t, hooks.StatusAgentOffline, results[offline].Status)
	require.Equal(t, tat.CodeAgentStatusNotOnline, results[offline].Code)
	require.Equal(t, hooks.StatusAgentOffline, results[noAgent].Status)
	require.Equal(t, tat.CodeAgentNotInstalled, results[noAgent].Code)

	var tatCalls []time.Time
	for _, c := range sim.Calls() {
		require.NotEqual(t, "RequestLimitExceeded", c.Code)
		tatCalls = append(tatCalls, c.At)
	}
	require.LessOrEqual(t, pace.MaxInAnySecond(tatCalls), hooks.DefaultRate)
}

// TestRunnerRefused: an instance TAT refuses (not RUNNING) is told an error with the API's code;
// the other instances of the call still run the command, each sent alone.
func TestRunnerRefused(t *testing.T) {
	t.Parallel()
	sim, clk, client := newSim(t, nil)
	sim.AddInstance(cvmsim.Instance{ID: "ins-stopped1", Region: region})
	sim.AddInstance(cvmsim.Instance{ID: "ins-running1", Region: region})
	sim.SetInstanceState("ins-stopped1", "STOPPED")
	results, invoked := runOnSim(t, sim, clk, client, hooks.Command{Region: region, Content: "sync", Timeout: time.Minute},
		[]string{"ins-stopped1", "ins-running1"})
	require.Len(t, invoked, 1)
	require.Equal(t, hooks.StatusError, results["ins-stopped1"].Status)
	require.Equal(t, tat.CodeInstanceStateNotRunning, results["ins-stopped1"].Code)
	require.Equal(t, hooks.StatusSuccess, results["ins-running1"].Status)
}
