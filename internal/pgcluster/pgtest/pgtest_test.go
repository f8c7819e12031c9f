package pgtest

import (
	"bytes"
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(Wrap(m))
}

func TestNewDatabaseIsFreshAndIsolated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := NewDatabase(t), NewDatabase(t)
	require.NotEqual(t, a, b)

	connA, err := pgx.Connect(ctx, a)
	require.NoError(t, err)
	defer connA.Close(ctx)
	connB, err := pgx.Connect(ctx, b)
	require.NoError(t, err)
	defer connB.Close(ctx)

	var nameA, nameB string
	require.NoError(t, connA.QueryRow(ctx, "SELECT current_database()").Scan(&nameA))
	require.NoError(t, connB.QueryRow(ctx, "SELECT current_database()").Scan(&nameB))
	require.Regexp(t, `^imager_test_[0-9]+_[0-9a-f]{8}$`, nameA)
	require.NotEqual(t, nameA, nameB)

	var tables int
	require.NoError(t, connA.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables))
	require.Zero(t, tables, "a new database is empty")

	_, err = connA.Exec(ctx, "CREATE TABLE only_in_a (x int)")
	require.NoError(t, err)
	require.NoError(t, connB.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").Scan(&tables))
	require.Zero(t, tables, "databases are isolated")
}

func TestNewDatabaseIsDroppedAfterTheTest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var name string
	t.Run("user", func(t *testing.T) {
		u := NewDatabase(t)
		conn, err := pgx.Connect(ctx, u)
		require.NoError(t, err)
		require.NoError(t, conn.QueryRow(ctx, "SELECT current_database()").Scan(&name))
		// Left open on purpose: the drop must disconnect it (WITH (FORCE)).
		t.Cleanup(func() { _ = conn.Close(ctx) })
	})
	require.NotEmpty(t, name)

	conn, err := pgx.Connect(ctx, getAdminURL())
	require.NoError(t, err)
	defer conn.Close(ctx)
	var exists bool
	require.NoError(t, conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists))
	require.False(t, exists, "the database is dropped when its test ends")
}

// countingRunner records whether the tests ran.
type countingRunner struct{ runs int }

func (c *countingRunner) Run() int { c.runs++; return 0 }

func TestRunWithoutServerFailsNamingBothOptions(t *testing.T) {
	// Not parallel: it sets the environment. Port 1 on loopback refuses connections.
	t.Setenv(EnvURL, "postgres://nobody:s3cret-pw@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=5")
	before := getAdminURL()
	var stderr bytes.Buffer
	m := &countingRunner{}

	code := run(m, &stderr)

	require.Equal(t, 1, code)
	require.Zero(t, m.runs, "tests do not run without a server")
	msg := stderr.String()
	require.Contains(t, msg, EnvURL)
	require.Contains(t, msg, "initdb")
	require.Contains(t, msg, "apt-get install postgresql")
	require.NotContains(t, msg, "s3cret-pw")
	require.Equal(t, before, getAdminURL(), "a failed setup leaves the running one alone")
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"postgres://u:p@h:5432/postgres?sslmode=disable", "postgres://u:p@h:5432/imager_test_1?sslmode=disable"},
		{"postgresql://h/other", "postgresql://h/imager_test_1"},
		{"host=h user=u dbname=postgres", "host=h user=u dbname=postgres dbname=imager_test_1"},
	} {
		got, err := withDatabase(tc.in, "imager_test_1")
		require.NoError(t, err)
		require.Equal(t, tc.want, got)
		cfg, err := pgx.ParseConfig(got)
		require.NoError(t, err)
		require.Equal(t, "imager_test_1", cfg.Database)
	}
}
