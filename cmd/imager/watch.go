package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/rs/zerolog"
)

// policyWatchDebounce is how long the policy files must stay quiet before a change reloads them:
// an editor's save or a kubelet's symlink swap is several events, and they make one reload.
const policyWatchDebounce = 500 * time.Millisecond

// watchPolicies calls changed (debounced) whenever the policy files at path may have changed,
// until ctx ends. It watches the directory that holds them, not the files: a Kubernetes ConfigMap
// volume replaces its files by renaming the `..data` symlink to a new directory, which a watch on
// the old file would never see, and editors often replace a file by renaming over it. changed
// must not block (cmdRun's does a non-blocking send on the one-slot reload channel).
func watchPolicies(ctx context.Context, path string, changed func(), log zerolog.Logger) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("--policies: %w", err)
	}
	dir, relevant := filepath.Dir(path), policyFileEvent(filepath.Base(path))
	if info.IsDir() {
		dir, relevant = path, policyDirEvent
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policies: %w", err)
	}
	if err := w.Add(dir); err != nil {
		_ = w.Close()
		return fmt.Errorf("watch policies: %s: %w", dir, err)
	}
	log.Info().Str("policies_path", path).Str("watched_dir", dir).Msg("watching the policy files; a change reloads them")
	go func() {
		defer w.Close()
		var (
			debounce *time.Timer
			due      <-chan time.Time // nil: nothing pending
			names    []string
		)
		defer func() {
			if debounce != nil {
				debounce.Stop()
			}
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn().Err(err).Str("watched_dir", dir).Msg("watching the policy files; SIGHUP still reloads them")
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				// A change of mode alone (touch, chmod) does not change what Load reads.
				name := filepath.Base(ev.Name)
				if ev.Op == fsnotify.Chmod || !relevant(name) {
					continue
				}
				if len(names) < 10 && !slices.Contains(names, name) {
					names = append(names, name)
				}
				if debounce == nil {
					debounce = time.NewTimer(policyWatchDebounce)
				} else {
					debounce.Reset(policyWatchDebounce)
				}
				due = debounce.C
			case <-due:
				log.Info().Str("policies_path", path).Strs("changed", names).Msg("policy files changed; reloading")
				names, due = nil, nil
				changed()
			}
		}
	}()
	return nil
}

// policyFileEvent accepts events on the policy file itself and on the names a ConfigMap volume
// swaps (`..data`, `..2024_01_01_00_00_00.123`): the file may be a symlink through them.
func policyFileEvent(base string) func(string) bool {
	return func(name string) bool { return name == base || strings.HasPrefix(name, "..") }
}

// policyDirEvent accepts events on the files policy.Load reads from a directory (*.yaml, *.yml,
// not hidden) and on the names a ConfigMap volume swaps.
func policyDirEvent(name string) bool {
	if strings.HasPrefix(name, "..") {
		return true
	}
	ext := filepath.Ext(name)
	return !strings.HasPrefix(name, ".") && (ext == ".yaml" || ext == ".yml")
}
