package cvmsim

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	tcerr "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/errors"
)

func TestInternalErrorRate(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	seedInstances(s)
	s.SetFaults(Faults{InternalErrorRate: 1, Actions: []string{ActionCreateImage}})

	_, err := call(t, s, ActionCreateImage, createParams("ins-good0001", "x"))
	require.Equal(t, "InternalError", code(t, err))
	require.Empty(t, s.Images(), "nothing is created")
	require.Equal(t, "InternalError", lastCall(t, s).Code)

	_, err = call(t, s, ActionDescribeImageQuota, nil)
	require.NoError(t, err, "other actions are unaffected")

	s.SetFaults(Faults{})
	_, err = call(t, s, ActionCreateImage, createParams("ins-good0001", "x"))
	require.NoError(t, err)
}

func TestFaultDecisionsFollowTheSeed(t *testing.T) {
	t.Parallel()
	outcomes := func() []string {
		s := startSim(t, Options{Seed: 42, Limits: map[string]int{ActionDescribeImageQuota: 0}})
		s.SetFaults(Faults{InternalErrorRate: 0.5})
		c := commonClient(t, s, testRegion, DefaultSecretID, DefaultSecretKey)
		var out []string
		for range 40 {
			_, err := send(t.Context(), c, ActionDescribeImageQuota, nil)
			out = append(out, code(t, err))
		}
		return out
	}
	first := outcomes()
	require.Equal(t, first, outcomes())
	require.Contains(t, first, "InternalError")
	require.Contains(t, first, "")
}

func networkError(t *testing.T, err error) {
	t.Helper()
	var sdkErr *tcerr.TencentCloudSDKError
	require.True(t, errors.As(err, &sdkErr), "not an SDK error: %v", err)
	require.Equal(t, "ClientError.NetworkError", sdkErr.GetCode())
}

func TestDropBeforeExecute(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	seedInstances(s)
	s.SetFaults(Faults{DropRate: 1})
	_, err := call(t, s, ActionCreateImage, createParams("ins-good0001", "lost"))
	networkError(t, err)
	require.Empty(t, s.Images(), "the dropped call was not executed")
	c := lastCall(t, s)
	require.True(t, c.Dropped)
	require.Empty(t, c.Code)
}

func TestDropAfterExecute(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	seedInstances(s)
	s.SetFaults(Faults{DropRate: 1, DropAfterExecute: true})
	_, err := call(t, s, ActionCreateImage, createParams("ins-good0001", "ambiguous"))
	networkError(t, err)
	require.Equal(t, []string{"ambiguous"}, imageNames(s), "the call took effect although no answer came")
	require.True(t, lastCall(t, s).Dropped)

	// The retry meets its own image.
	s.SetFaults(Faults{})
	_, err = call(t, s, ActionCreateImage, createParams("ins-good0001", "ambiguous"))
	require.Equal(t, "InvalidImageName.Duplicate", code(t, err))
}

func TestQueueErrors(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	seedInstances(s)
	s.QueueErrors(ActionCreateImage, "ResourceInUse", "RequestLimitExceeded.UinLimitExceeded")
	for _, want := range []string{"ResourceInUse", "RequestLimitExceeded.UinLimitExceeded", ""} {
		_, err := call(t, s, ActionCreateImage, createParams("ins-good0001", "q"))
		require.Equal(t, want, code(t, err))
	}
	require.Equal(t, []string{"q"}, imageNames(s))
}

func TestLatencyOutlastsTheClient(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	seedInstances(s)
	s.SetFaults(Faults{Latency: time.Hour, Actions: []string{ActionCreateImage}})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := send(ctx, commonClient(t, s, testRegion, DefaultSecretID, DefaultSecretKey), ActionCreateImage, createParams("ins-good0001", "slow"))
	require.Error(t, err)
	require.Equal(t, []string{"slow"}, imageNames(s), "the call was executed; only the answer was late")
}

func TestSmallLatencyStillAnswers(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	s.SetFaults(Faults{Latency: time.Millisecond})
	_, err := call(t, s, ActionDescribeImageQuota, nil)
	require.NoError(t, err)
}

func TestCloseAbortsLatency(t *testing.T) {
	t.Parallel()
	s := New(Options{})
	waiting := make(chan struct{})
	s.onLatencyWait = func() { close(waiting) }
	_, err := s.Start()
	require.NoError(t, err)
	s.SetFaults(Faults{Latency: time.Hour})

	done := make(chan error, 1)
	go func() {
		_, err := call(t, s, ActionDescribeImageQuota, nil)
		done <- err
	}()
	<-waiting
	s.Close() // returns although an answer is an hour away
	err = <-done
	require.Error(t, err)
	networkError(t, err)
}

func TestDropWithManyCalls(t *testing.T) {
	t.Parallel()
	// Dropped connections must not poison later calls on the same client.
	s := startSim(t, Options{Seed: 7, Limits: map[string]int{ActionDescribeImageQuota: 0}})
	s.SetFaults(Faults{DropRate: 0.3})
	c := commonClient(t, s, testRegion, DefaultSecretID, DefaultSecretKey)
	var ok, dropped int
	for i := range 30 {
		_, err := send(t.Context(), c, ActionDescribeImageQuota, nil)
		if err == nil {
			ok++
			continue
		}
		networkError(t, err)
		dropped++
		require.True(t, s.Calls()[i].Dropped, fmt.Sprintf("call %d", i))
	}
	require.Equal(t, 30, ok+dropped)
	require.Positive(t, ok)
	require.Positive(t, dropped)
	require.Len(t, s.Calls(), 30, "the SDK does not retry dropped calls")
}
