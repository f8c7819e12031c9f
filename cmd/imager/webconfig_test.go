package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// A bad --web-config stops run, once and demo before anything starts (no database is reached:
// the URL points nowhere), with one line that names the flag and the file.
func TestWebConfigBadFileIsOneLineAtStart(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "web.yml")
	require.NoError(t, os.WriteFile(bad, []byte("basic_auth_users:\n  prometheus: plaintext-password\n"), 0o600))
	db := "postgres://nobody@127.0.0.1:1/none?connect_timeout=1"
	for _, args := range [][]string{
		{"run", "--database-url", db, "--listen", "127.0.0.1:0", "--web-config", bad},
		{"once", "--database-url", db, "--policy", "p", "--listen", "127.0.0.1:0", "--web-config", bad},
		{"demo", "--keep-running", "--web-config", bad},
	} {
		var stderr bytes.Buffer
		code := dispatch(context.Background(), args, io.Discard, &stderr)
		require.Equal(t, exitUsage, code, "%v: %s", args, stderr.String())
		require.Equal(t, "imager "+args[0]+": --web-config "+bad+": basic_auth_users: a password is not a bcrypt hash (crypto/bcrypt: hashedSecret too short to be a bcrypted password)\n",
			stderr.String())
		require.NotContains(t, stderr.String(), "plaintext-password")
	}

	var stderr bytes.Buffer
	t.Setenv("IMAGER_WEB_CONFIG", filepath.Join(dir, "absent.yml"))
	require.Equal(t, exitUsage, dispatch(context.Background(), []string{"run", "--database-url", db, "--listen", "127.0.0.1:0"}, io.Discard, &stderr))
	require.Equal(t, "imager run: --web-config "+filepath.Join(dir, "absent.yml")+": no such file or directory\n", stderr.String())

	stderr.Reset()
	require.Equal(t, exitUsage, dispatch(context.Background(), []string{"run", "--database-url", db}, io.Discard, &stderr))
	require.Contains(t, stderr.String(), "--web-config "+filepath.Join(dir, "absent.yml")+": needs --listen")
	require.Equal(t, 1, strings.Count(stderr.String(), "\n"))
}

// TestWebConfigRunClosesEveryEndpoint: `imager run --listen --web-config` with basic auth answers
// 401 without the credentials on every path, /healthz included, and 200 with them.
func TestWebConfigRunClosesEveryEndpoint(t *testing.T) {
	e := newE2E(t)
	policies := e.writePolicies(t, "version: 1\npolicies:\n  - {name: one, schedule: '0 3 * * *', region: ap-guangzhou, instances: [ins-aaaaaaaa]}\n")
	hash, err := bcrypt.GenerateFromPassword([]byte("scrape-pw"), bcrypt.MinCost)
	require.NoError(t, err)
	webConfig := filepath.Join(t.TempDir(), "web.yml")
	require.NoError(t, os.WriteFile(webConfig, []byte("basic_auth_users:\n  prometheus: "+string(hash)+"\n"), 0o600))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	logs := newLogLines(pr)
	done := make(chan int, 1)
	go func() {
		done <- dispatch(ctx, append(e.daemonArgs("run", policies), "--listen", "127.0.0.1:0", "--web-config", webConfig), io.Discard, pw)
		pw.Close()
	}()
	var served struct {
		Listen    string
		BasicAuth bool `json:"basic_auth"`
		TLS       bool `json:"tls"`
	}
	require.NoError(t, json.Unmarshal([]byte(logs.waitFor(t, "serving /metrics")), &served))
	require.True(t, served.BasicAuth)
	require.False(t, served.TLS)
	logs.waitFor(t, "imager running")
	c := &http.Client{Timeout: 10 * time.Second}
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready", "/metrics": "imager_leader{daemon_id=", "/": "<html"} {
		for _, pass := range []string{"", "wrong", "scrape-pw"} {
			req, err := http.NewRequest(http.MethodGet, "http://"+served.Listen+path, nil)
			require.NoError(t, err)
			if pass != "" {
				req.SetBasicAuth("prometheus", pass)
			}
			resp, err := c.Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			if pass != "scrape-pw" {
				require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s with password %q", path, pass)
				require.NotContains(t, string(body), want)
				continue
			}
			require.Equal(t, http.StatusOK, resp.StatusCode, path)
			require.Contains(t, strings.ToLower(string(body)), want, path)
		}
	}
	cancel()
	logs.waitFor(t, "imager stopped")
	require.Equal(t, 0, <-done)
	for range logs.lines { // drain
	}
}
