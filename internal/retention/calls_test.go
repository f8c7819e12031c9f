package retention

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/policy"
)

// An error the CVM client did not classify (a wrapper's, a plain network error) is retried like
// a transient one, not given up as permanent.
func TestUnclassifiedErrorsAreRetried(t *testing.T) {
	t.Parallel()
	for _, err := range []error{errors.New("read tcp: connection reset by peer"), fmt.Errorf("call: %w", context.DeadlineExceeded)} {
		ae := apiError(cvm.ActionDeleteImages, err)
		require.Equal(t, cvm.ClassTransient, ae.Class, "%v", err)
		require.True(t, retryable(ae, 1))
		require.False(t, retryable(ae, maxAttempts))
	}
	require.False(t, retryable(apiError(cvm.ActionDeleteImages,
		&cvm.APIError{Code: "AuthFailure.SignatureFailure", Class: cvm.ClassPermanent}), 1))
}

// The backoff doubles from api.retry's initial delay, with jitter in [d/2, d], capped at 10 s.
func TestBackoffFollowsTheConfiguredPolicy(t *testing.T) {
	t.Parallel()
	cfg := &policy.Config{}
	cfg.API.Retry.Transient = policy.Backoff{Initial: 2 * time.Second}
	p := NewPruner(Options{Config: func() *policy.Config { return cfg }})
	ae := &cvm.APIError{Code: "InternalError", Class: cvm.ClassTransient}
	for try, ceiling := range map[int]time.Duration{1: 2 * time.Second, 2: 4 * time.Second, 3: 8 * time.Second, 4: 10 * time.Second, 9: 10 * time.Second} {
		d := p.backoff(ae, try)
		require.GreaterOrEqual(t, d, ceiling/2, "try %d", try)
		require.LessOrEqual(t, d, ceiling, "try %d", try)
	}
}
