package cvmsim

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
)

func TestSDKSignatureAccepted(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{ImageQuota: 77})
	resp, err := call(t, s, ActionDescribeImageQuota, nil)
	require.NoError(t, err)
	require.EqualValues(t, 77, resp["ImageNumQuota"])
	require.Regexp(t, uuidPattern, resp["RequestId"])

	c := lastCall(t, s)
	require.Equal(t, ActionDescribeImageQuota, c.Action)
	require.Equal(t, testRegion, c.Region)
	require.Empty(t, c.Code)
	require.Equal(t, resp["RequestId"], c.RequestID)
}

func TestCustomKeyPair(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{SecretID: "AKIDcustom", SecretKey: "custom-key"})
	_, err := send(t.Context(), commonClient(t, s, testRegion, "AKIDcustom", "custom-key"), ActionDescribeImageQuota, nil)
	require.NoError(t, err)
	_, err = send(t.Context(), commonClient(t, s, testRegion, DefaultSecretID, DefaultSecretKey), ActionDescribeImageQuota, nil)
	require.Equal(t, "AuthFailure.SecretIdNotFound", code(t, err))
}

func TestSDKAuthFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		clockOffset time.Duration // simulator clock minus real time
		maxSkew     time.Duration
		secretID    string
		secretKey   string
		want        string
	}{
		{name: "wrong secret key", secretID: DefaultSecretID, secretKey: "not-the-secret", want: "AuthFailure.SignatureFailure"},
		{name: "unknown secret id", secretID: "AKIDunknown", secretKey: DefaultSecretKey, want: "AuthFailure.SecretIdNotFound"},
		{name: "server clock an hour ahead", clockOffset: time.Hour, secretID: DefaultSecretID, secretKey: DefaultSecretKey, want: "AuthFailure.SignatureExpire"},
		{name: "server clock six minutes behind", clockOffset: -6 * time.Minute, secretID: DefaultSecretID, secretKey: DefaultSecretKey, want: "AuthFailure.SignatureExpire"},
		{name: "skew check disabled", clockOffset: 48 * time.Hour, maxSkew: -1, secretID: DefaultSecretID, secretKey: DefaultSecretKey, want: ""},
		{name: "skew within tolerance", clockOffset: 2 * time.Minute, secretID: DefaultSecretID, secretKey: DefaultSecretKey, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clock := clockwork.NewFakeClockAt(time.Now().Add(tt.clockOffset))
			s := startSim(t, Options{Clock: clock, MaxClockSkew: tt.maxSkew})
			_, err := send(t.Context(), commonClient(t, s, testRegion, tt.secretID, tt.secretKey), ActionDescribeImageQuota, nil)
			require.Equal(t, tt.want, code(t, err))
			require.Equal(t, tt.want, lastCall(t, s).Code)
		})
	}
}

func TestWireFormatChecks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		action string
		body   string
		edit   func(*http.Request)
		want   string
	}{
		{name: "correct", action: ActionDescribeImageQuota, body: `{}`, want: ""},
		{name: "empty body is an empty object", action: ActionDescribeImageQuota, body: ``, want: ""},
		{name: "missing Authorization", action: ActionDescribeImageQuota, body: `{}`,
			edit: func(r *http.Request) { r.Header.Del("Authorization") }, want: "AuthFailure.InvalidAuthorization"},
		{name: "malformed Authorization", action: ActionDescribeImageQuota, body: `{}`,
			edit: func(r *http.Request) { r.Header.Set("Authorization", "Basic Zm9vOmJhcg==") }, want: "AuthFailure.InvalidAuthorization"},
		{name: "body changed after signing", action: ActionDescribeImageQuota, body: `{}`,
			edit: func(r *http.Request) {
				r.Body = http.NoBody
				r.ContentLength = 0
			}, want: "AuthFailure.SignatureFailure"},
		{name: "host changed after signing", action: ActionDescribeImageQuota, body: `{}`,
			edit: func(r *http.Request) { r.Host = "cvm.tencentcloudapi.com" }, want: "AuthFailure.SignatureFailure"},
		{name: "signed for another service", action: ActionDescribeImageQuota, body: `{}`,
			edit: func(r *http.Request) {
				ts, _ := strconv.ParseInt(r.Header.Get("X-TC-Timestamp"), 10, 64)
				r.Header.Set("Authorization", "TC3-HMAC-SHA256 Credential="+DefaultSecretID+"/"+signDate(ts)+
					"/cbs/tc3_request, SignedHeaders=content-type;host, Signature=00")
			}, want: "AuthFailure.InvalidAuthorization"},
		{name: "missing timestamp", action: ActionDescribeImageQuota, body: `{}`,
			edit: func(r *http.Request) { r.Header.Del("X-TC-Timestamp") }, want: "MissingParameter"},
		{name: "missing region", action: ActionDescribeImageQuota, body: `{}`,
			edit: func(r *http.Request) { r.Header.Del("X-TC-Region") }, want: "MissingParameter"},
		{name: "missing action", action: "", body: `{}`, want: "MissingParameter"},
		{name: "unknown action", action: "RebootInstances", body: `{}`, want: "InvalidAction"},
		{name: "wrong version", action: ActionDescribeImageQuota, body: `{}`,
			edit: func(r *http.Request) { r.Header.Set("X-TC-Version", "2018-01-01") }, want: "NoSuchVersion"},
		{name: "not JSON", action: ActionDescribeImageQuota, body: `Action=DescribeImageQuota`, want: "InvalidParameter"},
		{name: "JSON but not an object", action: ActionDescribeImageQuota, body: `[1,2]`, want: "InvalidParameter"},
		{name: "unknown parameter", action: ActionDescribeImageQuota, body: `{"Foo":1}`, want: "UnknownParameter"},
	}
	s := startSim(t, Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, _ := rawCall(t, s, tt.action, tt.body, tt.edit)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestWorksBehindHTTPTest(t *testing.T) {
	t.Parallel()
	s := New(Options{})
	defer s.Close()
	ts := httptest.NewServer(s)
	defer ts.Close()

	cpf := profile.NewClientProfile()
	cpf.HttpProfile.Scheme = "HTTP"
	cpf.HttpProfile.Endpoint = ts.Listener.Addr().String()
	c := common.NewCommonClient(common.NewCredential(DefaultSecretID, DefaultSecretKey), testRegion, cpf)
	c.WithHttpTransport(transport(t))
	resp, err := send(t.Context(), c, ActionDescribeImageQuota, nil)
	require.NoError(t, err)
	require.EqualValues(t, DefaultImageQuota, resp["ImageNumQuota"])
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	s := New(Options{})
	require.Empty(t, s.URL())
	url, err := s.Start()
	require.NoError(t, err)
	require.Equal(t, url, s.URL())
	require.Equal(t, "http://"+s.Endpoint(), url)
	_, err = s.Start()
	require.Error(t, err, "second Start")
	s.Close()
	s.Close() // idempotent
	_, err = s.Start()
	require.Error(t, err, "Start after Close")

	// A closed simulator refuses requests instead of answering them.
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
}

func TestLogsCallsWithoutSecrets(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	s := startSim(t, Options{SecretKey: "very-secret-key", Logger: zerolog.New(&buf).Level(zerolog.DebugLevel)})
	_, err := send(t.Context(), commonClient(t, s, testRegion, DefaultSecretID, "very-secret-key"), ActionDescribeImageQuota, nil)
	require.NoError(t, err)
	_, err = send(t.Context(), commonClient(t, s, testRegion, DefaultSecretID, "wrong-secret-key"), ActionDescribeImageQuota, nil)
	require.Equal(t, "AuthFailure.SignatureFailure", code(t, err))
	logs := buf.String()
	require.Contains(t, logs, `"action":"DescribeImageQuota"`)
	require.Contains(t, logs, `"error_code":"AuthFailure.SignatureFailure"`)
	require.NotContains(t, logs, "very-secret-key")
	require.NotContains(t, logs, "wrong-secret-key")
	require.NotContains(t, logs, "Signature=")
}
