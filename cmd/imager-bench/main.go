// Command imager-bench runs imager's benchmark suite (internal/bench) and writes BENCHMARKS.md.
//
// It is a command of its own so that the imager binary links neither the suite nor the testing
// package the suite's hot-piece benchmarks use. The scale benchmark runs the imager binary as a
// subprocess: --binary, or cmd/imager built with the go tool.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/imager-dev/imager/internal/bench"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/logging"
)

// exit codes, as imager's.
const (
	exitOK    = 0
	exitFail  = 1 // the suite ran and something failed
	exitUsage = 2 // bad flags or arguments
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run is main without os.Exit: SIGINT/SIGTERM cancel the suite.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runBench(ctx, args, stdout, stderr)
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("imager-bench", flag.ContinueOnError)
	logLevel := fs.String("log-level", "error", "debug, info, warn or error: the logs of the components under test")
	logFormat := fs.String("log-format", "console", "json, or console for people: coloured only when stderr is a terminal")
	out := fs.String("out", "BENCHMARKS.md", "file the report is written to (- for standard output)")
	only := fs.String("only", "", "comma-separated benchmarks to run, of "+strings.Join(bench.Names(), ", ")+
		" (default: "+strings.Join(bench.DefaultNames(), ", ")+")")
	runs := fs.Int("runs", 3, "runs of each benchmark; the report gives the median, min and max")
	quick := fs.Bool("quick", false, "tiny sizes: a smoke run in seconds whose figures mean nothing")
	binary := fs.String("binary", "", "imager binary the scale benchmark runs (default: cmd/imager built with go build into a temporary directory)")
	dbURL := fs.String("database-url", "", "PostgreSQL server to create the benchmarks' databases on (default: a throwaway cluster)")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if *runs < 1 {
		fmt.Fprintf(stderr, "imager-bench: --runs must be at least 1, not %d\n", *runs)
		return exitUsage
	}
	var names []string
	for _, n := range strings.Split(*only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	log, err := logging.New(*logLevel, *logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager-bench: %v\n", err)
		return exitUsage
	}
	queries := make([]bench.Query, len(history.Cookbook))
	for i, q := range history.Cookbook {
		queries[i] = bench.Query{Title: q.Title, SQL: q.SQL, Source: "cookbook.go"}
	}
	// The other queries of docs/audit.md's cookbook are measured too when the file is at hand
	// (make bench runs from the repository's root).
	var cookbook []bench.Query
	if doc, err := os.ReadFile(filepath.Join("docs", "audit.md")); err == nil {
		cookbook = bench.CookbookQueries(doc)
	}

	var newDB func(context.Context) (string, error)
	if *dbURL != "" {
		newDB = bench.ServerDatabases(*dbURL)
	}
	report, err := bench.Run(ctx, bench.Config{
		NewDatabase:  newDB,
		Only:         names,
		Runs:         *runs,
		Quick:        *quick,
		Binary:       *binary,
		AuditQueries: queries,
		Cookbook:     cookbook,
		Progress:     stderr,
		Logger:       log,
	})
	if err != nil {
		fmt.Fprintf(stderr, "imager-bench: %v\n", err)
		return exitFail
	}
	if *out == "-" {
		report.Markdown(stdout)
		return exitOK
	}
	if err := writeFileAtomic(*out, report.Markdown); err != nil {
		fmt.Fprintf(stderr, "imager-bench: --out: %v\n", err)
		return exitFail
	}
	fmt.Fprintf(stderr, "imager-bench: wrote %s\n", *out)
	return exitOK
}

// parseFlags parses the flags; it reports -h/--help (exit 0) and bad flags (exit 2) in one clear
// line naming the flag.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (ok bool, code int) {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fmt.Fprintln(stdout, "imager-bench runs imager's benchmark suite and writes BENCHMARKS.md.")
		fmt.Fprintf(stdout, "\nUsage: imager-bench [flags]   (make bench runs every benchmark)\n\nFlags:\n")
		fs.PrintDefaults()
		return false, exitOK
	case err != nil:
		fmt.Fprintf(stderr, "imager-bench: %v (see 'imager-bench --help')\n", err)
		return false, exitUsage
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "imager-bench: unexpected argument %q (see 'imager-bench --help')\n", fs.Arg(0))
		return false, exitUsage
	}
	return true, exitOK
}

// writeFileAtomic writes path through a temporary file in the same directory, so an interrupted
// run never leaves half a report. A path that exists and is not a regular file (/dev/null, a pipe)
// is written in place: renaming over it would replace the device itself.
func writeFileAtomic(path string, write func(io.Writer)) error {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		write(f)
		return f.Close()
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	write(f)
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
