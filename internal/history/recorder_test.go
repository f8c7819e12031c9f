package history_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

// dbProxy forwards TCP connections to a PostgreSQL server and can cut them all and refuse new
// ones: PostgreSQL going away and coming back, as the daemon sees it.
type dbProxy struct {
	t      testing.TB
	target string
	addr   string

	mu    sync.Mutex
	l     net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newDBProxy(t testing.TB, target string) *dbProxy {
	p := &dbProxy{t: t, target: target, conns: map[net.Conn]struct{}{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p.addr = l.Addr().String()
	p.serve(l)
	t.Cleanup(p.down)
	return p
}

func (p *dbProxy) serve(l net.Listener) {
	p.mu.Lock()
	p.l = l
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[up] = struct{}{}, struct{}{}
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(c, up)
			go p.pipe(up, c)
		}
	}()
}

func (p *dbProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
}

// down closes the listener and every connection, and waits for the proxy's goroutines.
func (p *dbProxy) down() {
	p.mu.Lock()
	if p.l != nil {
		_ = p.l.Close()
		p.l = nil
	}
	for c := range p.conns {
		_ = c.Close()
		delete(p.conns, c)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// up listens again on the same address.
func (p *dbProxy) up() {
	l, err := net.Listen("tcp", p.addr)
	require.NoError(p.t, err)
	p.serve(l)
}

// proxiedURL is dbURL with its host and port replaced by the proxy's.
func (p *dbProxy) url(dbURL string) string {
	u, err := url.Parse(dbURL)
	require.NoError(p.t, err)
	u.Host = p.addr
	q := u.Query()
	q.Set("connect_timeout", "5")
	u.RawQuery = q.Encode()
	return u.String()
}

// outage is a database behind a proxy, a store that reaches it through the proxy, and a direct
// store to check what really reached the database.
type outage struct {
	proxy  *dbProxy
	via    *history.Store
	direct *history.Store
}

func newOutage(t *testing.T) outage {
	t.Helper()
	direct, dbURL := newStoreURL(t)
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	p := newDBProxy(t, u.Host)
	via, err := history.Open(context.Background(), p.url(dbURL), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(via.Close)
	return outage{proxy: p, via: via, direct: direct}
}

func newRecorder(t *testing.T, s *history.Store, dir string, opts ...history.RecorderOption) *history.Recorder {
	t.Helper()
	r, err := history.NewRecorder(s, dir, zerolog.Nop(), opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	return r
}

func spoolLines(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, history.SpoolFileName))
	require.NoError(t, err)
	return strings.Fields(string(b))
}

func TestRecorderSpoolsWhileDatabaseIsAwayAndReplaysOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o := newOutage(t)
	dir := t.TempDir()
	rec := newRecorder(t, o.via, dir)

	run, claimed, err := rec.RunClaim(ctx, claimParams("web-nightly", "ins-6pb6lrmy", slot))
	require.NoError(t, err)
	require.True(t, claimed)

	o.proxy.down()

	// CreateImage was accepted while PostgreSQL is away: the outcome must not be lost.
	attempt := history.Attempt{RunID: run.ID, Attempt: 1, Action: "CreateImage", StartedAt: slot.Add(time.Second),
		Duration: 90 * time.Millisecond, RequestID: "req-accepted"}
	require.NoError(t, rec.AttemptInsert(ctx, attempt))
	require.NoError(t, rec.RunRequested(ctx, run.ID, "img-12345678", "req-accepted"))
	require.Equal(t, 2, rec.Pending())
	require.Len(t, spoolLines(t, dir), 2, "spooled on disk")

	// A slot cannot be claimed without the database: that error reaches the caller.
	_, _, err = rec.RunClaim(ctx, claimParams("web-nightly", "ins-6pb6lrmy", slot.Add(time.Hour)))
	require.ErrorIs(t, err, history.ErrUnavailable)

	// Replaying while the database is still away keeps everything.
	n, err := rec.Replay(ctx)
	require.ErrorIs(t, err, history.ErrUnavailable)
	require.Zero(t, n)
	require.Equal(t, 2, rec.Pending())

	got, err := o.direct.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, history.StatusPending, got.Status, "nothing reached the database yet")

	o.proxy.up()

	// Written after the outage but queued behind the spool, so it lands after RunRequested.
	finished := slot.Add(15 * time.Minute)
	require.NoError(t, rec.RunAvailable(ctx, run.ID, ptr[int64](40), "", finished))
	require.Equal(t, 3, rec.Pending())
	saved, err := os.ReadFile(filepath.Join(dir, history.SpoolFileName))
	require.NoError(t, err)

	n, err = rec.Replay(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.Zero(t, rec.Pending())
	require.Empty(t, spoolLines(t, dir), "the spool is truncated")

	want := func() {
		t.Helper()
		got, err := o.direct.RunGet(ctx, run.ID)
		require.NoError(t, err)
		require.Equal(t, history.StatusAvailable, got.Status)
		require.Equal(t, "req-accepted", got.RequestID)
		require.Equal(t, "img-12345678", got.ImageID)
		require.Equal(t, ptr[int64](40), got.ImageSizeGiB)
		require.Equal(t, 1, got.Attempts)
		attempts, err := o.direct.AttemptsOfRun(ctx, run.ID)
		require.NoError(t, err)
		require.Equal(t, []history.Attempt{attempt}, attempts)
	}
	want()

	n, err = rec.Replay(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "nothing left to replay")

	// A crash after applying but before truncating: the next process replays the same
	// writes again, and they change nothing.
	require.NoError(t, rec.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, history.SpoolFileName), saved, 0o600))
	again := newRecorder(t, o.via, dir)
	require.Equal(t, 3, again.Pending())
	n, err = again.Replay(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	want()
}

func TestRecorderWritesDirectlyWhenTheDatabaseIsUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	dir := t.TempDir()
	rec := newRecorder(t, s, dir)

	run, _, err := rec.RunClaim(ctx, claimParams("web-nightly", "ins-6pb6lrmy", slot))
	require.NoError(t, err)
	require.NoError(t, rec.RunRename(ctx, run.ID, "renamed-1"))
	require.NoError(t, rec.AttemptInsert(ctx, history.Attempt{RunID: run.ID, Attempt: 1, Action: "CreateImage", StartedAt: slot, RequestID: "r1"}))
	require.NoError(t, rec.RunRequested(ctx, run.ID, "", "r1"))
	require.NoError(t, rec.RunSetImageID(ctx, run.ID, "img-aaaaaaaa"))
	require.NoError(t, rec.RunFinish(ctx, history.RunFinishParams{RunID: run.ID, Status: history.StatusFailed, ErrorCode: "CREATEFAILED", FinishedAt: slot}))
	require.Zero(t, rec.Pending())

	unfinished, err := rec.RunsUnfinished(ctx)
	require.NoError(t, err)
	require.Empty(t, unfinished)
	got, err := s.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, "renamed-1", got.ImageName)
	require.Equal(t, "img-aaaaaaaa", got.ImageID)
	require.Equal(t, history.StatusFailed, got.Status)

	// What the database refuses for good is returned, never spooled.
	require.ErrorIs(t, rec.RunRequested(ctx, run.ID, "img-b", "r2"), history.ErrConflict)
	require.ErrorIs(t, rec.RunFinish(ctx, history.RunFinishParams{RunID: run.ID, Status: history.StatusPending}), history.ErrInvalid)
	require.Zero(t, rec.Pending())
	require.Empty(t, spoolLines(t, dir))
}

func TestRecorderDropsWritesTheDatabaseRefuses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o := newOutage(t)
	rec := newRecorder(t, o.via, t.TempDir())

	run, _, err := rec.RunClaim(ctx, claimParams("web-nightly", "ins-6pb6lrmy", slot))
	require.NoError(t, err)
	o.proxy.down()
	require.NoError(t, rec.RunRequested(ctx, run.ID, "img-1", "req-1"))
	require.NoError(t, rec.RunRequested(ctx, run.ID+1000, "img-2", "req-2")) // no such run
	require.NoError(t, rec.AttemptInsert(ctx, history.Attempt{RunID: run.ID, Attempt: 1, Action: "CreateImage", StartedAt: slot, RequestID: "req-1"}))
	o.proxy.up()

	n, err := rec.Replay(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n, "the write for a missing run is dropped, the others applied")
	require.Zero(t, rec.Pending())
	got, err := o.direct.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, history.StatusRequested, got.Status)
	require.Equal(t, 1, got.Attempts)
}

func TestRecorderLoopReplaysOnItsInterval(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := newOutage(t)
	clock := clockwork.NewFakeClockAt(slot)
	rec, err := history.NewRecorder(o.via, t.TempDir(), zerolog.Nop(),
		history.WithClock(clock), history.WithReplayInterval(30*time.Second))
	require.NoError(t, err)
	type replay struct {
		n   int
		err error
	}
	replays := make(chan replay, 4)
	history.SetAfterReplay(rec, func(n int, err error) { replays <- replay{n, err} })
	t.Cleanup(func() { require.NoError(t, rec.Close()) })

	run, _, err := rec.RunClaim(ctx, claimParams("web-nightly", "ins-6pb6lrmy", slot))
	require.NoError(t, err)
	o.proxy.down()
	require.NoError(t, rec.RunRequested(ctx, run.ID, "img-1", "req-1"))

	require.NoError(t, rec.Start(ctx)) // its first replay fails: the database is still away
	require.Error(t, rec.Start(ctx), "started once")
	require.Equal(t, 1, rec.Pending())

	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	clock.Advance(30 * time.Second)
	r := <-replays
	require.ErrorIs(t, r.err, history.ErrUnavailable)
	require.Equal(t, 1, rec.Pending())

	o.proxy.up()
	clock.Advance(30 * time.Second)
	r = <-replays
	require.NoError(t, r.err)
	require.Equal(t, 1, r.n)
	require.Zero(t, rec.Pending())
	got, err := o.direct.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, "req-1", got.RequestID)

	rec.Stop()
	rec.Stop() // idempotent
}

func TestRecorderReplaysAtStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o := newOutage(t)
	dir := t.TempDir()

	first := newRecorder(t, o.via, dir)
	run, _, err := first.RunClaim(ctx, claimParams("web-nightly", "ins-6pb6lrmy", slot))
	require.NoError(t, err)
	o.proxy.down()
	require.NoError(t, first.RunRequested(ctx, run.ID, "img-1", "req-1"))
	require.NoError(t, first.RunFinish(ctx, history.RunFinishParams{RunID: run.ID, Status: history.StatusFailed,
		ErrorCode: "Timeout", FinishedAt: slot.Add(4 * time.Hour)}))
	require.NoError(t, first.Close()) // the daemon exits with writes still spooled

	o.proxy.up()
	next := newRecorder(t, o.via, dir, history.WithClock(clockwork.NewFakeClock()))
	require.Equal(t, 2, next.Pending())
	require.NoError(t, next.Start(ctx))
	t.Cleanup(next.Stop)
	require.Zero(t, next.Pending(), "replayed before Start returns")

	unfinished, err := next.RunsUnfinished(ctx)
	require.NoError(t, err)
	require.Empty(t, unfinished, "crash recovery sees the spooled outcome")
	got, err := o.direct.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, history.StatusFailed, got.Status)
	require.Equal(t, "req-1", got.RequestID)
}

func TestRecorderSpoolIsExclusiveAndSurvivesTornWrites(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	dir := t.TempDir()
	_ = newRecorder(t, s, dir)
	_, err := history.NewRecorder(s, dir, zerolog.Nop())
	require.ErrorContains(t, err, "in use by another imager process")

	// A spool whose last write was torn by a crash: the whole lines are kept, the torn one dropped.
	other := t.TempDir()
	good := `{"seq":7,"op":"run_rename","spooled_at":"2026-03-29T03:00:00Z","run_id":1,"image_name":"n1"}`
	require.NoError(t, os.WriteFile(filepath.Join(other, history.SpoolFileName),
		[]byte(good+"\nnot json\n"+`{"seq":9,"op":"run_ren`), 0o600))
	rec := newRecorder(t, s, other)
	require.Equal(t, 1, rec.Pending())
	require.Equal(t, []string{good}, spoolLines(t, other), "the file holds whole records only")

	// The next spooled write starts on a line of its own.
	require.NoError(t, rec.Close())
	b, err := os.ReadFile(filepath.Join(other, history.SpoolFileName))
	require.NoError(t, err)
	require.True(t, bytes.HasSuffix(b, []byte("\n")))
}

func TestRecorderClosedRefusesToSpool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o := newOutage(t)
	rec, err := history.NewRecorder(o.via, t.TempDir(), zerolog.Nop())
	require.NoError(t, err)
	run, _, err := rec.RunClaim(ctx, claimParams("web-nightly", "ins-6pb6lrmy", slot))
	require.NoError(t, err)
	require.NoError(t, rec.Close())
	require.NoError(t, rec.Close(), "idempotent")
	o.proxy.down()
	err = rec.RunRequested(ctx, run.ID, "img-1", "req-1")
	require.ErrorIs(t, err, history.ErrUnavailable, "a write that cannot be kept is reported, not dropped silently")
	require.True(t, errors.Is(err, history.ErrUnavailable))
}

func TestRecorderStopReplaysWhatIsLeft(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o := newOutage(t)
	rec := newRecorder(t, o.via, t.TempDir(), history.WithClock(clockwork.NewFakeClock()))
	run, _, err := rec.RunClaim(ctx, claimParams("web-nightly", "ins-6pb6lrmy", slot))
	require.NoError(t, err)
	require.NoError(t, rec.Start(ctx))

	o.proxy.down()
	require.NoError(t, rec.RunRequested(ctx, run.ID, "img-1", "req-1"))
	require.Equal(t, 1, rec.Pending())
	o.proxy.up() // back before the next interval (the fake clock never reaches it)

	rec.Stop()
	require.Zero(t, rec.Pending(), "the daemon's shutdown flushed the spool")
	got, err := o.direct.RunGet(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, "req-1", got.RequestID)
}
