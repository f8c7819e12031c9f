// Package pgtest gives each test a real, fresh, empty PostgreSQL database.
//
// A test binary uses IMAGER_TEST_DATABASE_URL when it is set (a server where that user may
// create databases), otherwise one throwaway cluster (package pgcluster) started for the whole
// binary and stopped when its tests are done. When neither is possible the binary fails with a
// message naming both options: tests that need PostgreSQL never skip.
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// or, with a goroutine-leak check after the cluster is stopped:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/pgcluster"
)

// EnvURL names the environment variable with the URL of an existing server for tests. Its
// database is only used to create and drop the per-test databases.
const EnvURL = "IMAGER_TEST_DATABASE_URL"

var (
	mu       sync.Mutex
	adminURL string // where NewDatabase creates databases; empty outside Main
	counter  atomic.Int64
)

// Main runs the package's tests against a PostgreSQL server and exits with their status.
// Call it from TestMain.
func Main(m *testing.M) {
	os.Exit(Wrap(m).Run())
}

// Runner is what goleak.VerifyTestMain takes: Run runs the tests and returns the exit code.
type Runner interface {
	Run() int
}

// Wrap returns m with a PostgreSQL server around its Run: the server is ready before the first
// test and stopped after the last, so a leak check around Run sees no server goroutines.
func Wrap(m Runner) Runner {
	return wrapped{m: m}
}

type wrapped struct{ m Runner }

func (w wrapped) Run() int {
	return run(w.m, os.Stderr)
}

// run sets up the server, runs m and stops the server; problems are reported on stderr.
func run(m Runner, stderr io.Writer) int {
	stop, err := setup()
	if err != nil {
		fmt.Fprintf(stderr, "pgtest: no PostgreSQL for the tests: %v\n"+
			"pgtest: either set %s to a server where the user may create databases "+
			"(e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable), "+
			"or install the PostgreSQL server binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql/*/bin "+
			"(apt-get install postgresql) so a throwaway cluster can be started\n", err, EnvURL)
		return 1
	}
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintf(stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// setup points NewDatabase at the configured server or a new throwaway cluster.
func setup() (stop func() error, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if u := os.Getenv(EnvURL); u != "" {
		cfg, err := pgx.ParseConfig(u)
		if err != nil {
			return nil, fmt.Errorf("%s is not a valid PostgreSQL URL", EnvURL)
		}
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			msg := strings.Join(strings.Fields(err.Error()), " ")
			if cfg.Password != "" {
				msg = strings.ReplaceAll(msg, cfg.Password, "xxxxx")
			}
			return nil, fmt.Errorf("%s: %s", EnvURL, msg)
		}
		_ = conn.Close(ctx)
		setAdminURL(u)
		return func() error { setAdminURL(""); return nil }, nil
	}
	c, err := pgcluster.Start(ctx, pgcluster.Options{Logger: zerolog.Nop()})
	if err != nil {
		return nil, err
	}
	setAdminURL(c.URL("postgres"))
	return func() error { setAdminURL(""); return c.Stop() }, nil
}

func setAdminURL(u string) {
	mu.Lock()
	defer mu.Unlock()
	adminURL = u
}

func getAdminURL() string {
	mu.Lock()
	defer mu.Unlock()
	return adminURL
}

// NewDatabase creates a fresh, empty database for t alone and returns its URL. The database is
// dropped (disconnecting whoever is still connected) when t and its subtests are done. It fails
// t when the package's TestMain does not use Main or Wrap.
func NewDatabase(t testing.TB) string {
	t.Helper()
	admin := getAdminURL()
	if admin == "" {
		t.Fatal("pgtest.NewDatabase: no server: call pgtest.Main(m) or goleak.VerifyTestMain(pgtest.Wrap(m)) from TestMain")
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	name := fmt.Sprintf("imager_test_%d_%s", counter.Add(1), hex.EncodeToString(suffix[:]))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := adminExec(ctx, admin, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := adminExec(ctx, admin, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	u, err := withDatabase(admin, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return u
}

// adminExec runs one statement on the admin database over a short-lived connection.
func adminExec(ctx context.Context, admin, sql string) error {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	_, err = conn.Exec(ctx, sql)
	return err
}

// withDatabase returns connection string s with its database replaced by db. s is a URL
// (postgres://...) or a keyword/value string (host=... dbname=...).
func withDatabase(s, db string) (string, error) {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", errors.New("admin URL does not parse as a URL")
		}
		u.Path = "/" + db
		u.RawPath = ""
		return u.String(), nil
	}
	// In a keyword/value string the last occurrence of a keyword wins.
	return s + " dbname=" + db, nil
}
