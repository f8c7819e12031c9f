package cvmsim

import (
	"maps"
	"slices"
	"strings"
	"time"
)

// Instance is one CVM instance the simulator holds.
type Instance struct {
	ID           string            // required, e.g. "ins-web00001"
	Account      string            // SecretID of the owning account; the first account if empty
	Region       string            // DefaultRegion if empty; becomes a region of every account
	Zone         string            // Region + "-1" if empty
	Name         string            // ID if empty
	State        string            // RUNNING if empty; STARTING/STOPPING/REBOOTING/TERMINATING refuse CreateImage
	Tags         map[string]string // matched by the tag filters
	DataDiskIDs  []string          // disks DataDiskIds may name
	SystemDiskID string            // "disk-sys-" + ID suffix if empty; refused in DataDiskIds
	Unsupported  bool              // CreateImage answers InvalidInstance.NotSupported
	// Agent is the TAT agent's state: AgentOnline if empty, AgentOffline or AgentNotInstalled.
	// An agent counts as online only while the instance is RUNNING.
	Agent        string
	ImageID      string // the image it was launched from (RunInstances); reported by DescribeInstances
	InstanceType string // "S5.MEDIUM4" if empty
}

// TAT agent states of an Instance.
const (
	AgentOnline       = "Online"
	AgentOffline      = "Offline"
	AgentNotInstalled = "NotInstalled"
)

// simInstance is an Instance with the simulator's bookkeeping of its transitions.
type simInstance struct {
	Instance
	launch       *Launch   // the RunInstances launch that made it; nil for an added instance
	pendingRun   bool      // PENDING until runningAt (unless runHold)
	runHold      bool      // PENDING until SetInstanceState
	runningAt    time.Time //
	failLaunch   bool      // ends LAUNCH_FAILED instead of RUNNING
	agentAfter   time.Duration
	pendingAgent bool // agent Offline until agentAt (unless agentHold)
	agentHold    bool
	agentAt      time.Time
	pendingGone  bool // TERMINATING until goneAt (unless goneHold)
	goneHold     bool
	goneAt       time.Time
}

func (in Instance) clone() Instance {
	in.Tags = maps.Clone(in.Tags)
	in.DataDiskIDs = slices.Clone(in.DataDiskIDs)
	return in
}

// AddInstance adds an instance, or replaces the one with the same ID (in whichever account). It
// panics when ID is empty or Account is not one of the simulator's (bugs in the calling test).
func (s *Server) AddInstance(in Instance) {
	if in.ID == "" {
		panic("cvmsim: AddInstance: Instance.ID is required")
	}
	in = in.clone()
	if in.Region == "" {
		in.Region = DefaultRegion
	}
	if in.Zone == "" {
		in.Zone = in.Region + "-1"
	}
	if in.Name == "" {
		in.Name = in.ID
	}
	if in.State == "" {
		in.State = "RUNNING"
	}
	if in.SystemDiskID == "" {
		in.SystemDiskID = "disk-sys-" + strings.TrimPrefix(in.ID, "ins-")
	}
	if in.Agent == "" {
		in.Agent = AgentOnline
	}
	if in.InstanceType == "" {
		in.InstanceType = defaultInstanceType
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in.Account = s.ownerOf(in.Account, "AddInstance")
	s.regions[in.Region] = true
	s.storeInstance(&simInstance{Instance: in})
}

// defaultInstanceType is the InstanceType of an instance added or launched without one.
const defaultInstanceType = "S5.MEDIUM4"

// storeInstance adds in, or replaces the instance with its ID (forgetting its transitions).
func (s *Server) storeInstance(in *simInstance) {
	if _, ok := s.instances[in.ID]; !ok {
		s.instOrder = append(s.instOrder, in.ID)
	}
	s.issuedIns[in.ID] = struct{}{}
	delete(s.moving, in.ID)
	s.instances[in.ID] = in
}

// SetAgentState sets an instance's TAT agent state (AgentOnline, AgentOffline or
// AgentNotInstalled) now, ending a pending AgentOnlineAfter. Unknown ids are ignored.
func (s *Server) SetAgentState(instanceID, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in, ok := s.instances[instanceID]; ok {
		in.Agent = state
		in.pendingAgent = false
	}
}

// SetInstanceState sets an instance's state now, ending a pending launch or termination. A
// launched instance set RUNNING from PENDING gets its agent Online AgentOnlineAfter later, as if
// it had started by itself. Unknown ids are ignored.
func (s *Server) SetInstanceState(instanceID, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[instanceID]
	if !ok {
		return
	}
	now := s.clock.Now()
	wasLaunching := in.pendingRun
	in.State = state
	in.pendingRun, in.pendingGone = false, false
	if in.launch != nil {
		in.launch.State = state
	}
	if wasLaunching {
		s.launchDone(in, now)
	}
	s.settle(in)
}

// RemoveInstance removes an instance (its images stay). Unknown ids are ignored.
func (s *Server) RemoveInstance(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.instances[id]; !ok {
		return
	}
	delete(s.instances, id)
	delete(s.moving, id)
	s.instOrder = slices.DeleteFunc(s.instOrder, func(x string) bool { return x == id })
}

// Instances returns a snapshot of the instances of every account, in the order they were added.
func (s *Server) Instances() []Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Instance, 0, len(s.instOrder))
	for _, id := range s.instOrder {
		out = append(out, s.instances[id].clone())
	}
	return out
}

func knownInstanceFilter(name string) bool {
	switch name {
	case "zone", "instance-id", "instance-name", "instance-state":
		return true
	}
	return isTagFilter(name)
}

func instanceMatches(in *simInstance, filters []filter) bool {
	for _, f := range filters {
		if m, handled := matchTags(f, in.Tags); handled {
			if !m {
				return false
			}
			continue
		}
		var ok bool
		switch f.name {
		case "zone":
			ok = slices.Contains(f.values, in.Zone)
		case "instance-id":
			ok = slices.Contains(f.values, in.ID)
		case "instance-name":
			ok = containsAny(in.Name, f.values)
		case "instance-state":
			ok = slices.Contains(f.values, in.State)
		}
		if !ok {
			return false
		}
	}
	return true
}

func (s *Server) describeInstances(account, region string, p params, _ time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown("InstanceIds", "Filters", "Offset", "Limit"); aerr != nil {
		return nil, aerr
	}
	ids, _, aerr := p.strList("InstanceIds")
	if aerr != nil {
		return nil, aerr
	}
	filters, _, aerr := p.filters(knownInstanceFilter)
	if aerr != nil {
		return nil, aerr
	}
	if len(ids) > 0 && len(filters) > 0 {
		return nil, errf("InvalidParameter", "`InstanceIds` and `Filters` cannot be given together.")
	}
	if len(ids) > 100 {
		return nil, errf("InvalidParameterValue.LimitExceeded", "At most 100 `InstanceIds` are allowed per request.")
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, "ins-") {
			return nil, errf("InvalidInstanceId.Malformed", "The instance id `%s` is malformed.", id)
		}
	}
	offset, limit, aerr := p.page()
	if aerr != nil {
		return nil, aerr
	}
	var matched []*simInstance
	for _, id := range s.instOrder {
		in := s.instances[id]
		if in.Account != account || in.Region != region {
			continue
		}
		if len(ids) > 0 {
			if slices.Contains(ids, in.ID) {
				matched = append(matched, in)
			}
			continue
		}
		if instanceMatches(in, filters) {
			matched = append(matched, in)
		}
	}
	lo, hi := pageOf(len(matched), offset, limit)
	set := make([]map[string]any, 0, hi-lo)
	for _, in := range matched[lo:hi] {
		set = append(set, instanceJSON(in))
	}
	return map[string]any{"InstanceSet": set, "TotalCount": len(matched)}, nil
}

func instanceJSON(in *simInstance) map[string]any {
	disks := make([]map[string]any, 0, len(in.DataDiskIDs))
	for _, d := range in.DataDiskIDs {
		disks = append(disks, map[string]any{"DiskId": d, "DiskType": "CLOUD_PREMIUM", "DiskSize": 100})
	}
	return map[string]any{
		"InstanceId":    in.ID,
		"InstanceName":  in.Name,
		"InstanceState": in.State,
		"InstanceType":  in.InstanceType,
		"ImageId":       in.ImageID,
		"CPU":           2,
		"Memory":        4,
		"Placement":     map[string]any{"Zone": in.Zone, "ProjectId": 0},
		"SystemDisk":    map[string]any{"DiskId": in.SystemDiskID, "DiskType": "CLOUD_PREMIUM", "DiskSize": 50},
		"DataDisks":     disks,
		"Tags":          sortedTags(in.Tags),
		"OsName":        "TencentOS Server 3.1 (TK4)",
	}
}
