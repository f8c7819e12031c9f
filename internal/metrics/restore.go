package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// LastRestoreTest is when the newest passed restore test of one (test, policy, instance) passed
// (the restore_coverage view).
type LastRestoreTest struct {
	Test     string
	Policy   string
	Instance string
	At       time.Time
}

var lastRestoreDesc = prometheus.NewDesc("imager_last_restore_test_timestamp_seconds",
	"Unix time the newest passed restore test of a (test, policy, instance) passed (restore_coverage view; docs/restore-tests.md).",
	[]string{"test", "policy", "instance"}, nil)

// collectRestore sends imager_last_restore_test_timestamp_seconds; it reports a failed read.
func collectRestore(ctx context.Context, src func(ctx context.Context) ([]LastRestoreTest, error), ch chan<- prometheus.Metric) error {
	last, err := src(ctx)
	for _, l := range last {
		ch <- prometheus.MustNewConstMetric(lastRestoreDesc, prometheus.GaugeValue, float64(l.At.UnixNano())/1e9,
			l.Test, l.Policy, l.Instance)
	}
	return err
}
