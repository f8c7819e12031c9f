// Package migrations holds imager's database schema as numbered SQL files, embedded in the
// binary, and the views' definitions (Views). migrate.Apply (internal/migrate) applies each file
// once, in number order, in its own transaction, and records its sha256: files are append-only (numbers 0001..N without gaps, never edited once
// committed; put a change in a new file), and a database whose applied files differ is refused.
//
// The schema is a public contract that operators query with plain SQL: add columns and tables in
// a new file; never rename or drop without a migration and a note in the README.
package migrations

import "embed"

// FS holds the migration files (0001_init.sql, ...).
//
//go:embed *.sql
var FS embed.FS

// Views is schema/views.sql: the one current definition of every view, which migrate.Apply
// drops before it applies migrations and creates again after them, on every migrate. A view is
// changed by editing that file, never by a migration.
//
//go:embed schema/views.sql
var Views string
