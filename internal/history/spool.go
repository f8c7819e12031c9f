package history

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Spool file names inside the spool directory.
const (
	spoolFileName = "history-spool.jsonl"
	spoolLockName = "history-spool.lock"
)

// Spooled operations (spoolRecord.Op).
const (
	opRunRename     = "run_rename"
	opRunRequested  = "run_requested"
	opRunFinish     = "run_finish"
	opRunAvailable  = "run_available"
	opRunSetImageID = "run_set_image_id"
	opAttemptInsert = "attempt_insert"
)

// spoolRecord is one write waiting for the database: one JSON line of the spool file. The
// format is read back by later versions of imager: add fields, never rename them.
type spoolRecord struct {
	Seq          int64     `json:"seq"`
	Op           string    `json:"op"`
	SpooledAt    time.Time `json:"spooled_at"`
	RunID        int64     `json:"run_id,omitempty"`
	DeletionID   int64     `json:"deletion_id,omitempty"`
	ImageName    string    `json:"image_name,omitempty"`
	ImageID      string    `json:"image_id,omitempty"`
	RequestID    string    `json:"request_id,omitempty"`
	Status       string    `json:"status,omitempty"`
	ErrorCode    string    `json:"error_code,omitempty"`
	ErrorMessage string    `json:"error_message,omitempty"`
	SizeGiB      *int64    `json:"image_size_gib,omitempty"`
	At           time.Time `json:"at,omitzero"` // finished_at, or an attempt's started_at
	Attempt      int       `json:"attempt,omitempty"`
	Action       string    `json:"action,omitempty"`
	DurationNS   int64     `json:"duration_ns,omitempty"`
	// Term is the leadership term the write was made under; replay applies it with the same
	// fence (0: unfenced, as written by versions before leadership).
	Term int64 `json:"term,omitempty"`
}

// apply performs the write rec describes, fenced by the term it was made under.
func (rec spoolRecord) apply(ctx context.Context, s *Store) error {
	if s.term != rec.Term {
		s = s.WithTerm(rec.Term)
	}
	switch rec.Op {
	case opRunRename:
		return s.RunRename(ctx, rec.RunID, rec.ImageName)
	case opRunRequested:
		return s.RunRequested(ctx, rec.RunID, rec.ImageID, rec.RequestID)
	case opRunFinish:
		return s.RunFinish(ctx, rec.finishParams())
	case opRunAvailable:
		return s.RunAvailable(ctx, rec.RunID, rec.SizeGiB, rec.ImageID, rec.At)
	case opRunSetImageID:
		return s.RunSetImageID(ctx, rec.RunID, rec.ImageID)
	case opAttemptInsert:
		return s.AttemptInsert(ctx, rec.attempt())
	}
	return fmt.Errorf("spooled write %d: unknown operation %q: %w", rec.Seq, rec.Op, ErrInvalid)
}

// check refuses a record the database would refuse whatever its state.
func (rec spoolRecord) check() error {
	switch rec.Op {
	case opRunRename:
		return checkRename(rec.RunID, rec.ImageName)
	case opRunFinish:
		return checkFinish(rec.finishParams())
	case opRunAvailable:
		return checkAvailable(rec.RunID, rec.At)
	case opRunSetImageID:
		return checkImageID(rec.RunID, rec.ImageID)
	case opAttemptInsert:
		return checkAttempt(rec.attempt())
	}
	return nil
}

func (rec spoolRecord) finishParams() RunFinishParams {
	return RunFinishParams{RunID: rec.RunID, Status: Status(rec.Status), ErrorCode: rec.ErrorCode,
		ErrorMessage: rec.ErrorMessage, ImageSizeGiB: rec.SizeGiB, FinishedAt: rec.At}
}

func (rec spoolRecord) attempt() Attempt {
	return Attempt{RunID: rec.RunID, DeletionID: rec.DeletionID, Attempt: rec.Attempt, Action: rec.Action,
		StartedAt: rec.At, Duration: time.Duration(rec.DurationNS), RequestID: rec.RequestID,
		ErrorCode: rec.ErrorCode, ErrorMessage: rec.ErrorMessage}
}

func finishRecord(p RunFinishParams) spoolRecord {
	return spoolRecord{Op: opRunFinish, RunID: p.RunID, Status: string(p.Status), ErrorCode: p.ErrorCode,
		ErrorMessage: p.ErrorMessage, SizeGiB: p.ImageSizeGiB, At: p.FinishedAt}
}

func attemptRecord(a Attempt) spoolRecord {
	return spoolRecord{Op: opAttemptInsert, RunID: a.RunID, DeletionID: a.DeletionID, Attempt: a.Attempt,
		Action: a.Action, At: a.StartedAt, DurationNS: int64(a.Duration), RequestID: a.RequestID,
		ErrorCode: a.ErrorCode, ErrorMessage: a.ErrorMessage}
}

// spoolFile is the append-only file of records waiting for the database, held under an
// exclusive lock so two processes never share one spool.
type spoolFile struct {
	dir  string
	lock *os.File
	f    *os.File // opened for appending
}

// openSpool locks dir's spool and reads the records waiting in it. Lines that do not parse (a
// write torn by a crash) are returned as bad and dropped from the file.
func openSpool(dir string) (sf *spoolFile, recs []spoolRecord, bad [][]byte, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, nil, fmt.Errorf("spool directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, spoolLockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("spool lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, nil, fmt.Errorf("spool directory %s is in use by another imager process", dir)
		}
		return nil, nil, nil, fmt.Errorf("spool lock: %w", err)
	}
	sf = &spoolFile{dir: dir, lock: lock}
	defer func() {
		if err != nil {
			_ = sf.close()
		}
	}()

	data, err := os.ReadFile(sf.path())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil, fmt.Errorf("read spool: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var rec spoolRecord
		if err := json.Unmarshal(line, &rec); err != nil || rec.Op == "" {
			bad = append(bad, append([]byte(nil), line...))
			continue
		}
		recs = append(recs, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("read spool: %w", err)
	}
	// Rewrite the file when it holds anything but whole good records, so appends start clean.
	if len(bad) > 0 || (len(data) > 0 && data[len(data)-1] != '\n') {
		if err := sf.rewrite(recs); err != nil {
			return nil, nil, nil, err
		}
		return sf, recs, bad, nil
	}
	if sf.f, err = os.OpenFile(sf.path(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
		return nil, nil, nil, fmt.Errorf("open spool: %w", err)
	}
	return sf, recs, bad, nil
}

func (sf *spoolFile) path() string { return filepath.Join(sf.dir, spoolFileName) }

// append writes rec as one line and waits until it is on disk.
func (sf *spoolFile) append(rec spoolRecord) error {
	line, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode spooled write: %w", err)
	}
	if _, err := sf.f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("write spool: %w", err)
	}
	if err := sf.f.Sync(); err != nil {
		return fmt.Errorf("sync spool: %w", err)
	}
	return nil
}

// rewrite replaces the file's content with recs: truncated in place when recs is empty,
// otherwise written to a new file that is renamed over the old one, so a crash leaves either
// the old or the new content.
func (sf *spoolFile) rewrite(recs []spoolRecord) error {
	if len(recs) == 0 && sf.f != nil {
		if err := sf.f.Truncate(0); err != nil {
			return fmt.Errorf("truncate spool: %w", err)
		}
		if err := sf.f.Sync(); err != nil {
			return fmt.Errorf("sync spool: %w", err)
		}
		return nil
	}
	tmp := sf.path() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("rewrite spool: %w", err)
	}
	w := bufio.NewWriter(f)
	for _, rec := range recs {
		line, err := json.Marshal(rec)
		if err != nil {
			_ = f.Close()
			return fmt.Errorf("encode spooled write: %w", err)
		}
		_, _ = w.Write(line)
		_ = w.WriteByte('\n')
	}
	if err := errors.Join(w.Flush(), f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("rewrite spool: %w", err)
	}
	if err := os.Rename(tmp, sf.path()); err != nil {
		return fmt.Errorf("rewrite spool: %w", err)
	}
	if err := syncDir(sf.dir); err != nil {
		return fmt.Errorf("rewrite spool: %w", err)
	}
	nf, err := os.OpenFile(sf.path(), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("reopen spool: %w", err)
	}
	if sf.f != nil {
		_ = sf.f.Close()
	}
	sf.f = nf
	return nil
}

// close releases the file and the lock.
func (sf *spoolFile) close() error {
	var errs []error
	if sf.f != nil {
		errs = append(errs, sf.f.Close())
		sf.f = nil
	}
	if sf.lock != nil {
		errs = append(errs, sf.lock.Close()) // closing the descriptor releases the flock
		sf.lock = nil
	}
	return errors.Join(errs...)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
