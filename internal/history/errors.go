package history

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
)

// Sentinel errors of the history package. Callers test for them with errors.Is; the error they
// get carries context around the sentinel.
var (
	// ErrNoDatabaseURL: no database URL was configured.
	ErrNoDatabaseURL = errors.New("no database URL: set --database-url or DATABASE_URL")
	// ErrUnavailable: the database could not be reached or went away (connection refused or reset,
	// server shutting down, pool closed). The write may be retried later; Recorder spools it.
	ErrUnavailable = errors.New("database unavailable")
	// ErrNotFound: the run or deletion does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the row is in a state that does not allow the change (for example RunRequested
	// on a run that already failed with another RequestId).
	ErrConflict = errors.New("conflicting state")
	// ErrInvalid: the caller passed values the schema cannot hold (for example RunFinish with a
	// status that is not terminal).
	ErrInvalid = errors.New("invalid argument")
)

// translate turns a pgx or network error into the package's own: connection-level failures wrap
// ErrUnavailable, anything else is returned unchanged. Context cancellation is not unavailability:
// the caller gave up, the database did not fail.
func translate(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	if unavailable(err) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// unavailable reports whether err means the database could not be reached or dropped the
// connection, as opposed to rejecting the statement.
func unavailable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return unavailableCode(pgErr.Code)
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr),
		errors.Is(err, puddle.ErrClosedPool),
		errors.As(err, &netErr),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		pgconn.SafeToRetry(err):
		return true
	}
	return false
}

// unavailableCode reports whether a server error code means the server is going away or cannot
// take the connection now (class 08 connection exception; admin, crash and startup shutdown;
// too many connections).
func unavailableCode(code string) bool {
	switch code {
	case "57P01", "57P02", "57P03", "53300":
		return true
	}
	return len(code) == 5 && code[:2] == "08"
}

// translate is the package's translate that also drops every pooled connection when the
// database turned out unavailable: they all went through the same outage, and the next call
// should dial afresh rather than find another dead connection.
func (s *Store) translate(err error) error {
	err = translate(err)
	if errors.Is(err, ErrUnavailable) {
		s.pool.Reset()
	}
	return err
}
