package pgcluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// defaultSearchGlob is where Debian and Ubuntu install the server binaries of each major version.
const defaultSearchGlob = "/usr/lib/postgresql/*/bin"

// binaries are the server programs a cluster needs, all from one installation.
type binaries struct {
	initdb string
	pgCtl  string
}

// findBinaries looks for initdb on PATH first, then in the highest-versioned directory matching
// glob. pg_ctl must sit beside the initdb that was found, so both come from one version.
func findBinaries(glob string) (binaries, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if b, ok := besideInitdb(p); ok {
			return b, nil
		}
	}
	dirs, _ := filepath.Glob(glob) // the only possible error is a malformed pattern, a constant here
	sort.SliceStable(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, dir := range dirs {
		if b, ok := besideInitdb(filepath.Join(dir, "initdb")); ok {
			return b, nil
		}
	}
	return binaries{}, fmt.Errorf("initdb not found on PATH or under %s: install PostgreSQL server binaries (apt-get install postgresql) or set IMAGER_TEST_DATABASE_URL", glob)
}

// besideInitdb returns initdb and the pg_ctl in its directory when both are executable files.
func besideInitdb(initdb string) (binaries, bool) {
	pgCtl := filepath.Join(filepath.Dir(initdb), "pg_ctl")
	if !isExecutable(initdb) || !isExecutable(pgCtl) {
		return binaries{}, false
	}
	return binaries{initdb: initdb, pgCtl: pgCtl}, true
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// versionOf reads the major version out of a path like /usr/lib/postgresql/15/bin ("9.6" → 9.6);
// a directory that is not a number sorts last.
func versionOf(binDir string) float64 {
	v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	if err != nil {
		return -1
	}
	return v
}

// supportsNoSync reports whether this initdb accepts --no-sync (PostgreSQL 10 and later).
func supportsNoSync(r *runner, initdb string) bool {
	out, err := r.output(initdb, "--help")
	return err == nil && strings.Contains(out, "--no-sync")
}
