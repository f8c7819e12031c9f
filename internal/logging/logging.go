// Package logging builds a process logger from the --log-level and --log-format flags that the
// imager and imager-bench commands share (README, "Logs").
package logging

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// New returns a logger writing to stderr at level (debug, info, warn or error) in format: json, or
// console for people, coloured only when stderr is a terminal. A bad value is an error naming the
// flag that carries it.
func New(level, format string, stderr io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(strings.ToLower(level))
	if err != nil || level == "" || lvl > zerolog.ErrorLevel || lvl < zerolog.DebugLevel {
		return zerolog.Nop(), fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", level)
	}
	var w io.Writer
	switch format {
	case "json":
		w = stderr
	case "console":
		w = zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.RFC3339, NoColor: !isTerminal(stderr)}
	default:
		return zerolog.Nop(), fmt.Errorf("--log-format: %q is not one of json, console", format)
	}
	// Many goroutines log at once; SyncWriter serialises whole events onto any writer.
	return zerolog.New(zerolog.SyncWriter(w)).Level(lvl).With().Timestamp().Logger(), nil
}

// isTerminal reports whether w is a terminal: console logs carry ANSI colours only there, never
// into files and pipes.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}
