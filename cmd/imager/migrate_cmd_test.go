package main

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Start-up refuses a database that a newer imager migrated, and one whose applied file differs,
// each in one line naming the migration.
func TestMigrateRefusesDriftInOneLine(t *testing.T) {
	e := newE2E(t)
	code, _, stderr := e.imager(t, "migrate", "--database-url", e.dbURL)
	require.Equal(t, 0, code, stderr)
	conn := connect(t, e.dbURL)
	ctx := context.Background()

	_, err := conn.Exec(ctx, "INSERT INTO schema_migrations (version, checksum) VALUES ('0999_from_the_future', 'abc')")
	require.NoError(t, err)
	for _, args := range [][]string{{"migrate"}, {"run", "--policies", "../../policies.example.yaml", "--spool-dir", t.TempDir()}} {
		cmd := args[0]
		code, stdout, stderr := e.imager(t, append(args, "--database-url", e.dbURL)...)
		require.Equal(t, 1, code, "%s: %s%s", cmd, stdout, stderr)
		lines := strings.Split(strings.TrimSpace(stderr), "\n") // run logs "database connected" first
		require.Equal(t, "imager "+cmd+": "+map[string]string{"run": "migrate: "}[cmd]+
			"migrations refused: database has migration 0999_from_the_future that this imager does not know; upgrade imager",
			lines[len(lines)-1])
		require.Equal(t, 1, strings.Count(stderr, "0999"), stderr)
	}
	_, err = conn.Exec(ctx, "DELETE FROM schema_migrations WHERE version = '0999_from_the_future'")
	require.NoError(t, err)

	_, err = conn.Exec(ctx, "UPDATE schema_migrations SET checksum = md5('x') || md5('y') WHERE version = '0001_init'")
	require.NoError(t, err)
	code, _, stderr = e.imager(t, "migrate", "--database-url", e.dbURL)
	require.Equal(t, 1, code)
	require.Equal(t, 1, strings.Count(stderr, "\n"), stderr)
	require.Contains(t, stderr, "migration 0001_init.sql changed after it was applied")
}
