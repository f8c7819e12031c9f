package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// registerHooks adds the hooks' collector (docs/policies.md "Hooks").
func (m *Metrics) registerHooks() {
	m.hookFrozen = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "imager_hook_frozen_seconds",
		Help:    "Time an instance spent between the end of its pre hook and the start of its post hook, by policy.",
		Buckets: prometheus.ExponentialBuckets(0.5, 2, 12), // 0.5s to about 17 minutes
	}, []string{"policy"})
	m.registry.MustRegister(m.hookFrozen)
}

// ObserveHookFrozen records how long one instance stayed between its pre and post hooks; it
// matches scheduler.Options.OnHookFrozen.
func (m *Metrics) ObserveHookFrozen(policy string, frozen time.Duration) {
	m.hookFrozen.WithLabelValues(policy).Observe(frozen.Seconds())
}
