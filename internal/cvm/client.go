package cvm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tcerr "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/errors"
	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
)

// DefaultTimeout bounds one API call when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// Service names one Tencent Cloud API the client can call with its credential, transport, timeout,
// logger and OnCall: the CVM API (ServiceCVM) or another API signed the same way (TAT,
// internal/tat). Name is both the host prefix (Name.tencentcloudapi.com) and the service in the
// TC3 credential scope.
type Service struct {
	Name    string // e.g. "cvm", "tat"
	Version string // X-TC-Version, e.g. "2017-03-12"
	// Classify classifies the API's error codes of this service; nil means Classify. It is applied
	// to every *APIError a call returns, client-side codes included.
	Classify func(code string) Class
}

// ServiceCVM is the CVM API, the service of every method of Client.
var ServiceCVM = Service{Name: "cvm", Version: APIVersion}

// service is the CVM service name: part of the host and of the TC3 credential scope.
const service = "cvm"

// Config configures a Client.
type Config struct {
	// Endpoint overrides the API endpoint for every region (IMAGER_CVM_ENDPOINT), e.g.
	// "http://127.0.0.1:18080" or "https://cvm.example:443". Empty means the real endpoints.
	Endpoint string
	// Credential signs every request. Nil means the SDK's default provider chain (LoadCredential).
	Credential common.CredentialIface
	// Timeout bounds each call, connection and body included. Zero means DefaultTimeout.
	Timeout time.Duration
	// Transport carries the HTTP requests. Nil means a clone of http.DefaultTransport.
	Transport http.RoundTripper
	// Logger receives one debug line per call; it never sees credentials.
	Logger zerolog.Logger
	// OnCall, when set, is told of every call as it ends: its action, its error code ("" on
	// success) and how long it took. The daemon's metrics are fed from here.
	OnCall func(action, code string, elapsed time.Duration)
}

// Client calls the CVM API in any region. It is safe for concurrent use.
type Client struct {
	credential common.CredentialIface
	endpoint   string // validated override, "" for the real endpoints
	timeout    time.Duration
	transport  *tracingTransport
	ownedRT    bool // transport.next was created here and is closed by Close
	log        zerolog.Logger
	onCall     func(action, code string, elapsed time.Duration)

	mu      sync.Mutex
	regions map[regionKey]*common.Client
}

// regionKey names one SDK client: one per service and region, as each has its own host.
type regionKey struct{ service, region string }

// New validates cfg and returns a Client. It resolves credentials now (the SDK's default chain
// when cfg.Credential is nil), so a missing credential fails at start, in one line.
func New(cfg Config) (*Client, error) {
	if cfg.Endpoint != "" {
		if _, _, err := parseEndpoint(cfg.Endpoint); err != nil {
			return nil, err
		}
	}
	cred := cfg.Credential
	if cred == nil {
		var err error
		if cred, err = LoadCredential(); err != nil {
			return nil, err
		}
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	next, owned := cfg.Transport, false
	if next == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.IdleConnTimeout = 30 * time.Second
		t.MaxIdleConnsPerHost = 32 // the worker pool talks to one host; keep its connections warm
		next, owned = t, true
	}
	return &Client{
		credential: cred,
		endpoint:   cfg.Endpoint,
		timeout:    timeout,
		transport:  &tracingTransport{next: next},
		ownedRT:    owned,
		log:        cfg.Logger.With().Str("component", "cvm").Logger(),
		onCall:     cfg.OnCall,
		regions:    make(map[regionKey]*common.Client),
	}, nil
}

// Close releases idle connections of the transport the client created. Calls after Close still work
// (they open new connections); Close only exists so tests and shutdown leave no idle sockets.
func (c *Client) Close() {
	if !c.ownedRT {
		return
	}
	if ci, ok := c.transport.next.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// LoadCredential resolves credentials through the SDK's default provider chain: the environment
// (TENCENTCLOUD_SECRET_ID, TENCENTCLOUD_SECRET_KEY), the profile file, then the CVM instance role.
// Its error is one line that never contains a secret, so cmd can report it as is.
func LoadCredential() (common.CredentialIface, error) {
	return loadCredential(common.DefaultProviderChain())
}

// errNoCredential is what a provider chain that found nothing at all turns into.
var errNoCredential = errors.New("no Tencent Cloud credentials: set TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY, " +
	"or ~/.tencentcloud/credentials, or run on a CVM with a role")

func loadCredential(p common.Provider) (common.CredentialIface, error) {
	cred, err := p.GetCredential()
	if err != nil {
		var sdkErr *tcerr.TencentCloudSDKError
		if errors.As(err, &sdkErr) {
			// The chain's own "nothing found" error is vague; say where credentials come from.
			if strings.HasPrefix(sdkErr.Message, "no credential found") {
				return nil, errNoCredential
			}
			// The SDK's provider messages name files and variables, never values.
			return nil, fmt.Errorf("tencent cloud credentials: %s", oneLine(sdkErr.Message, maxMessage))
		}
		return nil, fmt.Errorf("tencent cloud credentials: %s", oneLine(err.Error(), maxMessage))
	}
	if cred == nil || cred.GetSecretId() == "" || cred.GetSecretKey() == "" {
		return nil, errNoCredential
	}
	return cred, nil
}

// EndpointFor returns the HttpProfile scheme ("HTTP" or "HTTPS") and host[:port] that calls for region
// go to. Finance regions (suffix "-fsi") use cvm.<region>.tencentcloudapi.com, all others
// cvm.tencentcloudapi.com; a non-empty override (IMAGER_CVM_ENDPOINT) wins for every region. An
// override without a scheme is taken as an HTTPS host; New rejects overrides that do not parse.
func EndpointFor(region, override string) (scheme, host string) {
	return serviceEndpoint(service, region, override)
}

// serviceEndpoint is EndpointFor for the service named svc (its host prefix).
func serviceEndpoint(svc, region, override string) (scheme, host string) {
	if override != "" {
		if s, h, err := parseEndpoint(override); err == nil {
			return s, h
		}
		return "HTTPS", override
	}
	if strings.HasSuffix(region, "-fsi") {
		return "HTTPS", svc + "." + region + ".tencentcloudapi.com"
	}
	return "HTTPS", svc + ".tencentcloudapi.com"
}

// parseEndpoint splits an endpoint override into the SDK's scheme and host[:port].
func parseEndpoint(endpoint string) (scheme, host string, err error) {
	if !strings.Contains(endpoint, "://") {
		endpoint = "https://" + endpoint
	}
	shown := redactUserinfo(endpoint)
	u, err := url.Parse(endpoint)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the whole URL
		}
		return "", "", fmt.Errorf("cvm endpoint %q: %w", shown, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "http":
		scheme = "HTTP"
	case "https":
		scheme = "HTTPS"
	default:
		return "", "", fmt.Errorf("cvm endpoint %q: scheme must be http or https", shown)
	}
	if u.Host == "" {
		return "", "", fmt.Errorf("cvm endpoint %q: no host", shown)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		// The TC3 signature always covers path "/": anything else could not be signed correctly.
		return "", "", fmt.Errorf("cvm endpoint %q: only scheme://host[:port] is allowed", shown)
	}
	return scheme, u.Host, nil
}

// redactUserinfo hides a "user:password@" part of an endpoint before it goes into an error.
func redactUserinfo(endpoint string) string {
	scheme, rest, ok := strings.Cut(endpoint, "://")
	if !ok {
		return endpoint
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if slash := strings.IndexByte(rest, '/'); slash < 0 || at < slash {
			return scheme + "://xxxxx@" + rest[at+1:]
		}
	}
	return endpoint
}

// regionClient returns the SDK client for svc (a service name) in region, creating it on first use.
func (c *Client) regionClient(svc, region string) *common.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := regionKey{svc, region}
	if sc, ok := c.regions[key]; ok {
		return sc
	}
	scheme, host := serviceEndpoint(svc, region, c.endpoint)
	hp := profile.NewHttpProfile()
	hp.ReqMethod = "POST"
	hp.Scheme = scheme
	hp.Endpoint = host
	// The SDK's http.Client timeout is whole seconds; the per-call context below is exact.
	hp.ReqTimeout = int((c.timeout + time.Second - 1) / time.Second)
	cp := profile.NewClientProfile()
	cp.HttpProfile = hp
	cp.SignMethod = "TC3-HMAC-SHA256"
	cp.Language = "en-US"
	cp.Debug = false // the SDK's debug dump would print request headers
	cp.DisableRegionBreaker = true
	cp.RateLimitExceededMaxRetries = 0
	cp.NetworkFailureMaxRetries = 0
	cp.UnsafeRetryOnConnectionFailure = false

	sc := (&common.Client{}).Init(region)
	sc.WithCredential(c.credential).WithProfile(cp).WithHttpTransport(c.transport).WithRequestClient("imager")
	c.regions[key] = sc
	return sc
}

// send makes one signed CVM call and translates any failure into an *APIError.
func (c *Client) send(ctx context.Context, region, action string, req tchttp.Request, resp tchttp.Response) error {
	return c.Call(ctx, ServiceCVM, region, action, req, resp)
}

// NewRequest returns an initialised SDK request base for action of svc, for the request structs
// of another service's client (internal/tat) to embed.
func NewRequest(svc Service, action string) *tchttp.BaseRequest {
	return (&tchttp.BaseRequest{}).Init().WithApiInfo(svc.Name, svc.Version, action)
}

// Call makes one signed call of action to svc in region, bounded by the client's timeout, and
// translates any failure into an *APIError classified by svc.Classify. req must have been made
// for svc (NewRequest, or the SDK's typed request of that service): its service is the host and
// the credential scope. When resp has a RequestID() string method, a successful call logs it.
// Every method of Client goes through Call; other services' clients (internal/tat) use it to
// share this client's signing, transport, error translation, logging and OnCall.
func (c *Client) Call(ctx context.Context, svc Service, region, action string, req tchttp.Request, resp tchttp.Response) error {
	sc := c.regionClient(svc.Name, region)
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	tr := &callTrace{}
	req.SetContext(context.WithValue(ctx, traceKey{}, tr))

	start := time.Now()
	err := sc.Send(req, resp)
	var apiErr *APIError
	if err != nil {
		apiErr = translateError(action, err, tr, ctx.Err())
		if svc.Classify != nil {
			apiErr.Class = svc.Classify(apiErr.Code)
		}
	}

	ev := c.log.Debug().Str("action", action).Str("region", region).
		Int64("duration_ms", time.Since(start).Milliseconds()).Int32("http_requests", tr.requests.Load())
	if apiErr != nil {
		ev.Str("request_id", apiErr.RequestID).Str("error_code", apiErr.Code).Str("error_class", apiErr.Class.String())
	} else if r, ok := resp.(interface{ RequestID() string }); ok {
		ev.Str("request_id", r.RequestID())
	}
	ev.Msg(svc.Name + " call")
	if c.onCall != nil {
		code := ""
		if apiErr != nil {
			code = apiErr.Code
		}
		c.onCall(action, code, time.Since(start))
	}

	if apiErr != nil {
		return apiErr
	}
	return nil
}

// traceKey carries a *callTrace in the request context to the tracing transport.
type traceKey struct{}

// callTrace is what the transport saw of one call: the SDK hides the HTTP status behind a JSON parse
// error when a non-200 body is not JSON, and never reports how many requests it made.
type callTrace struct {
	requests  atomic.Int32
	status    atomic.Int32
	requestID atomic.Pointer[string]
}

// tracingTransport records each response's status and X-TC-RequestId in the call's trace.
type tracingTransport struct {
	next http.RoundTripper
}

func (t *tracingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	tr, _ := r.Context().Value(traceKey{}).(*callTrace)
	if tr != nil {
		tr.requests.Add(1)
	}
	resp, err := t.next.RoundTrip(r)
	if err == nil && tr != nil {
		tr.status.Store(int32(resp.StatusCode))
		if id := resp.Header.Get("X-TC-RequestId"); id != "" {
			tr.requestID.Store(&id)
		}
	}
	return resp, err
}
