// Package simtest starts the CVM simulator with imager's real CVM client pointed at it, for tests
// of the packages that call the API (scheduler, lifecycle, retention, targets, cmd/imager).
package simtest

import (
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
)

// Start starts a simulator with opts and a client signed with the simulator's default key pair;
// both are closed when t ends.
func Start(t testing.TB, opts cvmsim.Options) (*cvmsim.Server, *cvm.Client) {
	t.Helper()
	sim := cvmsim.New(opts)
	url, err := sim.Start()
	require.NoError(t, err)
	t.Cleanup(sim.Close)
	client, err := cvm.New(cvm.Config{
		Endpoint:   url,
		Credential: common.NewCredential(cvmsim.DefaultSecretID, cvmsim.DefaultSecretKey),
		Logger:     zerolog.Nop(),
	})
	require.NoError(t, err)
	t.Cleanup(client.Close)
	return sim, client
}
