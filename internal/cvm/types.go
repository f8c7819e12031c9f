// Package cvm is imager's client for the Tencent Cloud CVM API (version 2017-03-12).
//
// It wraps the official Go SDK for signing, credentials and transport, turns the SDK's own
// retries and region breaker off (imager owns pacing, retries and their audit trail), and
// translates every SDK or transport error into an *APIError with a Class at this boundary.
package cvm

import (
	"errors"
	"fmt"
	"time"
)

// APIVersion is the CVM API version every request is sent with.
const APIVersion = "2017-03-12"

// Class says what the caller should do about a failed call.
type Class int

// The error classes of docs/design.md "What imager does with each API error".
const (
	// ClassPermanent: fail now, keep code and message (InvalidInstanceId.NotFound, AuthFailure.*, ...).
	ClassPermanent Class = iota
	// ClassThrottled: RequestLimitExceeded and sub-codes; retry after backoff and slow the pace.
	ClassThrottled
	// ClassTransient: InternalError, network errors, timeouts, HTTP 5xx; retry with backoff.
	ClassTransient
	// ClassBusy: the instance or image is busy (MutexOperation.TaskRunning, ResourceInUse*,
	// InvalidImageId.IncorrectState, ...); retry much later.
	ClassBusy
	// ClassDuplicateName: InvalidImageName.Duplicate; choose a fresh name and retry.
	ClassDuplicateName
	// ClassQuota: ImageQuotaLimitExceeded; no blind retry.
	ClassQuota
)

func (c Class) String() string {
	switch c {
	case ClassThrottled:
		return "throttled"
	case ClassTransient:
		return "transient"
	case ClassBusy:
		return "busy"
	case ClassDuplicateName:
		return "duplicate-name"
	case ClassQuota:
		return "quota"
	default:
		return "permanent"
	}
}

// APIError is every error the client returns for a call that was attempted. Code is the API's
// error code, or one of the client-side codes below for failures that never got an API answer.
type APIError struct {
	Action    string // e.g. "CreateImage"
	Code      string // e.g. "InvalidInstanceId.NotFound", "NetworkError", "Timeout", "HTTP503"
	Message   string // never contains credentials
	RequestID string // empty when the API never answered
	Class     Class
}

// Client-side error codes, used when the API gave no code of its own.
const (
	CodeNetworkError = "NetworkError" // connection refused/reset/dropped; outcome unknown
	CodeTimeout      = "Timeout"      // the call's deadline passed; outcome unknown
	CodeBadResponse  = "BadResponse"  // HTTP 200 with an unparseable body; the API may have acted
	CodeCanceled     = "Canceled"     // the caller's context was canceled mid-call; outcome unknown
	// CodeUnclassified: an error that did not come from this client's translation (a wrapper,
	// a fake, a plain network error); see ClassifyError. Transient and ambiguous.
	CodeUnclassified = "UnclassifiedError"
	// CodeInvalidInput: the client refused the input before sending anything (e.g. ImageIDs and
	// Filters together, Limit over 100). Permanent; no request was made.
	CodeInvalidInput = "ClientError.InvalidInput"
	// CodeClientError: the SDK could not build or sign the request (a bug or a bad credential
	// provider). Permanent; no answer was received.
	CodeClientError = "ClientError"
	// HTTP status errors use "HTTP" + status, e.g. "HTTP503" (5xx transient, others permanent).
)

func (e *APIError) Error() string {
	if e.RequestID != "" {
		return fmt.Sprintf("%s: %s: %s (request %s)", e.Action, e.Code, e.Message, e.RequestID)
	}
	return fmt.Sprintf("%s: %s: %s", e.Action, e.Code, e.Message)
}

// Ambiguous reports whether the request may have reached the API and been acted on even though
// no usable answer came back (network errors, timeouts, cancellations mid-call, and an HTTP 200 whose
// body could not be parsed): a retry of CreateImage may then meet its own image.
func (e *APIError) Ambiguous() bool {
	switch e.Code {
	case CodeNetworkError, CodeTimeout, CodeCanceled, CodeBadResponse, CodeUnclassified:
		return true
	}
	return false
}

// AsAPIError returns the *APIError in err's chain, if any.
func AsAPIError(err error) (*APIError, bool) {
	var ae *APIError
	ok := errors.As(err, &ae)
	return ae, ok
}

// Tag is one resource tag.
type Tag struct {
	Key   string
	Value string
}

// CreateImageInput carries every CreateImage parameter imager may send. Optional parameters are
// sent only when set: a nil *bool or an empty string/slice is left out of the request entirely.
type CreateImageInput struct {
	InstanceID       string
	ImageName        string
	ImageDescription string
	ForcePoweroff    *bool // sent as "true"/"false"
	Sysprep          *bool // sent as "true"/"false"
	Reboot           *bool // sent as "true"/"false"; seed-era parameter, absent from current SDKs
	DataDiskIDs      []string
	Tags             []Tag // sent as TagSpecification [{ResourceType: "image", Tags: [...]}]
	DryRun           bool  // sent as JSON true only when set
}

// CreateImageOutput is an accepted CreateImage. ImageID is empty when the API answered in the
// seed's shape (RequestId only): find the image by exact name then.
type CreateImageOutput struct {
	ImageID   string
	RequestID string
}

// Filter is one DescribeImages/DescribeInstances filter.
type Filter struct {
	Name   string
	Values []string
}

// DescribeImagesInput: ImageIDs xor Filters; Limit at most 100 (0 means the API default).
type DescribeImagesInput struct {
	ImageIDs []string
	Filters  []Filter
	Offset   int
	Limit    int
}

// Image is one image as DescribeImages reports it.
type Image struct {
	ID          string
	Name        string
	Description string
	State       string // CREATING, NORMAL, CREATEFAILED, SYNCING, IMPORTING, IMPORTFAILED
	Type        string // PRIVATE_IMAGE, PUBLIC_IMAGE, SHARED_IMAGE
	CreatedTime time.Time
	SizeGiB     int64
	Tags        []Tag
}

// Image states.
const (
	ImageStateCreating     = "CREATING"
	ImageStateNormal       = "NORMAL"
	ImageStateCreateFailed = "CREATEFAILED"
)

// DescribeImagesOutput is one page of images.
type DescribeImagesOutput struct {
	Images     []Image
	TotalCount int
	RequestID  string
}

// DescribeInstancesInput: InstanceIDs xor Filters (e.g. "tag:env", "zone"); Limit at most 100.
type DescribeInstancesInput struct {
	InstanceIDs []string
	Filters     []Filter
	Offset      int
	Limit       int
}

// Instance is one instance as DescribeInstances reports it.
type Instance struct {
	ID          string
	Name        string
	Zone        string
	State       string // RUNNING, STOPPED, ...
	Tags        []Tag
	DataDiskIDs []string
}

// DescribeInstancesOutput is one page of instances.
type DescribeInstancesOutput struct {
	Instances  []Instance
	TotalCount int
	RequestID  string
}

// ImageStateSyncing is the state of a copy in its destination region while SyncImages copies it.
const ImageStateSyncing = "SYNCING"

// SyncImagesInput copies one NORMAL image to other regions. The client always sends
// ImageSetRequired=true, so the answer names each copy's id.
type SyncImagesInput struct {
	ImageID            string   // the source image, in the region the call is sent to
	DestinationRegions []string // never the source region
	ImageName          string   // the copies' name; imager sends the source image's name
	DryRun             bool     // sent as JSON true only when set
}

// ImageCopy is one copy SyncImages started: its id in its destination region.
type ImageCopy struct {
	ImageID string
	Region  string
}

// SyncImagesOutput is an accepted SyncImages. Copies may be empty when the API answered without an
// ImageSet: find each copy by exact name in its destination then.
type SyncImagesOutput struct {
	Copies    []ImageCopy
	RequestID string
}
