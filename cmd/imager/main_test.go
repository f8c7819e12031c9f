package main

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

// TestMain gives the end-to-end tests a PostgreSQL server and checks that no goroutine outlives
// them; the imager binary the fault tests build is removed at the end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(removeBinary{pgtest.Wrap(m)})
}

type removeBinary struct{ m pgtest.Runner }

func (r removeBinary) Run() int {
	code := r.m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	return code
}
