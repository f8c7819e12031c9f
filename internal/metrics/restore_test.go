package metrics

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

func TestLastRestoreTestMetric(t *testing.T) {
	at := time.Date(2026, 11, 15, 6, 4, 30, 0, time.UTC)
	var fail error
	m := New(Options{Logger: zerolog.Nop(), Sources: Sources{
		LastRestoreTests: func(context.Context) ([]LastRestoreTest, error) {
			if fail != nil {
				return nil, fail
			}
			return []LastRestoreTest{{Test: "web-weekly", Policy: "web-nightly", Instance: "ins-aaaaaaaa", At: at}}, nil
		},
	}})
	srv, err := Listen("127.0.0.1:0", m, zerolog.Nop())
	require.NoError(t, err)
	srv.Start()
	defer srv.Stop()
	base := "http://" + srv.Addr()

	_, body := get(t, base+"/metrics")
	require.Contains(t, body, `imager_last_restore_test_timestamp_seconds{instance="ins-aaaaaaaa",policy="web-nightly",test="web-weekly"} 1.79472267e+09`, "2026-11-15T06:04:30Z")
	require.Contains(t, body, "imager_history_up 1")

	fail = errors.New("database away")
	_, body = get(t, base+"/metrics")
	require.NotContains(t, body, "imager_last_restore_test_timestamp_seconds{")
	require.Contains(t, body, "imager_history_up 0")
}
