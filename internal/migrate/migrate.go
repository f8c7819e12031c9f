// Package migrate brings an imager database to the schema this binary expects: the numbered
// migrations of package migrations, applied once each under an advisory lock and checked against
// their recorded checksums, then the views re-created from their one definition
// (migrations/schema/views.sql). docs/design.md, "Rules in Go, schema in one place", explains the
// split: migrations hold tables, indexes and data moves; the views file holds the views.
package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"sort"
	"strconv"
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

// ErrDrift marks a refusal to start because the database's recorded migrations and the
// embedded files disagree: an applied file was edited, or the database has a migration this
// binary does not know. The error's text is one line that says which and what to do.
var ErrDrift = errors.New("migrations refused")

// migration is one file of migrations.FS.
type migration struct {
	version  string // file name without .sql, as recorded in schema_migrations
	number   int    // the leading four digits
	sql      string
	checksum string // hex sha256 of the file's bytes
}

// Apply applies the embedded migrations (package migrations) that the database lacks, in
// version order, each in its own transaction under an advisory lock, and records each in
// schema_migrations with the sha256 of its file. Several processes may migrate at once: each
// file is applied exactly once. It returns the versions this call applied.
//
// It refuses (docs/audit.md, "Migrations"), with one line each: embedded files whose numbers are not
// 0001..N without gaps; an applied file whose content changed since it was applied; and a
// database with a migration this binary does not embed (a newer schema than the binary).
// Rows recorded before checksums existed get the checksum of the embedded file (trust on first
// use).
//
// The views are not migrations: migrations.Views holds their one current definition. Every
// Apply drops them before the first migration it applies (so a migration may change any table
// a view reads) and creates them again at the end, in one transaction under the same lock.
func Apply(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	return migrateWith(ctx, pool, migrations.FS, migrations.Views)
}

// ApplyFS applies the migrations of fsys without touching the views: tests build a database as
// an earlier release left it with it, and test the runner with files of their own.
func ApplyFS(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) ([]string, error) {
	return migrateWith(ctx, pool, fsys, "")
}

func migrateWith(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS, views string) ([]string, error) {
	list, err := loadMigrations(fsys)
	if err != nil {
		return nil, err
	}
	dropViews := ""
	if views != "" {
		names := viewNames(views)
		if len(names) == 0 {
			return nil, fmt.Errorf("views file defines no view")
		}
		dropViews = "DROP VIEW IF EXISTS " + strings.Join(names, ", ") + " CASCADE"
	}
	var applied []string
	for {
		m, err := migrateStep(ctx, pool, list, dropViews)
		if err != nil {
			if m != nil {
				err = fmt.Errorf("migration %s: %w", m.version, err)
			}
			return applied, err
		}
		if m == nil {
			break
		}
		applied = append(applied, m.version)
	}
	if views == "" {
		return applied, nil
	}
	if err := applyViews(ctx, pool, dropViews, views); err != nil {
		return applied, fmt.Errorf("views (migrations/schema/views.sql): %w", err)
	}
	return applied, nil
}

// viewDefinition finds the views a views file creates.
var viewDefinition = regexp.MustCompile(`(?m)^CREATE VIEW ([a-z_][a-z0-9_]*)`)

// viewNames lists the views of a views file, last defined first (the order to drop them in).
func viewNames(views string) []string {
	var names []string
	for _, m := range viewDefinition.FindAllStringSubmatch(views, -1) {
		names = append([]string{m[1]}, names...)
	}
	return names
}

// applyViews drops and creates the views in one transaction under the migration lock.
func applyViews(ctx context.Context, pool *pgxpool.Pool, dropViews, views string) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, dropViews); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, views)
		return err
	})
}

// loadMigrations reads the *.sql files of fsys in version order and checks that their numbers
// run 0001..N without a gap or a repeat.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	sort.Strings(names)
	list := make([]migration, 0, len(names))
	for _, name := range names {
		if !migrationName.MatchString(name) {
			return nil, fmt.Errorf("migration file %s: name must look like 0001_description.sql", name)
		}
		number, _ := strconv.Atoi(name[:4]) // four digits, by migrationName
		if n := len(list); n > 0 && list[n-1].number == number {
			return nil, fmt.Errorf("migration files %s.sql and %s share the number %s", list[n-1].version, name, name[:4])
		}
		if want := len(list) + 1; number != want {
			after := "the first file"
			if len(list) > 0 {
				after = "after " + list[len(list)-1].version + ".sql"
			}
			return nil, fmt.Errorf("migration files skip number %04d: %s comes %s; number migrations 0001, 0002, ... without gaps", want, name, after)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		sum := sha256.Sum256(b)
		list = append(list, migration{
			version:  strings.TrimSuffix(name, ".sql"),
			number:   number,
			sql:      string(b),
			checksum: hex.EncodeToString(sum[:]),
		})
	}
	return list, nil
}

// migrateStep, in one transaction under the advisory lock, brings schema_migrations to its
// current shape, backfills missing checksums, checks the recorded migrations against list and
// applies the first file the database lacks. It returns that file, or nil when nothing was left
// to apply. An error with a nil migration is about the state, not about one file.
//
// dropViews, when set, runs before the file: the views are created again after the last one.
func migrateStep(ctx context.Context, pool *pgxpool.Pool, list []migration, dropViews string) (m *migration, err error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if rbErr := tx.Rollback(context.WithoutCancel(ctx)); rbErr != nil && !errors.Is(rbErr, pgx.ErrTxClosed) && err == nil {
			err = rbErr
		}
	}()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
		return nil, err
	}
	// Databases migrated before checksums were recorded have the table without the column.
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    text        PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT now(),
	checksum   text
)`); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text"); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, "COMMENT ON COLUMN schema_migrations.checksum IS "+
		"'Hex sha256 of the migration file when it was applied (or, for rows older than the column, when imager first saw them).'"); err != nil {
		return nil, err
	}
	recorded, err := recordedMigrations(ctx, tx)
	if err != nil {
		return nil, err
	}
	embedded := make(map[string]*migration, len(list))
	byNumber := make(map[string]string, len(list))
	for i := range list {
		embedded[list[i].version] = &list[i]
		byNumber[list[i].version[:4]] = list[i].version
	}
	for _, r := range recorded { // sorted by version: the oldest unknown one is named
		if _, ok := embedded[r.version]; !ok {
			hint := ""
			if own, ok := byNumber[prefix4(r.version)]; ok {
				hint = fmt.Sprintf(" (its %s is %s)", prefix4(r.version), own)
			}
			return nil, fmt.Errorf("%w: database has migration %s that this imager does not know%s; upgrade imager", ErrDrift, r.version, hint)
		}
	}
	for _, r := range recorded {
		want := embedded[r.version].checksum
		if r.checksum == "" {
			// Trust on first use: the row predates checksums; record the embedded file's.
			if _, err := tx.Exec(ctx, "UPDATE schema_migrations SET checksum = $2 WHERE version = $1 AND checksum IS NULL", r.version, want); err != nil {
				return nil, err
			}
			continue
		}
		if r.checksum != want && slices.Contains(rewordedChecksums[r.version], r.checksum) {
			// The applied file differed from this one in comments only: record this one's.
			if _, err := tx.Exec(ctx, "UPDATE schema_migrations SET checksum = $2 WHERE version = $1", r.version, want); err != nil {
				return nil, err
			}
			continue
		}
		if r.checksum != want {
			return nil, fmt.Errorf("%w: migration %s.sql changed after it was applied (database sha256 %s, file sha256 %s); migrations are append-only: restore the file and put the change in a new one",
				ErrDrift, r.version, short(r.checksum), short(want))
		}
	}
	done := make(map[string]bool, len(recorded))
	for _, r := range recorded {
		done[r.version] = true
	}
	for i := range list {
		if done[list[i].version] {
			continue
		}
		m = &list[i]
		break
	}
	if m == nil {
		return nil, tx.Commit(ctx) // the backfill, if any
	}
	if dropViews != "" {
		if _, err := tx.Exec(ctx, dropViews); err != nil {
			return m, err
		}
	}
	if _, err := tx.Exec(ctx, m.sql); err != nil {
		return m, err
	}
	if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, applied_at, checksum) VALUES ($1, now(), $2)", m.version, m.checksum); err != nil {
		return m, err
	}
	if err := tx.Commit(ctx); err != nil {
		return m, err
	}
	return m, nil
}

// recordedMigration is one row of schema_migrations; checksum is "" when none was recorded.
type recordedMigration struct {
	version  string
	checksum string
}

func recordedMigrations(ctx context.Context, tx pgx.Tx) ([]recordedMigration, error) {
	rows, err := tx.Query(ctx, "SELECT version, coalesce(checksum, '') FROM schema_migrations ORDER BY version")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (recordedMigration, error) {
		var r recordedMigration
		err := row.Scan(&r.version, &r.checksum)
		return r, err
	})
}

// rewordedChecksums lists, per migration, the checksums of earlier versions of its file that
// differ from today's in SQL comments only (TestRewordedMigrationsDifferInCommentsOnly holds each
// to that). A database that applied one of them has the same schema; the runner records today's
// checksum for it instead of refusing to start. Nothing but a comment may ever be changed this way.
var rewordedChecksums = map[string][]string{
	// The first line cited a document outside the repository; it cites the README now.
	"0001_init": {"b45fa712efb4feb8f044f79995df9dde3bfef278799c4cf56ab2d1e8cd8cb44f"},
}

// short is the first 12 hex digits of a checksum, enough to tell two apart in a message.
func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}

func prefix4(version string) string {
	if len(version) >= 4 {
		return version[:4]
	}
	return version
}
