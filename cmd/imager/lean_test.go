package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// forbiddenDep says why the imager binary must not link pkg, or "" when it may. main is whether pkg
// belongs to imager's own module. The benchmark suite runs from cmd/imager-bench and test helpers
// stay in tests, so neither ends up in the binary people deploy.
func forbiddenDep(pkg string, main bool) string {
	switch {
	case pkg == "testing" || strings.HasPrefix(pkg, "testing/"):
		return "the standard testing packages"
	case strings.Contains(pkg, "testify"), strings.Contains(pkg, "goleak"):
		return "a test library"
	case main && strings.Contains(pkg, "bench"):
		return "the benchmark suite (cmd/imager-bench runs it)"
	case main && strings.Contains(pkg, "test"):
		return "a test helper package"
	}
	return ""
}

func TestLeanDepRule(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		pkg       string
		main, bad bool
	}{
		{"testing", false, true},
		{"testing/fstest", false, true},
		{"github.com/stretchr/testify/require", false, true},
		{"go.uber.org/goleak", false, true},
		{"github.com/imager-dev/imager/internal/bench", true, true},
		{"github.com/imager-dev/imager/internal/testenv", true, true},
		{"github.com/imager-dev/imager/internal/pgcluster/pgtest", true, true},
		{"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest", true, true},
		// What the binary does link: the demo's simulator and PostgreSQL launcher, and the
		// standard library's own internal/testlog (os) and internal/synctest (sync).
		{"github.com/imager-dev/imager/internal/cvm/cvmsim", true, false},
		{"github.com/imager-dev/imager/internal/pgcluster", true, false},
		{"internal/testlog", false, false},
		{"internal/synctest", false, false},
		{"os", false, false},
	} {
		require.Equal(t, c.bad, forbiddenDep(c.pkg, c.main) != "", "%s (main module %t)", c.pkg, c.main)
	}
}

// TestImagerDepsAreLean lists everything the imager binary links (go list -deps) and fails on the
// testing package, the benchmark suite, test libraries and imager's test helper packages, naming
// which package pulls each one in.
func TestImagerDepsAreLean(t *testing.T) {
	t.Parallel()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), gobin, "list", "-deps",
		"-f", `{{.ImportPath}}|{{with .Module}}{{.Main}}{{end}}|{{join .Imports " "}}`, ".")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "go list -deps ./cmd/imager: %s", stderr.String())

	importers := map[string][]string{}
	var pkgs []string
	inModule := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "|", 3)
		require.Len(t, f, 3, "go list line %q", line)
		pkgs = append(pkgs, f[0])
		inModule[f[0]] = f[1] == "true"
		for _, imp := range strings.Fields(f[2]) {
			importers[imp] = append(importers[imp], f[0])
		}
	}
	require.Contains(t, pkgs, "github.com/imager-dev/imager/cmd/imager", "go list ran on cmd/imager")
	require.True(t, inModule["github.com/imager-dev/imager/cmd/imager"], "cmd/imager is in the main module")

	var bad []string
	for _, p := range pkgs {
		if why := forbiddenDep(p, inModule[p]); why != "" {
			bad = append(bad, p+": "+why+"; imported by "+strings.Join(importers[p], ", "))
		}
	}
	require.Empty(t, bad, "the imager binary must link neither testing nor the bench suite nor test helpers")
}

// TestUsageHasNoBench: the benchmark suite is cmd/imager-bench, not a command of imager.
func TestUsageHasNoBench(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	require.Equal(t, exitOK, dispatch(t.Context(), []string{"--help"}, &stdout, &stderr))
	require.Contains(t, stdout.String(), "demo")
	require.NotContains(t, stdout.String(), "bench")
	stdout.Reset()
	require.Equal(t, exitUsage, dispatch(t.Context(), []string{"bench"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), `unknown command "bench"`)
}
