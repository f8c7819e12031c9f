package scheduler

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/cvm"
)

// TestTransientRetryIsQuickWhileTheAPIFailsRarely: once enough calls show the API failing
// rarely (backoff.Budget), a transient failure goes back into the paced queue after the quick
// delay, not after its backoff (testRetry: 0.5–1 s); a failure before that waits out the backoff.
func TestTransientRetryIsQuickWhileTheAPIFailsRarely(t *testing.T) {
	t.Parallel()
	ids := instanceIDs("qr", 60)
	early, late := ids[3], ids[40] // failing at call 4 (too few calls to judge) and at call 41
	h := newHarness(t, testConfig(100, 1, testPolicy("quick", ids...)))
	h.cvm.script(early, apiError("InternalError", cvm.ClassTransient))
	h.cvm.script(late, apiError("InternalError", cvm.ClassTransient))
	h.start()

	out := h.once(5*time.Millisecond, "quick")
	require.Len(t, out, len(ids))
	for _, o := range out {
		require.True(t, o.Succeeded(), "%s: %s", o.InstanceID, o.ErrorCode)
	}
	calls := h.cvm.callsOf("CreateImage")
	require.Len(t, calls, len(ids)+2)
	retryGap := func(id string) time.Duration {
		i := slices.IndexFunc(calls, func(c cvmCall) bool { return c.Create.InstanceID == id })
		j := slices.IndexFunc(calls[i+1:], func(c cvmCall) bool { return c.Create.InstanceID == id }) + i + 1
		require.Greater(t, j, i, "%s was retried", id)
		return calls[j].At.Sub(calls[i].At)
	}
	require.GreaterOrEqual(t, retryGap(early), 500*time.Millisecond, "too few calls to judge: the backoff applies")
	gap := retryGap(late)
	require.GreaterOrEqual(t, gap, backoff.DefaultQuickDelay)
	require.Less(t, gap, 200*time.Millisecond, "a quick retry: the quick delay, then its turn of the pace")
}
