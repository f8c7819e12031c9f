package cvmsim

import (
	"maps"
	"slices"
	"time"
)

// Regions returns the regions every account has, sorted.
func (s *Server) Regions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.regions))
}

// SetRegionDown takes region down (or brings it back): every call sent to it that the limiter
// admits answers InternalError without being executed, and SyncImages naming it as a destination
// answers InternalError too. Calls to other regions are unaffected.
func (s *Server) SetRegionDown(region string, down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if down {
		s.down[region] = true
	} else {
		delete(s.down, region)
	}
}

// RefuseSyncTo makes SyncImages answer code (e.g. "InvalidRegion.Unavailable") for the whole
// call whenever region is one of its destinations; an empty code lifts the refusal.
func (s *Server) RefuseSyncTo(region, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if code == "" {
		delete(s.refuseSync, region)
	} else {
		s.refuseSync[region] = code
	}
}

// SetCopyReadyAfter changes how long copies made from now on stay SYNCING (see Options).
func (s *Server) SetCopyReadyAfter(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.copyAfter = d
}
