package history_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every new pooled connection prepares the fire path's statements, and preparing them writes
// nothing: no id of image_runs or of the outbox is taken (consumers read a gap as a lost row).
func TestNewConnectionsArePreparedAndTakeNoIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	pool := s.Pool()

	// Hold several connections at once, so the pool opens new ones.
	const n = 6
	var prepared []int
	for range n {
		c, err := pool.Acquire(ctx)
		require.NoError(t, err)
		defer c.Release()
		var k int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM pg_prepared_statements`).Scan(&k))
		prepared = append(prepared, k)
	}
	for i, k := range prepared {
		require.GreaterOrEqual(t, k, 10, "connection %d prepared the fire path", i)
	}
	for _, seq := range []string{"image_runs", "notifications"} {
		var called bool
		require.NoError(t, pool.QueryRow(ctx, `SELECT is_called FROM pg_sequences s
			JOIN LATERAL (SELECT pg_get_serial_sequence($1, 'id') AS name) q ON q.name = s.schemaname || '.' || s.sequencename
			CROSS JOIN LATERAL (SELECT last_value IS NOT NULL AS is_called) c`, seq).Scan(&called))
		require.False(t, called, "no id of %s was taken", seq)
	}
	// The first claim takes id 1.
	r := claim(t, s, "web", "ins-11111111", slot)
	require.Equal(t, int64(1), r.ID)
}
