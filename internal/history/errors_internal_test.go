package history

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
	"github.com/stretchr/testify/require"
)

func TestTranslate(t *testing.T) {
	t.Parallel()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"connection refused", refused, true},
		{"connection reset", fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{"server closed the connection", fmt.Errorf("receive message: %w", io.ErrUnexpectedEOF), true},
		{"pool closed", fmt.Errorf("acquire: %w", puddle.ErrClosedPool), true},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, true},
		{"crash shutdown", &pgconn.PgError{Code: "57P02"}, true},
		{"starting up", &pgconn.PgError{Code: "57P03"}, true},
		{"too many connections", &pgconn.PgError{Code: "53300"}, true},
		{"connection failure", &pgconn.PgError{Code: "08006"}, true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"bad password", &pgconn.PgError{Code: "28P01"}, false},
		{"syntax error", &pgconn.PgError{Code: "42601"}, false},
		{"no rows", pgx.ErrNoRows, false},
		{"caller cancelled", fmt.Errorf("query: %w", context.Canceled), false},
		{"caller deadline", fmt.Errorf("query: %w", context.DeadlineExceeded), false},
	} {
		err := translate(tc.err)
		require.Equal(t, tc.unavailable, errors.Is(err, ErrUnavailable), tc.name)
		require.ErrorIs(t, err, tc.err, "%s: the cause stays in the chain", tc.name)
	}
	require.NoError(t, translate(nil))
}

func TestRedact(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ conn, secret string }{
		{"postgres://u:pa55word@h/db", "pa55word"},
		{"postgres://u:p%40ss%2Fw@h/db", "p@ss/w"},
		{"postgresql://u@h/db?sslmode=disable&password=qwerty123", "qwerty123"},
		{"host=h password='with space' user=u", "with space"},
		{"host=h password=plain1 user=u", "plain1"},
	} {
		secrets := passwordsIn(tc.conn)
		msg := redact("failed for "+tc.conn+" using "+tc.secret, secrets)
		require.NotContains(t, msg, tc.secret, tc.conn)
	}
}
