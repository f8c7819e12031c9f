// Package tat is imager's client for Tencent Cloud's TencentCloud Automation Tools API (TAT,
// service "tat", version 2020-10-28): it runs commands on instances through their TAT agent and
// reads their outcome, for the hooks around CreateImage and the checks of restore tests.
//
// It has no transport of its own: every call goes through an internal/cvm Client (cvm.Client.Call
// with Service), so signing, credentials, timeouts, logging, OnCall and the translation of every
// error into a classified *cvm.APIError are the CVM client's. The official SDK's TAT package is
// not used; the request and response structs here are the documented fields on the SDK's common
// request and response.
package tat

import (
	"strings"

	"github.com/imager-dev/imager/internal/cvm"
)

// APIVersion is the TAT API version every request is sent with.
const APIVersion = "2020-10-28"

// Service is the TAT API for cvm.Client.Call: host tat.tencentcloudapi.com (or the endpoint
// override), credential scope "tat", errors classified by Classify.
var Service = cvm.Service{Name: "tat", Version: APIVersion, Classify: Classify}

// Action names, as sent in X-TC-Action and reported in cvm.APIError.Action.
const (
	ActionRunCommand                    = "RunCommand"
	ActionDescribeInvocationTasks       = "DescribeInvocationTasks"
	ActionDescribeAutomationAgentStatus = "DescribeAutomationAgentStatus"
)

// Agent error codes: RunCommand refuses the whole call when one instance's agent cannot take it.
const (
	CodeAgentNotInstalled       = "ResourceUnavailable.AgentNotInstalled"
	CodeAgentStatusNotOnline    = "ResourceUnavailable.AgentStatusNotOnline"
	CodeInstanceStateNotRunning = "ResourceUnavailable.InstanceStateNotRunning"
)

// Classify maps a TAT (or client-side) error code to what the caller should do. TAT's own codes:
// RequestLimitExceeded* and the bare LimitExceeded are throttled (TAT's calls are limited per
// second, and a sub-code such as InvalidParameterValue.LimitExceeded stays permanent);
// InternalError* and FailedOperation.CVMError (TAT could not ask CVM) are transient; the agent
// codes (AgentOffline) and an instance that is not RUNNING are permanent for the call: the caller
// decides whether to wait for the agent. Everything else follows cvm.Classify: client-side codes
// keep their class, unknown codes are permanent.
func Classify(code string) cvm.Class {
	switch {
	case code == "LimitExceeded":
		return cvm.ClassThrottled
	case code == "FailedOperation.CVMError":
		return cvm.ClassTransient
	case AgentOffline(code), code == CodeInstanceStateNotRunning,
		strings.HasPrefix(code, "InvalidParameterValue."):
		return cvm.ClassPermanent
	}
	return cvm.Classify(code)
}

// AgentOffline reports whether code says an instance's TAT agent cannot run a command: not
// installed, or not online. It is the condition a hook or a restore test waits out (a fresh
// instance's agent comes online some time after RUNNING) or reports as such, rather than a
// failure of the command itself.
func AgentOffline(code string) bool {
	return code == CodeAgentNotInstalled || code == CodeAgentStatusNotOnline
}
