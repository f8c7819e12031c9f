package cvm

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
)

const (
	testSecretID  = "AKIDtestsecretid0000"
	testSecretKey = "test-secret-key-must-never-leak"
)

// recordedCall is one request as the fake API received it.
type recordedCall struct {
	Action, Version, Region, Host, Authorization, ContentType string
	Body                                                      map[string]any
	SigErr                                                    error // nil when the TC3 signature verified
}

// fakeAPI is a hand-written CVM endpoint that checks TC3-HMAC-SHA256 signatures and records what it
// received. respond decides each answer; a bad signature is answered AuthFailure.SignatureFailure.
type fakeAPI struct {
	srv     *httptest.Server
	respond func(w http.ResponseWriter, r *http.Request, call recordedCall)

	mu    sync.Mutex
	calls []recordedCall
}

// newFakeAPI starts a fake endpoint; respond nil answers every call with a bare RequestId.
func newFakeAPI(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, call recordedCall)) *fakeAPI {
	t.Helper()
	if respond == nil {
		respond = func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
			writeJSON(w, `{"Response":{"RequestId":"req-ok"}}`)
		}
	}
	f := &fakeAPI{respond: respond}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	call := recordedCall{
		Action:        r.Header.Get("X-TC-Action"),
		Version:       r.Header.Get("X-TC-Version"),
		Region:        r.Header.Get("X-TC-Region"),
		Host:          r.Host,
		Authorization: r.Header.Get("Authorization"),
		ContentType:   r.Header.Get("Content-Type"),
		SigErr:        verifyTC3(r, raw, testSecretID, testSecretKey, time.Now()),
	}
	if err := json.Unmarshal(raw, &call.Body); err != nil {
		call.SigErr = errors.Join(call.SigErr, fmt.Errorf("body is not a JSON object: %w", err))
	}
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()

	if call.SigErr != nil {
		writeJSON(w, `{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"The provided credentials could not be validated."},"RequestId":"req-auth"}}`)
		return
	}
	f.respond(w, r, call)
}

// recorded returns a copy of the calls received so far.
func (f *fakeAPI) recorded() []recordedCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recordedCall(nil), f.calls...)
}

// onlyCall asserts exactly one request arrived, with a valid signature, and returns it.
func (f *fakeAPI) onlyCall(t *testing.T) recordedCall {
	t.Helper()
	calls := f.recorded()
	require.Len(t, calls, 1, "exactly one HTTP request per call")
	require.NoError(t, calls[0].SigErr)
	return calls[0]
}

func writeJSON(w http.ResponseWriter, body string) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, body)
}

// verifyTC3 recomputes the TC3-HMAC-SHA256 signature of r from the secret key, as the API does.
func verifyTC3(r *http.Request, body []byte, secretID, secretKey string, now time.Time) error {
	auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "TC3-HMAC-SHA256 ")
	if !ok {
		return errors.New("authorization is not TC3-HMAC-SHA256")
	}
	parts := map[string]string{}
	for _, p := range strings.Split(auth, ", ") {
		k, v, _ := strings.Cut(p, "=")
		parts[k] = v
	}
	ts := r.Header.Get("X-TC-Timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("bad X-TC-Timestamp %q", ts)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return errors.New("timestamp too far from now")
	}
	date := time.Unix(sec, 0).UTC().Format("2006-01-02")
	scope := date + "/cvm/tc3_request"
	if parts["Credential"] != secretID+"/"+scope {
		return fmt.Errorf("credential %q, want %q", parts["Credential"], secretID+"/"+scope)
	}
	if parts["SignedHeaders"] != "content-type;host" {
		return fmt.Errorf("signed headers %q", parts["SignedHeaders"])
	}
	canonical := fmt.Sprintf("%s\n/\n\ncontent-type:%s\nhost:%s\n\ncontent-type;host\n%s",
		r.Method, r.Header.Get("Content-Type"), r.Host, sha256Hex(body))
	toSign := "TC3-HMAC-SHA256\n" + ts + "\n" + scope + "\n" + sha256Hex([]byte(canonical))
	key := hmacSHA256([]byte("TC3"+secretKey), date)
	key = hmacSHA256(key, "cvm")
	key = hmacSHA256(key, "tc3_request")
	want := hex.EncodeToString(hmacSHA256(key, toSign))
	if !hmac.Equal([]byte(want), []byte(parts["Signature"])) {
		return errors.New("signature mismatch")
	}
	return nil
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newTestClient returns a client pointed at f, signing with the test credential (or secretKey when
// given), logging at debug level into the returned buffer.
func newTestClient(t *testing.T, f *fakeAPI, mutate ...func(*Config)) (*Client, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg := Config{
		Endpoint:   f.srv.URL,
		Credential: common.NewCredential(testSecretID, testSecretKey),
		Logger:     zerolog.New(logs).Level(zerolog.DebugLevel),
	}
	for _, m := range mutate {
		m(&cfg)
	}
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c, logs
}

// requireAPIError asserts err is an *APIError and returns it.
func requireAPIError(t *testing.T, err error) *APIError {
	t.Helper()
	require.Error(t, err)
	ae, ok := AsAPIError(err)
	require.True(t, ok, "error %v (%T) is not an *APIError", err, err)
	return ae
}

func ptr[T any](v T) *T { return &v }

// bg is the context for calls that are not about cancellation.
func bg() context.Context { return context.Background() }
