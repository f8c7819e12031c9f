package cvmsim

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
)

func createParams(instanceID, name string) map[string]any {
	return map[string]any{"InstanceId": instanceID, "ImageName": name}
}

func imageNames(s *Server) []string {
	var names []string
	for _, img := range s.Images() {
		names = append(names, img.Name)
	}
	return names
}

func TestSlidingSecondLimit(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClockAt(time.Now())
	s := startSim(t, Options{Clock: clock})
	s.AddInstance(Instance{ID: "ins-aaaaaaaa", Region: testRegion})
	c := commonClient(t, s, testRegion, DefaultSecretID, DefaultSecretKey)

	for i := range 10 {
		_, err := send(t.Context(), c, ActionCreateImage, createParams("ins-aaaaaaaa", fmt.Sprintf("first-%d", i)))
		require.NoError(t, err, "call %d at t", i)
	}
	clock.Advance(999 * time.Millisecond)
	_, err := send(t.Context(), c, ActionCreateImage, createParams("ins-aaaaaaaa", "rejected"))
	require.Equal(t, "RequestLimitExceeded", code(t, err))
	require.NotContains(t, imageNames(s), "rejected", "a rejected call is not executed")

	// Other actions have their own windows.
	_, err = send(t.Context(), c, ActionDescribeImageQuota, nil)
	require.NoError(t, err)

	clock.Advance(time.Millisecond)
	_, err = send(t.Context(), c, ActionCreateImage, createParams("ins-aaaaaaaa", "accepted"))
	require.NoError(t, err, "the first ten left the window at t+1s")
	require.Contains(t, imageNames(s), "accepted")

	// 10 at t plus the rejected one at t+999ms fit in one window.
	require.Equal(t, 11, s.MaxInAnySecond(ActionCreateImage))
	require.Equal(t, 1, s.MaxInAnySecond(ActionDescribeImageQuota))
	require.Equal(t, 0, s.MaxInAnySecond(ActionDeleteImages))

	var rejected int
	for _, c := range s.Calls() {
		if c.Code == "RequestLimitExceeded" {
			rejected++
		}
	}
	require.Equal(t, 1, rejected, "rejected calls are recorded")
}

func TestRejectedCallsDoNotCount(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClockAt(time.Now())
	s := startSim(t, Options{Clock: clock, Limits: map[string]int{ActionDescribeImageQuota: 2}})
	c := commonClient(t, s, testRegion, DefaultSecretID, DefaultSecretKey)
	step := func(wantCode string) {
		t.Helper()
		_, err := send(t.Context(), c, ActionDescribeImageQuota, nil)
		require.Equal(t, wantCode, code(t, err))
	}
	step("") // t
	clock.Advance(500 * time.Millisecond)
	step("") // t+0.5s
	clock.Advance(400 * time.Millisecond)
	step("RequestLimitExceeded") // t+0.9s: two admitted in the last second
	clock.Advance(100 * time.Millisecond)
	step("")                     // t+1.0s: the call at t left; the rejected one never counted
	step("RequestLimitExceeded") // t+1.0s: the calls at t+0.5s and t+1.0s fill the second
	s.SetLimit(ActionDescribeImageQuota, 0)
	step("") // no limit
	s.SetLimit(ActionDescribeImageQuota, 10)
	step("")
}

func TestConcurrentCallsOverTheLimit(t *testing.T) {
	t.Parallel()
	// A frozen clock puts every call in the same instant: exactly the limit gets through.
	clock := clockwork.NewFakeClockAt(time.Now())
	s := startSim(t, Options{Clock: clock})
	for i := range 30 {
		s.AddInstance(Instance{ID: fmt.Sprintf("ins-%08d", i), Region: testRegion})
	}
	c := commonClient(t, s, testRegion, DefaultSecretID, DefaultSecretKey)
	var wg sync.WaitGroup
	codes := make([]string, 30)
	errs := make([]error, 30)
	for i := range 30 {
		wg.Go(func() {
			_, errs[i] = send(t.Context(), c, ActionCreateImage, createParams(fmt.Sprintf("ins-%08d", i), fmt.Sprintf("img-%d", i)))
		})
	}
	wg.Wait()
	accepted := 0
	for i := range codes {
		codes[i] = code(t, errs[i])
		if codes[i] == "" {
			accepted++
		} else {
			require.Equal(t, "RequestLimitExceeded", codes[i])
		}
	}
	require.Equal(t, 10, accepted)
	require.Len(t, s.Images(), 10)
	require.Equal(t, 30, s.MaxInAnySecond(ActionCreateImage))

	s.ResetCalls()
	require.Empty(t, s.Calls())
	require.Equal(t, 0, s.MaxInAnySecond(ActionCreateImage))
}
