// Package pgcluster starts a throwaway PostgreSQL server: a fresh data directory made with
// initdb, a server on a free loopback port, everything removed again by Stop.
//
// Tests (through pgtest), `imager demo` and the benchmarks use it, so a fresh machine with the
// PostgreSQL server binaries installed needs no database set up by hand. The server trusts every
// local connection and runs with fsync off: it is for data nobody needs to keep.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
)

// Options configure Start.
type Options struct {
	// Dir holds the cluster (data directory, log, socket). Empty: a new directory under the
	// system's temporary directory. A given Dir must be empty or not exist yet. Stop removes it.
	Dir string
	// Logger receives start and stop events.
	Logger zerolog.Logger
	// Settings are extra server settings written to postgresql.conf (for example shared_buffers
	// for a benchmark); they override the defaults of a throwaway cluster.
	Settings map[string]string
}

// Cluster is a running throwaway PostgreSQL server. Its superuser is postgres, with trust
// authentication on 127.0.0.1.
type Cluster struct {
	dir     string
	dataDir string
	port    int
	pgCtl   string
	run     *runner
	log     zerolog.Logger

	stopOnce sync.Once
	stopErr  error
}

const (
	// tempPrefix names the directories Start makes, so a later Start can find the ones whose
	// owner died without calling Stop.
	tempPrefix = "imager-pgcluster-"
	// ownerFile holds the pid of the process that started the cluster.
	ownerFile = "owner.pid"
	// startAttempts bounds retries when another process takes the free port first.
	startAttempts = 5
)

// searchGlob is where Start looks for the server binaries when initdb is not on PATH.
var searchGlob = defaultSearchGlob

// Start creates and starts a throwaway cluster. It returns when the server accepts connections.
// Errors are one line that says what is missing or what the server reported.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bins, err := findBinaries(searchGlob)
	if err != nil {
		return nil, err
	}
	log := opts.Logger.With().Str("component", "pgcluster").Logger()
	if opts.Dir == "" {
		reapStale(log, bins.pgCtl)
	}
	dir, err := makeDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	r, err := newRunner(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	c := &Cluster{dir: dir, dataDir: filepath.Join(dir, "data"), pgCtl: bins.pgCtl, run: r, log: log}
	if err := c.create(ctx, bins, opts.Settings); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := c.start(ctx); err != nil {
		_ = c.Stop()
		return nil, err
	}
	log.Info().Str("dir", dir).Int("port", c.port).Str("bin", filepath.Dir(bins.pgCtl)).Msg("postgresql cluster started")
	return c, nil
}

// makeDir creates the cluster directory and records this process as its owner.
func makeDir(dir string) (string, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", tempPrefix)
		if err != nil {
			return "", fmt.Errorf("create cluster directory: %w", err)
		}
		dir = d
	} else {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", fmt.Errorf("create cluster directory: %w", err)
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return "", fmt.Errorf("read cluster directory: %w", err)
		}
		if len(entries) > 0 {
			return "", fmt.Errorf("cluster directory %s is not empty", dir)
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("cluster directory: %w", err)
	}
	if err := os.Chmod(abs, 0o700); err != nil {
		return "", fmt.Errorf("cluster directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(abs, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return "", fmt.Errorf("cluster directory: %w", err)
	}
	return abs, nil
}

// create runs initdb and writes the server settings.
func (c *Cluster) create(ctx context.Context, bins binaries, extra map[string]string) error {
	if err := c.run.own(c.dir); err != nil {
		return err
	}
	args := []string{"-D", c.dataDir, "--auth=trust", "-U", "postgres", "--encoding=UTF8", "--locale=C"}
	if supportsNoSync(c.run, bins.initdb) {
		args = append(args, "--no-sync")
	}
	if _, err := c.run.outputContext(ctx, bins.initdb, args...); err != nil {
		if c.run.cred != nil && errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("create cluster in %s: %w (the postgres OS user must be able to enter every parent directory)", c.dir, err)
		}
		return fmt.Errorf("create cluster in %s: %w", c.dir, err)
	}

	settings := map[string]string{
		"listen_addresses":   "127.0.0.1",
		"fsync":              "off",
		"synchronous_commit": "off",
		"full_page_writes":   "off",
		"max_connections":    "200",
		"log_min_messages":   "warning",
	}
	// A Unix socket path is limited to about 100 bytes; without room, TCP alone serves.
	sockDir := filepath.Join(c.dir, "sock")
	settings["unix_socket_directories"] = ""
	if len(sockDir) < 80 {
		if err := os.Mkdir(sockDir, 0o700); err != nil {
			return fmt.Errorf("create socket directory: %w", err)
		}
		if err := c.run.own(sockDir); err != nil {
			return err
		}
		settings["unix_socket_directories"] = sockDir
	}
	for k, v := range extra {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var conf strings.Builder
	conf.WriteString("\n# written by imager's pgcluster\n")
	for _, k := range keys {
		fmt.Fprintf(&conf, "%s = '%s'\n", k, strings.ReplaceAll(settings[k], "'", "''"))
	}
	f, err := os.OpenFile(filepath.Join(c.dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("write server settings: %w", err)
	}
	_, err = f.WriteString(conf.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write server settings: %w", err)
	}
	return nil
}

// start starts the server on a free port, trying another port when one is taken between
// choosing it and the server binding it.
func (c *Cluster) start(ctx context.Context) error {
	logFile := filepath.Join(c.dir, "postgres.log")
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		_, err = c.run.outputContext(ctx, c.pgCtl, "start", "-w", "-t", "60", "-D", c.dataDir, "-l", logFile, "-o", "-p "+strconv.Itoa(port))
		if err == nil {
			c.port = port
			return nil
		}
		serverLog, _ := os.ReadFile(logFile)
		reason := lastLine(string(serverLog))
		lastErr = fmt.Errorf("start postgresql in %s: %w", c.dir, err)
		if reason != "" {
			lastErr = fmt.Errorf("start postgresql in %s: %w (server log: %s)", c.dir, err, reason)
		}
		if !strings.Contains(string(serverLog), "could not bind") && !strings.Contains(string(serverLog), "already in use") {
			return lastErr
		}
		if ctx.Err() != nil {
			return lastErr
		}
		// The log is appended to; clear it so the next attempt's reason is its own.
		_ = os.Truncate(logFile, 0)
	}
	return lastErr
}

// freePort asks the kernel for a TCP port on 127.0.0.1 that is free right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	return port, nil
}

// URL returns the connection URL of database db as the superuser postgres.
func (c *Cluster) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// CreateDatabase creates an empty database and returns its URL.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return c.URL(name), nil
}

// Halt stops the server and keeps its data, to stand for a database outage in tests: clients
// see connections refused until Resume. Connections are closed at once (pg_ctl's fast mode).
func (c *Cluster) Halt(ctx context.Context) error {
	if _, err := c.run.outputContext(ctx, c.pgCtl, "stop", "-w", "-m", "fast", "-D", c.dataDir); err != nil {
		return fmt.Errorf("halt postgresql in %s: %w", c.dir, err)
	}
	c.log.Info().Str("dir", c.dir).Msg("postgresql server halted")
	return nil
}

// Resume starts a halted server again on the same port, so URLs handed out before still work.
// It returns when the server accepts connections; it fails if another process took the port.
func (c *Cluster) Resume(ctx context.Context) error {
	logFile := filepath.Join(c.dir, "postgres.log")
	if _, err := c.run.outputContext(ctx, c.pgCtl, "start", "-w", "-t", "60", "-D", c.dataDir, "-l", logFile,
		"-o", "-p "+strconv.Itoa(c.port)); err != nil {
		serverLog, _ := os.ReadFile(logFile)
		return fmt.Errorf("resume postgresql in %s: %w (server log: %s)", c.dir, err, lastLine(string(serverLog)))
	}
	c.log.Info().Str("dir", c.dir).Int("port", c.port).Msg("postgresql server resumed")
	return nil
}

// Stop stops the server at once (no checkpoint: the data is thrown away) and removes the
// cluster directory. It is safe to call more than once; later calls return the first result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var errs []error
		if _, err := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); err == nil {
			if _, err := c.run.outputContext(ctx, c.pgCtl, "stop", "-w", "-m", "immediate", "-D", c.dataDir); err != nil {
				errs = append(errs, fmt.Errorf("stop postgresql in %s: %w", c.dir, err))
			}
		}
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove cluster directory: %w", err))
		}
		c.stopErr = errors.Join(errs...)
		c.log.Info().Str("dir", c.dir).Msg("postgresql cluster stopped")
	})
	return c.stopErr
}
