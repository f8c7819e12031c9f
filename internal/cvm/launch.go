package cvm

import (
	"context"
	"slices"

	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
	cvmapi "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/cvm/v20170312"
)

// Action names of the instance lifecycle calls (restore tests launch and destroy instances).
const (
	ActionRunInstances            = "RunInstances"
	ActionTerminateInstances      = "TerminateInstances"
	ActionDescribeInstancesStatus = "DescribeInstancesStatus"
)

// Limits of the instance lifecycle calls.
const (
	// MaxClientTokenLen is RunInstances' ClientToken limit, in ASCII characters.
	MaxClientTokenLen = 64
	// MaxInstanceNameLen is the InstanceName limit in bytes: the API models allow 128 characters
	// but InvalidInstanceName.TooLong is documented at 60 bytes, so the stricter one is kept.
	MaxInstanceNameLen = 60
	// MaxInstanceIDs is the most InstanceIds one TerminateInstances or DescribeInstancesStatus takes.
	MaxInstanceIDs = 100
)

// ChargePostpaidByHour is the only InstanceChargeType imager launches with: pay-as-you-go
// instances are destroyed at once by TerminateInstances (PREPAID ones go to the recycle bin).
const ChargePostpaidByHour = "POSTPAID_BY_HOUR"

// Instance states of a launch, as DescribeInstancesStatus reports them.
const (
	InstanceStatePending      = "PENDING"
	InstanceStateLaunchFailed = "LAUNCH_FAILED"
	InstanceStateRunning      = "RUNNING"
	InstanceStateTerminating  = "TERMINATING"
)

// RunInstancesInput launches one pay-as-you-go instance (InstanceChargeType POSTPAID_BY_HOUR,
// InstanceCount left to the API's default of 1). Optional parameters are sent only when set.
type RunInstancesInput struct {
	ImageID          string   // required
	Zone             string   // required, sent as Placement.Zone; must be in the call's region
	InstanceType     string   // e.g. "S5.MEDIUM4"; empty: the API's default
	VpcID            string   // VirtualPrivateCloud.VpcId; with SubnetID, or both empty
	SubnetID         string   // VirtualPrivateCloud.SubnetId
	SecurityGroupIDs []string // none: the API's default group
	InstanceName     string   // at most MaxInstanceNameLen bytes
	// ClientToken makes the call idempotent: a retry with the same token launches nothing new and
	// answers the same InstanceIDs. At most MaxClientTokenLen ASCII characters. Always set it: a
	// RunInstances that timed out may have launched an instance.
	ClientToken string
	Tags        []Tag // sent as TagSpecification [{ResourceType: "instance", Tags: [...]}]
	DryRun      bool  // sent as JSON true only when set
}

// RunInstancesOutput is an accepted launch: the new instances start PENDING, then become RUNNING
// or LAUNCH_FAILED (DescribeInstancesStatus).
type RunInstancesOutput struct {
	InstanceIDs []string
	RequestID   string
}

// runInstancesResponse holds the RunInstances fields imager reads; the rest is ignored.
type runInstancesResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		InstanceIdSet []*string `json:"InstanceIdSet"`
		RequestId     *string   `json:"RequestId"`
	} `json:"Response"`
}

// RunInstances launches one instance from in.ImageID in in.Zone of region. Input the API would
// refuse for certain (no image or zone, a token or name too long, a subnet without its VPC, a tag
// key given twice) is refused here, before anything is sent. An answer without instance ids to a
// call that was no DryRun is a BadResponse (ambiguous): retry with the same ClientToken. A DryRun
// that would succeed answers the API's DryRunOperation error (or, per the API's model, a bare
// RequestId: then the output has no ids).
func (c *Client) RunInstances(ctx context.Context, region string, in RunInstancesInput) (RunInstancesOutput, error) {
	if err := checkRunInstances(in); err != nil {
		return RunInstancesOutput{}, err
	}
	req := cvmapi.NewRunInstancesRequest()
	req.ImageId = &in.ImageID
	req.Placement = &cvmapi.Placement{Zone: &in.Zone}
	charge := ChargePostpaidByHour
	req.InstanceChargeType = &charge
	if in.InstanceType != "" {
		req.InstanceType = &in.InstanceType
	}
	if in.VpcID != "" {
		req.VirtualPrivateCloud = &cvmapi.VirtualPrivateCloud{VpcId: &in.VpcID, SubnetId: &in.SubnetID}
	}
	req.SecurityGroupIds = stringPtrs(in.SecurityGroupIDs)
	if in.InstanceName != "" {
		req.InstanceName = &in.InstanceName
	}
	if in.ClientToken != "" {
		req.ClientToken = &in.ClientToken
	}
	if len(in.Tags) > 0 {
		rt := "instance"
		spec := &cvmapi.TagSpecification{ResourceType: &rt, Tags: make([]*cvmapi.Tag, len(in.Tags))}
		for i := range in.Tags {
			spec.Tags[i] = &cvmapi.Tag{Key: &in.Tags[i].Key, Value: &in.Tags[i].Value}
		}
		req.TagSpecification = []*cvmapi.TagSpecification{spec}
	}
	if in.DryRun {
		t := true
		req.DryRun = &t
	}

	resp := &runInstancesResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.send(ctx, region, ActionRunInstances, req, resp); err != nil {
		return RunInstancesOutput{}, err
	}
	if resp.Response == nil {
		return RunInstancesOutput{}, badResponse(ActionRunInstances, "response has no Response object", "")
	}
	out := RunInstancesOutput{RequestID: deref(resp.Response.RequestId)}
	for _, id := range resp.Response.InstanceIdSet {
		if s := deref(id); s != "" {
			out.InstanceIDs = append(out.InstanceIDs, s)
		}
	}
	if len(out.InstanceIDs) == 0 && !in.DryRun {
		return RunInstancesOutput{}, badResponse(ActionRunInstances, "response has no InstanceIdSet", out.RequestID)
	}
	return out, nil
}

// checkRunInstances refuses RunInstances input the API would refuse for certain.
func checkRunInstances(in RunInstancesInput) error {
	switch {
	case in.ImageID == "":
		return invalidInput(ActionRunInstances, "ImageID is required")
	case in.Zone == "":
		return invalidInput(ActionRunInstances, "Zone is required")
	case len(in.ClientToken) > MaxClientTokenLen:
		return invalidInput(ActionRunInstances, "ClientToken is %d characters long, at most %d are allowed", len(in.ClientToken), MaxClientTokenLen)
	case !isASCII(in.ClientToken):
		return invalidInput(ActionRunInstances, "ClientToken must be ASCII")
	case len(in.InstanceName) > MaxInstanceNameLen:
		return invalidInput(ActionRunInstances, "InstanceName is %d bytes long, at most %d are allowed", len(in.InstanceName), MaxInstanceNameLen)
	case in.SubnetID != "" && in.VpcID == "":
		return invalidInput(ActionRunInstances, "SubnetID needs VpcID")
	case in.VpcID != "" && in.SubnetID == "":
		return invalidInput(ActionRunInstances, "VpcID needs SubnetID")
	}
	for i, t := range in.Tags {
		if t.Key == "" {
			return invalidInput(ActionRunInstances, "tag %d has an empty key", i)
		}
		if slices.ContainsFunc(in.Tags[:i], func(o Tag) bool { return o.Key == t.Key }) {
			return invalidInput(ActionRunInstances, "tag key %q is given twice", t.Key)
		}
	}
	return nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// checkInstanceIDs refuses an id list that is empty, too long, or has an empty or repeated id.
func checkInstanceIDs(action string, ids []string) error {
	if len(ids) == 0 {
		return invalidInput(action, "no instance ids")
	}
	if len(ids) > MaxInstanceIDs {
		return invalidInput(action, "%d instance ids, at most %d are allowed", len(ids), MaxInstanceIDs)
	}
	for i, id := range ids {
		if id == "" {
			return invalidInput(action, "instance id %d is empty", i)
		}
		if slices.Contains(ids[:i], id) {
			return invalidInput(action, "instance id %s is given twice", id)
		}
	}
	return nil
}

// terminateInstancesResponse is TerminateInstances' answer.
type terminateInstancesResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		RequestId *string `json:"RequestId"`
	} `json:"Response"`
}

// TerminateInstances destroys up to MaxInstanceIDs pay-as-you-go instances of region: they become
// TERMINATING, then disappear from DescribeInstancesStatus. An id the API does not know fails the
// whole call (InvalidInstanceId.NotFound); a PENDING instance answers
// UnsupportedOperation.InstanceStatePending (ClassBusy: retry once it is RUNNING or LAUNCH_FAILED).
func (c *Client) TerminateInstances(ctx context.Context, region string, instanceIDs []string) (requestID string, err error) {
	if err := checkInstanceIDs(ActionTerminateInstances, instanceIDs); err != nil {
		return "", err
	}
	req := cvmapi.NewTerminateInstancesRequest()
	req.InstanceIds = stringPtrs(instanceIDs)
	resp := &terminateInstancesResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.send(ctx, region, ActionTerminateInstances, req, resp); err != nil {
		return "", err
	}
	if resp.Response == nil {
		return "", badResponse(ActionTerminateInstances, "response has no Response object", "")
	}
	return deref(resp.Response.RequestId), nil
}

// describeInstancesStatusResponse holds the DescribeInstancesStatus fields imager reads.
type describeInstancesStatusResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		InstanceStatusSet []struct {
			InstanceId    *string `json:"InstanceId"`
			InstanceState *string `json:"InstanceState"`
		} `json:"InstanceStatusSet"`
		TotalCount *int64  `json:"TotalCount"`
		RequestId  *string `json:"RequestId"`
	} `json:"Response"`
}

// DescribeInstancesStatusOutput maps each instance the API reported to its state (PENDING,
// RUNNING, LAUNCH_FAILED, TERMINATING, ...). An id absent from States is unknown to the API: never
// launched, or terminated and gone.
type DescribeInstancesStatusOutput struct {
	States    map[string]string
	RequestID string
}

// DescribeInstancesStatus returns the state of each of up to MaxInstanceIDs instances of region,
// in one page (Limit is sent as MaxLimit).
func (c *Client) DescribeInstancesStatus(ctx context.Context, region string, instanceIDs []string) (DescribeInstancesStatusOutput, error) {
	if err := checkInstanceIDs(ActionDescribeInstancesStatus, instanceIDs); err != nil {
		return DescribeInstancesStatusOutput{}, err
	}
	req := cvmapi.NewDescribeInstancesStatusRequest()
	req.InstanceIds = stringPtrs(instanceIDs)
	limit := int64(MaxLimit)
	req.Limit = &limit
	resp := &describeInstancesStatusResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.send(ctx, region, ActionDescribeInstancesStatus, req, resp); err != nil {
		return DescribeInstancesStatusOutput{}, err
	}
	if resp.Response == nil {
		return DescribeInstancesStatusOutput{}, badResponse(ActionDescribeInstancesStatus, "response has no Response object", "")
	}
	out := DescribeInstancesStatusOutput{States: map[string]string{}, RequestID: deref(resp.Response.RequestId)}
	for _, st := range resp.Response.InstanceStatusSet {
		if id := deref(st.InstanceId); id != "" {
			out.States[id] = deref(st.InstanceState)
		}
	}
	return out, nil
}

func (r *runInstancesResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}

func (r *terminateInstancesResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}

func (r *describeInstancesStatusResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}
