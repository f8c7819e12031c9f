package policy

import "sync/atomic"

// Live is the policy config in effect, one pointer shared by every component that follows the
// policies (the scheduler, retention, the status page, the daemon's reload). A reload does all
// of its fallible work first and then swaps the config here in one step, so no component ever
// runs on a config the others have not taken. The zero value holds no config.
type Live struct {
	p atomic.Pointer[Config]
}

// NewLive returns a Live holding cfg.
func NewLive(cfg *Config) *Live {
	l := &Live{}
	l.p.Store(cfg)
	return l
}

// Load returns the config in effect.
func (l *Live) Load() *Config { return l.p.Load() }

// Store swaps cfg in.
func (l *Live) Store(cfg *Config) { l.p.Store(cfg) }
