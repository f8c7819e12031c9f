package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// Load is the background work of a "loaded machine" run: one busy loop per CPU and a loop of
// `go build -a` (compiling the standard library from scratch, over and over), so that imager's
// timers fire late and its calls leave with scheduling jitter, as on a busy host.
type Load struct {
	cmds []*exec.Cmd
	done []chan struct{}
}

// LoadDescription says what StartLoad runs, for the report.
func LoadDescription() string {
	return fmt.Sprintf("%d CPU hogs (one busy shell loop per CPU) and a `go build -a std` loop", runtime.NumCPU())
}

// StartLoad starts the background load. Each process runs in a process group of its own so Stop
// ends it and everything it started (the compilers of go build).
func StartLoad(ctx context.Context) (*Load, error) {
	l := &Load{}
	scripts := make([]string, 0, runtime.NumCPU()+1)
	for range runtime.NumCPU() {
		scripts = append(scripts, "while :; do :; done")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("loaded machine: the go command is needed for the build loop: %w", err)
	}
	scripts = append(scripts, fmt.Sprintf("while :; do %q build -a std >/dev/null 2>&1; done", gobin))
	for _, s := range scripts {
		cmd := exec.Command("sh", "-c", s)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Stdout, cmd.Stderr = nil, nil
		if err := cmd.Start(); err != nil {
			l.Stop()
			return nil, fmt.Errorf("loaded machine: start %q: %w", s, err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = cmd.Wait()
		}()
		l.cmds = append(l.cmds, cmd)
		l.done = append(l.done, done)
	}
	// Let the build loop get going before the measured run starts.
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-ctx.Done():
		l.Stop()
		return nil, ctx.Err()
	case <-t.C:
	}
	return l, nil
}

// Stop ends the load's process groups and waits for their leaders.
func (l *Load) Stop() {
	if l == nil {
		return
	}
	for i, cmd := range l.cmds {
		if cmd.Process != nil {
			if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				fmt.Fprintf(os.Stderr, "bench: stop load process %d: %v\n", cmd.Process.Pid, err)
			}
		}
		<-l.done[i]
	}
	l.cmds, l.done = nil, nil
}
