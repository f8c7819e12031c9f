package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
)

// ScaleParams is the scale scenario: a policy file of Policies policies × Instances instances each.
type ScaleParams struct {
	Policies  int
	Instances int // per policy
	// Idle is how long the daemons are watched, idle, for their CPU use (0: not measured).
	Idle time.Duration
}

// ScaleRun is one daemon's figures.
type ScaleRun struct {
	Validate time.Duration // wall time of `imager validate`
	Startup  time.Duration // from exec to the "imager running" log line
	PeakRSS  int64         // bytes, VmHWM after the idle window
	IdleCPU  float64       // share of one core used over the idle window; NaN when not measured
}

// startedMessage is the daemon's log message once it is up: elected (each benchmark daemon has a
// database of its own, so it leads) and its leader's work started: scheduler, tracker, policies
// table, notifier.
const startedMessage = "imager running"

// RunScale writes the policy file, times `imager validate` runs times, then starts runs daemons
// (`imager run`) one after another, each on its own migrated database and simulator, timing each
// start-up alone. The idle window then watches all of them at once (they are idle: no schedule is
// due within it), after which their peak RSS is read and they are stopped with SIGTERM.
func RunScale(ctx context.Context, env Env, p ScaleParams, runs int) ([]ScaleRun, error) {
	if p.Policies < 1 || p.Instances < 1 || runs < 1 || p.Idle < 0 {
		return nil, fmt.Errorf("scale: policies, instances and runs must be positive: %+v, %d runs", p, runs)
	}
	if env.Binary == "" {
		return nil, errors.New("scale: no imager binary (Env.Binary)")
	}
	dir, err := os.MkdirTemp("", "imager-bench-scale-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "policies.yaml")
	data, instances := scalePolicies(p, time.Now())
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return nil, err
	}

	out := make([]ScaleRun, runs)
	for i := range out {
		if out[i].Validate, err = timeValidate(ctx, env.Binary, file, p.Policies); err != nil {
			return nil, err
		}
	}

	daemons := make([]*daemonProc, 0, runs)
	defer func() {
		for _, d := range daemons {
			d.stop()
		}
	}()
	for i := range out {
		store, url, err := openStore(ctx, env) // migrated, as for any restart
		if err != nil {
			return nil, err
		}
		store.Close()
		sim, endpoint, err := simulator(env.Logger, 10, 1, instances)
		if err != nil {
			return nil, err
		}
		defer sim.Close()
		d, err := startDaemon(ctx, env.Binary, file, url, endpoint, filepath.Join(dir, fmt.Sprintf("spool-%d", i)))
		if d != nil {
			daemons = append(daemons, d)
		}
		if err != nil {
			return nil, err
		}
		out[i].Startup = d.startup
	}

	before := make([]cpuTicks, len(daemons))
	for i, d := range daemons {
		if before[i], err = readCPUTicks(d.cmd.Process.Pid); err != nil {
			return nil, err
		}
	}
	idleStart := time.Now()
	if p.Idle > 0 {
		t := time.NewTimer(p.Idle)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
	window := time.Since(idleStart)
	hz := clockTicks()
	for i, d := range daemons {
		if d.exited() {
			return nil, fmt.Errorf("scale: daemon %d exited during the idle window: %s", i+1, d.tail())
		}
		after, err := readCPUTicks(d.cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		out[i].IdleCPU = ratio(float64(after-before[i])/hz, window.Seconds())
		if p.Idle == 0 {
			out[i].IdleCPU = ratio(0, 0)
		}
		if out[i].PeakRSS, err = readPeakRSS(d.cmd.Process.Pid); err != nil {
			return nil, err
		}
	}
	for _, d := range daemons {
		if err := d.stop(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// scalePolicies generates the scale policy file: daily schedules spread over the day in several
// time zones, none due within the next two hours of now (so the daemons stay idle while watched).
func scalePolicies(p ScaleParams, now time.Time) ([]byte, []string) {
	instances := instanceIDs(0x200000, p.Policies*p.Instances)
	policies := make([]genPolicy, p.Policies)
	for i := range policies {
		zone := fireZones[i%len(fireZones)]
		loc, _ := time.LoadLocation(zone)
		// 2 h to 22 h from now, in whole minutes, spread by policy.
		at := now.Add(2*time.Hour + time.Duration(i*7919%1200)*time.Minute).In(loc)
		policies[i] = genPolicy{
			Name:      fmt.Sprintf("scale-%04d", i),
			Schedule:  fmt.Sprintf("%d %d * * *", at.Minute(), at.Hour()),
			Timezone:  zone,
			Instances: instances[i*p.Instances : (i+1)*p.Instances],
		}
	}
	return policyFile(apiBlock{Rate: 10, Workers: 4}, policies), instances
}

// timeValidate runs `imager validate` on file and returns its wall time.
func timeValidate(ctx context.Context, binary, file string, policies int) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, binary, "validate", "--policies", file)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("imager validate: %w: %s", err, lastLines(stderr.String(), 3))
	}
	if want := fmt.Sprintf("%d policies OK", policies); !strings.Contains(stdout.String(), want) {
		return 0, fmt.Errorf("imager validate did not say %q: %s", want, lastLines(stdout.String(), 3))
	}
	return elapsed, nil
}

// daemonProc is one `imager run` subprocess.
type daemonProc struct {
	cmd     *exec.Cmd
	startup time.Duration
	logs    *lineTail
	waited  chan struct{} // closed when the process has exited
	waitErr error
}

// startDaemon starts `imager run` against the database and simulator and waits for the scheduler
// to say it started. The credentials and the endpoint go through the environment, as in production.
func startDaemon(ctx context.Context, binary, policies, dbURL, endpoint, spool string) (*daemonProc, error) {
	cmd := exec.Command(binary, "run", "--policies", policies, "--database-url", dbURL, "--shutdown-grace", "5s")
	cmd.Env = append(filteredEnv(),
		"IMAGER_CVM_ENDPOINT="+endpoint,
		"TENCENTCLOUD_SECRET_ID="+cvmsim.DefaultSecretID,
		"TENCENTCLOUD_SECRET_KEY="+cvmsim.DefaultSecretKey,
		"IMAGER_SPOOL_DIR="+spool,
		"IMAGER_LOG_LEVEL=info",
		"IMAGER_LOG_FORMAT=json",
	)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = io.Discard
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start imager run: %w", err)
	}
	d := &daemonProc{cmd: cmd, logs: &lineTail{}, waited: make(chan struct{})}
	started := make(chan time.Duration, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Bytes()
			d.logs.add(string(line))
			var entry struct {
				Message string `json:"message"`
			}
			if json.Unmarshal(line, &entry) == nil && entry.Message == startedMessage {
				select {
				case started <- time.Since(start):
				default:
				}
			}
		}
	}()
	go func() {
		<-scanned // Wait closes the pipe: read everything first
		d.waitErr = cmd.Wait()
		close(d.waited)
	}()
	select {
	case d.startup = <-started:
		return d, nil
	case <-d.waited:
		return d, fmt.Errorf("imager run exited before it was running (%v): %s", d.waitErr, d.tail())
	case <-ctx.Done():
		return d, ctx.Err()
	case <-time.After(time.Minute):
		return d, fmt.Errorf("imager run: no %q log line within a minute: %s", startedMessage, d.tail())
	}
}

func (d *daemonProc) exited() bool {
	select {
	case <-d.waited:
		return true
	default:
		return false
	}
}

func (d *daemonProc) tail() string { return d.logs.String() }

// stop sends SIGTERM and waits for the daemon to exit (SIGKILL after 30 s). It is idempotent; it
// reports an exit other than the clean one SIGTERM asks for.
func (d *daemonProc) stop() error {
	if !d.exited() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.waited:
		case <-time.After(30 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.waited
			return fmt.Errorf("imager run did not stop within 30 s of SIGTERM: %s", d.tail())
		}
	}
	if d.waitErr != nil {
		return fmt.Errorf("imager run: %w: %s", d.waitErr, d.tail())
	}
	return nil
}

// filteredEnv is this process's environment without the settings the benchmark gives the daemon.
func filteredEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "IMAGER_") || strings.HasPrefix(k, "TENCENTCLOUD_") || k == "DATABASE_URL" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// lineTail keeps the last lines a subprocess logged, for error messages.
type lineTail struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineTail) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, s)
	if len(l.lines) > 5 {
		l.lines = l.lines[len(l.lines)-5:]
	}
}

func (l *lineTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, " | ")
}

// lastLines returns the last n lines of s on one line.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// cpuTicks is a process's user plus system CPU time in clock ticks.
type cpuTicks int64

// readCPUTicks reads utime + stime of pid from /proc/<pid>/stat.
func readCPUTicks(pid int) (cpuTicks, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces; fields after its closing parenthesis start at 3.
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return 0, fmt.Errorf("cpu time of %d: unexpected /proc stat %q", pid, s)
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu time of %d: unexpected /proc stat %q", pid, s)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
	}
	return cpuTicks(utime + stime), nil
}

// readPeakRSS reads VmHWM (the peak resident set size) of pid, in bytes.
func readPeakRSS(pid int) (int64, error) {
	v := procField(fmt.Sprintf("/proc/%d/status", pid), "VmHWM")
	f := strings.Fields(v)
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("peak RSS of %d: unexpected VmHWM %q", pid, v)
	}
	kb, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("peak RSS of %d: %w", pid, err)
	}
	return kb * 1024, nil
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat CPU times: `getconf CLK_TCK`,
// or 100 (its value on every Linux architecture Go supports) when getconf is missing.
func clockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return float64(n)
		}
	}
	return 100
}
