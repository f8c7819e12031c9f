package history

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/startstop"
)

// Recorder defaults.
const (
	DefaultReplayInterval = 5 * time.Second
	DefaultWriteTimeout   = 10 * time.Second
)

// Recorder is the Store as the scheduler uses it, with the promise that no outcome is lost
// (docs/design.md "Reliability"): a write that fails because the database is unavailable (RunRename,
// RunRequested, RunFinish, RunAvailable, RunSetImageID, AttemptInsert) is appended to a local
// spool file, synced to disk, and the call returns nil. The spool is replayed in order, and
// idempotently, at Start and then every replay interval until it is empty. While anything is
// spooled, later writes are spooled behind it so they reach the database in the order they
// were made.
//
// Every write carries the store's leadership term (Store.WithTerm), in the spool too, so a
// replay is fenced exactly like the original write: a fenced write is returned as ErrFenced,
// never spooled.
//
// RunClaim is never spooled: a slot cannot be claimed without the database, so its error is
// returned and the slot is not sent. Reads go to the database.
//
// Writes are not cancelled by the caller's context (an outcome must be recorded even during
// shutdown); each is bounded by the write timeout, after which it is spooled.
type Recorder struct {
	store        *Store
	log          zerolog.Logger
	clock        clockwork.Clock
	interval     time.Duration
	writeTimeout time.Duration

	mu      sync.Mutex // guards spool, pending, seq, closed
	spool   *spoolFile
	pending []spoolRecord // spooled, in order, not yet in the database
	seq     int64
	closed  bool

	replayMu sync.Mutex // one replay at a time

	life startstop.Life // the replay loop

	// afterReplay, when set (tests), is called after each replay of the loop.
	afterReplay func(n int, err error)
}

// RecorderOption changes a Recorder default.
type RecorderOption func(*Recorder)

// WithReplayInterval sets how often the spool is replayed while it is not empty
// (default DefaultReplayInterval).
func WithReplayInterval(d time.Duration) RecorderOption {
	return func(r *Recorder) {
		if d > 0 {
			r.interval = d
		}
	}
}

// WithClock sets the clock that paces the replay loop (tests pass a fake clock).
func WithClock(c clockwork.Clock) RecorderOption {
	return func(r *Recorder) { r.clock = c }
}

// WithWriteTimeout bounds each database write; a write that times out is spooled
// (default DefaultWriteTimeout).
func WithWriteTimeout(d time.Duration) RecorderOption {
	return func(r *Recorder) {
		if d > 0 {
			r.writeTimeout = d
		}
	}
}

// NewRecorder opens the spool in spoolDir (created if missing, locked against other processes)
// and loads the writes waiting in it; Start replays them. log is used as given (the caller tags
// it with its component).
func NewRecorder(store *Store, spoolDir string, log zerolog.Logger, opts ...RecorderOption) (*Recorder, error) {
	if spoolDir == "" {
		return nil, fmt.Errorf("history spool: no directory: %w", ErrInvalid)
	}
	r := &Recorder{
		store:        store,
		log:          log,
		clock:        clockwork.NewRealClock(),
		interval:     DefaultReplayInterval,
		writeTimeout: DefaultWriteTimeout,
	}
	for _, o := range opts {
		o(r)
	}
	sf, recs, bad, err := openSpool(spoolDir)
	if err != nil {
		return nil, fmt.Errorf("history spool: %w", err)
	}
	for _, line := range bad {
		r.log.Error().Str("line", string(line)).Msg("spool line unreadable (torn by a crash?): dropped")
	}
	r.spool = sf
	r.pending = recs
	for _, rec := range recs {
		r.seq = max(r.seq, rec.Seq)
	}
	if len(recs) > 0 {
		r.log.Warn().Int("pending", len(recs)).Str("dir", spoolDir).Msg("spooled history writes waiting for the database")
	}
	return r, nil
}

// Store returns the wrapped store, for the queries the Recorder does not wrap.
func (r *Recorder) Store() *Store {
	return r.store
}

// Pending returns how many writes wait in the spool.
func (r *Recorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

// RunClaim claims a slot in the database. It is never spooled.
func (r *Recorder) RunClaim(ctx context.Context, p RunClaimParams) (Run, bool, error) {
	return r.store.RunClaim(ctx, p)
}

// RunsClaimFire claims every slot of one fire in the database (Store.RunsClaimFire). It is never
// spooled: a slot whose claim cannot be written is not sent.
func (r *Recorder) RunsClaimFire(ctx context.Context, ps []RunClaimParams) ([]Run, []bool, error) {
	return r.store.RunsClaimFire(ctx, ps)
}

// PolicySlots reads each policy's last handled slot from the database.
func (r *Recorder) PolicySlots(ctx context.Context) (map[string]time.Time, error) {
	return r.store.PolicySlots(ctx)
}

// PolicySlotsSet records many policies' last handled slots in the database; never spooled.
func (r *Recorder) PolicySlotsSet(ctx context.Context, slots map[string]time.Time) error {
	return r.store.PolicySlotsSet(ctx, slots)
}

// FireWithoutRuns records a fire that wrote no run in the database; it is never spooled.
func (r *Recorder) FireWithoutRuns(ctx context.Context, policy string, slot time.Time, code, message string) error {
	return r.store.FireWithoutRuns(ctx, policy, slot, code, message)
}

// PreviousTargets reads the instances of a policy's latest slot with runs from the database.
func (r *Recorder) PreviousTargets(ctx context.Context, policy string, before time.Time) ([]string, error) {
	return r.store.PreviousTargets(ctx, policy, before)
}

// RunsInProgress reads the runs still being made from the database.
func (r *Recorder) RunsInProgress(ctx context.Context, policy string, instances []string, before time.Time) (map[string]Run, error) {
	return r.store.RunsInProgress(ctx, policy, instances, before)
}

// WarmConnections opens and prepares the store's connections ahead of a fire (Store.WarmConnections).
func (r *Recorder) WarmConnections(ctx context.Context, n int) {
	r.store.WarmConnections(ctx, n)
}

// RunsTakeOver takes unfinished runs over in the database; it is never spooled.
func (r *Recorder) RunsTakeOver(ctx context.Context, ids []int64, daemonID string) (int64, error) {
	return r.store.RunsTakeOver(ctx, ids, daemonID)
}

// RunsUnfinished reads the unfinished runs from the database.
func (r *Recorder) RunsUnfinished(ctx context.Context) ([]Run, error) {
	return r.store.RunsUnfinished(ctx)
}

// RunRename is Store.RunRename, spooled when the database is unavailable.
func (r *Recorder) RunRename(ctx context.Context, runID int64, imageName string) error {
	return r.write(ctx, spoolRecord{Op: opRunRename, RunID: runID, ImageName: imageName})
}

// RunRequested is Store.RunRequested, spooled when the database is unavailable.
func (r *Recorder) RunRequested(ctx context.Context, runID int64, imageID, requestID string) error {
	return r.write(ctx, spoolRecord{Op: opRunRequested, RunID: runID, ImageID: imageID, RequestID: requestID})
}

// RunFinish is Store.RunFinish, spooled when the database is unavailable.
func (r *Recorder) RunFinish(ctx context.Context, p RunFinishParams) error {
	return r.write(ctx, finishRecord(p))
}

// RunAvailable is Store.RunAvailable, spooled when the database is unavailable.
func (r *Recorder) RunAvailable(ctx context.Context, runID int64, sizeGiB *int64, imageID string, at time.Time) error {
	return r.write(ctx, spoolRecord{Op: opRunAvailable, RunID: runID, SizeGiB: sizeGiB, ImageID: imageID, At: at})
}

// RunSetImageID is Store.RunSetImageID, spooled when the database is unavailable.
func (r *Recorder) RunSetImageID(ctx context.Context, runID int64, imageID string) error {
	return r.write(ctx, spoolRecord{Op: opRunSetImageID, RunID: runID, ImageID: imageID})
}

// AttemptInsert is Store.AttemptInsert, spooled when the database is unavailable.
func (r *Recorder) AttemptInsert(ctx context.Context, a Attempt) error {
	return r.write(ctx, attemptRecord(a))
}

// write applies rec to the database, or spools it: when earlier writes are spooled (to keep
// the order), or when the database is unavailable or does not answer within the write timeout.
func (r *Recorder) write(ctx context.Context, rec spoolRecord) error {
	if err := rec.check(); err != nil {
		return err
	}
	rec.Term = r.store.Term()
	r.mu.Lock()
	if len(r.pending) > 0 {
		defer r.mu.Unlock()
		return r.appendLocked(rec, nil)
	}
	r.mu.Unlock()

	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.writeTimeout)
	err := rec.apply(opCtx, r.store)
	timedOut := opCtx.Err() != nil
	cancel()
	if err == nil {
		return nil
	}
	if !errors.Is(err, ErrUnavailable) && !timedOut {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.appendLocked(rec, err)
}

// appendLocked spools rec; cause is the database error that made it necessary, if any.
func (r *Recorder) appendLocked(rec spoolRecord, cause error) error {
	if r.closed {
		if cause == nil {
			cause = ErrUnavailable
		}
		return fmt.Errorf("history spool closed, write lost: %w", cause)
	}
	r.seq++
	rec.Seq = r.seq
	rec.SpooledAt = r.clock.Now().UTC()
	if err := r.spool.append(rec); err != nil {
		r.seq--
		if cause == nil {
			cause = ErrUnavailable
		}
		return fmt.Errorf("%w (and the spool failed: %v)", cause, err)
	}
	r.pending = append(r.pending, rec)
	ev := r.log.Debug()
	if len(r.pending) == 1 {
		ev = r.log.Warn()
	}
	if cause != nil {
		ev = ev.Err(cause)
	}
	ev.Str("op", rec.Op).Int64("run_id", rec.RunID).Int("pending", len(r.pending)).Msg("database unavailable: history write spooled")
	return nil
}

// Replay applies the spooled writes in order and removes the applied ones from the spool. It
// stops at the first write the database cannot take now (unavailable: kept for the next
// replay); a write the database refuses for good (the run is gone, or in a state that conflicts
// with it, or it was made under a leadership term that is over) is logged and dropped. It returns how many writes were applied.
func (r *Recorder) Replay(ctx context.Context) (int, error) {
	r.replayMu.Lock()
	defer r.replayMu.Unlock()

	r.mu.Lock()
	batch := slices.Clone(r.pending)
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return 0, errors.New("replay history spool: closed")
	}
	if len(batch) == 0 {
		return 0, nil
	}

	applied, removed := 0, 0
	var stopErr error
	for _, rec := range batch {
		opCtx, cancel := context.WithTimeout(ctx, r.writeTimeout)
		err := rec.apply(opCtx, r.store)
		timedOut := opCtx.Err() != nil
		cancel()
		if err == nil {
			applied++
			removed++
			continue
		}
		if errors.Is(err, ErrUnavailable) || timedOut || ctx.Err() != nil {
			stopErr = err
			break
		}
		if errors.Is(err, ErrFenced) {
			// Made under a term that is over: the current leader reconciles the run by name.
			r.log.Warn().Err(err).Str("op", rec.Op).Int64("seq", rec.Seq).Int64("run_id", rec.RunID).
				Int64("term", rec.Term).Msg("spooled history write fenced (leadership changed since): dropped")
			removed++
			continue
		}
		r.log.Error().Err(err).Str("op", rec.Op).Int64("seq", rec.Seq).Int64("run_id", rec.RunID).
			Msg("spooled history write refused by the database: dropped")
		removed++
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		// Closed during the replay: the file keeps everything and is replayed again next time.
		return applied, errors.New("replay history spool: closed")
	}
	if removed > 0 {
		// Writes spooled while this replay ran stay behind the ones left.
		rest := slices.Clone(r.pending[removed:])
		if err := r.spool.rewrite(rest); err != nil {
			// The applied writes stay in the file and are replayed again: harmless, they are idempotent.
			return applied, fmt.Errorf("replay history spool: %w", err)
		}
		r.pending = rest
	}
	if stopErr != nil {
		return applied, fmt.Errorf("replay history spool: %d of %d writes applied: %w", applied, len(batch), stopErr)
	}
	if applied > 0 || removed > 0 {
		r.log.Info().Int("applied", applied).Int("dropped", removed-applied).Int("pending", len(r.pending)).Msg("history spool replayed")
	}
	return applied, nil
}

// Start replays what the spool holds, then replays it every interval until Stop or ctx ends.
// A database still unavailable at Start is not an error: the loop keeps trying.
func (r *Recorder) Start(ctx context.Context) error {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return errors.New("history spool: closed")
	}
	loopCtx, err := r.life.Start(ctx)
	if err != nil {
		return fmt.Errorf("history spool: %w", err)
	}
	r.replayLogged(loopCtx)
	r.life.Go(func() { r.loop(loopCtx) })
	return nil
}

func (r *Recorder) loop(ctx context.Context) {
	ticker := r.clock.NewTicker(r.interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.Chan():
			n, err := r.replayLogged(ctx)
			if r.afterReplay != nil {
				r.afterReplay(n, err)
			}
		}
	}
}

// replayLogged replays the spool if it holds anything and logs a failure.
func (r *Recorder) replayLogged(ctx context.Context) (int, error) {
	if r.Pending() == 0 {
		return 0, nil
	}
	n, err := r.Replay(ctx)
	if err != nil && ctx.Err() == nil {
		r.log.Warn().Err(err).Int("pending", r.Pending()).Msg("history spool not replayed yet")
	}
	return n, err
}

// Stop ends the replay loop, waits for it, and replays what is still spooled one last time, so
// that an outage that ended since the last interval leaves nothing behind at shutdown (what the
// database still cannot take stays in the file for the next start). Writes still work, and
// spool, after Stop. It is safe to call more than once, and without Start.
func (r *Recorder) Stop() {
	if r.life.Stop() {
		_, _ = r.replayLogged(context.Background())
	}
}

// Close stops the loop and releases the spool file and its lock. Writes spooled and not yet
// replayed stay in the file for the next process. After Close a write that needs the spool
// fails. It is safe to call more than once.
func (r *Recorder) Close() error {
	r.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if n := len(r.pending); n > 0 {
		r.log.Warn().Int("pending", n).Msg("history spool closed with writes still waiting; they are replayed at the next start")
	}
	return r.spool.close()
}
