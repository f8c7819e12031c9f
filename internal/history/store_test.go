package history_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

func TestOpenWithoutURL(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"", "   "} {
		_, err := history.Open(context.Background(), u, zerolog.Nop())
		require.ErrorIs(t, err, history.ErrNoDatabaseURL)
		require.EqualError(t, err, "no database URL: set --database-url or DATABASE_URL")
	}
}

func TestOpenErrorsNeverShowThePassword(t *testing.T) {
	t.Parallel()
	// A live server, to reach the errors that come after connecting.
	live, err := url.Parse(pgtest.NewDatabase(t))
	require.NoError(t, err)
	const secret = "Hunter2-s3cret"

	for _, tc := range []struct {
		name        string
		dbURL       string
		want        string // the error starts with this
		unavailable bool
	}{
		{
			name:        "refused, password in the URL",
			dbURL:       "postgres://imager:" + secret + "@127.0.0.1:1/imager?sslmode=disable",
			want:        "database unreachable at 127.0.0.1:1/imager: connection refused",
			unavailable: true,
		},
		{
			name:        "refused, escaped password in the URL",
			dbURL:       "postgres://imager:" + url.QueryEscape(secret+"/?@") + "@127.0.0.1:1/imager?sslmode=disable",
			want:        "database unreachable at 127.0.0.1:1/imager: connection refused",
			unavailable: true,
		},
		{
			name:        "refused, password as a query parameter",
			dbURL:       "postgres://imager@127.0.0.1:1/imager?sslmode=disable&password=" + secret,
			want:        "database unreachable at 127.0.0.1:1/imager: connection refused",
			unavailable: true,
		},
		{
			name:        "refused, keyword/value string",
			dbURL:       "host=127.0.0.1 port=1 dbname=imager user=imager sslmode=disable password='" + secret + " x'",
			want:        "database unreachable at 127.0.0.1:1/imager: connection refused",
			unavailable: true,
		},
		{
			name:  "malformed URL",
			dbURL: "postgres://imager:" + secret + "@127.0.0.1:notaport/imager",
			want:  "invalid database URL: ",
		},
		{
			name:  "unknown parameter",
			dbURL: "postgres://imager:" + secret + "@127.0.0.1:1/imager?pool_max_conns=many",
			want:  "invalid database URL: ",
		},
		{
			name:  "missing database on a live server",
			dbURL: "postgres://postgres:" + secret + "@" + live.Host + "/no_such_db?sslmode=disable",
			want:  "database at " + live.Host + "/no_such_db: database \"no_such_db\" does not exist",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := history.Open(context.Background(), tc.dbURL, zerolog.Nop())
			require.Error(t, err)
			require.Nil(t, s)
			msg := err.Error()
			require.True(t, strings.HasPrefix(msg, tc.want), "error %q should start with %q", msg, tc.want)
			require.NotContains(t, msg, "Hunter2")
			require.NotContains(t, msg, "s3cret")
			require.NotContains(t, msg, "\n")
			require.Equal(t, tc.unavailable, errors.Is(err, history.ErrUnavailable), msg)
		})
	}
}

func TestSchemaIsDocumented(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	rows, err := s.Pool().Query(context.Background(), `
SELECT c.relname || '.' || a.attname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind = 'r' AND col_description(c.oid, a.attnum) IS NULL
UNION ALL
SELECT c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
WHERE c.relkind = 'r' AND obj_description(c.oid, 'pg_class') IS NULL`)
	require.NoError(t, err)
	var undocumented []string
	for rows.Next() {
		var name string
		require.NoError(t, rows.Scan(&name))
		undocumented = append(undocumented, name)
	}
	require.NoError(t, rows.Err())
	require.Empty(t, undocumented, "every table and column has a COMMENT")
}

func mustPool(t testing.TB, dbURL string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dbURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}
