package cvm

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
)

func TestEndpointFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		region, override string
		scheme, host     string
	}{
		{"ap-guangzhou", "", "HTTPS", "cvm.tencentcloudapi.com"},
		{"na-siliconvalley", "", "HTTPS", "cvm.tencentcloudapi.com"},
		{"ap-shanghai-fsi", "", "HTTPS", "cvm.ap-shanghai-fsi.tencentcloudapi.com"},
		{"ap-shenzhen-fsi", "", "HTTPS", "cvm.ap-shenzhen-fsi.tencentcloudapi.com"},
		{"ap-fsi-shanghai", "", "HTTPS", "cvm.tencentcloudapi.com"},
		{"ap-guangzhou", "http://127.0.0.1:18080", "HTTP", "127.0.0.1:18080"},
		{"ap-shanghai-fsi", "http://127.0.0.1:18080", "HTTP", "127.0.0.1:18080"},
		{"ap-shanghai-fsi", "https://cvm.example:443", "HTTPS", "cvm.example:443"},
		{"ap-guangzhou", "HTTP://localhost:1/", "HTTP", "localhost:1"},
		{"ap-guangzhou", "cvm.internal.example", "HTTPS", "cvm.internal.example"},
		{"ap-guangzhou", "[::1]:8080", "HTTPS", "[::1]:8080"},
	}
	for _, tt := range tests {
		scheme, host := EndpointFor(tt.region, tt.override)
		require.Equal(t, tt.scheme, scheme, "%s %s", tt.region, tt.override)
		require.Equal(t, tt.host, host, "%s %s", tt.region, tt.override)
	}
}

func TestNewRejectsBadEndpoints(t *testing.T) {
	t.Parallel()
	for _, ep := range []string{
		"ftp://cvm.example", "http://", "http://h:1/prefix", "http://h:1/?a=b", "http://h:1/#x",
		"http://user:hunter2@h:1", "http://user:hunter2@[::1", "http://[::1",
	} {
		_, err := New(Config{Endpoint: ep, Credential: common.NewCredential("id", "key")})
		require.Error(t, err, ep)
		require.Contains(t, err.Error(), "cvm endpoint")
		require.NotContains(t, err.Error(), "hunter2", "user info never reaches an error")
	}
}

// recordingTransport answers every request itself and records where it was sent.
type recordingTransport struct {
	mu   sync.Mutex
	seen []*http.Request
}

func (rt *recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.mu.Lock()
	rt.seen = append(rt.seen, r)
	rt.mu.Unlock()
	return &http.Response{
		StatusCode: http.StatusOK,
		Status:     "200 OK",
		Header:     http.Header{"Content-Type": []string{"application/json"}},
		Body:       io.NopCloser(strings.NewReader(`{"Response":{"ImageNumQuota":10,"RequestId":"req-t"}}`)),
		Request:    r,
	}, nil
}

func TestRealEndpointsPerRegion(t *testing.T) {
	t.Parallel()
	rt := &recordingTransport{}
	c, err := New(Config{Credential: common.NewCredential(testSecretID, testSecretKey), Transport: rt})
	require.NoError(t, err)
	for _, region := range []string{"ap-guangzhou", "ap-shanghai-fsi", "ap-guangzhou"} {
		_, _, err := c.DescribeImageQuota(bg(), region)
		require.NoError(t, err)
	}
	require.Len(t, rt.seen, 3)
	want := []struct{ host, region string }{
		{"cvm.tencentcloudapi.com", "ap-guangzhou"},
		{"cvm.ap-shanghai-fsi.tencentcloudapi.com", "ap-shanghai-fsi"},
		{"cvm.tencentcloudapi.com", "ap-guangzhou"},
	}
	for i, r := range rt.seen {
		require.Equal(t, "https", r.URL.Scheme)
		require.Equal(t, want[i].host, r.URL.Host)
		require.Equal(t, want[i].host, r.Host)
		require.Equal(t, want[i].region, r.Header.Get("X-TC-Region"))
		require.Equal(t, http.MethodPost, r.Method)
	}
	require.Len(t, c.regions, 2, "one SDK client per region, reused")
}

func TestOverrideEndpointServesEveryRegion(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
		writeJSON(w, `{"Response":{"ImageNumQuota":10,"RequestId":"req-q"}}`)
	})
	c, _ := newTestClient(t, f)
	regions := []string{"ap-guangzhou", "ap-shanghai-fsi", "eu-frankfurt"}
	for _, region := range regions {
		_, _, err := c.DescribeImageQuota(bg(), region)
		require.NoError(t, err)
	}
	calls := f.recorded()
	require.Len(t, calls, len(regions))
	for i, call := range calls {
		require.NoError(t, call.SigErr)
		require.Equal(t, regions[i], call.Region)
		require.Equal(t, strings.TrimPrefix(f.srv.URL, "http://"), call.Host)
	}
	first := c.regionClient(service, "ap-guangzhou")
	require.Same(t, first, c.regionClient(service, "ap-guangzhou"))
}

func TestConcurrentCallsShareRegionClients(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, nil)
	c, _ := newTestClient(t, f)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			region := []string{"ap-guangzhou", "ap-beijing"}[i%2]
			_, err := c.CreateImage(bg(), region, CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "n"})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, f.recorded(), 40)
	for _, call := range f.recorded() {
		require.NoError(t, call.SigErr)
	}
	require.Len(t, c.regions, 2)
}

// Credential tests change the environment: they cannot run in parallel.

// unsetEnv removes key for the duration of the test.
func unsetEnv(t *testing.T, key string) {
	t.Setenv(key, "") // registers the restore
	require.NoError(t, os.Unsetenv(key))
}

func TestLoadCredentialFromEnvironment(t *testing.T) {
	t.Setenv("TENCENTCLOUD_SECRET_ID", "AKIDfromenv")
	t.Setenv("TENCENTCLOUD_SECRET_KEY", "env-secret-key")
	cred, err := LoadCredential()
	require.NoError(t, err)
	require.Equal(t, "AKIDfromenv", cred.GetSecretId())
	require.Equal(t, "env-secret-key", cred.GetSecretKey())

	c, err := New(Config{Endpoint: "http://127.0.0.1:1", Logger: zerolog.Nop()})
	require.NoError(t, err, "New falls back to the default chain")
	require.Equal(t, "AKIDfromenv", c.credential.GetSecretId())
}

func TestLoadCredentialEmptyVariable(t *testing.T) {
	t.Setenv("TENCENTCLOUD_SECRET_ID", "AKIDfromenv")
	t.Setenv("TENCENTCLOUD_SECRET_KEY", "")
	_, err := LoadCredential()
	require.Error(t, err)
	require.Contains(t, err.Error(), "TENCENTCLOUD_SECRET_KEY")
	require.NotContains(t, err.Error(), "\n")
	_, err = New(Config{})
	require.Error(t, err)
}

func TestLoadCredentialFromProfileFile(t *testing.T) {
	unsetEnv(t, "TENCENTCLOUD_SECRET_ID")
	unsetEnv(t, "TENCENTCLOUD_SECRET_KEY")
	path := filepath.Join(t.TempDir(), "credentials")
	require.NoError(t, os.WriteFile(path, []byte("[default]\nsecret_id = AKIDfromfile\nsecret_key = file-secret-key\n"), 0o600))
	t.Setenv("TENCENTCLOUD_CREDENTIALS_FILE", path)
	cred, err := LoadCredential()
	require.NoError(t, err)
	require.Equal(t, "AKIDfromfile", cred.GetSecretId())

	require.NoError(t, os.WriteFile(path, []byte("[default]\nsecret_id = AKIDfromfile\n"), 0o600))
	_, err = LoadCredential()
	require.Error(t, err)
	require.Contains(t, err.Error(), "secret_key")
}

func TestLoadCredentialNothingFound(t *testing.T) {
	unsetEnv(t, "TENCENTCLOUD_SECRET_ID")
	unsetEnv(t, "TENCENTCLOUD_SECRET_KEY")
	unsetEnv(t, "TENCENTCLOUD_CREDENTIALS_FILE")
	t.Setenv("HOME", t.TempDir())
	// The default chain's last link asks the CVM metadata server; leave it out to stay off the network.
	_, err := loadCredential(common.NewProviderChain([]common.Provider{
		common.DefaultEnvProvider(), common.DefaultProfileProvider(),
	}))
	require.Equal(t, errNoCredential, err)
	require.Equal(t, "no Tencent Cloud credentials: set TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY, "+
		"or ~/.tencentcloud/credentials, or run on a CVM with a role", err.Error())
}
