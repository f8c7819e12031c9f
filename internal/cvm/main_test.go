package cvm

import (
	"testing"

	"go.uber.org/goleak"
)

// The HTTP transport keeps connection goroutines; every test closes its client and server.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
