package cvmsim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"
)

// maxBodyBytes is the API's limit for TC3-signed POST bodies.
const maxBodyBytes = 10 << 20

// apiError is an error answer: HTTP 200 with Response.Error.
type apiError struct {
	Code    string
	Message string
}

func errf(code, format string, args ...any) *apiError {
	return &apiError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// answer is what a handled request turns into once the lock is released.
type answer struct {
	body    []byte
	latency time.Duration
	drop    bool
}

// actionFunc executes one action for account (a SecretID) under s.mu and returns the response
// fields (without RequestId).
type actionFunc func(s *Server, account, region string, p params, now time.Time) (map[string]any, *apiError)

var actions = map[string]actionFunc{
	ActionCreateImage:             (*Server).createImage,
	ActionDescribeImages:          (*Server).describeImages,
	ActionDeleteImages:            (*Server).deleteImages,
	ActionDescribeImageQuota:      (*Server).describeImageQuota,
	ActionDescribeInstances:       (*Server).describeInstances,
	ActionSyncImages:              (*Server).syncImages,
	ActionRunInstances:            (*Server).runInstances,
	ActionTerminateInstances:      (*Server).terminateInstances,
	ActionDescribeInstancesStatus: (*Server).describeInstancesStatus,
}

// tatActions are the TAT API's actions (service tat, TATAPIVersion), served on the same endpoint.
var tatActions = map[string]actionFunc{
	ActionRunCommand:                    (*Server).runCommand,
	ActionDescribeInvocationTasks:       (*Server).describeInvocationTasks,
	ActionDescribeAutomationAgentStatus: (*Server).describeAutomationAgentStatus,
}

// ServeHTTP answers one API request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		http.Error(w, "cvmsim: server closed", http.StatusServiceUnavailable)
		return
	}
	defer s.inflight.Done()

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		// The client went away or sent too much; there is nobody to answer meaningfully.
		http.Error(w, "cvmsim: read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	ans := s.handle(r, body)
	if ans.latency > 0 && !s.waitLatency(r.Context(), ans.latency) {
		// The client gave up or the server is closing: end without an answer, never an empty 200.
		dropConnection(w)
		return
	}
	if ans.drop {
		dropConnection(w)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(ans.body)
}

// dropConnection closes the client's connection without writing an answer.
func dropConnection(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler) // net/http closes the connection (HTTP/1) or resets the stream.
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

// handle records and executes one request under the lock.
func (s *Server) handle(r *http.Request, body []byte) answer {
	s.mu.Lock()
	defer s.mu.Unlock()

	now := s.clock.Now()
	call := Call{
		Action:    r.Header.Get("X-TC-Action"),
		Region:    r.Header.Get("X-TC-Region"),
		At:        now,
		RequestID: newUUID(),
	}
	if a, ok := parseAuthorization(r.Header.Get("Authorization")); ok {
		call.SecretID = a.secretID
	}
	p, perr := decodeParams(body)
	call.Params = p

	var ans answer
	if s.faults.appliesTo(call.Action) {
		ans.latency = s.faults.Latency
	}
	resp, aerr := s.process(r, body, call, p, perr, now, &ans)
	if aerr != nil {
		call.Code = aerr.Code
		resp = map[string]any{"Error": map[string]any{"Code": aerr.Code, "Message": aerr.Message}}
	}
	call.Dropped = ans.drop
	s.calls = append(s.calls, call)

	resp["RequestId"] = call.RequestID
	b, err := json.Marshal(map[string]any{"Response": resp})
	if err != nil {
		// Only plain maps, strings and numbers are marshalled; this cannot happen.
		panic(fmt.Sprintf("cvmsim: marshal response: %v", err))
	}
	ans.body = b

	ev := s.log.Debug().Str("action", call.Action).Str("region", call.Region).
		Str("request_id", call.RequestID).Bool("dropped", call.Dropped)
	if call.Code != "" {
		ev = ev.Str("error_code", call.Code)
	}
	ev.Msg("call")
	return ans
}

// process runs the checks of the real API in order and then the action. It sets ans.drop for
// dropped calls.
func (s *Server) process(r *http.Request, body []byte, call Call, p params, perr *apiError, now time.Time, ans *answer) (map[string]any, *apiError) {
	if r.Method != http.MethodPost {
		return nil, errf("InvalidParameter", "The simulator accepts only POST requests with a JSON body.")
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, errf("InvalidParameter", "Content-Type must be application/json for TC3-HMAC-SHA256 requests.")
	}
	svc, aerr := s.verifySignature(r, body, now)
	if aerr != nil {
		return nil, aerr
	}
	if call.Action == "" {
		return nil, errf("MissingParameter", "The request is missing the required header X-TC-Action.")
	}
	// The credential scope's service is the API the call is for, as the host is for the real API.
	table, version := actions, APIVersion
	if svc == tatService {
		table, version = tatActions, TATAPIVersion
	}
	switch v := r.Header.Get("X-TC-Version"); v {
	case version:
	case "":
		return nil, errf("MissingParameter", "The request is missing the required header X-TC-Version.")
	default:
		return nil, errf("NoSuchVersion", "The API version `%s` does not exist, use %s.", v, version)
	}
	run, ok := table[call.Action]
	if !ok {
		return nil, errf("InvalidAction", "The action `%s` does not exist.", call.Action)
	}
	if call.Region == "" {
		return nil, errf("MissingParameter", "The request is missing the required header X-TC-Region.")
	}
	if !s.regions[call.Region] {
		return nil, errf("UnsupportedRegion", "The region `%s` is not supported.", call.Region)
	}
	if perr != nil {
		return nil, perr
	}
	if !s.window(call.SecretID, call.Action).admit(now, s.limits[call.Action], time.Second) {
		return nil, errf("RequestLimitExceeded",
			"Your current request times equals to `%d` in a second, which exceeds the frequency limit `%d` for a second. Please reduce the frequency of calls.",
			s.limits[call.Action]+1, s.limits[call.Action])
	}
	if s.down[call.Region] {
		return nil, errInternal()
	}
	if q := s.queued[call.Action]; len(q) > 0 {
		s.queued[call.Action] = q[1:]
		return nil, errf(q[0], "Injected error %s.", q[0])
	}
	if f := s.faults; f.appliesTo(call.Action) {
		if f.DropRate > 0 && s.rng.Float64() < f.DropRate {
			ans.drop = true
			if !f.DropAfterExecute {
				return map[string]any{}, nil
			}
		}
		if !ans.drop && f.InternalErrorRate > 0 && s.rng.Float64() < f.InternalErrorRate {
			return nil, errInternal()
		}
	}
	s.advanceImages(now)
	s.advanceInstances(now)
	s.advanceTasks(now)
	resp, aerr := run(s, call.SecretID, call.Region, p, now)
	if aerr == nil && resp == nil {
		resp = map[string]any{}
	}
	return resp, aerr
}

// errInternal is the API's InternalError answer.
func errInternal() *apiError {
	return errf("InternalError", "An internal error has occurred. Retry your request, but if the problem persists, contact us.")
}

// decodeParams decodes the body as one JSON object; an empty body is an empty object.
func decodeParams(body []byte) (params, *apiError) {
	if len(bytes.TrimSpace(body)) == 0 {
		return params{}, nil
	}
	var p map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&p); err != nil || p == nil || dec.More() {
		return nil, errf("InvalidParameter", "The request body is not a JSON object.")
	}
	return p, nil
}
