package main

import (
	"bytes"
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
