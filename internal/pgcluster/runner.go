package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runner runs the PostgreSQL programs: as the postgres OS user when this process is root
// (initdb and postgres refuse to run as root), with a clean environment and the C locale.
type runner struct {
	cred *syscall.Credential // nil: run as the current user
	env  []string
	dir  string // working directory the server user can enter
}

// newRunner prepares a runner whose programs work in dir.
func newRunner(dir string) (*runner, error) {
	r := &runner{env: cleanEnv(), dir: dir}
	if os.Geteuid() != 0 {
		return r, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, errors.New("running as root but no 'postgres' OS user exists (initdb refuses root): create it (useradd --system postgres) or run as another user")
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("OS user postgres has a non-numeric uid %q or gid %q", u.Uid, u.Gid)
	}
	r.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return r, nil
}

// own hands path to the user the programs run as.
func (r *runner) own(path string) error {
	if r.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(r.cred.Uid), int(r.cred.Gid)); err != nil {
		return fmt.Errorf("hand %s to the postgres user: %w", path, err)
	}
	return nil
}

// output runs a program to completion and returns what it printed. The error is one line: the
// program, its exit status and the last line it printed.
func (r *runner) output(name string, args ...string) (string, error) {
	return r.outputContext(context.Background(), name, args...)
}

func (r *runner) outputContext(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = r.env
	cmd.Dir = r.dir
	if r.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred}
	}
	// pg_ctl start leaves a server running; should it ever keep our pipe open, do not wait forever.
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := lastLine(string(out))
		if msg == "" {
			return string(out), fmt.Errorf("%s: %w", filepath.Base(name), err)
		}
		return string(out), fmt.Errorf("%s: %w: %s", filepath.Base(name), err, msg)
	}
	return string(out), nil
}

// cleanEnv is this process's environment without PG* variables (they would redirect the
// programs to another server or data directory), in the C locale so messages are predictable.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

// lastLine returns the last non-empty line of s, trimmed.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return ""
}
