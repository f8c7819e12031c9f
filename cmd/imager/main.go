// Command imager keeps CVM custom images of Tencent Cloud instances on a schedule.
//
// It is the only place that reads flags, environment variables and signals; everything else is
// built from options in the internal packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// command is one subcommand of the binary.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"run", "run the daemon: migrate, schedule every policy, dispatch, record (SIGHUP reloads policies)", cmdRun},
		{"once", "fire one policy now through the same pool, pacing and history; exit 0 only if every slot succeeded", cmdOnce},
		{"validate", "check policy files, print every error as file:line, then each policy's next fire times", cmdValidate},
		{"status", "the leader (term, lease expiry), the replicas seen, and each policy's last and next slot (--format json)", cmdStatus},
		{"history", "recent runs, failures with their codes, and the last good image per instance", cmdHistory},
		{"latest", "the image to restore an instance from, with the tccli commands that use it", cmdLatest},
		{"restore-test", "run a restore test now (NAME --now): launch an instance from the latest image, check it through TAT, terminate it; exit 0 only if it passed", cmdRestoreTest},
		{"next", "upcoming fires of every policy and how many targets each would have now", cmdNext},
		{"prune", "apply retention now, or list what it would delete (--dry-run)", cmdPrune},
		{"prune-history", "delete history older than history.keep now, or count what would go (--dry-run); the leader does it hourly", cmdPruneHistory},
		{"migrate", "apply database migrations (idempotent; run does it too)", cmdMigrate},
		{"demo", "the whole daemon against the built-in CVM simulator and a throwaway PostgreSQL; prints the audit (--keep-running: then keeps it all up to try the other commands on)", cmdDemo},
		{"sim", "demo --keep-running: the simulator, a database and a leading daemon to point run, history, latest, status and /metrics at", cmdSim},
		{"version", "print version and commit", cmdVersion},
	}
}

// exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // the command ran and something failed
	exitUsage = 2 // bad flags or arguments
)

// run is main without os.Exit: SIGINT/SIGTERM cancel the command's context.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return dispatch(ctx, args, stdout, stderr)
}

// dispatch runs the command named by args[0]; tests call it with their own context.
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "imager: unknown command %q (run 'imager --help' for the list)\n", args[0])
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "imager keeps scheduled CVM custom images of Tencent Cloud instances.")
	fmt.Fprintln(w, "\nUsage: imager <command> [flags]   (imager <command> --help for its flags)\n\nCommands:")
	width := 0
	for _, c := range commands() {
		width = max(width, len(c.name))
	}
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-*s %s\n", width, c.name, c.summary)
	}
}

// parseFlags parses a command's flags; it reports -h/--help (exit 0) and bad flags (exit 2) in one
// clear line naming the command and the flag.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (ok bool, code int) {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "Usage: imager %s [flags]\n\nFlags:\n", fs.Name())
		fs.PrintDefaults()
		return false, exitOK
	case err != nil:
		fmt.Fprintf(stderr, "imager %s: %v (see 'imager %s --help')\n", fs.Name(), err, fs.Name())
		return false, exitUsage
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "imager %s: unexpected argument %q (see 'imager %s --help')\n", fs.Name(), fs.Arg(0), fs.Name())
		return false, exitUsage
	}
	return true, exitOK
}

func cmdVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	fmt.Fprintf(stdout, "imager %s (commit %s)\n", version, commit)
	return exitOK
}
