package history

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/migrate"
)

// defaultConnectTimeout bounds each connection attempt when the URL sets no connect_timeout, so
// an unreachable database is reported instead of waited for.
const defaultConnectTimeout = 10 * time.Second

// Store is imager's history in PostgreSQL: a pgx connection pool and every query on it.
// It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	log  zerolog.Logger
	term int64 // leadership term of fenced writes (WithTerm); 0: unfenced
}

// Open connects to the database at dbURL and checks that it answers; log is used as given (the
// caller tags it with its component). Its errors are one line that never contains the password:
// ErrNoDatabaseURL for an empty URL, an error wrapping ErrUnavailable when the server cannot be
// reached, and plain errors for a malformed URL, rejected credentials or a missing database.
func Open(ctx context.Context, dbURL string, log zerolog.Logger) (*Store, error) {
	if strings.TrimSpace(dbURL) == "" {
		return nil, ErrNoDatabaseURL
	}
	secrets := passwordsIn(dbURL)
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		reason := err.Error()
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) && pe.Unwrap() != nil {
			reason = pe.Unwrap().Error()
		}
		return nil, fmt.Errorf("invalid database URL: %s", redact(oneLine(reason), secrets))
	}
	if p := cfg.ConnConfig.Password; p != "" {
		secrets = append(secrets, variants(p)...)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	configurePool(cfg, dbURL)
	where := net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))) + "/" + cfg.ConnConfig.Database

	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database at %s: %s", where, redact(oneLine(err.Error()), secrets))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, openError(err, where, cfg.ConnConfig.User, secrets)
	}
	log.Info().Str("database", where).Msg("database connected")
	return &Store{pool: pool, log: log}, nil
}

// NewStore wraps a pool the caller made (and closes). Open is the usual way in.
func NewStore(pool *pgxpool.Pool, log zerolog.Logger) *Store {
	return &Store{pool: pool, log: log}
}

// Close closes the pool. It is safe to call more than once.
func (s *Store) Close() {
	s.pool.Close()
}

// Pool returns the connection pool, for callers that run their own SQL (audit tools, tests).
func (s *Store) Pool() *pgxpool.Pool {
	return s.pool
}

// Migrate applies the embedded migrations that the database does not have yet, and the views
// (package migrate), and returns the versions applied. A refusal wraps migrate.ErrDrift; a lost
// database, ErrUnavailable.
func (s *Store) Migrate(ctx context.Context) ([]string, error) {
	applied, err := migrate.Apply(ctx, s.pool)
	if err != nil {
		return applied, s.translate(err)
	}
	if len(applied) > 0 {
		s.log.Info().Strs("versions", applied).Msg("migrations applied")
		// Connections opened before the schema existed could not prepare their statements.
		s.warmIdle(ctx)
	}
	return applied, nil
}

// openErr is an Open failure: one line for people, the sentinel for errors.Is.
type openErr struct {
	msg      string
	sentinel error
}

func (e *openErr) Error() string { return e.msg }
func (e *openErr) Unwrap() error { return e.sentinel }

// openError explains why the first connection failed, in one line without the password.
func openError(err error, where, user string, secrets []string) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		msg := redact(oneLine(pgErr.Message), secrets)
		switch {
		case pgErr.Code == "28P01" || pgErr.Code == "28000":
			return &openErr{msg: fmt.Sprintf("database at %s rejected user %q: %s", where, user, msg)}
		case pgErr.Code == "3D000":
			return &openErr{msg: fmt.Sprintf("database at %s: %s", where, msg)}
		case unavailableCode(pgErr.Code):
			return &openErr{msg: fmt.Sprintf("database unreachable at %s: %s", where, msg), sentinel: ErrUnavailable}
		default:
			return &openErr{msg: fmt.Sprintf("database at %s: %s (SQLSTATE %s)", where, msg, pgErr.Code)}
		}
	}
	reason := "timed out"
	if !errors.Is(err, context.DeadlineExceeded) && !pgconn.Timeout(err) {
		reason = redact(oneLine(rootCause(err).Error()), secrets)
	}
	return &openErr{msg: fmt.Sprintf("database unreachable at %s: %s", where, reason), sentinel: ErrUnavailable}
}

// rootCause follows a chain of wrapped errors to the innermost one ("connection refused" rather
// than pgx's whole description of the attempt). Where pgx joined the errors of several attempts
// (TLS first, then plain), it follows the last attempt.
func rootCause(err error) error {
	for {
		switch e := err.(type) {
		case interface{ Unwrap() []error }:
			errs := e.Unwrap()
			if len(errs) == 0 {
				return err
			}
			err = errs[len(errs)-1]
		case interface{ Unwrap() error }:
			next := e.Unwrap()
			if next == nil {
				return err
			}
			err = next
		default:
			return err
		}
	}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// passwordPatterns find password values in connection strings that may not even parse.
var passwordPatterns = []*regexp.Regexp{
	regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://[^/?#@]*?:([^/?#]*)@`), // scheme://user:PASSWORD@host
	regexp.MustCompile(`[?&]password=([^&#]*)`),                           // ?password=PASSWORD
	regexp.MustCompile(`password\s*=\s*'((?:[^'\\]|\\.)*)'`),              // password='PASS WORD'
	regexp.MustCompile(`password\s*=\s*([^\s']\S*)`),                      // password=PASSWORD
}

// passwordsIn returns every password value found in the connection string s, in the forms it may
// take in a message (as written, and decoded).
func passwordsIn(s string) []string {
	var out []string
	for _, re := range passwordPatterns {
		for _, m := range re.FindAllStringSubmatch(s, -1) {
			if m[1] != "" {
				out = append(out, variants(m[1])...)
			}
		}
	}
	return out
}

// variants returns p as written, URL-decoded and URL-encoded.
func variants(p string) []string {
	out := []string{p, url.QueryEscape(p), url.PathEscape(p)}
	if d, err := url.PathUnescape(p); err == nil {
		out = append(out, d)
	}
	if d, err := url.QueryUnescape(p); err == nil {
		out = append(out, d)
	}
	return out
}

// redact replaces every secret in msg, longest first so that a secret containing another is
// masked whole.
func redact(msg string, secrets []string) string {
	sort.Slice(secrets, func(i, j int) bool { return len(secrets[i]) > len(secrets[j]) })
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	return msg
}
