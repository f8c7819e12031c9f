package metrics

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// webConfigServer serves a Metrics with a status page under the web config written to a file.
func webConfigServer(t *testing.T, config string) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "web.yml")
	require.NoError(t, os.WriteFile(path, []byte(config), 0o600))
	return webConfigServerAt(t, path)
}

func webConfigServerAt(t *testing.T, path string) (*Server, string) {
	t.Helper()
	m := New(Options{
		Page: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, "<h1>imager status</h1>")
		}),
		Logger: zerolog.Nop(),
	})
	m.ObserveCall("CreateImage", "", time.Millisecond)
	srv, err := ListenWeb("127.0.0.1:0", path, m, zerolog.Nop())
	require.NoError(t, err)
	srv.Start()
	t.Cleanup(srv.Stop)
	return srv, path
}

func do(t *testing.T, c *http.Client, url, user, pass string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func bcryptHash(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	require.NoError(t, err)
	return string(h)
}

func TestWebConfigBasicAuth(t *testing.T) {
	srv, _ := webConfigServer(t, "basic_auth_users:\n  prometheus: "+bcryptHash(t, "s3cret-scrape")+"\n")
	require.Equal(t, WebConfig{BasicAuth: true}, srv.WebConfig())
	require.Equal(t, "http", srv.Scheme())
	base := "http://" + srv.Addr()
	c := &http.Client{Timeout: 10 * time.Second}
	for _, path := range []string{"/metrics", "/", "/healthz", "/readyz"} {
		code, _ := do(t, c, base+path, "", "")
		require.Equal(t, http.StatusUnauthorized, code, "%s without credentials", path)
		code, _ = do(t, c, base+path, "prometheus", "wrong")
		require.Equal(t, http.StatusUnauthorized, code, "%s with a wrong password", path)
		code, _ = do(t, c, base+path, "nobody", "s3cret-scrape")
		require.Equal(t, http.StatusUnauthorized, code, "%s with an unknown user", path)
	}
	code, body := do(t, c, base+"/metrics", "prometheus", "s3cret-scrape")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `imager_api_calls_total{action="CreateImage",code=""} 1`)
	code, body = do(t, c, base+"/", "prometheus", "s3cret-scrape")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "imager status")
	code, body = do(t, c, base+"/healthz", "prometheus", "s3cret-scrape")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key into dir and returns a
// pool that trusts it.
func selfSigned(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "imager test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

func TestWebConfigTLS(t *testing.T) {
	dir := t.TempDir()
	pool := selfSigned(t, dir)
	path := filepath.Join(dir, "web.yml")
	// Relative paths are read from the web config file's directory.
	require.NoError(t, os.WriteFile(path, []byte("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"), 0o600))
	srv, _ := webConfigServerAt(t, path)
	require.Equal(t, WebConfig{TLS: true}, srv.WebConfig())
	require.Equal(t, "https", srv.Scheme())

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	https := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, path := range []string{"/metrics", "/", "/healthz"} {
		code, _ := do(t, https, "https://"+srv.Addr()+path, "", "")
		require.Equal(t, http.StatusOK, code, path)
	}
	_, body := do(t, https, "https://"+srv.Addr()+"/metrics", "", "")
	require.Contains(t, body, "imager_api_calls_total")

	// Plain HTTP gets no metrics: the TLS server answers a plain request with 400.
	plain := &http.Client{Timeout: 10 * time.Second}
	resp, err := plain.Get("http://" + srv.Addr() + "/metrics")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NotEqual(t, http.StatusOK, resp.StatusCode)
		require.NotContains(t, string(b), "imager_api_calls_total")
	}
	// A client that does not trust the certificate fails the handshake.
	untrusted := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	_, err = untrusted.Get("https://" + srv.Addr() + "/metrics")
	require.Error(t, err)
}

func TestWebConfigBadFileIsOneLineNamingIt(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	cases := []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "absent.yml"), "no such file"},
		{"not yaml", write("broken.yml", "basic_auth_users: [\n"), "yaml"},
		{"unknown field", write("unknown.yml", "basic_auth_user:\n  a: b\nhttp_server_config:\n  nope: 1\n"), "not found"},
		{"plain password", write("plain.yml", "basic_auth_users:\n  prometheus: hunter2-plaintext\n"), "basic_auth_users: a password is not a bcrypt hash"},
		{"missing cert", write("tls.yml", "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n"), "nope.crt"},
		{"cert without key", write("nokey.yml", "tls_server_config:\n  cert_file: nope.crt\n"), "key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ValidateWebConfig(tc.path)
			require.Error(t, err)
			msg := err.Error()
			require.NotContains(t, msg, "\n")
			require.True(t, strings.HasPrefix(msg, tc.path+": "), msg)
			require.Contains(t, msg, tc.want)
			require.NotContains(t, msg, "hunter2", "a password never appears in the error")

			_, err = ListenWeb("127.0.0.1:0", tc.path, New(Options{}), zerolog.Nop())
			require.Error(t, err)
			require.Equal(t, "web config "+msg, err.Error())
		})
	}
	wc, err := ValidateWebConfig("")
	require.NoError(t, err)
	require.Equal(t, WebConfig{}, wc)
}

// A web config broken while the server runs fails requests with 500 (and an error log line);
// the server runs on and serves again once the file is fixed.
func TestWebConfigBrokenLaterFailsRequestsNotTheServer(t *testing.T) {
	good := "basic_auth_users:\n  prometheus: " + bcryptHash(t, "pw") + "\n"
	srv, path := webConfigServer(t, good)
	c := &http.Client{Timeout: 10 * time.Second}
	base := "http://" + srv.Addr()
	code, _ := do(t, c, base+"/metrics", "prometheus", "pw")
	require.Equal(t, http.StatusOK, code)

	require.NoError(t, os.WriteFile(path, []byte("basic_auth_users: [\n"), 0o600))
	code, _ = do(t, c, base+"/metrics", "prometheus", "pw")
	require.Equal(t, http.StatusInternalServerError, code)

	require.NoError(t, os.WriteFile(path, []byte(good), 0o600))
	code, _ = do(t, c, base+"/metrics", "prometheus", "pw")
	require.Equal(t, http.StatusOK, code)
}
