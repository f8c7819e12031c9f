package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

// The fault tests run the real imager binary, several processes on one database, against the
// CVM simulator in this process, which counts every call and enforces the API's limits. They
// wait for real time (a slot at the next whole minute) and synchronise by polling the database
// and the processes' logs, with deadlines that only guard against a hang.

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// imagerBinary builds the binary once per test binary.
func imagerBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "imager-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "imager")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, binErr)
	return binPath
}

// hangGuard bounds every wait of the fault tests; it is not a timing assertion.
const hangGuard = 150 * time.Second

const fleetRate = 10 // api.create_image_rate of the fault tests, the simulator's CreateImage limit

// cluster is one database, one simulator and the processes of a fault test.
type cluster struct {
	bin      string
	dbURL    string
	sim      *cvmsim.Server
	simURL   string
	dir      string
	policies string
	fleet    []string
	pool     *pgxpool.Pool
}

// newCluster makes a database, a simulator with n instances, and a policy "fleet" over them due
// every whole minute (plus "adhoc" over 10 more instances, never due in a test).
func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	return newClusterWith(t, n, clusterOptions{})
}

// clusterOptions change what newClusterWith makes; the zero value is newCluster's cluster.
type clusterOptions struct {
	dbURL       string // a database of the test's own (default: a new one on the shared server)
	schedule    string // the fleet's schedule (default "@every 1m")
	startWindow string // the fleet's start_window (default: the policy default)
}

func newClusterWith(t *testing.T, n int, o clusterOptions) *cluster {
	t.Helper()
	if o.dbURL == "" {
		o.dbURL = pgtest.NewDatabase(t)
	}
	if o.schedule == "" {
		o.schedule = "@every 1m"
	}
	window := ""
	if o.startWindow != "" {
		window = "\n    start_window: " + o.startWindow
	}
	c := &cluster{bin: imagerBinary(t), dbURL: o.dbURL, dir: t.TempDir(), fleet: instanceIDs("flt", n)}
	pool, err := pgxpool.New(context.Background(), c.dbURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	c.pool = pool
	c.sim = cvmsim.New(cvmsim.Options{Seed: 1})
	url, err := c.sim.Start()
	require.NoError(t, err)
	c.simURL = url
	t.Cleanup(c.sim.Close)
	adhoc := instanceIDs("adh", 10)
	for _, id := range append(append([]string{}, c.fleet...), adhoc...) {
		c.sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou"})
	}
	c.policies = filepath.Join(c.dir, "policies.yaml")
	require.NoError(t, os.WriteFile(c.policies, []byte(fmt.Sprintf(`version: 1
api: {create_image_rate: %d, workers: 4}
defaults: {region: ap-guangzhou, timezone: UTC}
policies:
  - name: fleet
    schedule: %q%s
    instances: [%s]
  - name: adhoc
    schedule: "0 0 1 1 *"
    instances: [%s]
`, fleetRate, o.schedule, window, strings.Join(c.fleet, ", "), strings.Join(adhoc, ", "))), 0o600))
	return c
}

// proc is one imager process and its log lines.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []string
	done chan struct{}
	err  error
}

func (c *cluster) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "IMAGER_") && !strings.HasPrefix(kv, "TENCENTCLOUD_") {
			env = append(env, kv)
		}
	}
	return append(env, "TENCENTCLOUD_SECRET_ID="+cvmsim.DefaultSecretID, "TENCENTCLOUD_SECRET_KEY="+cvmsim.DefaultSecretKey)
}

func (c *cluster) args(cmd, spool string, extra ...string) []string {
	return append([]string{cmd, "--policies", c.policies, "--database-url", c.dbURL, "--cvm-endpoint", c.simURL,
		"--spool-dir", filepath.Join(c.dir, spool), "--poll-interval", "200ms", "--shutdown-grace", "10s"}, extra...)
}

// start starts `imager run` with its own spool directory unless spool names a shared one.
func (c *cluster) start(t *testing.T, name, spool string, extra ...string) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(c.bin, c.args("run", spool, extra...)...)
	p.cmd.Env = c.env()
	startProc(t, p)
	return p
}

// startProc starts p.cmd, collects its log lines, kills it when the test ends (printing its last
// lines when the test failed) and waits until it logs that it runs.
func startProc(t *testing.T, p *proc) {
	t.Helper()
	stderr, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.logs = append(p.logs, sc.Text())
			p.mu.Unlock()
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			lines := strings.Split(p.log(), "\n")
			t.Logf("--- last lines of the log of %s ---\n%s", p.name, strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
	})
	p.waitLog(t, "imager running")
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logs, "\n")
}

func (p *proc) hasLog(want string) bool { return strings.Contains(p.log(), want) }

func (p *proc) waitLog(t *testing.T, want string) {
	t.Helper()
	waitUntil(t, p.name+" logs "+want, func() bool {
		select {
		case <-p.done:
			return p.hasLog(want) || t.Failed()
		default:
			return p.hasLog(want)
		}
	})
	require.Truef(t, p.hasLog(want), "%s exited without logging %q", p.name, want)
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	waitUntil(t, p.name+" exits", func() bool {
		select {
		case <-p.done:
			return true
		default:
			return false
		}
	})
	require.NoErrorf(t, p.err, "%s did not exit cleanly", p.name)
}

// waitUntil polls cond until it holds; the deadline only guards against a hang.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !pollCond(cond) {
		t.Fatalf("gave up waiting: %s", what)
	}
}

// pollCond checks cond every 50 ms until it holds (true) or hangGuard passes (false). It polls
// state the test cannot be told about (rows another process writes); it never stands in for
// an event the test could wait on.
func pollCond(cond func() bool) bool {
	deadline := time.NewTimer(hangGuard)
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			return false
		case <-poll.C:
		}
	}
	return true
}

func (c *cluster) queryInt(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, c.pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

// firingSlot waits until the fleet's first slot has at least n accepted CreateImage calls and
// returns the slot.
func (c *cluster) firingSlot(t *testing.T, n int) time.Time {
	t.Helper()
	var slot time.Time
	waitUntil(t, fmt.Sprintf("%d accepted calls of one slot", n), func() bool {
		err := c.pool.QueryRow(context.Background(), `SELECT scheduled_at FROM image_runs
			WHERE policy = 'fleet' AND request_id IS NOT NULL
			GROUP BY scheduled_at HAVING count(*) >= $1 ORDER BY scheduled_at LIMIT 1`, n).Scan(&slot)
		return err == nil
	})
	return slot
}

// waitSlotDone waits until every fleet instance has a run at slot that is requested or available.
func (c *cluster) waitSlotDone(t *testing.T, slot time.Time) {
	t.Helper()
	done := func() bool {
		return c.queryInt(t, `SELECT count(*) FROM image_runs WHERE policy = 'fleet' AND scheduled_at = $1
			AND status IN ('requested', 'available')`, slot) == len(c.fleet)
	}
	if pollCond(done) {
		return
	}
	rows, err := c.pool.Query(context.Background(), `SELECT status || ' ' || count(*) FROM image_runs
		WHERE policy = 'fleet' AND scheduled_at = $1 GROUP BY status`, slot)
	require.NoError(t, err)
	var counts []string
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		counts = append(counts, s)
	}
	rows.Close()
	t.Fatalf("gave up waiting for every slot of %s to be requested or available: %d slots, runs by status: %v",
		slot.Format(time.RFC3339), len(c.fleet), counts)
}

// leaderPID is the pid holding the lease (0: none live).
func (c *cluster) leaderPID(t *testing.T) int {
	return c.queryInt(t, `SELECT COALESCE((SELECT pid FROM leader_lease WHERE expires_at > now()), 0)`)
}

// leaseTerm is the term of the leader lease (0 when nobody ever held it).
func (c *cluster) leaseTerm(t *testing.T) int {
	return c.queryInt(t, `SELECT COALESCE((SELECT term FROM leader_lease), 0)::int`)
}

// waitLeads waits until p holds the live leader lease under a term above after: the database's
// record of who leads, not p's log.
func (c *cluster) waitLeads(t *testing.T, p *proc, after int) {
	t.Helper()
	waitUntil(t, p.name+" leads", func() bool {
		return c.leaderPID(t) == p.cmd.Process.Pid && c.leaseTerm(t) > after
	})
}

// checkPace asserts what the simulator saw: never more CreateImage calls than the limit in any
// sliding second, and none throttled.
func (c *cluster) checkPace(t *testing.T) {
	t.Helper()
	// What the API enforces: the calls it admitted never exceed the limit in any sliding second,
	// across every replica. A call the API refused (RequestLimitExceeded) was not acted on; how
	// often that happens depends on scheduling jitter on this machine, so the test does not
	// assert it is zero (the pace's spacing is asserted on the fake clock in internal/scheduler
	// and internal/pace, and the throttle count is measured in BENCHMARKS.md). It asserts that
	// every refused call was recorded as an attempt, so none is lost from the audit trail.
	var admitted []time.Time
	var throttled []string
	for _, call := range c.sim.Calls() {
		if call.Action != cvmsim.ActionCreateImage {
			continue
		}
		if call.Code == "RequestLimitExceeded" {
			throttled = append(throttled, call.RequestID)
			continue
		}
		admitted = append(admitted, call.At)
	}
	require.LessOrEqualf(t, cvmsim.MaxInWindow(admitted, time.Second), fleetRate,
		"CreateImage calls in the densest second:\n%s", c.densestSecond())
	for _, id := range throttled {
		require.Equalf(t, 1, c.queryInt(t, `SELECT count(*) FROM image_attempts
			WHERE request_id = $1 AND error_code = 'RequestLimitExceeded'`, id),
			"throttled CreateImage %s is recorded as an attempt", id)
	}
	if len(throttled) > 0 {
		t.Logf("%d CreateImage calls were throttled by the simulator and retried (scheduling jitter on this machine)", len(throttled))
	}
}

// densestSecond lists the CreateImage calls of the sliding second that holds the most of them
// (arrival offset, image name, error code), to tell a failed pace assertion's cause.
func (c *cluster) densestSecond() string {
	var calls []cvmsim.Call
	for _, call := range c.sim.Calls() {
		if call.Action == cvmsim.ActionCreateImage {
			calls = append(calls, call)
		}
	}
	bestFirst, bestN, first := 0, 0, 0
	for last := range calls {
		for calls[last].At.Sub(calls[first].At) >= time.Second {
			first++
		}
		if n := last - first + 1; n > bestN {
			bestFirst, bestN = first, n
		}
	}
	var b strings.Builder
	for _, call := range calls[bestFirst : bestFirst+bestN] {
		name, _ := call.Params["ImageName"].(string)
		fmt.Fprintf(&b, "  +%4dms %s %s\n", call.At.Sub(calls[bestFirst].At).Milliseconds(), name, call.Code)
	}
	return b.String()
}

// checkOneImagePerSlot asserts that no (instance, slot) got two images and that every image
// belongs to exactly one run.
func (c *cluster) checkOneImagePerSlot(t *testing.T) {
	t.Helper()
	names := map[string]int{}
	for _, img := range c.sim.Images() {
		names[img.Name]++
	}
	for name, n := range names {
		require.Equalf(t, 1, n, "image name %s made %d times", name, n)
		require.Equalf(t, 1, c.queryInt(t, `SELECT count(*) FROM image_runs WHERE image_name = $1`, name),
			"image %s is not on exactly one run", name)
	}
}

// acceptedCreates returns the RequestIds of the CreateImage calls the simulator accepted, by
// the image name they asked for.
func (c *cluster) acceptedCreates() map[string]string {
	out := map[string]string{}
	for _, call := range c.sim.Calls() {
		if call.Action == cvmsim.ActionCreateImage && call.Code == "" && !call.Dropped {
			name, _ := call.Params["ImageName"].(string)
			out[call.RequestID] = name
		}
	}
	return out
}

// checkRequestsRecorded asserts that every accepted RequestId is on its run and in
// image_attempts, except at most maxMissing (calls in flight at a kill), whose image must have
// been adopted by name; it returns how many were missing.
func (c *cluster) checkRequestsRecorded(t *testing.T, maxMissing int) int {
	t.Helper()
	missing := 0
	images := map[string]string{}
	for _, img := range c.sim.Images() {
		images[img.Name] = img.ID
	}
	for reqID, name := range c.acceptedCreates() {
		onRun := c.queryInt(t, `SELECT count(*) FROM image_runs WHERE request_id = $1`, reqID)
		inAttempts := c.queryInt(t, `SELECT count(*) FROM image_attempts WHERE request_id = $1`, reqID)
		if onRun == 1 && inAttempts == 1 {
			continue
		}
		missing++
		require.Equalf(t, 1, c.queryInt(t, `SELECT count(*) FROM image_runs WHERE image_name = $1 AND image_id = $2`,
			name, images[name]), "the image of request %s (%s), whose answer was lost, is not adopted by its run", reqID, name)
	}
	require.LessOrEqual(t, missing, maxMissing, "accepted requests missing from history")
	return missing
}

// TestTwoReplicasImageEverySlotOnce: two replicas started together on one database; the slot
// due at the next minute is imaged exactly once per instance, by one leader, at the API's pace.
// Both share one spool directory: only the leader opens it.
func TestTwoReplicasImageEverySlotOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 100)
	a := c.start(t, "a", "spool", "--lease-ttl", "3s")
	b := c.start(t, "b", "spool", "--lease-ttl", "3s")
	slot := c.firingSlot(t, 1)
	c.waitSlotDone(t, slot)
	waitUntil(t, "every image usable", func() bool {
		return c.queryInt(t, `SELECT count(*) FROM image_runs WHERE scheduled_at = $1 AND status = 'available'`, slot) == len(c.fleet)
	})
	a.stop(t)
	b.stop(t)

	require.Equal(t, 1, c.queryInt(t, `SELECT count(DISTINCT daemon_id) FROM image_runs WHERE scheduled_at = $1`, slot),
		"one leader claimed the whole slot")
	c.checkPace(t)
	c.checkOneImagePerSlot(t)
	require.Equal(t, 0, c.checkRequestsRecorded(t, 0))
	require.Len(t, c.acceptedCreates(), c.queryInt(t, `SELECT count(*) FROM image_runs WHERE request_id IS NOT NULL`))
	for _, p := range []*proc{a, b} {
		require.NotContains(t, p.log(), "in use by another imager process")
	}
	require.True(t, a.hasLog("resigned the leader lease") || b.hasLog("resigned the leader lease"))
}

// TestLeaderKilledMidFire: the leader is killed with SIGKILL while it fires 100 slots; the
// standby takes the lease once it lapses and finishes the fire: every slot has one run, ends
// requested or available, no slot has two images, and every accepted RequestId is recorded
// except the one in flight at the kill, whose image the new leader adopts by name.
func TestLeaderKilledMidFire(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 100)
	a := c.start(t, "a", "spool-a", "--lease-ttl", "3s")
	b := c.start(t, "b", "spool-b", "--lease-ttl", "3s")
	leader, standby := a, b
	if c.leaderPID(t) == b.cmd.Process.Pid {
		leader, standby = b, a
	}
	slot := c.firingSlot(t, 20)
	require.NoError(t, leader.cmd.Process.Kill())
	<-leader.done
	require.Less(t, c.queryInt(t, `SELECT count(*) FROM image_runs WHERE scheduled_at = $1 AND request_id IS NOT NULL`, slot),
		len(c.fleet), "killed mid-fire")

	c.waitLeads(t, standby, 0)
	c.waitSlotDone(t, slot)
	standby.stop(t)

	require.Equal(t, len(c.fleet), c.queryInt(t, `SELECT count(*) FROM image_runs WHERE scheduled_at = $1`, slot))
	c.checkPace(t)
	c.checkOneImagePerSlot(t)
	c.checkRequestsRecorded(t, 1)
}

// TestPausedLeaderIsFencedAndStepsDown: a leader stopped (SIGSTOP) past its lease comes back
// (SIGCONT) to find another term: it steps down, and no slot is claimed or imaged twice.
func TestPausedLeaderIsFencedAndStepsDown(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 100)
	a := c.start(t, "a", "spool-a", "--lease-ttl", "3s")
	b := c.start(t, "b", "spool-b", "--lease-ttl", "3s")
	leader, standby := a, b
	if c.leaderPID(t) == b.cmd.Process.Pid {
		leader, standby = b, a
	}
	slot := c.firingSlot(t, 20)
	require.NoError(t, leader.cmd.Process.Signal(syscall.SIGSTOP))
	c.waitLeads(t, standby, 0)
	require.Equal(t, standby.cmd.Process.Pid, c.leaderPID(t))
	require.NoError(t, leader.cmd.Process.Signal(syscall.SIGCONT))
	leader.waitLog(t, "no longer leader")
	leader.waitLog(t, "scheduler stopped")
	require.Equal(t, standby.cmd.Process.Pid, c.leaderPID(t), "the paused leader did not take the lease back")
	leader.stop(t)
	standby.stop(t)

	require.LessOrEqual(t, c.queryInt(t, `SELECT count(*) FROM image_runs WHERE scheduled_at = $1`, slot), len(c.fleet),
		"at most one run per slot")
	c.checkOneImagePerSlot(t)
	// Each (instance, slot) got at most one accepted CreateImage.
	perName := map[string]int{}
	for _, name := range c.acceptedCreates() {
		perName[name]++
	}
	for name, n := range perName {
		require.Equalf(t, 1, n, "%s accepted %d times", name, n)
	}
}

// TestSIGTERMResignsAndTheStandbyContinues: SIGTERM mid-fire makes the leader finish or record
// its work in flight and resign; the standby takes over before the lease would have lapsed, and
// nothing is lost: every slot has its row, none is left pending, every accepted RequestId is
// recorded.
func TestSIGTERMResignsAndTheStandbyContinues(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 100)
	// A long TTL: only the resignation can explain a takeover before the lease lapses.
	a := c.start(t, "a", "spool-a", "--lease-ttl", "60s")
	b := c.start(t, "b", "spool-b", "--lease-ttl", "60s")
	leader, standby := a, b
	if c.leaderPID(t) == b.cmd.Process.Pid {
		leader, standby = b, a
	}
	slot := c.firingSlot(t, 20)
	var expiresBefore time.Time
	require.NoError(t, c.pool.QueryRow(context.Background(),
		`SELECT expires_at FROM leader_lease`).Scan(&expiresBefore))
	leader.stop(t)
	require.True(t, leader.hasLog("resigned the leader lease"))
	c.waitLeads(t, standby, 0)
	var acquired time.Time
	require.NoError(t, c.pool.QueryRow(context.Background(),
		`SELECT acquired_at FROM leader_lease`).Scan(&acquired))
	require.True(t, acquired.Before(expiresBefore), "the standby took over before the old lease would have lapsed")

	// Every slot of the fire is accounted for: sent, or recorded by the stopping leader, and
	// nothing left pending once the new leader has reconciled.
	waitUntil(t, "every slot recorded and none pending", func() bool {
		return c.queryInt(t, `SELECT count(*) FROM image_runs WHERE policy = 'fleet' AND scheduled_at = $1
			AND status <> 'pending'`, slot) == len(c.fleet)
	})
	standby.stop(t)
	c.checkPace(t)
	c.checkOneImagePerSlot(t)
	require.Equal(t, 0, c.checkRequestsRecorded(t, 0), "a clean stop loses no RequestId")
}

// TestOnceBesideARunningDaemon: imager once during a scheduled fire hands its fire to the
// leader, which sends it through its own pace: the simulator never sees more than the limit in
// a sliding second, and once (sharing the daemon's spool directory) never meets the spool lock.
func TestOnceBesideARunningDaemon(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 100)
	a := c.start(t, "a", "spool", "--lease-ttl", "3s")
	slot := c.firingSlot(t, 10)

	once := exec.Command(c.bin, append(c.args("once", "spool"), "--policy", "adhoc")...)
	once.Env = c.env()
	var stdout, stderr strings.Builder
	once.Stdout, once.Stderr = &stdout, &stderr
	require.NoErrorf(t, once.Run(), "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	require.Contains(t, stdout.String(), "10 slots, 0 not available")
	require.Contains(t, stderr.String(), "a leader is running")
	require.NotContains(t, stderr.String(), "in use by another imager process")
	require.True(t, a.hasLog("firing at the request of imager once"))

	c.waitSlotDone(t, slot)
	a.stop(t)
	require.Equal(t, 10, c.queryInt(t, `SELECT count(*) FROM image_runs WHERE policy = 'adhoc' AND status = 'available'`))
	require.Equal(t, 1, c.queryInt(t, `SELECT count(*) FROM fire_requests WHERE status = 'done'`))
	c.checkPace(t)
	c.checkOneImagePerSlot(t)
}
