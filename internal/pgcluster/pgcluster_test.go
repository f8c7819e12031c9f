package pgcluster

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStartCreateDatabaseStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop() })

	url, err := c.CreateDatabase(ctx, "imager-demo")
	require.NoError(t, err)
	require.Equal(t, c.URL("imager-demo"), url)

	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	var db, fsync, listen, user string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_database(), current_setting('fsync'),
		current_setting('listen_addresses'), current_user`).Scan(&db, &fsync, &listen, &user))
	require.NoError(t, conn.Close(ctx))
	require.Equal(t, "imager-demo", db)
	require.Equal(t, "off", fsync)
	require.Equal(t, "127.0.0.1", listen)
	require.Equal(t, "postgres", user)

	_, err = c.CreateDatabase(ctx, "imager-demo")
	require.ErrorContains(t, err, "already exists")

	require.NoError(t, c.Stop())
	require.NoError(t, c.Stop(), "Stop is idempotent")
	_, err = os.Stat(c.dir)
	require.ErrorIs(t, err, os.ErrNotExist, "Stop removes the cluster directory")
	_, err = pgx.Connect(ctx, url)
	require.Error(t, err, "the server is gone after Stop")
}

// TestHaltResume: a halted server refuses connections; resumed, it answers on the same URL with
// its data kept, and Stop still removes it.
func TestHaltResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop() })
	url, err := c.CreateDatabase(ctx, "outage")
	require.NoError(t, err)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)`)
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))

	require.NoError(t, c.Halt(ctx))
	_, err = pgx.Connect(ctx, url)
	require.Error(t, err, "a halted server refuses connections")

	require.NoError(t, c.Resume(ctx))
	conn, err = pgx.Connect(ctx, url)
	require.NoError(t, err)
	var v int
	require.NoError(t, conn.QueryRow(ctx, `SELECT v FROM kept`).Scan(&v))
	require.NoError(t, conn.Close(ctx))
	require.Equal(t, 42, v)

	require.NoError(t, c.Halt(ctx))
	require.NoError(t, c.Stop(), "Stop after Halt removes the cluster")
	_, err = os.Stat(c.dir)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestStartInGivenDirWithSettings(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(reachableTempDir(t), "cluster")

	c, err := Start(ctx, Options{Dir: dir, Logger: zerolog.Nop(), Settings: map[string]string{"work_mem": "8MB"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop() })

	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	require.NoError(t, err)
	var workMem string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('work_mem')`).Scan(&workMem))
	require.NoError(t, conn.Close(ctx))
	require.Equal(t, "8MB", workMem)

	require.NoError(t, c.Stop())
	_, err = os.Stat(dir)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestStartRefusesNonEmptyDir(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "keep.txt"), []byte("mine"), 0o600))
	_, err := Start(context.Background(), Options{Dir: dir, Logger: zerolog.Nop()})
	require.ErrorContains(t, err, "is not empty")
	_, err = os.Stat(filepath.Join(dir, "keep.txt"))
	require.NoError(t, err, "a refused directory is left alone")
}

func TestFindBinaries(t *testing.T) {
	// Not parallel: it changes PATH.
	writeExe := func(t *testing.T, path string) {
		t.Helper()
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\n"), 0o755))
	}

	t.Run("highest version under the glob", func(t *testing.T) {
		root := t.TempDir()
		t.Setenv("PATH", t.TempDir())
		for _, v := range []string{"9.6", "15", "10"} {
			writeExe(t, filepath.Join(root, v, "bin", "initdb"))
			writeExe(t, filepath.Join(root, v, "bin", "pg_ctl"))
		}
		writeExe(t, filepath.Join(root, "16", "bin", "initdb")) // no pg_ctl beside it: unusable
		b, err := findBinaries(filepath.Join(root, "*", "bin"))
		require.NoError(t, err)
		require.Equal(t, filepath.Join(root, "15", "bin", "initdb"), b.initdb)
		require.Equal(t, filepath.Join(root, "15", "bin", "pg_ctl"), b.pgCtl)
	})

	t.Run("PATH first", func(t *testing.T) {
		root := t.TempDir()
		onPath := t.TempDir()
		t.Setenv("PATH", onPath)
		writeExe(t, filepath.Join(onPath, "initdb"))
		writeExe(t, filepath.Join(onPath, "pg_ctl"))
		writeExe(t, filepath.Join(root, "15", "bin", "initdb"))
		writeExe(t, filepath.Join(root, "15", "bin", "pg_ctl"))
		b, err := findBinaries(filepath.Join(root, "*", "bin"))
		require.NoError(t, err)
		require.Equal(t, filepath.Join(onPath, "pg_ctl"), b.pgCtl)
	})

	t.Run("nowhere", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := findBinaries(filepath.Join(t.TempDir(), "*", "bin"))
		require.Error(t, err)
		require.Contains(t, err.Error(), "initdb not found on PATH or under")
		require.Contains(t, err.Error(), "apt-get install postgresql")
		require.Contains(t, err.Error(), "IMAGER_TEST_DATABASE_URL")
	})

	t.Run("Start reports it in one line", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		old := searchGlob
		searchGlob = filepath.Join(t.TempDir(), "*", "bin")
		t.Cleanup(func() { searchGlob = old })
		_, err := Start(context.Background(), Options{Logger: zerolog.Nop()})
		require.ErrorContains(t, err, "initdb not found")
		require.NotContains(t, err.Error(), "\n")
	})
}

func TestStopReapsClusterOfDeadOwner(t *testing.T) {
	// Not parallel: it changes TMPDIR.
	tmp := reachableTempDir(t)
	t.Setenv("TMPDIR", tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	orphan, err := Start(ctx, Options{Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = orphan.Stop() })
	require.Equal(t, tmp, filepath.Dir(orphan.dir))

	// Pretend the cluster belongs to a process that has exited without stopping it.
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	require.NoError(t, os.WriteFile(filepath.Join(orphan.dir, ownerFile), []byte(strconv.Itoa(dead.Process.Pid)), 0o644))

	// A cluster directory whose owner lives (this test's parent) is left alone.
	alive := filepath.Join(tmp, tempPrefix+"alive")
	require.NoError(t, os.Mkdir(alive, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(alive, ownerFile), []byte(strconv.Itoa(os.Getppid())), 0o644))

	b, err := findBinaries(searchGlob)
	require.NoError(t, err)
	reapStale(zerolog.Nop(), b.pgCtl)

	_, err = os.Stat(orphan.dir)
	require.ErrorIs(t, err, os.ErrNotExist, "the orphaned cluster is removed")
	_, err = pgx.Connect(ctx, orphan.URL("postgres"))
	require.Error(t, err, "the orphaned server is stopped")
	_, err = os.Stat(alive)
	require.NoError(t, err, "a live owner's directory stays")
	require.NoError(t, orphan.Stop(), "stopping a reaped cluster is not an error")
}

func TestVersionOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		dir  string
		want float64
	}{
		{"/usr/lib/postgresql/15/bin", 15},
		{"/usr/lib/postgresql/9.6/bin", 9.6},
		{"/usr/lib/postgresql/devel/bin", -1},
	} {
		require.Equal(t, tc.want, versionOf(tc.dir), tc.dir)
	}
}

// reachableTempDir is a temporary directory the postgres OS user can enter when the tests run
// as root (t.TempDir's parent is private to the test's user).
func reachableTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgcluster-test-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func TestStartInPrivateDir(t *testing.T) {
	// t.TempDir's parent is private to this test's OS user: as root the cluster runs as the
	// postgres user, who cannot enter it; as anyone else the cluster runs as us and can.
	dir := filepath.Join(t.TempDir(), "cluster")
	c, err := Start(context.Background(), Options{Dir: dir, Logger: zerolog.Nop()})
	if os.Geteuid() != 0 {
		require.NoError(t, err)
		require.NoError(t, c.Stop())
		return
	}
	require.ErrorContains(t, err, "the postgres OS user must be able to enter every parent directory")
	require.NotContains(t, err.Error(), "\n")
	_, err = os.Stat(dir)
	require.ErrorIs(t, err, os.ErrNotExist, "a failed Start removes its directory")
}
