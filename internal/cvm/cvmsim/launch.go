package cvmsim

import (
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Launch is one instance RunInstances launched, kept after the instance is gone so tests can
// check what was launched, with what, and that it was destroyed.
type Launch struct {
	InstanceID       string
	Account          string
	Region           string
	Zone             string
	ImageID          string
	InstanceType     string
	Name             string
	ChargeType       string // InstanceChargeType as sent ("POSTPAID_BY_HOUR" if absent)
	ClientToken      string
	VpcID            string
	SubnetID         string
	SecurityGroupIDs []string
	Tags             map[string]string
	LaunchedAt       time.Time // when RunInstances accepted it
	RunningAt        time.Time // when it became RUNNING or LAUNCH_FAILED; zero before
	TerminatedAt     time.Time // when TerminateInstances accepted it; zero before
	GoneAt           time.Time // when it disappeared; zero before
	State            string    // its state now; "" once gone
}

func (l Launch) clone() Launch {
	l.SecurityGroupIDs = slices.Clone(l.SecurityGroupIDs)
	l.Tags = maps.Clone(l.Tags)
	return l
}

// tokenKey names one RunInstances ClientToken: tokens are per account and region.
type tokenKey struct{ account, region, token string }

// Instance states of the launch lifecycle.
const (
	InstanceStatePending      = "PENDING"
	InstanceStateLaunchFailed = "LAUNCH_FAILED"
	InstanceStateRunning      = "RUNNING"
	InstanceStateTerminating  = "TERMINATING"
)

// LaunchedInstances returns every launch RunInstances made, in order, with states advanced to
// Clock.Now.
func (s *Server) LaunchedInstances() []Launch {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceInstances(s.clock.Now())
	out := make([]Launch, 0, len(s.launches))
	for _, l := range s.launches {
		out = append(out, l.clone())
	}
	return out
}

// FailNextLaunches makes the next n instances RunInstances launches end LAUNCH_FAILED instead of
// RUNNING.
func (s *Server) FailNextLaunches(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLaunch = n
}

// SetInstanceQuota sets how many instances an account may have per region (0: no quota).
func (s *Server) SetInstanceQuota(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.instQuota = n
}

// SetLaunchReadyAfter changes how long instances launched from now on stay PENDING (see Options).
func (s *Server) SetLaunchReadyAfter(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.launchAfter = d
}

// advanceInstances makes every transition whose time has come: PENDING to RUNNING (or
// LAUNCH_FAILED), a launched instance's agent to Online, TERMINATING to gone.
func (s *Server) advanceInstances(now time.Time) {
	for _, in := range s.moving {
		if in.pendingRun && !in.runHold && !now.Before(in.runningAt) {
			in.pendingRun = false
			in.State = InstanceStateRunning
			if in.failLaunch {
				in.State = InstanceStateLaunchFailed
			}
			in.launch.State = in.State
			s.launchDone(in, in.runningAt)
		}
		if in.pendingAgent && !in.agentHold && !now.Before(in.agentAt) {
			in.pendingAgent = false
			in.Agent = AgentOnline
		}
		if in.pendingGone && !in.goneHold && !now.Before(in.goneAt) {
			s.removeGone(in)
			continue
		}
		s.settle(in)
	}
}

// launchDone records that a launched instance became RUNNING or LAUNCH_FAILED at t, and schedules
// its agent to come online AgentOnlineAfter later when it is RUNNING.
func (s *Server) launchDone(in *simInstance, t time.Time) {
	if in.launch != nil && in.launch.RunningAt.IsZero() {
		in.launch.RunningAt = t
	}
	if in.State == InstanceStateRunning && in.Agent == AgentOffline {
		in.pendingAgent = true
		in.agentHold = in.agentAfter < 0
		in.agentAt = t.Add(in.agentAfter)
		s.moving[in.ID] = in
	}
}

// settle forgets an instance that has no transition ahead any more.
func (s *Server) settle(in *simInstance) {
	if !in.pendingRun && !in.pendingAgent && !in.pendingGone {
		delete(s.moving, in.ID)
	}
}

// removeGone removes a terminated instance at the end of its TERMINATING time.
func (s *Server) removeGone(in *simInstance) {
	if in.launch != nil {
		in.launch.GoneAt = in.goneAt
		in.launch.State = ""
	}
	delete(s.instances, in.ID)
	delete(s.moving, in.ID)
	s.instOrder = slices.DeleteFunc(s.instOrder, func(x string) bool { return x == in.ID })
}

func (s *Server) freshInstanceID() string {
	for {
		id := newResourceID("ins-")
		if _, used := s.issuedIns[id]; !used {
			return id
		}
	}
}

var instanceTypePattern = regexp.MustCompile(`^[A-Z][A-Z0-9]*\.[A-Z0-9]+$`)

// chargeTypes are RunInstances' InstanceChargeType values.
var chargeTypes = []string{"PREPAID", "POSTPAID_BY_HOUR", "CDHPAID", "SPOTPAID", "CDCPAID"}

// runInstances launches instances (see the package comment for the order of its checks).
func (s *Server) runInstances(account, region string, p params, now time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown("ImageId", "Placement", "InstanceType", "VirtualPrivateCloud", "SecurityGroupIds",
		"InstanceChargeType", "InstanceChargePrepaid", "InstanceName", "ClientToken", "TagSpecification", "DryRun",
		"InstanceCount", "SystemDisk", "DataDisks", "InternetAccessible", "LoginSettings", "EnhancedService",
		"HostName", "UserData", "DisableApiTermination"); aerr != nil {
		return nil, aerr
	}
	imageID, _, aerr := p.str("ImageId")
	if aerr != nil {
		return nil, aerr
	}
	placement, aerr := p.object("Placement")
	if aerr != nil {
		return nil, aerr
	}
	zone, _, aerr := placement.str("Placement.Zone")
	if aerr != nil {
		return nil, aerr
	}
	vpc, aerr := p.object("VirtualPrivateCloud")
	if aerr != nil {
		return nil, aerr
	}
	vpcID, _, aerr := vpc.str("VirtualPrivateCloud.VpcId")
	if aerr != nil {
		return nil, aerr
	}
	subnetID, _, aerr := vpc.str("VirtualPrivateCloud.SubnetId")
	if aerr != nil {
		return nil, aerr
	}
	groups, _, aerr := p.strList("SecurityGroupIds")
	if aerr != nil {
		return nil, aerr
	}
	instanceType, _, aerr := p.str("InstanceType")
	if aerr != nil {
		return nil, aerr
	}
	charge, _, aerr := p.str("InstanceChargeType")
	if aerr != nil {
		return nil, aerr
	}
	name, _, aerr := p.str("InstanceName")
	if aerr != nil {
		return nil, aerr
	}
	token, _, aerr := p.str("ClientToken")
	if aerr != nil {
		return nil, aerr
	}
	count, aerr := p.integer("InstanceCount", 1)
	if aerr != nil {
		return nil, aerr
	}
	dryRun, aerr := p.boolean("DryRun")
	if aerr != nil {
		return nil, aerr
	}
	tags, aerr := tagSpecification(p, "instance", "InvalidParameterValue.DuplicateTags")
	if aerr != nil {
		return nil, aerr
	}

	if len(token) > 64 || strings.ContainsFunc(token, func(r rune) bool { return r >= 0x80 }) {
		return nil, errf("InvalidClientToken.TooLong", "`ClientToken` must be at most 64 ASCII characters.")
	}
	if token != "" {
		if ids, ok := s.tokens[tokenKey{account, region, token}]; ok {
			return map[string]any{"InstanceIdSet": slices.Clone(ids)}, nil
		}
	}
	switch {
	case zone == "":
		return nil, errf("MissingParameter", "The request is missing a required parameter `Placement.Zone`.")
	case imageID == "":
		return nil, errf("MissingParameter", "The request is missing a required parameter `ImageId`.")
	case !strings.HasPrefix(imageID, "img-"):
		return nil, errf("InvalidImageId.Malformed", "The image id `%s` is malformed.", imageID)
	case count < 1 || count > 500:
		return nil, errf("InvalidParameterValue.Range", "`InstanceCount` must be from 1 to 500.")
	case len(name) > 60:
		return nil, errf("InvalidInstanceName.TooLong", "`InstanceName` is longer than 60 bytes.")
	case instanceType != "" && !instanceTypePattern.MatchString(instanceType):
		return nil, errf("InvalidInstanceType.Malformed", "The instance type `%s` is malformed.", instanceType)
	case charge != "" && !slices.Contains(chargeTypes, charge):
		return nil, errf("InvalidParameterValue", "`InstanceChargeType` `%s` is not one of %s.", charge, strings.Join(chargeTypes, ", "))
	case (vpcID == "") != (subnetID == ""):
		return nil, errf("MissingParameter", "`VirtualPrivateCloud` needs both `VpcId` and `SubnetId`.")
	}
	if !strings.HasPrefix(zone, region+"-") {
		return nil, errf("InvalidZone.MismatchRegion", "The zone `%s` is not in region `%s`.", zone, region)
	}
	img, ok := s.images[imageID]
	if !ok || img.Account != account || img.Region != region {
		return nil, errf("InvalidImageId.NotFound", "The image `%s` is not found.", imageID)
	}
	if img.State != ImageStateNormal {
		return nil, errf("InvalidParameterValue.InvalidImageState", "The image `%s` is %s; only a NORMAL image can be launched.", imageID, img.State)
	}
	if s.instQuota > 0 && s.instanceCount(account, region)+count > s.instQuota {
		return nil, errf("LimitExceeded.InstanceQuota", "The instance quota of %d instances in %s would be exceeded.", s.instQuota, region)
	}
	if dryRun {
		return nil, errf("DryRunOperation", "The request would have succeeded, but DryRun is set.")
	}

	if instanceType == "" {
		instanceType = defaultInstanceType
	}
	if charge == "" {
		charge = "POSTPAID_BY_HOUR"
	}
	if name == "" {
		name = "Unnamed"
	}
	ids := make([]string, 0, count)
	for range count {
		in := &simInstance{Instance: Instance{
			ID:           s.freshInstanceID(),
			Account:      account,
			Region:       region,
			Zone:         zone,
			Name:         name,
			State:        InstanceStatePending,
			Tags:         maps.Clone(tags),
			Agent:        AgentOffline,
			ImageID:      imageID,
			InstanceType: instanceType,
		}}
		in.SystemDiskID = "disk-sys-" + strings.TrimPrefix(in.ID, "ins-")
		in.launch = &Launch{InstanceID: in.ID, Account: account, Region: region, Zone: zone, ImageID: imageID,
			InstanceType: instanceType, Name: name, ChargeType: charge, ClientToken: token, VpcID: vpcID,
			SubnetID: subnetID, SecurityGroupIDs: slices.Clone(groups), Tags: maps.Clone(tags),
			LaunchedAt: now, State: InstanceStatePending}
		in.pendingRun = true
		in.runHold = s.launchAfter < 0
		in.runningAt = now.Add(s.launchAfter)
		in.agentAfter = s.agentAfter
		if s.failLaunch > 0 {
			s.failLaunch--
			in.failLaunch = true
		}
		s.storeInstance(in)
		s.moving[in.ID] = in
		s.launches = append(s.launches, in.launch)
		ids = append(ids, in.ID)
	}
	if token != "" {
		s.tokens[tokenKey{account, region, token}] = ids
	}
	return map[string]any{"InstanceIdSet": slices.Clone(ids)}, nil
}

func (s *Server) instanceCount(account, region string) int {
	n := 0
	for _, in := range s.instances {
		if in.Account == account && in.Region == region {
			n++
		}
	}
	return n
}

// instanceIDsParam reads InstanceIds: required unless optional, at most 100, each "ins-...".
func instanceIDsParam(p params, optional bool) ([]string, *apiError) {
	ids, _, aerr := p.strList("InstanceIds")
	if aerr != nil {
		return nil, aerr
	}
	if len(ids) == 0 && !optional {
		return nil, errf("MissingParameter", "The request is missing a required parameter `InstanceIds`.")
	}
	if len(ids) > 100 {
		return nil, errf("InvalidParameterValue.LimitExceeded", "At most 100 `InstanceIds` are allowed per request.")
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, "ins-") {
			return nil, errf("InvalidInstanceId.Malformed", "The instance id `%s` is malformed.", id)
		}
	}
	return ids, nil
}

// terminateInstances moves instances to TERMINATING; they are gone TerminateAfter later. Every id is
// checked before any instance is touched.
func (s *Server) terminateInstances(account, region string, p params, now time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown("InstanceIds", "ReleaseAddress", "ReleasePrepaidDataDisks", "DryRun"); aerr != nil {
		return nil, aerr
	}
	ids, aerr := instanceIDsParam(p, false)
	if aerr != nil {
		return nil, aerr
	}
	for _, key := range []string{"ReleaseAddress", "ReleasePrepaidDataDisks"} {
		if _, aerr := p.boolean(key); aerr != nil {
			return nil, aerr
		}
	}
	dryRun, aerr := p.boolean("DryRun")
	if aerr != nil {
		return nil, aerr
	}
	victims := make([]*simInstance, 0, len(ids))
	for _, id := range ids {
		in, ok := s.instances[id]
		if !ok || in.Account != account || in.Region != region {
			return nil, errf("InvalidInstanceId.NotFound", "The instance `%s` is not found.", id)
		}
		switch in.State {
		case InstanceStatePending:
			return nil, errf("UnsupportedOperation.InstanceStatePending", "The instance `%s` is PENDING.", id)
		case InstanceStateTerminating:
			return nil, errf("UnsupportedOperation.InstanceStateTerminating", "The instance `%s` is TERMINATING.", id)
		}
		if !slices.Contains(victims, in) {
			victims = append(victims, in)
		}
	}
	if dryRun {
		return nil, errf("DryRunOperation", "The request would have succeeded, but DryRun is set.")
	}
	for _, in := range victims {
		in.State = InstanceStateTerminating
		if in.Agent == AgentOnline {
			in.Agent = AgentOffline
		}
		in.pendingAgent = false
		in.pendingGone = true
		in.goneHold = s.termAfter < 0
		in.goneAt = now.Add(s.termAfter)
		if in.launch != nil {
			in.launch.State = InstanceStateTerminating
			in.launch.TerminatedAt = now
		}
		s.moving[in.ID] = in
	}
	return map[string]any{}, nil
}

// describeInstancesStatus answers the state of the account's instances in region: those named by
// InstanceIds (unknown ids are absent), or all of them, a page at a time.
func (s *Server) describeInstancesStatus(account, region string, p params, _ time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown("InstanceIds", "Offset", "Limit"); aerr != nil {
		return nil, aerr
	}
	ids, aerr := instanceIDsParam(p, true)
	if aerr != nil {
		return nil, aerr
	}
	offset, limit, aerr := p.page()
	if aerr != nil {
		return nil, aerr
	}
	var matched []*simInstance
	for _, id := range s.instOrder {
		in := s.instances[id]
		if in.Account == account && in.Region == region && (len(ids) == 0 || slices.Contains(ids, id)) {
			matched = append(matched, in)
		}
	}
	lo, hi := pageOf(len(matched), offset, limit)
	set := make([]map[string]any, 0, hi-lo)
	for _, in := range matched[lo:hi] {
		set = append(set, map[string]any{"InstanceId": in.ID, "InstanceState": in.State})
	}
	return map[string]any{"InstanceStatusSet": set, "TotalCount": len(matched)}, nil
}
