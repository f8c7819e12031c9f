package history

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// pipeline collects statements of one transaction that do not depend on each other's answers,
// to send them to PostgreSQL in one round trip (a pgx.Batch), and the work that must wait for
// their answers. A claim sends its whole write this way in a few round trips instead of a dozen
// (docs/design.md "Fire latency").
type pipeline struct {
	b      pgx.Batch
	after  []func(ctx context.Context, tx pgx.Tx) error
	fenced bool // set by the fence's answer (queueFence): flush fails with ErrFenced
}

// exec queues a statement whose answer nobody reads (an error still fails the flush).
func (p *pipeline) exec(sql string, args ...any) {
	p.b.Queue(sql, args...)
}

// queryRow queues a statement whose one row scan reads; scan sees pgx.ErrNoRows from Scan when
// the statement returned none.
func (p *pipeline) queryRow(scan func(pgx.Row) error, sql string, args ...any) {
	p.b.Queue(sql, args...).QueryRow(scan)
}

// query queues a statement whose rows read reads.
func (p *pipeline) query(read func(pgx.Rows) error, sql string, args ...any) {
	p.b.Queue(sql, args...).Query(read)
}

// then adds work to run after the queued statements' answers are read, in order, on tx.
func (p *pipeline) then(fn func(ctx context.Context, tx pgx.Tx) error) {
	p.after = append(p.after, fn)
}

// flush sends the queued statements in one round trip, reads their answers, then runs the work
// that waited for them (unless the fence refused the transaction: ErrFenced). The pipeline is empty and reusable afterwards.
func (p *pipeline) flush(ctx context.Context, tx pgx.Tx) error {
	if p.b.Len() > 0 {
		b := p.b
		p.b = pgx.Batch{}
		if err := tx.SendBatch(ctx, &b).Close(); err != nil {
			return err
		}
	}
	if p.fenced {
		return ErrFenced
	}
	after := p.after
	p.after = nil
	for _, fn := range after {
		if err := fn(ctx, tx); err != nil {
			return err
		}
	}
	return nil
}
