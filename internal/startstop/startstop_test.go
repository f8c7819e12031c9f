package startstop_test

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/startstop"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStopCancelsAndWaits(t *testing.T) {
	var l startstop.Life
	require.False(t, l.Running())
	ctx, err := l.Start(context.Background())
	require.NoError(t, err)
	require.True(t, l.Running())
	_, err = l.Start(context.Background())
	require.ErrorIs(t, err, startstop.ErrStarted)

	finished := make(chan struct{})
	l.Go(func() {
		<-ctx.Done()
		close(finished)
	})
	require.True(t, l.Stop())
	select {
	case <-finished:
	default:
		t.Fatal("Stop returned before its goroutine")
	}
	require.False(t, l.Running())
	require.False(t, l.Stop(), "a second Stop has nothing to do")
	_, err = l.Start(context.Background())
	require.ErrorIs(t, err, startstop.ErrStarted, "not restartable")
}

func TestRestartable(t *testing.T) {
	l := startstop.Life{Restartable: true}
	for range 3 {
		ctx, err := l.Start(context.Background())
		require.NoError(t, err)
		l.Go(func() { <-ctx.Done() })
		require.True(t, l.Stop())
	}
}

func TestParentContextEndsTheGoroutines(t *testing.T) {
	var l startstop.Life
	parent, cancel := context.WithCancel(context.Background())
	ctx, err := l.Start(parent)
	require.NoError(t, err)
	ended := make(chan struct{})
	l.Go(func() {
		<-ctx.Done()
		close(ended)
	})
	cancel()
	<-ended
	require.True(t, l.Stop())
}

func TestCancelThenDone(t *testing.T) {
	var l startstop.Life
	require.False(t, l.Cancel())
	ctx, err := l.Start(context.Background())
	require.NoError(t, err)
	release := make(chan struct{})
	l.Go(func() {
		<-ctx.Done()
		<-release
	})
	require.True(t, l.Cancel())
	done := l.Done()
	select {
	case <-done:
		t.Fatal("done before the goroutine returned")
	default:
	}
	close(release)
	<-done
	require.True(t, l.Stop())
}

func TestConcurrentStopsWaitForTheSameGoroutines(t *testing.T) {
	var l startstop.Life
	ctx, err := l.Start(context.Background())
	require.NoError(t, err)
	var ended sync.WaitGroup
	ended.Add(1)
	l.Go(func() {
		<-ctx.Done()
		ended.Done()
	})
	var wg sync.WaitGroup
	stopped := make([]bool, 4)
	for i := range stopped {
		wg.Go(func() { stopped[i] = l.Stop() })
	}
	wg.Wait()
	n := 0
	for _, s := range stopped {
		if s {
			n++
		}
	}
	require.Equal(t, 1, n, "one Stop did the stopping")
	ended.Wait()
}

func TestStopBeforeStart(t *testing.T) {
	var once startstop.Life
	require.False(t, once.Stop())
	_, err := once.Start(context.Background())
	require.ErrorIs(t, err, startstop.ErrStarted, "a stopped component does not start")

	again := startstop.Life{Restartable: true}
	require.False(t, again.Stop())
	_, err = again.Start(context.Background())
	require.NoError(t, err)
	require.True(t, again.Stop())
}
