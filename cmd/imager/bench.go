package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/imager-dev/imager/internal/bench"
	"github.com/imager-dev/imager/internal/history"
)

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	o.logFlags(fs)
	o.logFormat = "console"
	fs.Lookup("log-format").DefValue = "console"
	o.logLevel = "error"
	fs.Lookup("log-level").DefValue = "error"
	out := fs.String("out", "BENCHMARKS.md", "file the report is written to (- for standard output)")
	only := fs.String("only", "", "comma-separated benchmarks to run, of "+strings.Join(bench.Names(), ", ")+
		" (default: "+strings.Join(bench.DefaultNames(), ", ")+")")
	runs := fs.Int("runs", 3, "runs of each benchmark; the report gives the median, min and max")
	quick := fs.Bool("quick", false, "tiny sizes: a smoke run in seconds whose figures mean nothing")
	binary := fs.String("binary", "", "imager binary the scale benchmark runs (default: this executable)")
	dbURL := fs.String("database-url", "", "PostgreSQL server to create the benchmarks' databases on (default: a throwaway cluster)")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if *runs < 1 {
		fmt.Fprintf(stderr, "imager bench: --runs must be at least 1, not %d\n", *runs)
		return exitUsage
	}
	var names []string
	for _, n := range strings.Split(*only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager bench: %v\n", err)
		return exitUsage
	}
	bin := *binary
	if bin == "" {
		if bin, err = os.Executable(); err != nil {
			fmt.Fprintf(stderr, "imager bench: --binary: cannot find this executable: %v\n", err)
			return exitUsage
		}
	}
	queries := make([]bench.Query, len(history.Cookbook))
	for i, q := range history.Cookbook {
		queries[i] = bench.Query{Title: q.Title, SQL: q.SQL, Source: "cookbook.go"}
	}
	// The README's other audit queries are measured too when the README is at hand (make bench
	// runs from the repository's root).
	var cookbook []bench.Query
	if readme, err := os.ReadFile("README.md"); err == nil {
		cookbook = bench.CookbookQueries(readme)
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
		Binary:       bin,
		AuditQueries: queries,
		Cookbook:     cookbook,
		Progress:     stderr,
		Logger:       log,
	})
	if err != nil {
		fmt.Fprintf(stderr, "imager bench: %v\n", err)
		return exitFail
	}
	if *out == "-" {
		report.Markdown(stdout)
		return exitOK
	}
	if err := writeFileAtomic(*out, report.Markdown); err != nil {
		fmt.Fprintf(stderr, "imager bench: --out: %v\n", err)
		return exitFail
	}
	fmt.Fprintf(stderr, "imager bench: wrote %s\n", *out)
	return exitOK
}

// writeFileAtomic writes path through a temporary file in the same directory, so an interrupted
// run never leaves half a report.
func writeFileAtomic(path string, write func(io.Writer)) error {
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
