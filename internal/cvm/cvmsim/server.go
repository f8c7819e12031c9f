// Package cvmsim is an in-process simulator of the Tencent Cloud CVM API (version 2017-03-12),
// and of the TAT API's (version 2020-10-28) RunCommand, DescribeInvocationTasks and
// DescribeAutomationAgentStatus, for tests, benchmarks and `imager demo`.
//
// It speaks the real wire format (POST / with a JSON body, X-TC-* headers, TC3-HMAC-SHA256
// signatures, HTTP 200 answers with {"Response": ...}), so the official Go SDK can be pointed at
// it with HttpProfile.Scheme = "HTTP" and HttpProfile.Endpoint = Server.Endpoint(). It holds
// instances and images per account and region, enforces per-action limits over any sliding second
// for each account, answers the documented error codes on their real conditions, and injects
// faults on demand (Faults, QueueErrors, SetRegionDown, RefuseSyncTo).
//
// Every request is recorded (see Calls) so tests can assert what reached the API, when, in which
// region and for which account.
//
// Accounts: Options.Accounts lists the key pairs the simulator accepts, one account each (the
// single SecretID/SecretKey pair when it is empty). Each account has its own instances, images,
// image quota and limiter windows, so two accounts can each make 10 CreateImage calls in one
// second. Instance.Account and Image.Account (a SecretID) say whose a resource is; empty means
// the first account, so single-account tests never name one.
//
// Regions: a call sent to a region the account does not have answers UnsupportedRegion. The
// regions are Options.Regions (DefaultRegions if empty), plus DefaultRegion and the region of
// every instance or image added, so a test that adds resources in a region can always use it.
//
// Choices where the real API is unknown or where tests need control:
//   - A created image starts CREATING and becomes NORMAL (or CREATEFAILED when marked by
//     FailNextImages) once Clock.Now reaches its creation time plus ImageReadyAfter; states
//     advance lazily whenever the simulator is asked. ImageReadyAfter 0 therefore means the
//     image is NORMAL by the next call; a negative value keeps it CREATING until CompleteAll.
//   - Only calls admitted by the limiter count against the limit; rejected calls are recorded in
//     Calls and counted by MaxInAnySecond.
//   - Faults are decided after the limiter admits a call and before it is executed. A dropped
//     call is not executed unless Faults.DropAfterExecute is set. Latency delays every answer of
//     the affected actions and is measured with a real timer (it is network time, not API time).
//   - UnsupportedRegion is answered before the limiter: a call to a region that does not exist
//     never counts against a limit. A region set down (SetRegionDown) answers InternalError to
//     every call the limiter admits, before queued errors (which wait for a call elsewhere) and
//     Faults; SetFaults leaves regions down and refused syncs alone.
//   - SyncImages checks, in order: its parameters; each destination (the source region answers
//     InvalidParameterValue.InvalidRegion, the real code being undocumented; a region the account
//     lacks InvalidRegion.NotFound; a region refused by RefuseSyncTo that code); the source image
//     (absent from the call's region: InvalidImageId.NotFound; not NORMAL:
//     InvalidImageId.IncorrectState); destinations set down (InternalError); an image of the
//     same name in a destination (InvalidImageName.Duplicate, as CreateImage does, so a retry of
//     an ambiguous call meets its own copy); each destination's quota (ImageQuotaLimitExceeded);
//     DryRun (DryRunOperation, the common code). The first failing check answers for the whole
//     call, naming the destination in its message; nothing is copied anywhere.
//   - One image per call (more ImageIds: InvalidParameterValue.LimitExceeded); the same
//     destination twice answers InvalidParameterValue; Encrypt answers
//     UnsupportedOperation.SyncEncryptImageNotSupport (encrypted copies are not simulated).
//   - A copy is a new private image in its destination with the source's name (or ImageName),
//     description, size and tags (whether the real API copies tags is unknown), created now,
//     SYNCING until CopyReadyAfter has passed (the same lazy rules as ImageReadyAfter), then
//     NORMAL. Its SyncPercent grows with the elapsed share of CopyReadyAfter. The source stays
//     NORMAL while it is copied (the real source state is unknown) and may be copied or deleted
//     again at once. ImageSet is answered only when ImageSetRequired is true, as the real example
//     without it shows RequestId only.
//   - Both APIs are served on one endpoint: the service of the signature's credential scope ("cvm"
//     or "tat") says which API a call is for, as the host does for the real APIs. Each checks its
//     own X-TC-Version; an action of the other API answers InvalidAction.
//   - RunInstances checks, in order: its parameters' types; ClientToken (over 64 ASCII characters:
//     InvalidClientToken.TooLong); a ClientToken already used by the account in the region answers
//     the same InstanceIdSet again and launches nothing, whatever the other parameters (kept for
//     ever; the real window is unknown); missing Placement.Zone or ImageId (MissingParameter);
//     the values (InvalidImageId.Malformed, InvalidInstanceName.TooLong over 60 bytes,
//     InvalidInstanceType.Malformed, InvalidParameterValue.Range for InstanceCount); a zone not
//     named "<region>-..." (InvalidZone.MismatchRegion; zones are not listed); the image, of any
//     type, in the account and region (InvalidImageId.NotFound) and NORMAL
//     (InvalidParameterValue.InvalidImageState); InstanceQuota (LimitExceeded.InstanceQuota);
//     DryRun (DryRunOperation, the common code). Only TagSpecification entries for "instance" are
//     accepted. Instances start PENDING with their agent Offline, become RUNNING (or LAUNCH_FAILED,
//     FailNextLaunches) LaunchReadyAfter later, and their agent Online AgentOnlineAfter after that,
//     with the same lazy rules as images. Stock and VPC/subnet/security-group existence are not
//     checked.
//   - TerminateInstances checks every id before touching any (InvalidInstanceId.NotFound,
//     UnsupportedOperation.InstanceStatePending, .InstanceStateTerminating); the instances become
//     TERMINATING with their agent Offline and are gone TerminateAfter later (absent from every
//     Describe; their Launch stays). Every instance is pay-as-you-go: no recycle bin.
//   - RunCommand checks its parameters, then each instance in the given order, the first failing
//     one answering for the whole call with nothing run anywhere: unknown in the account and region
//     (ResourceNotFound.InstanceNotFound), not RUNNING (ResourceUnavailable.InstanceStateNotRunning),
//     agent NotInstalled (ResourceUnavailable.AgentNotInstalled) or Offline
//     (ResourceUnavailable.AgentStatusNotOnline). Whether the real API refuses the whole call or
//     fails only that instance's task is not documented; the documented error codes suggest the
//     whole call. The command type is not checked against the instance's OS.
//   - A task is PENDING for TaskStartAfter, then RUNNING, then ends as CommandResult scripts it
//     (SUCCESS with exit code 0 at once by default); a run longer than the command's Timeout ends
//     TIMEOUT at the Timeout. The agent going offline does not affect running tasks.
//   - DescribeInvocationTasks lists tasks oldest first (the real order is unknown). Output is the
//     first 24 KiB of the script's output, base64, with Dropped the bytes cut (whether the real API
//     keeps the head or the tail is unknown), and empty unless HideOutput is false (the API's
//     default hides it). A TIMEOUT task's ExitCode is 0 and its ErrorInfo says it timed out.
//   - DescribeAutomationAgentStatus leaves out instances whose agent is not installed (and unknown
//     ids); an agent is Online only while its instance is RUNNING.
package cvmsim

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
)

// Defaults used when Options leaves a field empty.
const (
	DefaultSecretID     = "AKIDsimulator"
	DefaultSecretKey    = "simulator-secret"
	DefaultImageQuota   = 500
	DefaultImageSizeGiB = 50
	DefaultMaxClockSkew = 5 * time.Minute
	DefaultRegion       = "ap-guangzhou" // region of an Instance or Image added without one
)

// APIVersion is the only X-TC-Version the simulator accepts for CVM actions.
const APIVersion = "2017-03-12"

// TATAPIVersion is the only X-TC-Version the simulator accepts for TAT actions.
const TATAPIVersion = "2020-10-28"

// tatService is the TAT API's service in the TC3 credential scope.
const tatService = "tat"

// The actions the simulator implements.
const (
	ActionCreateImage        = "CreateImage"
	ActionDescribeImages     = "DescribeImages"
	ActionDeleteImages       = "DeleteImages"
	ActionDescribeImageQuota = "DescribeImageQuota"
	ActionDescribeInstances  = "DescribeInstances"
	ActionSyncImages         = "SyncImages"

	ActionRunInstances            = "RunInstances"
	ActionTerminateInstances      = "TerminateInstances"
	ActionDescribeInstancesStatus = "DescribeInstancesStatus"

	// TAT actions: signed for service "tat", X-TC-Version TATAPIVersion.
	ActionRunCommand                    = "RunCommand"
	ActionDescribeInvocationTasks       = "DescribeInvocationTasks"
	ActionDescribeAutomationAgentStatus = "DescribeAutomationAgentStatus"
)

// DefaultLimits returns the per-action limits (calls per sliding second) of the real API.
func DefaultLimits() map[string]int {
	return map[string]int{
		ActionCreateImage:        10,
		ActionDescribeImages:     40,
		ActionDeleteImages:       10,
		ActionDescribeImageQuota: 20,
		ActionDescribeInstances:  40,
		ActionSyncImages:         10,

		ActionRunInstances:            10,
		ActionTerminateInstances:      10,
		ActionDescribeInstancesStatus: 40,

		ActionRunCommand:                    20,
		ActionDescribeInvocationTasks:       20,
		ActionDescribeAutomationAgentStatus: 20,
	}
}

// DefaultRegions returns the regions a simulated account has when Options.Regions is empty.
func DefaultRegions() []string {
	return []string{"ap-guangzhou", "ap-shanghai", "ap-beijing", "ap-singapore", "ap-hongkong",
		"na-siliconvalley", "eu-frankfurt", "ap-shanghai-fsi"}
}

// Account is one key pair the simulator accepts, and the account it signs for.
type Account struct {
	SecretID, SecretKey string
}

// Options configures a Server. The zero value is a usable simulator with the real API's limits.
type Options struct {
	// SecretID and SecretKey are the one accepted key pair (DefaultSecretID/DefaultSecretKey if
	// empty) when Accounts is empty.
	SecretID, SecretKey string
	// Accounts are the accounts the simulator holds, each with its own key pair, resources and
	// limiter windows; the first is the one resources added without an Account belong to. Empty
	// means one account of SecretID/SecretKey. New panics when Accounts is set together with
	// SecretID or SecretKey, or when a SecretID is empty or repeated (bugs in the calling test).
	Accounts []Account
	// Regions are the regions every account has (DefaultRegions if empty); DefaultRegion and the
	// regions of added instances and images are added to them.
	Regions []string
	// Limits overrides DefaultLimits per action; n <= 0 means no limit for that action.
	Limits map[string]int
	// Clock drives limits, image progress, CreatedTime and the timestamp check (real clock if nil).
	Clock clockwork.Clock
	// ImageReadyAfter is how long a created image stays CREATING. 0: NORMAL by the next call;
	// negative: CREATING until CompleteAll (or FailImage).
	ImageReadyAfter time.Duration
	// CopyReadyAfter is how long a copy made by SyncImages stays SYNCING in its destination.
	// 0: NORMAL by the next call; negative: SYNCING until CompleteAll (or FailImage).
	CopyReadyAfter time.Duration
	// ImageQuota is DescribeImageQuota's answer and the quota of CreateImage and SyncImages, per
	// account and region (DefaultImageQuota if 0).
	ImageQuota int
	// SeedShape makes CreateImage answer with RequestId only, as the seed's example does.
	SeedShape bool
	// RejectReboot makes CreateImage answer UnknownParameter for the seed-era Reboot parameter,
	// as today's API may do. By default Reboot is accepted.
	RejectReboot bool
	// MaxClockSkew is how far X-TC-Timestamp may be from Clock.Now (DefaultMaxClockSkew if 0).
	// Negative disables the check, for fake clocks far from the real time the SDK signs with.
	MaxClockSkew time.Duration
	// LaunchReadyAfter is how long an instance launched by RunInstances stays PENDING before it is
	// RUNNING (or LAUNCH_FAILED, see FailNextLaunches). 0: RUNNING by the next call; negative:
	// PENDING until SetInstanceState.
	LaunchReadyAfter time.Duration
	// AgentOnlineAfter is how long a launched instance's TAT agent stays Offline once the instance
	// is RUNNING. 0: Online by the next call; negative: Offline until SetAgentState.
	AgentOnlineAfter time.Duration
	// TerminateAfter is how long a terminated instance stays TERMINATING before it is gone.
	// 0: gone by the next call; negative: TERMINATING for ever.
	TerminateAfter time.Duration
	// InstanceQuota is how many instances RunInstances may leave per account and region
	// (LimitExceeded.InstanceQuota beyond); 0 means no quota.
	InstanceQuota int
	// TaskStartAfter is how long a RunCommand task stays PENDING before it is RUNNING; the
	// CommandResult then says how long it runs. 0: RUNNING by the next call.
	TaskStartAfter time.Duration
	// CommandResult scripts each RunCommand task's outcome (see CommandResultFunc); nil: every
	// command succeeds with exit code 0, no output, at once.
	CommandResult CommandResultFunc
	// Seed seeds the random source of fault decisions; 0 picks a random seed.
	// (Image and request ids are always random, so they stay unique across simulators.)
	Seed int64
	// Logger receives one debug line per call. Secrets are never logged.
	Logger zerolog.Logger
}

// Server is the simulator. It is an http.Handler (httptest.NewServer(s) works) and can also
// listen by itself with Start. All methods are safe for concurrent use.
type Server struct {
	accounts []Account         // in Options order; the first owns resources added without one
	keys     map[string]string // SecretID -> SecretKey
	clock    clockwork.Clock
	maxSkew  time.Duration
	log      zerolog.Logger

	mu           sync.Mutex
	limits       map[string]int
	windows      map[windowKey]*slidingWindow
	faults       Faults
	queued       map[string][]string // action -> error codes to answer next, in order
	rng          *mrand.Rand
	seedShape    bool
	rejectReboot bool
	quota        int
	readyAfter   time.Duration
	copyAfter    time.Duration
	failNext     int
	regions      map[string]bool   // regions every account has
	down         map[string]bool   // regions answering InternalError
	refuseSync   map[string]string // SyncImages destination -> error code
	instances    map[string]*simInstance
	instOrder    []string
	moving       map[string]*simInstance // instances with a transition ahead (PENDING, agent, TERMINATING)
	launchAfter  time.Duration
	agentAfter   time.Duration
	termAfter    time.Duration
	instQuota    int
	failLaunch   int
	launches     []*Launch             // every RunInstances launch, in order
	tokens       map[tokenKey][]string // ClientToken -> the ids it launched
	issuedIns    map[string]struct{}   // every instance id ever handed out
	taskStart    time.Duration
	cmdResult    CommandResultFunc
	tasks        []*simTask          // every RunCommand task, in order
	activeTasks  map[string]*simTask // tasks not final yet
	images       map[string]*simImage
	byName       map[nameKey]int      // images per (account, region, name)
	pending      map[string]*simImage // CREATING and SYNCING images, until they finish
	issued       map[string]struct{}  // every image id ever handed out
	seq          int64
	calls        []Call

	life      sync.Mutex
	closing   bool
	closed    chan struct{}
	closeOnce sync.Once
	inflight  sync.WaitGroup
	httpSrv   *http.Server
	listener  net.Listener
	serveDone chan struct{}

	onLatencyWait func() // test hook: called when a handler starts waiting out Latency
}

// New returns a simulator configured by opts. It does not listen until Start is called.
func New(opts Options) *Server {
	s := &Server{
		accounts:     accountsOf(opts),
		keys:         map[string]string{},
		clock:        opts.Clock,
		maxSkew:      opts.MaxClockSkew,
		log:          opts.Logger.With().Str("component", "cvmsim").Logger(),
		limits:       DefaultLimits(),
		windows:      map[windowKey]*slidingWindow{},
		queued:       map[string][]string{},
		seedShape:    opts.SeedShape,
		rejectReboot: opts.RejectReboot,
		quota:        opts.ImageQuota,
		readyAfter:   opts.ImageReadyAfter,
		copyAfter:    opts.CopyReadyAfter,
		regions:      map[string]bool{DefaultRegion: true},
		down:         map[string]bool{},
		refuseSync:   map[string]string{},
		instances:    map[string]*simInstance{},
		moving:       map[string]*simInstance{},
		launchAfter:  opts.LaunchReadyAfter,
		agentAfter:   opts.AgentOnlineAfter,
		termAfter:    opts.TerminateAfter,
		instQuota:    opts.InstanceQuota,
		tokens:       map[tokenKey][]string{},
		issuedIns:    map[string]struct{}{},
		taskStart:    opts.TaskStartAfter,
		cmdResult:    opts.CommandResult,
		activeTasks:  map[string]*simTask{},
		images:       map[string]*simImage{},
		byName:       map[nameKey]int{},
		pending:      map[string]*simImage{},
		issued:       map[string]struct{}{},
		closed:       make(chan struct{}),
	}
	for _, a := range s.accounts {
		s.keys[a.SecretID] = a.SecretKey
	}
	regions := opts.Regions
	if len(regions) == 0 {
		regions = DefaultRegions()
	}
	for _, r := range regions {
		s.regions[r] = true
	}
	if s.clock == nil {
		s.clock = clockwork.NewRealClock()
	}
	if s.maxSkew == 0 {
		s.maxSkew = DefaultMaxClockSkew
	}
	if s.quota == 0 {
		s.quota = DefaultImageQuota
	}
	for action, n := range opts.Limits {
		s.limits[action] = n
	}
	seed := opts.Seed
	if seed == 0 {
		seed = randomSeed()
	}
	s.rng = mrand.New(mrand.NewPCG(uint64(seed), uint64(seed)^0x9e3779b97f4a7c15))
	return s
}

// Start listens on 127.0.0.1 at a free port and serves until Close. It returns the base URL,
// e.g. "http://127.0.0.1:41234".
func (s *Server) Start() (string, error) {
	return s.Listen("127.0.0.1:0")
}

// Listen listens on addr (host:port) and serves until Close. It returns the base URL.
func (s *Server) Listen(addr string) (string, error) {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closing {
		return "", errors.New("cvmsim: listen: server closed")
	}
	if s.httpSrv != nil {
		return "", errors.New("cvmsim: listen: already listening")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("cvmsim: listen on %s: %w", addr, err)
	}
	s.listener = ln
	s.httpSrv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.serveDone = make(chan struct{})
	go func() {
		defer close(s.serveDone)
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("serve")
		}
	}()
	return "http://" + ln.Addr().String(), nil
}

// URL returns the base URL Start returned, or "" when the server is not listening.
func (s *Server) URL() string {
	if ep := s.Endpoint(); ep != "" {
		return "http://" + ep
	}
	return ""
}

// Endpoint returns "127.0.0.1:PORT" for the SDK's HttpProfile.Endpoint, or "" when the server
// is not listening.
func (s *Server) Endpoint() string {
	s.life.Lock()
	defer s.life.Unlock()
	if s.listener == nil {
		return ""
	}
	return s.listener.Addr().String()
}

// Close stops listening, aborts pending latency waits, closes open connections and waits for
// every handler and goroutine of the server to finish. It is idempotent.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.life.Lock()
		s.closing = true
		srv := s.httpSrv
		done := s.serveDone
		s.life.Unlock()
		close(s.closed)
		if srv != nil {
			_ = srv.Close()
			<-done
		}
		s.inflight.Wait()
	})
}

// enter registers a handler unless the server is closing.
func (s *Server) enter() bool {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closing {
		return false
	}
	s.inflight.Add(1)
	return true
}

// Faults describes injected failures. The zero value injects nothing.
type Faults struct {
	// InternalErrorRate is the share (0..1) of admitted calls answered InternalError without
	// being executed.
	InternalErrorRate float64
	// Latency delays every answer of the affected actions (real time; aborted when the client
	// gives up or the server closes).
	Latency time.Duration
	// DropRate is the share (0..1) of admitted calls whose connection is closed without an answer.
	DropRate float64
	// DropAfterExecute executes a dropped call before closing the connection: the client sees a
	// network error although the call took effect (the ambiguous case).
	DropAfterExecute bool
	// Actions limits the faults to these actions; empty means every action.
	Actions []string
}

func (f Faults) appliesTo(action string) bool {
	return len(f.Actions) == 0 || slices.Contains(f.Actions, action)
}

// SetFaults replaces the injected faults.
func (s *Server) SetFaults(f Faults) {
	f.Actions = slices.Clone(f.Actions)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// QueueErrors makes the next len(codes) admitted calls of action answer these error codes, in
// order, without being executed (after those, calls behave normally). For deterministic tests of
// error classes, e.g. QueueErrors("CreateImage", "ResourceInUse", "InternalError").
func (s *Server) QueueErrors(action string, codes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queued[action] = append(s.queued[action], codes...)
}

// SetSeedShape switches CreateImage between answering {ImageId, RequestId} and RequestId only.
func (s *Server) SetSeedShape(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seedShape = on
}

// SetRejectReboot switches whether CreateImage answers UnknownParameter for Reboot.
func (s *Server) SetRejectReboot(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejectReboot = on
}

// SetImageQuota sets the custom image quota per account and region.
func (s *Server) SetImageQuota(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quota = n
}

// SetImageReadyAfter changes how long images created from now on stay CREATING (see Options).
func (s *Server) SetImageReadyAfter(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.readyAfter = d
}

// SetLimit sets action's limit per sliding second; n <= 0 removes the limit.
func (s *Server) SetLimit(action string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limits[action] = n
}

// Call is one request the simulator received.
type Call struct {
	Action    string         // X-TC-Action as sent
	Region    string         // X-TC-Region as sent
	SecretID  string         // the account's SecretID from Authorization ("" if unparseable); never the key
	At        time.Time      // arrival per the simulator's Clock
	Params    map[string]any // the decoded JSON body (nil if it was not a JSON object); read-only
	Code      string         // error code answered; "" on success
	RequestID string         // RequestId answered (also set for dropped calls, which never see it)
	Dropped   bool           // the connection was closed without an answer
}

// Calls returns every request received, in arrival order.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// ResetCalls forgets the recorded calls (not the limiter's state), e.g. between benchmark runs.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
}

// MaxInAnySecond returns, for the busiest account, the most calls of action (accepted or
// rejected) whose arrival times fit in any sliding one-second window [t, t+1s). Limits are per
// account, so this is the figure to compare with a limit however many accounts there are; with
// one account it counts every call.
func (s *Server) MaxInAnySecond(action string) int {
	s.mu.Lock()
	byAccount := map[string][]time.Time{}
	for _, c := range s.calls {
		if c.Action == action {
			byAccount[c.SecretID] = append(byAccount[c.SecretID], c.At)
		}
	}
	s.mu.Unlock()
	best := 0
	for _, times := range byAccount {
		best = max(best, MaxInWindow(times, time.Second))
	}
	return best
}

// MaxInAnySecondFor is MaxInAnySecond for the calls signed with secretID only.
func (s *Server) MaxInAnySecondFor(secretID, action string) int {
	s.mu.Lock()
	var times []time.Time
	for _, c := range s.calls {
		if c.Action == action && c.SecretID == secretID {
			times = append(times, c.At)
		}
	}
	s.mu.Unlock()
	return MaxInWindow(times, time.Second)
}

// waitLatency waits d of real time; it reports false when the client went away or the server
// is closing first.
func (s *Server) waitLatency(ctx context.Context, d time.Duration) bool {
	if s.onLatencyWait != nil {
		s.onLatencyWait()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.closed:
		return false
	}
}
