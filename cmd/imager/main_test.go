package main

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

// TestMain gives the end-to-end tests a PostgreSQL server and checks that no goroutine outlives them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Wrap(m))
}
