package scheduler

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

// TestMain gives the integration tests a PostgreSQL server and checks, once it is stopped, that
// no goroutine outlived the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}
