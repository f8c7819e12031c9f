package bench

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	tccommon "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
	cvmapi "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/cvm/v20170312"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
)

// naiveCreateImages is CreateImage as users write it without imager: the SDK's typed CVM client,
// one goroutine per call, all started at once, with the SDK's own RequestLimitExceeded retry
// (profile.RateLimitExceededMaxRetries = retries, RateLimitExceededRetryDuration left nil: the
// SDK's default profile.ExponentialBackoff, 1 s, 2 s, 4 s, ... without jitter). Nothing else is
// retried. It returns how many calls were accepted and how long the last one took to end.
func naiveCreateImages(ctx context.Context, endpoint string, instances []string, retries int) (int, time.Duration, error) {
	cpf := profile.NewClientProfile()
	cpf.HttpProfile.Scheme = "HTTP"
	cpf.HttpProfile.Endpoint = endpoint
	cpf.RateLimitExceededMaxRetries = retries
	client, err := cvmapi.NewClient(tccommon.NewCredential(cvmsim.DefaultSecretID, cvmsim.DefaultSecretKey), region, cpf)
	if err != nil {
		return 0, 0, fmt.Errorf("naive client: %w", err)
	}
	// The SDK's own default is a clone of http.DefaultTransport too; holding it lets the benchmark
	// close its idle connections afterwards.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	defer transport.CloseIdleConnections()
	client.WithHttpTransport(transport)

	stamp := time.Now().UTC().Format("20060102-150405")
	var accepted atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, id := range instances {
		wg.Go(func() {
			req := cvmapi.NewCreateImageRequest()
			req.InstanceId = tccommon.StringPtr(id)
			req.ImageName = tccommon.StringPtr("naive-" + id + "-" + stamp)
			if _, err := client.CreateImageWithContext(ctx, req); err == nil {
				accepted.Add(1)
			}
		})
	}
	wg.Wait()
	return int(accepted.Load()), time.Since(start), ctx.Err()
}
