package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
)

// jsonKeys returns the keys of one JSON object line in order, duplicates included; strict log
// pipelines reject a line that repeats a key, and encoding/json would silently keep the last.
func jsonKeys(line string) ([]string, error) {
	dec := json.NewDecoder(strings.NewReader(line))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('{') {
		return nil, fmt.Errorf("not an object: %v", tok)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage // values are skipped whole (nested objects are not log keys)
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

func TestJSONKeysSeesDuplicates(t *testing.T) {
	t.Parallel()
	keys, err := jsonKeys(`{"a":1,"b":{"a":2},"a":"x"}`)
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b", "a"}, keys)
	_, err = jsonKeys(`not json`)
	require.Error(t, err)
}

// requireCleanLogLines checks every stderr line of a daemon: a JSON object, each key once, and
// durations only under keys that name their unit.
func requireCleanLogLines(t *testing.T, stderr string) (lines int, messages map[string]bool) {
	t.Helper()
	messages = map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(stderr))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		keys, err := jsonKeys(line)
		require.NoError(t, err, "not a JSON log line: %s", line)
		seen := map[string]bool{}
		for _, k := range keys {
			require.False(t, seen[k], "key %q twice in: %s", k, line)
			seen[k] = true
			for _, bare := range []string{"took", "duration", "retry_in", "grace", "poll_interval", "next_poll_in", "elapsed"} {
				require.NotEqual(t, bare, k, "a duration without its unit in the key: %s", line)
			}
		}
		var m struct{ Message string }
		require.NoError(t, json.Unmarshal([]byte(line), &m))
		messages[m.Message] = true
		lines++
	}
	require.NoError(t, sc.Err())
	return lines, messages
}

// TestDaemonLogLinesHaveEachKeyOnce runs the daemon wiring (once, at debug level) through the
// components that log: targets resolving a tag selector with a retry, the quota gate, the
// scheduler retrying a transient error, the tracker finding images by exact name, retention
// pruning, the history store and the CVM client.
func TestDaemonLogLinesHaveEachKeyOnce(t *testing.T) {
	e := newE2E(t)
	for _, id := range []string{"ins-log00001", "ins-log00002"} {
		e.sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou", Zone: "ap-guangzhou-3",
			Tags: map[string]string{"env": "prod"}})
	}
	e.sim.SetSeedShape(true) // CreateImage answers without ImageId: the tracker finds images by name
	policies := e.writePolicies(t, `version: 1
defaults: {region: ap-guangzhou}
policies:
  - name: logs
    schedule: "@daily"
    select: {tags: {env: prod}}
    retention: {keep_last: 1}
`)
	var all strings.Builder
	for night := 1; night <= 2; night++ {
		e.sim.QueueErrors(cvmsim.ActionDescribeInstances, "InternalError")
		e.sim.QueueErrors(cvmsim.ActionCreateImage, "InternalError")
		code, stdout, stderr := e.imager(t, append(e.daemonArgs("once", policies),
			"--policy", "logs", "--slot", fmt.Sprintf("2026-10-%02dT03:00:00Z", night))...)
		require.Equalf(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
		all.WriteString(stderr)
	}
	lines, messages := requireCleanLogLines(t, all.String())
	require.Greater(t, lines, 20)
	for _, want := range []string{"image found by exact name", "DescribeInstances failed; retrying", "cvm call"} {
		require.True(t, messages[want], "the run logged no %q line; messages: %v", want, messages)
	}
}

// One-shot commands print results on stdout and, by default, log nothing below a warning.
func TestOneShotCommandsLogOnlyWarnings(t *testing.T) {
	e := newE2E(t)
	t.Setenv("IMAGER_LOG_LEVEL", "")
	code, stdout, stderr := e.imager(t, "migrate", "--database-url", e.dbURL)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "applied")
	require.Empty(t, stderr)

	t.Setenv("IMAGER_LOG_LEVEL", "info") // the environment raises it again
	code, _, stderr = e.imager(t, "migrate", "--database-url", e.dbURL)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stderr, `"level":"info"`)
	_, _ = requireCleanLogLines(t, stderr)
}

func TestConsoleLogsAreColouredOnlyOnATerminal(t *testing.T) {
	t.Parallel()
	o := options{logLevel: "info", logFormat: "console"}
	pr, pw := io.Pipe()
	log, err := o.logger(pw)
	require.NoError(t, err)
	go func() {
		log.Info().Str("k", "v").Msg("hello")
		pw.Close()
	}()
	out, err := io.ReadAll(pr)
	require.NoError(t, err)
	require.Contains(t, string(out), "hello")
	require.NotContains(t, string(out), "\x1b[", "ANSI colours written into a pipe")
}
