package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/leader"
	"github.com/imager-dev/imager/internal/logging"
	"github.com/imager-dev/imager/internal/metrics"
)

// options are the flags and environment shared by the commands. Flags win over environment
// variables, which win over defaults.
type options struct {
	policies      string
	databaseURL   string
	logLevel      string
	logFormat     string
	listen        string
	webConfig     string // --web-config: TLS and basic auth for --listen
	cvmEndpoint   string
	apiTimeout    time.Duration
	spoolDir      string
	shutdownGrace time.Duration
	pollInterval  time.Duration
	leaseTTL      time.Duration
	apiDryRun     bool
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func (o *options) policyFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.policies, "policies", envOr("IMAGER_POLICIES", "policies.yaml"),
		"policy file or directory of *.yaml/*.yml files (env IMAGER_POLICIES)")
}

// quietCommands print their results on stdout; by default they log only warnings and errors, so
// the results are not buried under progress lines (docs/cli.md, "Logs").
var quietCommands = map[string]bool{
	"history": true, "next": true, "validate": true, "prune": true, "migrate": true,
	"status": true, "latest": true, "demo": true, "prune-history": true,
}

// logFlags adds --log-level and --log-format. Their defaults depend on the command (fs's name):
// info and json for the daemon and once, warn for the one-shot commands, console for the demo;
// IMAGER_LOG_LEVEL and IMAGER_LOG_FORMAT override the defaults and the flags override both.
func (o *options) logFlags(fs *flag.FlagSet) {
	level, format := "info", "json"
	if quietCommands[fs.Name()] {
		level = "warn"
	}
	if fs.Name() == "demo" {
		format = "console"
	}
	fs.StringVar(&o.logLevel, "log-level", envOr("IMAGER_LOG_LEVEL", level), "debug, info, warn or error (env IMAGER_LOG_LEVEL)")
	fs.StringVar(&o.logFormat, "log-format", envOr("IMAGER_LOG_FORMAT", format),
		"json, or console for people: coloured only when stderr is a terminal (env IMAGER_LOG_FORMAT)")
}

func (o *options) databaseFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.databaseURL, "database-url", os.Getenv("DATABASE_URL"),
		"PostgreSQL URL, e.g. postgres://imager@db:5432/imager (env DATABASE_URL)")
}

// endpointFlag is --cvm-endpoint, for every command that calls the CVM API.
func (o *options) endpointFlag(fs *flag.FlagSet) {
	fs.StringVar(&o.cvmEndpoint, "cvm-endpoint", os.Getenv("IMAGER_CVM_ENDPOINT"),
		"override the CVM endpoint for every region, e.g. http://127.0.0.1:18080 (env IMAGER_CVM_ENDPOINT)")
	fs.DurationVar(&o.apiTimeout, "api-timeout", cvm.DefaultTimeout,
		"bound on each CVM API call; a call cut off is retried as a timeout whose outcome is unknown")
}

func (o *options) daemonFlags(fs *flag.FlagSet) {
	o.endpointFlag(fs)
	fs.StringVar(&o.spoolDir, "spool-dir", envOr("IMAGER_SPOOL_DIR", defaultSpoolDir()),
		"directory for outcomes written while PostgreSQL is away, replayed when it is back (env IMAGER_SPOOL_DIR)")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 30*time.Second,
		"on SIGTERM/SIGINT, how long in-flight API calls may take before they are cut off")
	fs.DurationVar(&o.pollInterval, "poll-interval", 30*time.Second,
		"how often images being made, and their copies in other regions, are checked with DescribeImages (batched, 100 per call)")
	fs.DurationVar(&o.leaseTTL, "lease-ttl", leader.DefaultTTL,
		"how long the leader lease lasts without renewal (renewed every third of it); a standby takes over a silent leader after it")
	fs.BoolVar(&o.apiDryRun, "api-dry-run", false, "send CreateImage with DryRun=true: the API checks each request and creates nothing")
	fs.StringVar(&o.listen, "listen", os.Getenv("IMAGER_LISTEN"), "address for Prometheus /metrics, /healthz and /readyz, e.g. :9090; empty = off (env IMAGER_LISTEN)")
	o.webConfigFlag(fs)
}

// webConfigFlag is --web-config, for every command that takes --listen.
func (o *options) webConfigFlag(fs *flag.FlagSet) {
	fs.StringVar(&o.webConfig, "web-config", os.Getenv("IMAGER_WEB_CONFIG"),
		"with --listen: Prometheus exporter-toolkit web config file (TLS, basic auth) for every path it serves, /healthz included (env IMAGER_WEB_CONFIG)")
}

// checkWebConfig validates --web-config before anything else starts: a bad file is one line that
// names the flag and the file, never a failure once the daemon runs.
func (o *options) checkWebConfig() error {
	if o.webConfig == "" {
		return nil
	}
	if o.listen == "" {
		return fmt.Errorf("--web-config %s: needs --listen (it secures the --listen endpoints)", o.webConfig)
	}
	if _, err := metrics.ValidateWebConfig(o.webConfig); err != nil {
		return fmt.Errorf("--web-config %w", err)
	}
	return nil
}

func defaultSpoolDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return dir + "/imager/spool"
	}
	return os.TempDir() + "/imager-spool"
}

// logger builds the process logger from --log-level and --log-format.
func (o *options) logger(stderr io.Writer) (zerolog.Logger, error) {
	return logging.New(o.logLevel, o.logFormat, stderr)
}
