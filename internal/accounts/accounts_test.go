package accounts

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/policy"
)

// Recognisable secrets: no error may contain any of them.
const (
	secretID  = "AKIDsecretIdValue0123456789"
	secretKey = "secretKeyValue-9876543210abcdef"
)

func requireNoSecret(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	for _, s := range []string{secretID, secretKey, "s3cr3t"} {
		require.NotContains(t, err.Error(), s)
	}
}

func envOf(m map[string]string) func(string) string {
	return func(name string) string { return m[name] }
}

func account(mod func(a *policy.Account)) *policy.Account {
	a := &policy.Account{Name: "prod", File: "policies.yaml", Line: 4, Field: "accounts[1]", API: policy.DefaultAPI()}
	mod(a)
	return a
}

// isolate leaves the SDK's default chain only what the test sets: no variables, no profile files.
func isolate(t *testing.T) string {
	home := t.TempDir()
	t.Setenv("HOME", home)
	for _, v := range []string{"TENCENTCLOUD_SECRET_ID", "TENCENTCLOUD_SECRET_KEY", "TENCENTCLOUD_CREDENTIALS_FILE", "TCCLI_PROFILE"} {
		t.Setenv(v, "")
		require.NoError(t, os.Unsetenv(v)) // t.Setenv restores it
	}
	return home
}

func TestKeyPair(t *testing.T) {
	t.Parallel()
	a := account(func(a *policy.Account) { a.SecretIDEnv, a.SecretKeyEnv = "PROD_ID", "PROD_KEY" })

	cred, err := Credential(a, envOf(map[string]string{"PROD_ID": " " + secretID + "\n", "PROD_KEY": secretKey}))
	require.NoError(t, err)
	id, key, token := cred.GetCredential()
	require.Equal(t, []string{secretID, secretKey, ""}, []string{id, key, token}, "surrounding blanks are not part of a key")

	for name, env := range map[string]map[string]string{
		"PROD_ID":  {"PROD_KEY": secretKey},
		"PROD_KEY": {"PROD_ID": secretID, "PROD_KEY": "  "},
	} {
		_, err := Credential(a, envOf(env))
		requireNoSecret(t, err)
		var fe policy.FieldError
		require.ErrorAs(t, err, &fe)
		field := map[string]string{"PROD_ID": "accounts[1].secret_id_env", "PROD_KEY": "accounts[1].secret_key_env"}[name]
		require.Equal(t, policy.FieldError{File: "policies.yaml", Line: 4, Field: field,
			Message: "account prod: environment variable " + name + " is not set or empty"}, fe)
		require.Equal(t, "policies.yaml:4: "+field+": account prod: environment variable "+name+" is not set or empty", err.Error())
	}

	_, err = Credential(account(func(a *policy.Account) { a.SecretIDEnv = "PROD_ID" }), envOf(map[string]string{"PROD_ID": secretID}))
	requireNoSecret(t, err)
	require.EqualError(t, err, "policies.yaml:4: accounts[1].secret_key_env: account prod: required: an account's key pair needs both secret_id_env and secret_key_env")
}

// The tests below change the process environment (HOME, the SDK's variables) or the SDK's HTTP
// client, so they do not run in parallel.

func TestProfile(t *testing.T) {
	home := isolate(t)
	dir := filepath.Join(home, ".tccli")
	require.NoError(t, os.Mkdir(dir, 0o700))
	write := func(name, body string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name+".credential"), []byte(body), 0o600))
	}
	a := account(func(a *policy.Account) { a.Profile = "prod" })

	write("prod", fmt.Sprintf(`{"secretId": %q, "secretKey": %q, "region": "ap-guangzhou"}`, secretID, secretKey))
	cred, err := Credential(a, envOf(nil))
	require.NoError(t, err)
	require.Equal(t, secretID, cred.GetSecretId())
	require.Equal(t, secretKey, cred.GetSecretKey())

	cases := map[string]struct{ body, msg string }{
		"missing":    {"", "no ~/.tccli/prod.credential (tccli configure --profile prod writes it)"},
		"no-keys":    {`{"secretId": "` + secretID + `"}`, `~/.tccli/prod.credential: Failed to parse TCCLI profile file, please confirm whether it contains "secretId" and "secretKey"`},
		"bad-json":   {`{"secretId": ` + secretID + `, "secretKey": "s3cr3t"}`, "~/.tccli/prod.credential is not a tccli credential file (JSON with secretId and secretKey; details not shown: the file holds secrets)"},
		"wrong-type": {`{"secretId": "` + secretID + `", "secretKey": 7}`, "~/.tccli/prod.credential is not a tccli credential file"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, os.RemoveAll(filepath.Join(dir, "prod.credential")))
			if c.body != "" {
				write("prod", c.body)
			}
			_, err := Credential(a, envOf(nil))
			requireNoSecret(t, err)
			var fe policy.FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, "accounts[1].profile", fe.Field)
			require.Equal(t, "policies.yaml", fe.File)
			require.Equal(t, 4, fe.Line)
			require.Contains(t, fe.Message, "account prod: "+c.msg)
		})
	}

	t.Run("unreadable", func(t *testing.T) {
		require.NoError(t, os.RemoveAll(filepath.Join(dir, "prod.credential")))
		require.NoError(t, os.Mkdir(filepath.Join(dir, "prod.credential"), 0o700)) // a directory: reading fails
		_, err := Credential(a, envOf(nil))
		requireNoSecret(t, err)
		require.ErrorContains(t, err, "~/.tccli/prod.credential: is a directory")
	})
}

func TestDefaultChain(t *testing.T) {
	isolate(t)
	a := &policy.Account{Name: policy.DefaultAccount, API: policy.DefaultAPI()}
	t.Setenv("TENCENTCLOUD_SECRET_ID", secretID)
	t.Setenv("TENCENTCLOUD_SECRET_KEY", secretKey)
	cred, err := Credential(a, envOf(nil))
	require.NoError(t, err)
	require.Equal(t, secretID, cred.GetSecretId())
	require.Equal(t, secretKey, cred.GetSecretKey())

	t.Setenv("TENCENTCLOUD_SECRET_KEY", "")
	_, err = Credential(a, envOf(nil))
	requireNoSecret(t, err)
	require.ErrorContains(t, err, "account default: tencent cloud credentials: ")
	require.ErrorContains(t, err, "TENCENTCLOUD_SECRET_KEY")
}

// sts is a local STS answering AssumeRole.
type sts struct {
	mu       sync.Mutex
	requests []map[string]any
	headers  []http.Header
	answer   func() string
}

func (s *sts) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var params map[string]any
	_ = json.Unmarshal(body, &params)
	s.mu.Lock()
	s.requests = append(s.requests, params)
	s.headers = append(s.headers, r.Header.Clone())
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, s.answer())
}

// startSTS points role accounts at a local STS and signs AssumeRole with the default chain's
// key pair from the environment.
func startSTS(t *testing.T) *sts {
	isolate(t)
	t.Setenv("TENCENTCLOUD_SECRET_ID", secretID)
	t.Setenv("TENCENTCLOUD_SECRET_KEY", secretKey)
	s := &sts{}
	srv := httptest.NewTLSServer(s)
	t.Cleanup(srv.Close)
	prevClient, prevEndpoint := common.DefaultHttpClient, stsEndpoint
	common.DefaultHttpClient, stsEndpoint = srv.Client(), srv.Listener.Addr().String()
	t.Cleanup(func() { common.DefaultHttpClient, stsEndpoint = prevClient, prevEndpoint })
	return s
}

func TestRole(t *testing.T) {
	s := startSTS(t)
	// As STS does: the keys expire after the duration asked for (the SDK assumes the role again
	// once nine tenths of it are left).
	expires := time.Now().Add(90 * time.Minute).Unix()
	s.answer = func() string {
		return fmt.Sprintf(`{"Response": {"Credentials": {"Token": "tmp-token", "TmpSecretId": "AKIDtmp", "TmpSecretKey": "tmp-key"},
			"ExpiredTime": %d, "Expiration": %q, "RequestId": "req-1"}}`, expires, time.Unix(expires, 0).UTC().Format(time.RFC3339))
	}
	a := account(func(a *policy.Account) {
		a.Role = &policy.Role{ARN: "qcs::cam::uin/100000000001:roleName/imager", SessionName: "imager", Duration: 90 * time.Minute}
	})
	cred, err := Credential(a, envOf(nil))
	require.NoError(t, err)
	id, key, token := cred.GetCredential()
	require.Equal(t, []string{"AKIDtmp", "tmp-key", "tmp-token"}, []string{id, key, token})
	require.Equal(t, "AKIDtmp", cred.GetSecretId(), "fresh keys are used as they are")

	require.Len(t, s.requests, 1)
	require.Equal(t, map[string]any{"RoleArn": "qcs::cam::uin/100000000001:roleName/imager", "RoleSessionName": "imager", "DurationSeconds": float64(5400)}, s.requests[0])
	require.Equal(t, "AssumeRole", s.headers[0].Get("X-TC-Action"))
	require.Contains(t, s.headers[0].Get("Authorization"), "Credential="+secretID+"/", "signed with the default chain's key pair")
	require.NotContains(t, s.headers[0].Get("Authorization"), secretKey)
}

func TestRoleErrors(t *testing.T) {
	s := startSTS(t)
	a := account(func(a *policy.Account) {
		a.Role = &policy.Role{ARN: "qcs::cam::uin/100000000001:roleName/imager", SessionName: "imager", Duration: time.Hour}
	})

	// A server that echoes what it was sent: the keys are redacted from the error.
	s.answer = func() string {
		return `{"Response": {"Error": {"Code": "AuthFailure.SignatureFailure", "Message": "bad signature for ` + secretID + ` with ` + secretKey + `"}, "RequestId": "req-2"}}`
	}
	_, err := Credential(a, envOf(nil))
	requireNoSecret(t, err)
	var fe policy.FieldError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, "accounts[1].role", fe.Field)
	require.Equal(t, "account prod: AssumeRole qcs::cam::uin/100000000001:roleName/imager: AuthFailure.SignatureFailure: bad signature for [redacted] with [redacted]", fe.Message)

	s.answer = func() string { return `{"Response": {"RequestId": "req-3"}}` }
	_, err = Credential(a, envOf(nil))
	requireNoSecret(t, err)
	require.ErrorContains(t, err, "account prod: AssumeRole qcs::cam::uin/100000000001:roleName/imager answered no temporary credentials")

	// Without default credentials to sign AssumeRole with, STS is not called.
	calls := len(s.requests)
	t.Setenv("TENCENTCLOUD_SECRET_KEY", "")
	_, err = Credential(a, envOf(nil))
	requireNoSecret(t, err)
	require.ErrorContains(t, err, "policies.yaml:4: accounts[1].role: account prod: the default credentials to assume qcs::cam::uin/100000000001:roleName/imager with: tencent cloud credentials: ")
	require.Equal(t, calls, len(s.requests))
}

func TestOneLine(t *testing.T) {
	t.Parallel()
	require.Equal(t, "a b c", oneLine("a\n b\t\tc "))
	long := oneLine(strings.Repeat("é", 300))
	require.LessOrEqual(t, len(long), maxMessage+len("…"))
	require.True(t, strings.HasSuffix(long, "…"))
	require.Equal(t, "x [redacted] y", redact("x AKID y", "AKID", ""))
}
