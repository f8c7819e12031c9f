package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFlags checks the command's answers to --help and to bad flags; none of these cases starts a
// benchmark.
func TestFlags(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name           string
		args           []string
		code           int
		stdout, stderr string
	}{
		{"help", []string{"--help"}, exitOK, "Usage: imager-bench [flags]", ""},
		{"unknown flag", []string{"--nope"}, exitUsage, "", "imager-bench: flag provided but not defined: -nope (see 'imager-bench --help')"},
		{"argument", []string{"pacing"}, exitUsage, "", `imager-bench: unexpected argument "pacing"`},
		{"runs", []string{"--runs", "0"}, exitUsage, "", "imager-bench: --runs must be at least 1, not 0"},
		{"log level", []string{"--log-level", "loud"}, exitUsage, "", `imager-bench: --log-level: "loud" is not one of debug, info, warn, error`},
		{"unknown benchmark", []string{"--only", "nope", "--out", "-"}, exitFail, "", `imager-bench: unknown benchmark "nope" (known: pacing,`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			require.Equal(t, c.code, runBench(t.Context(), c.args, &stdout, &stderr), "stderr: %s", stderr.String())
			require.Contains(t, stdout.String(), c.stdout)
			require.Contains(t, stderr.String(), c.stderr)
			if c.code != exitOK {
				require.Empty(t, stdout.String(), "no report on a bad command line")
			}
		})
	}
}

// TestWriteFileAtomic: a report replaces a regular file whole, leaving no temporary file, and
// --out naming a device writes to the device instead of renaming a file over it. The device is
// reached through a symbolic link in a temporary directory, so a regression replaces the link,
// never /dev/null itself.
func TestWriteFileAtomic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	report := func(w io.Writer) { _, _ = io.WriteString(w, "# imager benchmarks\n") }

	file := filepath.Join(dir, "BENCHMARKS.md")
	require.NoError(t, os.WriteFile(file, []byte("old report, longer than the new one\n"), 0o600))
	require.NoError(t, writeFileAtomic(file, report))
	got, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Equal(t, "# imager benchmarks\n", string(got))
	fi, err := os.Stat(file)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())

	device := filepath.Join(dir, "null")
	require.NoError(t, os.Symlink(os.DevNull, device))
	require.NoError(t, writeFileAtomic(device, report))
	li, err := os.Lstat(device)
	require.NoError(t, err)
	require.Equal(t, os.ModeSymlink, li.Mode().Type(), "the link was written through, not replaced")

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 2, "no temporary file left behind: %v", entries)
}
