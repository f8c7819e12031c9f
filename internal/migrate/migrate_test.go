package migrate_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/migrate"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/migrations"
)

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// requireOneLine checks that err is a drift refusal whose text is one line containing want.
func requireDrift(t *testing.T, err error, want ...string) {
	t.Helper()
	require.ErrorIs(t, err, migrate.ErrDrift)
	require.NotContains(t, err.Error(), "\n", "one line")
	for _, w := range want {
		require.Contains(t, err.Error(), w)
	}
}

func TestMigrateRefusesAnEditedAppliedFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := mustPool(t, pgtest.NewDatabase(t))
	first := []byte("CREATE TABLE a (x int);")
	_, err := migrate.ApplyFS(ctx, pool, fstest.MapFS{"0001_a.sql": {Data: first}})
	require.NoError(t, err)

	edited := []byte("CREATE TABLE a (x int, y int);")
	files := fstest.MapFS{
		"0001_a.sql": {Data: edited},
		"0002_b.sql": {Data: []byte("CREATE TABLE b (x int);")},
	}
	applied, err := migrate.ApplyFS(ctx, pool, files)
	requireDrift(t, err, "0001_a.sql changed after it was applied", sum(first)[:12], sum(edited)[:12])
	require.Empty(t, applied)
	var exists bool
	require.NoError(t, pool.QueryRow(ctx, "SELECT to_regclass('b') IS NOT NULL").Scan(&exists))
	require.False(t, exists, "nothing is applied after a refusal")

	files["0001_a.sql"] = &fstest.MapFile{Data: first}
	applied, err = migrate.ApplyFS(ctx, pool, files)
	require.NoError(t, err, "restoring the file lifts the refusal")
	require.Equal(t, []string{"0002_b"}, applied)
}

func TestMigrateRefusesAGapInTheFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := mustPool(t, pgtest.NewDatabase(t))
	for name, tc := range map[string]struct {
		files fstest.MapFS
		want  string
	}{
		"middle": {fstest.MapFS{
			"0001_a.sql": {Data: []byte("CREATE TABLE a (x int);")},
			"0003_c.sql": {Data: []byte("CREATE TABLE c (x int);")},
		}, "migration files skip number 0002: 0003_c.sql comes after 0001_a.sql"},
		"start": {fstest.MapFS{
			"0002_b.sql": {Data: []byte("CREATE TABLE b (x int);")},
		}, "migration files skip number 0001: 0002_b.sql comes the first file"},
	} {
		applied, err := migrate.ApplyFS(ctx, pool, tc.files)
		require.ErrorContains(t, err, tc.want, name)
		require.NotContains(t, err.Error(), "\n")
		require.Empty(t, applied, name)
	}
	var exists bool
	require.NoError(t, pool.QueryRow(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL OR to_regclass('a') IS NOT NULL").Scan(&exists))
	require.False(t, exists, "a gap is refused before the database is touched")
}

func TestMigrateRefusesADatabaseNewerThanTheBinary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := mustPool(t, pgtest.NewDatabase(t))
	a := &fstest.MapFile{Data: []byte("CREATE TABLE a (x int);")}
	newer := fstest.MapFS{"0001_a.sql": a, "0002_b.sql": {Data: []byte("CREATE TABLE b (x int);")}}
	_, err := migrate.ApplyFS(ctx, pool, newer)
	require.NoError(t, err)

	_, err = migrate.ApplyFS(ctx, pool, fstest.MapFS{"0001_a.sql": a})
	requireDrift(t, err, "database has migration 0002_b that this imager does not know; upgrade imager")

	other := fstest.MapFS{"0001_a.sql": a, "0002_other.sql": {Data: []byte("CREATE TABLE o (x int);")}}
	_, err = migrate.ApplyFS(ctx, pool, other)
	requireDrift(t, err, "database has migration 0002_b that this imager does not know (its 0002 is 0002_other)")
	var exists bool
	require.NoError(t, pool.QueryRow(ctx, "SELECT to_regclass('o') IS NOT NULL").Scan(&exists))
	require.False(t, exists)
}

// A database migrated before checksums existed (schema_migrations without the column, and 0002
// missing because early builds skipped that number) gets its rows' checksums from the embedded
// files, applies 0002_reserved late, and from then on edits are refused.
func TestMigrateBackfillsChecksumsOfOldRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := mustPool(t, pgtest.NewDatabase(t))
	_, err := pool.Exec(ctx, `CREATE TABLE schema_migrations (
	version    text        PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT now()
)`)
	require.NoError(t, err)
	old := []string{"0001_init", "0003_audit_indexes", "0004_leadership"}
	for _, v := range old {
		b, err := fs.ReadFile(migrations.FS, v+".sql")
		require.NoError(t, err)
		_, err = pool.Exec(ctx, string(b))
		require.NoError(t, err, v)
		_, err = pool.Exec(ctx, "INSERT INTO schema_migrations (version) VALUES ($1)", v)
		require.NoError(t, err)
	}

	applied, err := migrate.Apply(ctx, pool)
	require.NoError(t, err)
	want := []string{"0002_reserved"}
	for _, v := range shippedMigrations(t) {
		if v[:4] > "0004" { // files added after 0004 are new to this database too
			want = append(want, v)
		}
	}
	require.Equal(t, want, applied)

	rows, err := pool.Query(ctx, "SELECT version, checksum FROM schema_migrations ORDER BY version")
	require.NoError(t, err)
	got := map[string]string{}
	for rows.Next() {
		var v, c string
		require.NoError(t, rows.Scan(&v, &c))
		got[v] = c
	}
	require.NoError(t, rows.Err())
	require.Len(t, got, len(shippedMigrations(t)))
	for _, v := range shippedMigrations(t) {
		b, err := fs.ReadFile(migrations.FS, v+".sql")
		require.NoError(t, err)
		require.Equal(t, sum(b), got[v], v)
	}

	// The backfilled checksum is now enforced.
	_, err = pool.Exec(ctx, "UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = '0003_audit_indexes'")
	require.NoError(t, err)
	_, err = migrate.Apply(ctx, pool)
	requireDrift(t, err, "0003_audit_indexes.sql changed after it was applied (database sha256 000000000000, file sha256 "+got["0003_audit_indexes"][:12])
}

func TestShippedMigrationsHaveNoGap(t *testing.T) {
	t.Parallel()
	for i, v := range shippedMigrations(t) {
		require.True(t, strings.HasPrefix(v, fmt.Sprintf("%04d_", i+1)), v)
	}
}

// rewordedFrom reads, per listed earlier checksum, the comment lines the earlier file had in
// place of today's (line number, from 1, and the line), so the earlier file can be rebuilt from
// today's. The lines are kept verbatim as data in testdata/reworded/<checksum>, one
// "<line number><TAB><line>" per line: they are what the file said then, and they are the words
// that were reworded.
func rewordedFrom(t *testing.T, checksum string) map[int]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "reworded", checksum))
	require.NoError(t, err, "no earlier text for checksum %s", checksum)
	out := map[int]string{}
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		n, line, ok := strings.Cut(l, "\t")
		require.True(t, ok, "testdata/reworded/%s: %q is not <line number><TAB><line>", checksum, l)
		k, err := strconv.Atoi(n)
		require.NoError(t, err)
		out[k] = line
	}
	return out
}

func TestRewordedMigrationsDifferInCommentsOnly(t *testing.T) {
	t.Parallel()
	require.NotEmpty(t, migrate.RewordedChecksums)
	for version, sums := range migrate.RewordedChecksums {
		b, err := fs.ReadFile(migrations.FS, version+".sql")
		require.NoError(t, err, version)
		for _, old := range sums {
			lines := strings.Split(string(b), "\n")
			replaced := rewordedFrom(t, old)
			for n, line := range replaced {
				require.True(t, strings.HasPrefix(strings.TrimSpace(lines[n-1]), "--"), "%s:%d is not a comment today", version, n)
				require.True(t, strings.HasPrefix(strings.TrimSpace(line), "--"), "%s:%d was not a comment", version, n)
				lines[n-1] = line
			}
			require.Equal(t, old, sum([]byte(strings.Join(lines, "\n"))), "%s: today's file with the earlier comments is the earlier file", version)
		}
	}
}

func TestMigrateAcceptsAFileReworded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := mustPool(t, pgtest.NewDatabase(t))
	_, err := migrate.Apply(ctx, pool)
	require.NoError(t, err)
	b, err := fs.ReadFile(migrations.FS, "0001_init.sql")
	require.NoError(t, err)

	// A database that applied 0001 before its first comment was reworded.
	old := migrate.RewordedChecksums["0001_init"][0]
	_, err = pool.Exec(ctx, "UPDATE schema_migrations SET checksum = $1 WHERE version = '0001_init'", old)
	require.NoError(t, err)
	applied, err := migrate.Apply(ctx, pool)
	require.NoError(t, err)
	require.Empty(t, applied)
	var got string
	require.NoError(t, pool.QueryRow(ctx, "SELECT checksum FROM schema_migrations WHERE version = '0001_init'").Scan(&got))
	require.Equal(t, sum(b), got, "today's checksum is recorded")

	// Any other checksum is still an edit.
	_, err = pool.Exec(ctx, "UPDATE schema_migrations SET checksum = repeat('1', 64) WHERE version = '0001_init'")
	require.NoError(t, err)
	_, err = migrate.Apply(ctx, pool)
	requireDrift(t, err, "0001_init.sql changed after it was applied")
}

func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(t)

	const migrators = 4
	results := make([][]string, migrators)
	errs := make([]error, migrators)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range migrators {
		pool, err := pgxpool.New(ctx, dbURL) // one pool per "process"
		require.NoError(t, err)
		defer pool.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = migrate.Apply(ctx, pool)
		}()
	}
	close(start)
	wg.Wait()

	var all []string
	for i := range migrators {
		require.NoError(t, errs[i])
		all = append(all, results[i]...)
	}
	sort.Strings(all)
	require.Equal(t, shippedMigrations(t), all, "exactly one migrator applied each file")

	pool := mustPool(t, dbURL)
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&n))
	require.Equal(t, len(shippedMigrations(t)), n)
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM schema_migrations WHERE checksum ~ '^[0-9a-f]{64}$'").Scan(&n))
	require.Equal(t, len(shippedMigrations(t)), n, "every row records its file's checksum")
	var tables []string
	require.NoError(t, pool.QueryRow(ctx, "SELECT array_agg(tablename ORDER BY tablename) FROM pg_tables WHERE tablename LIKE 'image_%'").Scan(&tables))
	require.Equal(t, []string{"image_attempts", "image_copies", "image_deletions", "image_runs"}, tables)
}

func TestMigrateRunner(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := mustPool(t, pgtest.NewDatabase(t))

	broken := fstest.MapFS{
		"0001_a.sql": {Data: []byte("CREATE TABLE a (x int); INSERT INTO a VALUES (1);")},
		"0002_b.sql": {Data: []byte("CREATE TABLE b (x int); SELECT no_such_function();")},
	}
	applied, err := migrate.ApplyFS(ctx, pool, broken)
	require.ErrorContains(t, err, "migration 0002_b")
	require.Equal(t, []string{"0001_a"}, applied)
	var exists bool
	require.NoError(t, pool.QueryRow(ctx, "SELECT to_regclass('b') IS NOT NULL").Scan(&exists))
	require.False(t, exists, "a failed migration is rolled back whole")

	fixed := fstest.MapFS{
		"0001_a.sql": broken["0001_a.sql"],
		"0002_b.sql": {Data: []byte("CREATE TABLE b (x int);")},
		"README.md":  {Data: []byte("not a migration")},
	}
	applied, err = migrate.ApplyFS(ctx, pool, fixed)
	require.NoError(t, err)
	require.Equal(t, []string{"0002_b"}, applied, "0001 is not applied twice")
	var rowsInA int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM a").Scan(&rowsInA))
	require.Equal(t, 1, rowsInA)

	for name, files := range map[string]fstest.MapFS{
		"bad name":       {"1_a.sql": {Data: []byte("SELECT 1")}},
		"shared number":  {"0001_a.sql": {Data: []byte("SELECT 1")}, "0001_b.sql": {Data: []byte("SELECT 1")}},
		"upper case sql": {"0003_Add.sql": {Data: []byte("SELECT 1")}},
	} {
		_, err := migrate.ApplyFS(ctx, pool, files)
		require.Error(t, err, name)
	}
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

func mustPool(t testing.TB, dbURL string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dbURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// shippedMigrations lists the versions of the embedded migration files, in order.
func shippedMigrations(t *testing.T) []string {
	t.Helper()
	files, err := fs.Glob(migrations.FS, "*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	sort.Strings(files)
	for i, f := range files {
		files[i] = strings.TrimSuffix(f, ".sql")
	}
	return files
}

func TestMigrateIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := mustPool(t, pgtest.NewDatabase(t))

	applied, err := migrate.Apply(ctx, pool)
	require.NoError(t, err)
	require.Equal(t, shippedMigrations(t), applied)

	applied, err = migrate.Apply(ctx, pool)
	require.NoError(t, err)
	require.Empty(t, applied)

	var versions []string
	rows, err := pool.Query(ctx, "SELECT version FROM schema_migrations ORDER BY version")
	require.NoError(t, err)
	for rows.Next() {
		var v string
		require.NoError(t, rows.Scan(&v))
		versions = append(versions, v)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, shippedMigrations(t), versions)
}
