package bench

import (
	"context"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}

// testEnv gives the benchmarks fresh databases of the test's PostgreSQL, dropped when t ends.
func testEnv(t *testing.T) Env {
	t.Helper()
	return Env{
		NewDatabase: func(context.Context) (string, error) { return pgtest.NewDatabase(t), nil },
		Logger:      zerolog.Nop(),
	}
}

// buildImager builds cmd/imager into a directory removed when t ends.
func buildImager(t *testing.T) string {
	t.Helper()
	bin, err := BuildImager(t.Context(), t.TempDir())
	require.NoError(t, err)
	return bin
}
