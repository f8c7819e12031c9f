package cvmsim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tcerr "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/errors"
	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
	cvmapi "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/cvm/v20170312"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testRegion = "ap-guangzhou"

var (
	imageIDPattern = regexp.MustCompile(`^img-[a-z0-9]{8}$`)
	uuidPattern    = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)

// startSim starts a listening simulator that is closed when the test ends.
func startSim(t *testing.T, opts Options) *Server {
	t.Helper()
	s := New(opts)
	_, err := s.Start()
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s
}

// sdkProfile points the official SDK at the simulator, with the SDK's own retries off.
func sdkProfile(s *Server) *profile.ClientProfile {
	cpf := profile.NewClientProfile()
	cpf.HttpProfile.Scheme = "HTTP"
	cpf.HttpProfile.Endpoint = s.Endpoint()
	cpf.HttpProfile.ReqTimeout = 30
	cpf.DisableRegionBreaker = true
	return cpf
}

// transport gives each SDK client its own connection pool, closed when the test ends.
func transport(t *testing.T) *http.Transport {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// commonClient is the SDK's generic client, signed with the given key pair.
func commonClient(t *testing.T, s *Server, region, secretID, secretKey string) *common.Client {
	t.Helper()
	c := common.NewCommonClient(common.NewCredential(secretID, secretKey), region, sdkProfile(s))
	c.WithHttpTransport(transport(t))
	return c
}

// typedClient is the SDK's typed CVM client with the simulator's default key pair.
func typedClient(t *testing.T, s *Server, region string) *cvmapi.Client {
	t.Helper()
	c, err := cvmapi.NewClient(common.NewCredential(DefaultSecretID, DefaultSecretKey), region, sdkProfile(s))
	require.NoError(t, err)
	c.WithHttpTransport(transport(t))
	return c
}

// send calls action through the common client and returns the decoded Response.
func send(ctx context.Context, c *common.Client, action string, params map[string]any) (map[string]any, error) {
	req := tchttp.NewCommonRequest("cvm", APIVersion, action)
	req.SetContext(ctx)
	if params == nil {
		params = map[string]any{}
	}
	if err := req.SetActionParameters(params); err != nil {
		return nil, err
	}
	resp := tchttp.NewCommonResponse()
	if err := c.Send(req, resp); err != nil {
		return nil, err
	}
	var out struct {
		Response map[string]any
	}
	if err := json.Unmarshal(resp.GetBody(), &out); err != nil {
		return nil, err
	}
	return out.Response, nil
}

// call is send with the default key pair and region, failing the test on transport trouble.
func call(t *testing.T, s *Server, action string, params map[string]any) (map[string]any, error) {
	t.Helper()
	return send(t.Context(), commonClient(t, s, testRegion, DefaultSecretID, DefaultSecretKey), action, params)
}

// code returns the API error code of err, or "" for nil; it fails on non-SDK errors.
func code(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	var sdkErr *tcerr.TencentCloudSDKError
	require.True(t, errors.As(err, &sdkErr), "not an SDK error: %v", err)
	return sdkErr.GetCode()
}

// rawCall sends a hand-made request; edit may change it after it was correctly signed.
func rawCall(t *testing.T, s *Server, action string, body string, edit func(*http.Request)) (code string, resp map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL()+"/", bytes.NewBufferString(body))
	require.NoError(t, err)
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", action)
	req.Header.Set("X-TC-Version", APIVersion)
	req.Header.Set("X-TC-Region", testRegion)
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("Authorization", authorizationHeader(DefaultSecretID, DefaultSecretKey, req.URL.Host, []byte(body), ts))
	if edit != nil {
		edit(req)
	}
	client := &http.Client{Transport: transport(t)}
	res, err := client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	var out struct {
		Response struct {
			Error struct{ Code string }
		}
	}
	var full struct{ Response map[string]any }
	var buf bytes.Buffer
	_, err = buf.ReadFrom(res.Body)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(buf.Bytes(), &out))
	require.NoError(t, json.Unmarshal(buf.Bytes(), &full))
	require.Regexp(t, uuidPattern, full.Response["RequestId"])
	return out.Response.Error.Code, full.Response
}

// ptr returns a pointer to v, for the typed SDK requests.
func ptr[T any](v T) *T { return &v }

// lastCall returns the most recent call the simulator recorded.
func lastCall(t *testing.T, s *Server) Call {
	t.Helper()
	calls := s.Calls()
	require.NotEmpty(t, calls)
	return calls[len(calls)-1]
}
