package history

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/imager-dev/imager/migrations"
)

// migrationLockKey is the pg_advisory_xact_lock key that serialises migrations across every
// imager process using the database ("imager" in ASCII).
const migrationLockKey int64 = 0x696d61676572

// migrationName is the form of a migration file: a four-digit number, an underscore, a name.
var migrationName = regexp.MustCompile(`^[0-9]{4}_[a-z0-9_]+\.sql$`)

// migration is one file of migrations.FS.
type migration struct {
	version string // file name without .sql
	sql     string
}

// Migrate applies the embedded migrations (package migrations) that the database lacks, in
// version order, each in its own transaction under an advisory lock, and records each in
// schema_migrations. Several processes may migrate at once: each file is applied exactly once.
// It returns the versions this call applied.
func Migrate(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	return migrateFS(ctx, pool, migrations.FS)
}

func migrateFS(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) ([]string, error) {
	list, err := loadMigrations(fsys)
	if err != nil {
		return nil, err
	}
	var applied []string
	for _, m := range list {
		did, err := applyMigration(ctx, pool, m)
		if err != nil {
			return applied, fmt.Errorf("migration %s: %w", m.version, translate(err))
		}
		if did {
			applied = append(applied, m.version)
		}
	}
	return applied, nil
}

// loadMigrations reads the *.sql files of fsys in version order.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	sort.Strings(names)
	list := make([]migration, 0, len(names))
	seen := map[string]string{}
	for _, name := range names {
		if !migrationName.MatchString(name) {
			return nil, fmt.Errorf("migration file %s: name must look like 0001_description.sql", name)
		}
		if other, dup := seen[name[:4]]; dup {
			return nil, fmt.Errorf("migration files %s and %s share the number %s", other, name, name[:4])
		}
		seen[name[:4]] = name
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		list = append(list, migration{version: strings.TrimSuffix(name, ".sql"), sql: string(b)})
	}
	return list, nil
}

// applyMigration applies m unless schema_migrations already records it. The advisory lock is
// taken first, so a concurrent migrator waits and then sees the version recorded.
func applyMigration(ctx context.Context, pool *pgxpool.Pool, m migration) (applied bool, err error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer func() {
		if rbErr := tx.Rollback(context.WithoutCancel(ctx)); rbErr != nil && !errors.Is(rbErr, pgx.ErrTxClosed) && err == nil {
			err = rbErr
		}
	}()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    text        PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT now()
)`); err != nil {
		return false, err
	}
	var done bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)", m.version).Scan(&done); err != nil {
		return false, err
	}
	if done {
		return false, nil
	}
	if _, err := tx.Exec(ctx, m.sql); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())", m.version); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	return true, nil
}
