package cvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	tcerr "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/errors"
)

// maxMessage caps APIError.Message: the SDK puts whole response bodies into some messages.
const maxMessage = 200

// SDK client-side error codes (tencentcloud/common), translated here and nowhere else.
const (
	sdkNetworkError   = "ClientError.NetworkError"
	sdkHTTPStatus     = "ClientError.HttpStatusCodeError"
	sdkParseJSONError = "ClientError.ParseJsonError"
	sdkIOError        = "ClientError.IOError"
	sdkClientPrefix   = "ClientError."
)

// Classify maps an API or client-side error code to what the caller should do (docs/design.md "What imager does with each API error").
// Unknown codes are permanent: failing loudly beats retrying something nobody understood.
func Classify(code string) Class {
	switch {
	case code == "RequestLimitExceeded" || strings.HasPrefix(code, "RequestLimitExceeded."):
		return ClassThrottled
	case strings.HasPrefix(code, "InternalError"),
		code == CodeNetworkError, code == CodeTimeout, code == CodeCanceled, code == CodeBadResponse,
		code == CodeUnclassified,
		isHTTP5xx(code):
		return ClassTransient
	case code == "MutexOperation.TaskRunning",
		code == "OperationDenied.InstanceOperationInProgress",
		// The instance is still being launched (TerminateInstances, ResetInstance, CreateImage).
		code == "UnsupportedOperation.InstanceStatePending",
		strings.HasPrefix(code, "ResourceInUse"),
		code == "ResourceUnavailable.SnapshotCreating",
		// The image is not NORMAL yet, or another operation holds it (SyncImages, DeleteImages).
		code == "InvalidImageId.IncorrectState",
		code == "FailedOperation.InvalidImageState",
		code == "InvalidParameterValue.InvalidImageState":
		return ClassBusy
	case code == "InvalidImageName.Duplicate":
		return ClassDuplicateName
	case code == "ImageQuotaLimitExceeded":
		return ClassQuota
	default:
		return ClassPermanent
	}
}

// RegionRefused reports whether code is the API refusing a region itself (unsupported, unknown,
// unavailable, or not allowed for the operation) rather than the call: a copy to that region fails
// while copies to other regions go on. Every such code is ClassPermanent.
func RegionRefused(code string) bool {
	switch {
	case code == "UnsupportedRegion",
		code == "InvalidRegion", strings.HasPrefix(code, "InvalidRegion."),
		code == "InvalidParameterValue.InvalidRegion",
		code == "UnsupportedOperation.Region":
		return true
	}
	return false
}

// ClassifyError is the one classification of a failed call's error, for every caller of the
// API (scheduler, tracker, retention, targets): the *APIError in err's chain when the client
// translated it; otherwise — a plain network error, a context deadline, an error from a wrapper —
// a transient, ambiguous *APIError for action (the request may have reached the API): Code
// CodeTimeout for a deadline or a network timeout, CodeCanceled for a cancellation, and
// CodeUnclassified for anything else, with err's text as Message. nil for a nil err.
func ClassifyError(action string, err error) *APIError {
	if err == nil {
		return nil
	}
	if ae, ok := AsAPIError(err); ok {
		return ae
	}
	code := contextCode(err, nil)
	if code == "" {
		code = CodeUnclassified
	}
	return newAPIError(action, code, err.Error(), "")
}

// isHTTP5xx reports whether code is one of the "HTTP" + status codes with a 5xx status.
func isHTTP5xx(code string) bool {
	rest, ok := strings.CutPrefix(code, "HTTP")
	if !ok || len(rest) != 3 {
		return false
	}
	n, err := strconv.Atoi(rest)
	return err == nil && n >= 500 && n <= 599
}

// newAPIError builds a classified *APIError.
func newAPIError(action, code, message, requestID string) *APIError {
	return &APIError{
		Action:    action,
		Code:      code,
		Message:   oneLine(message, maxMessage),
		RequestID: requestID,
		Class:     Classify(code),
	}
}

// invalidInput is the error for input refused before anything was sent.
func invalidInput(action, format string, args ...any) *APIError {
	return newAPIError(action, CodeInvalidInput, fmt.Sprintf(format, args...), "")
}

// InvalidInput is the *APIError (CodeInvalidInput, permanent) for input another service's client
// (internal/tat) refused before sending anything.
func InvalidInput(action, format string, args ...any) *APIError {
	return invalidInput(action, format, args...)
}

// BadResponse is the *APIError (CodeBadResponse, transient and ambiguous) for an HTTP 200 answer
// to another service's call whose content does not make sense.
func BadResponse(action, message, requestID string) *APIError {
	return badResponse(action, message, requestID)
}

// badResponse is the error for an HTTP 200 whose content does not make sense.
func badResponse(action, message, requestID string) *APIError {
	return newAPIError(action, CodeBadResponse, message, requestID)
}

// translateError turns whatever the SDK's Send returned into an *APIError. tr is what the transport
// saw; ctxErr is the call context's error after Send returned (deadline or cancellation).
func translateError(action string, err error, tr *callTrace, ctxErr error) *APIError {
	status := int(tr.status.Load())
	headerRequestID := ""
	if p := tr.requestID.Load(); p != nil {
		headerRequestID = *p
	}

	var sdkErr *tcerr.TencentCloudSDKError
	if !errors.As(err, &sdkErr) {
		// Not an SDK error: request building (JSON encoding, URL), or decoding a response's
		// Content-Encoding. Once a response arrived, the content was the problem.
		if ctxCode := contextCode(err, ctxErr); ctxCode != "" {
			return newAPIError(action, ctxCode, err.Error(), headerRequestID)
		}
		if status == http.StatusOK {
			return badResponse(action, err.Error(), headerRequestID)
		}
		if status != 0 {
			return httpStatusError(action, status, headerRequestID)
		}
		return newAPIError(action, CodeClientError, err.Error(), "")
	}

	code := sdkErr.Code
	if !strings.HasPrefix(code, sdkClientPrefix) {
		// The API answered with its own code.
		requestID := sdkErr.RequestId
		if requestID == "" {
			requestID = headerRequestID
		}
		return newAPIError(action, code, sdkErr.Message, requestID)
	}

	switch code {
	case sdkNetworkError:
		cause := errors.Unwrap(sdkErr)
		msg := sdkErr.Message
		if cause != nil {
			msg = cause.Error()
		}
		if ctxCode := contextCode(cause, ctxErr); ctxCode != "" {
			return newAPIError(action, ctxCode, msg, "")
		}
		return newAPIError(action, CodeNetworkError, msg, "")
	case sdkHTTPStatus:
		return httpStatusError(action, status, headerRequestID)
	case sdkParseJSONError, sdkIOError:
		if status != 0 && status != http.StatusOK {
			return httpStatusError(action, status, headerRequestID)
		}
		// Reading the body failed: the connection broke after the API started answering.
		if code == sdkIOError || strings.HasPrefix(sdkErr.Message, "Fail to read") {
			if ctxCode := contextCode(nil, ctxErr); ctxCode != "" {
				return newAPIError(action, ctxCode, sdkErr.Message, headerRequestID)
			}
			return newAPIError(action, CodeNetworkError, sdkErr.Message, headerRequestID)
		}
		return badResponse(action, sdkErr.Message, headerRequestID)
	default:
		// Credential providers and other client-side failures: nothing was answered.
		return newAPIError(action, code, sdkErr.Message, "")
	}
}

// contextCode returns CodeTimeout or CodeCanceled when err or the call context says the call was cut
// short, and "" otherwise.
func contextCode(err, ctxErr error) string {
	switch {
	case errors.Is(ctxErr, context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return CodeTimeout
	case errors.Is(ctxErr, context.Canceled), errors.Is(err, context.Canceled):
		return CodeCanceled
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return CodeTimeout
	}
	return ""
}

// httpStatusError is the error for a non-200 answer without an API error code. The SDK's message
// would carry the whole body (an HTML error page, say); the status alone says what matters.
func httpStatusError(action string, status int, requestID string) *APIError {
	if status == 0 {
		return newAPIError(action, "HTTP", "unexpected HTTP status", requestID)
	}
	return newAPIError(action, "HTTP"+strconv.Itoa(status),
		fmt.Sprintf("HTTP status %d %s", status, http.StatusText(status)), requestID)
}

// oneLine flattens s to one line of at most max bytes (on a rune boundary), marking a cut with "...".
func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
