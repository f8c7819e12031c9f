package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// configMapVolume lays out a directory as the kubelet mounts a ConfigMap: the data in a
// timestamped directory, a `..data` symlink to it, and each key a symlink through `..data`.
type configMapVolume struct {
	dir string
	gen int
}

func (v *configMapVolume) write(t *testing.T, files map[string]string) {
	t.Helper()
	v.gen++
	data := filepath.Join(v.dir, "..2026_01_01_00_00_0"+string(rune('0'+v.gen)))
	require.NoError(t, os.Mkdir(data, 0o755))
	for name, body := range files {
		require.NoError(t, os.WriteFile(filepath.Join(data, name), []byte(body), 0o644))
	}
	// The kubelet's swap: a new symlink under a temporary name, renamed over `..data` in one step.
	tmp := filepath.Join(v.dir, "..data_tmp")
	require.NoError(t, os.Symlink(filepath.Base(data), tmp))
	require.NoError(t, os.Rename(tmp, filepath.Join(v.dir, "..data")))
	for name := range files {
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			require.NoError(t, os.Symlink(filepath.Join("..data", name), link))
		}
	}
}

// TestRunReloadsWhenTheConfigMapIsSwapped drives `imager run` on a ConfigMap-like directory: a
// kubelet symlink swap reloads the policies without SIGHUP, a bad swap keeps the running ones, and
// --watch-policies=false turns the watch off.
func TestRunReloadsWhenTheConfigMapIsSwapped(t *testing.T) {
	one := "version: 1\npolicies:\n  - {name: one, schedule: '0 3 * * *', region: ap-guangzhou, instances: [ins-aaaaaaaa]}\n"
	two := one + "  - {name: two, schedule: '0 4 * * *', region: ap-guangzhou, instances: [ins-bbbbbbbb]}\n"
	for _, policiesArg := range []string{"dir", "file"} {
		t.Run(policiesArg, func(t *testing.T) {
			e := newE2E(t)
			vol := &configMapVolume{dir: filepath.Join(e.dir, "policies")}
			require.NoError(t, os.Mkdir(vol.dir, 0o755))
			vol.write(t, map[string]string{"policies.yaml": one})
			path := vol.dir
			if policiesArg == "file" {
				path = filepath.Join(vol.dir, "policies.yaml")
			}

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pr, pw := io.Pipe()
			logs := newLogLines(pr)
			done := make(chan int, 1)
			go func() {
				done <- dispatch(ctx, e.daemonArgs("run", path), io.Discard, pw)
				pw.Close()
			}()
			soon := func() time.Time { return time.Now().Add(30 * time.Second) }
			logs.waitLine(t, "watching the policy files", soon())
			logs.waitLine(t, "imager running", soon())

			vol.write(t, map[string]string{"policies.yaml": two})
			require.Contains(t, logs.waitLine(t, "policy files changed; reloading", soon()), `"..data"`, "the swap is one reload")
			line := logs.waitLine(t, "policies reloaded", soon())
			var got struct{ Policies int }
			require.NoError(t, json.Unmarshal([]byte(line), &got))
			require.Equal(t, 2, got.Policies)

			vol.write(t, map[string]string{"policies.yaml": two + "  - {name: three, schedule: '0 99 * * *', region: ap-guangzhou, instances: [ins-cccccccc]}\n"})
			require.Contains(t, logs.waitLine(t, "policy reload failed", soon()), "policies.yaml:5: policies[2].schedule")

			cancel()
			logs.waitLine(t, "imager stopped", soon())
			require.Equal(t, 0, <-done)
			for range logs.lines {
			}
		})
	}
}

// TestRunWatchPoliciesOff: with --watch-policies=false a change of the files does nothing until
// SIGHUP (only the flag is checked here: the daemon says it does not watch).
func TestRunWatchPoliciesOff(t *testing.T) {
	e := newE2E(t)
	path := e.writePolicies(t, "version: 1\npolicies:\n  - {name: one, schedule: '0 3 * * *', region: ap-guangzhou, instances: [ins-aaaaaaaa]}\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	logs := newLogLines(pr)
	done := make(chan int, 1)
	go func() {
		done <- dispatch(ctx, append(e.daemonArgs("run", path), "--watch-policies=false"), io.Discard, pw)
		pw.Close()
	}()
	var before []string
	for line := range logs.lines {
		before = append(before, line)
		if json.Valid([]byte(line)) && containsMsg(line, "imager running") {
			break
		}
	}
	for _, l := range before {
		require.NotContains(t, l, "watching the policy files")
	}
	cancel()
	require.Equal(t, 0, <-done)
	for range logs.lines {
	}
}

func containsMsg(line, msg string) bool {
	var v struct{ Message string }
	return json.Unmarshal([]byte(line), &v) == nil && v.Message == msg
}
