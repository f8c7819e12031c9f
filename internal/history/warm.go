package history

import (
	"context"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// defaultMaxConns is the pool's size where the database URL does not set pool_max_conns: room
// for the worker pool, the tracker, the notifier, the status page and the lease renewal at once
// (pgxpool's own default is the number of CPUs, at least 4). The lease renewal, every few
// seconds, keeps connections open between fires.
const defaultMaxConns = 16

// warmStatements are the statements of a fire's path to its first call (the concurrency check
// and the claim of a scheduled fire: docs/design.md "Fire latency"). Every new pooled connection
// prepares them, so a fire never waits for their parse and plan. Preparing executes nothing: no
// row is written and no sequence number is taken.
var warmStatements = []string{
	sqlRunsInProgress,
	sqlClaimFence,
	claimInsertMany,
	sqlCoverageInsert,
	sqlDaysInsertOne,
	sqlFireAdd,
	sqlUpsertSlots,
	sqlFireInsert,
	sqlInsertEvent,
	sqlFireStart,
}

// configurePool sets the pool size dbURL leaves open and the warm-up of new connections.
func configurePool(cfg *pgxpool.Config, dbURL string) {
	if !strings.Contains(dbURL, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	cfg.AfterConnect = warm
}

// warm prepares warmStatements on conn under their own text, which is how pgx finds a prepared
// statement for a query, and plans each once. A database without imager's schema yet (before migrate) fails the first
// one; the connection is then used unprepared, as it would be without warming.
func warm(ctx context.Context, conn *pgx.Conn) error {
	for _, sql := range warmStatements {
		sd, err := conn.Prepare(ctx, sql, sql)
		if err != nil {
			return nil
		}
		// Plan it once too (EXPLAIN plans without executing): the backend loads the tables',
		// indexes' and statistics' catalog entries now rather than in the fire's first claim.
		if _, err := conn.Prepare(ctx, "imager_warm", sql); err != nil {
			return nil
		}
		args := strings.TrimSuffix(strings.Repeat("NULL, ", len(sd.ParamOIDs)), ", ")
		_, err = conn.Exec(ctx, "EXPLAIN EXECUTE imager_warm("+args+")", pgx.QueryExecModeSimpleProtocol)
		if derr := conn.Deallocate(ctx, "imager_warm"); derr != nil || err != nil {
			return nil
		}
	}
	return nil
}

// warmIdle prepares warmStatements on the pool's idle connections, after a migration gave them
// the schema they lacked when they were opened.
func (s *Store) warmIdle(ctx context.Context) {
	for _, c := range s.pool.AcquireAllIdle(ctx) {
		_ = warm(ctx, c.Conn())
		c.Release()
	}
}

// WarmConnections opens the pool's connections up to n (each prepares warmStatements as it
// opens) by holding n at once, and releases them: the scheduler calls it shortly before a slot,
// so the fire's claims find their connections open and prepared. It writes nothing.
func (s *Store) WarmConnections(ctx context.Context, n int) {
	n = min(n, int(s.pool.Config().MaxConns))
	conns := make(chan *pgxpool.Conn, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if c, err := s.pool.Acquire(ctx); err == nil {
				conns <- c
			}
		})
	}
	wg.Wait()
	close(conns)
	for c := range conns {
		c.Release()
	}
}
