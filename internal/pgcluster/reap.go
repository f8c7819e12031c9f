package pgcluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// reapStale stops and removes the clusters that earlier processes started in the temporary
// directory and never stopped (a test binary killed by its timeout, a demo killed with -9).
// Only directories whose recorded owner process no longer exists are touched.
func reapStale(log zerolog.Logger, pgCtl string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, dir := range dirs {
		if !ownerGone(dir) {
			continue
		}
		r, err := newRunner(dir)
		if err != nil {
			continue
		}
		dataDir := filepath.Join(dir, "data")
		if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, _ = r.outputContext(ctx, pgCtl, "stop", "-w", "-m", "immediate", "-D", dataDir)
			cancel()
		}
		if err := os.RemoveAll(dir); err == nil {
			log.Info().Str("dir", dir).Msg("removed a cluster left behind by a process that exited")
		}
	}
}

// ownerGone reports whether dir records an owner process that no longer exists. Without a
// readable owner file the answer is false: the directory may be one being created right now.
func ownerGone(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
