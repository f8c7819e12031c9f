package cvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code string
		want Class
	}{
		{"RequestLimitExceeded", ClassThrottled},
		{"RequestLimitExceeded.UinLimitExceeded", ClassThrottled},
		{"RequestLimitExceeded.IPLimitExceeded", ClassThrottled},
		{"RequestLimitExceeded.GlobalRegionUinLimitExceeded", ClassThrottled},
		{"RequestLimitExceededX", ClassPermanent},
		{"InternalError", ClassTransient},
		{"InternalError.TradeUnknownError", ClassTransient},
		{CodeNetworkError, ClassTransient},
		{CodeTimeout, ClassTransient},
		{CodeCanceled, ClassTransient},
		{CodeBadResponse, ClassTransient},
		{"HTTP500", ClassTransient},
		{"HTTP502", ClassTransient},
		{"HTTP503", ClassTransient},
		{"HTTP599", ClassTransient},
		{"HTTP404", ClassPermanent},
		{"HTTP429", ClassPermanent},
		{"HTTP600", ClassPermanent},
		{"HTTP5", ClassPermanent},
		{"HTTP50x", ClassPermanent},
		{"HTTP", ClassPermanent},
		{"MutexOperation.TaskRunning", ClassBusy},
		{"OperationDenied.InstanceOperationInProgress", ClassBusy},
		{"ResourceInUse", ClassBusy},
		{"ResourceInUse.DiskRollbacking", ClassBusy},
		{"ResourceUnavailable.SnapshotCreating", ClassBusy},
		{"InvalidImageId.IncorrectState", ClassBusy},
		{"FailedOperation.InvalidImageState", ClassBusy},
		{"InvalidParameterValue.InvalidImageState", ClassBusy},
		{"InvalidImageId.NotFound", ClassPermanent},
		{"UnsupportedRegion", ClassPermanent},
		{"InvalidRegion.NotFound", ClassPermanent},
		{"InvalidRegion.Unavailable", ClassPermanent},
		{"InvalidParameterValue.InvalidRegion", ClassPermanent},
		{"UnsupportedOperation.Region", ClassPermanent},
		{"ResourceUnavailable", ClassPermanent},
		{"MutexOperation", ClassPermanent},
		{"InvalidImageName.Duplicate", ClassDuplicateName},
		{"ImageQuotaLimitExceeded", ClassQuota},
		{"InvalidInstanceId.NotFound", ClassPermanent},
		{"InvalidInstance.NotSupported", ClassPermanent},
		{"UnsupportedOperation.InstanceStateStopping", ClassPermanent},
		{"InvalidParameter.ValueTooLarge", ClassPermanent},
		{"InvalidParameterValue.TagKeyNotFound", ClassPermanent},
		{"AuthFailure.SignatureFailure", ClassPermanent},
		{"AuthFailure.SignatureExpire", ClassPermanent},
		{"UnauthorizedOperation", ClassPermanent},
		{"UnknownParameter", ClassPermanent},
		{"InvalidAccount.InsufficientBalance", ClassPermanent},
		{CodeInvalidInput, ClassPermanent},
		{CodeClientError, ClassPermanent},
		{"SomethingNobodyHasSeen", ClassPermanent},
		{"", ClassPermanent},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, Classify(tt.code), "Classify(%q)", tt.code)
	}
}

func TestRegionRefused(t *testing.T) {
	t.Parallel()
	for _, code := range []string{"UnsupportedRegion", "InvalidRegion.NotFound", "InvalidRegion.Unavailable",
		"InvalidRegion", "InvalidRegion.Anything", "InvalidParameterValue.InvalidRegion", "UnsupportedOperation.Region"} {
		require.True(t, RegionRefused(code), code)
		require.Equal(t, ClassPermanent, Classify(code), code)
	}
	for _, code := range []string{"", "InvalidRegionX.NotFound", "UnsupportedRegionX", "InternalError",
		"ImageQuotaLimitExceeded", "InvalidImageId.NotFound", "InvalidParameterValue.InvalidImageState",
		"UnsupportedOperation.RegionX", "InvalidParameterValue.InvalidRegionId"} {
		require.False(t, RegionRefused(code), code)
	}
}

func TestAPIErrorCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code  string
		class Class
	}{
		{"RequestLimitExceeded", ClassThrottled},
		{"RequestLimitExceeded.UinLimitExceeded", ClassThrottled},
		{"InternalError", ClassTransient},
		{"MutexOperation.TaskRunning", ClassBusy},
		{"OperationDenied.InstanceOperationInProgress", ClassBusy},
		{"ResourceInUse", ClassBusy},
		{"ResourceUnavailable.SnapshotCreating", ClassBusy},
		{"InvalidImageName.Duplicate", ClassDuplicateName},
		{"ImageQuotaLimitExceeded", ClassQuota},
		{"InvalidInstanceId.NotFound", ClassPermanent},
		{"InvalidInstance.NotSupported", ClassPermanent},
		{"InvalidParameter.ValueTooLarge", ClassPermanent},
		{"UnsupportedOperation.InstanceStateStarting", ClassPermanent},
		{"UnknownParameter", ClassPermanent},
		{"UnauthorizedOperation", ClassPermanent},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
				writeJSON(w, `{"Response":{"Error":{"Code":"`+tt.code+`","Message":"what went wrong"},"RequestId":"req-err-1"}}`)
			})
			c, logs := newTestClient(t, f)
			_, err := c.CreateImage(bg(), "ap-guangzhou", CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "n"})
			ae := requireAPIError(t, err)
			require.Equal(t, &APIError{Action: "CreateImage", Code: tt.code, Message: "what went wrong",
				RequestID: "req-err-1", Class: tt.class}, ae)
			require.False(t, ae.Ambiguous(), "the API answered")
			// No SDK retry, not even on RequestLimitExceeded: imager owns retries and their audit trail.
			f.onlyCall(t)
			require.Contains(t, logs.String(), `"http_requests":1`)
			require.Contains(t, logs.String(), `"error_code":"`+tt.code+`"`)
		})
	}
}

func TestHTTPAndBodyFailures(t *testing.T) {
	t.Parallel()
	longPage := "<html><body>" + strings.Repeat("Service Unavailable ", 200) + "</body></html>"
	tests := []struct {
		name      string
		status    int
		header    map[string]string
		body      string
		code      string
		class     Class
		requestID string
		ambiguous bool
	}{
		{name: "503 with an HTML page", status: 503, body: longPage, code: "HTTP503", class: ClassTransient},
		{name: "503 with JSON and no error", status: 503, body: `{}`, code: "HTTP503", class: ClassTransient},
		{name: "502 keeps the header request id", status: 502, header: map[string]string{"X-TC-RequestId": "req-gw"},
			body: "bad gateway", code: "HTTP502", class: ClassTransient, requestID: "req-gw"},
		{name: "404 is permanent", status: 404, body: "not found", code: "HTTP404", class: ClassPermanent},
		{name: "500 with an API error body keeps the API code", status: 500,
			body: `{"Response":{"Error":{"Code":"InternalError","Message":"oops"},"RequestId":"req-5"}}`,
			code: "InternalError", class: ClassTransient, requestID: "req-5"},
		{name: "200 with garbage", status: 200, body: "<html>hello</html>", code: CodeBadResponse,
			class: ClassTransient, ambiguous: true},
		{name: "200 without Response", status: 200, body: `{}`, code: CodeBadResponse,
			class: ClassTransient, ambiguous: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			})
			c, _ := newTestClient(t, f)
			_, err := c.CreateImage(bg(), "ap-guangzhou", CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "n"})
			ae := requireAPIError(t, err)
			require.Equal(t, tt.code, ae.Code)
			require.Equal(t, tt.class, ae.Class)
			require.Equal(t, tt.requestID, ae.RequestID)
			require.Equal(t, tt.ambiguous, ae.Ambiguous())
			require.LessOrEqual(t, len(ae.Message), maxMessage+3, "messages stay short")
			require.NotContains(t, ae.Message, "\n")
			f.onlyCall(t)
		})
	}
}

func TestDroppedConnectionIsAmbiguousNetworkError(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	})
	c, _ := newTestClient(t, f)
	_, err := c.CreateImage(bg(), "ap-guangzhou", CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "n"})
	ae := requireAPIError(t, err)
	require.Equal(t, CodeNetworkError, ae.Code)
	require.Equal(t, ClassTransient, ae.Class)
	require.True(t, ae.Ambiguous(), "the API may have acted before the connection dropped")
	require.Empty(t, ae.RequestID)
	f.onlyCall(t)
}

func TestConnectionRefusedIsNetworkError(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, nil)
	c, _ := newTestClient(t, f)
	f.srv.Close() // nothing listens any more
	_, _, err := c.DescribeImageQuota(bg(), "ap-guangzhou")
	ae := requireAPIError(t, err)
	require.Equal(t, CodeNetworkError, ae.Code)
	require.Equal(t, ClassTransient, ae.Class)
}

// blockingAPI answers nothing until the client gives up; arrived receives each request.
func blockingAPI(t *testing.T) (*fakeAPI, <-chan struct{}) {
	arrived := make(chan struct{}, 1)
	f := newFakeAPI(t, func(_ http.ResponseWriter, r *http.Request, _ recordedCall) {
		arrived <- struct{}{}
		<-r.Context().Done()
	})
	return f, arrived
}

func TestContextDeadlineIsTimeout(t *testing.T) {
	t.Parallel()
	f, _ := blockingAPI(t)
	c, _ := newTestClient(t, f)
	ctx, cancel := context.WithTimeout(bg(), 50*time.Millisecond)
	defer cancel()
	_, err := c.CreateImage(ctx, "ap-guangzhou", CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "n"})
	ae := requireAPIError(t, err)
	require.Equal(t, CodeTimeout, ae.Code)
	require.Equal(t, ClassTransient, ae.Class)
	require.True(t, ae.Ambiguous())
	f.onlyCall(t)
}

func TestConfigTimeoutIsTimeout(t *testing.T) {
	t.Parallel()
	f, _ := blockingAPI(t)
	c, _ := newTestClient(t, f, func(cfg *Config) { cfg.Timeout = 50 * time.Millisecond })
	_, err := c.DescribeImages(bg(), "ap-guangzhou", DescribeImagesInput{ImageIDs: []string{"img-1"}})
	ae := requireAPIError(t, err)
	require.Equal(t, CodeTimeout, ae.Code)
	require.Equal(t, "DescribeImages", ae.Action)
}

func TestCancelMidCallIsAmbiguous(t *testing.T) {
	t.Parallel()
	f, arrived := blockingAPI(t)
	c, _ := newTestClient(t, f)
	ctx, cancel := context.WithCancel(bg())
	defer cancel()
	go func() {
		<-arrived // the request is at the API: cancel now
		cancel()
	}()
	_, err := c.CreateImage(ctx, "ap-guangzhou", CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "n"})
	ae := requireAPIError(t, err)
	require.Equal(t, CodeCanceled, ae.Code)
	require.True(t, ae.Ambiguous())
}

func TestWrongSecretNeverLeaks(t *testing.T) {
	t.Parallel()
	const wrongKey = "wrong-secret-key-0123456789abcdef"
	f := newFakeAPI(t, nil)
	c, logs := newTestClient(t, f, func(cfg *Config) {
		cfg.Credential = common.NewCredential(testSecretID, wrongKey)
	})
	_, err := c.CreateImage(bg(), "ap-guangzhou", CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "n"})
	ae := requireAPIError(t, err)
	require.Equal(t, "AuthFailure.SignatureFailure", ae.Code)
	require.Equal(t, ClassPermanent, ae.Class)
	require.Equal(t, "req-auth", ae.RequestID)
	calls := f.recorded()
	require.Len(t, calls, 1)
	require.ErrorContains(t, calls[0].SigErr, "signature mismatch", "the fake really checked the signature")

	// A network failure on the same client: its text must not leak either.
	f.srv.Close()
	_, err2 := c.DeleteImages(bg(), "ap-guangzhou", []string{"img-1"}, true)
	require.Error(t, err2)

	for _, text := range []string{err.Error(), err2.Error(), logs.String()} {
		require.NotContains(t, text, wrongKey)
		require.NotContains(t, text, testSecretKey)
	}
	require.Contains(t, logs.String(), `"error_code":"AuthFailure.SignatureFailure"`, "the logs were written")
}

func TestClassifyErrorMakesUnclassifiedErrorsTransientAndAmbiguous(t *testing.T) {
	t.Parallel()
	require.Nil(t, ClassifyError(ActionDescribeImages, nil))

	own := &APIError{Action: ActionDeleteImages, Code: "InvalidImageId.NotFound", Class: ClassPermanent}
	require.Same(t, own, ClassifyError(ActionDescribeImages, fmt.Errorf("wrapped: %w", own)))

	for _, tc := range []struct {
		err  error
		code string
	}{
		{errors.New("connection reset by peer"), CodeUnclassified},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, CodeUnclassified},
		{fmt.Errorf("call: %w", context.DeadlineExceeded), CodeTimeout},
		{context.Canceled, CodeCanceled},
	} {
		ae := ClassifyError(ActionDescribeImages, tc.err)
		require.Equal(t, tc.code, ae.Code, "%v", tc.err)
		require.Equal(t, ClassTransient, ae.Class, "%v", tc.err)
		require.True(t, ae.Ambiguous(), "%v", tc.err)
		require.Equal(t, ActionDescribeImages, ae.Action)
		require.Empty(t, ae.RequestID)
	}
}
