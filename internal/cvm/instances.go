package cvm

import (
	"context"

	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
	cvmapi "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/cvm/v20170312"
)

// describeInstancesResponse holds the DescribeInstances fields imager reads; the rest is ignored.
type describeInstancesResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		InstanceSet []struct {
			InstanceId    *string `json:"InstanceId"`
			InstanceName  *string `json:"InstanceName"`
			InstanceState *string `json:"InstanceState"`
			Placement     *struct {
				Zone *string `json:"Zone"`
			} `json:"Placement"`
			Tags      []apiTag `json:"Tags"`
			DataDisks []struct {
				DiskId *string `json:"DiskId"`
			} `json:"DataDisks"`
		} `json:"InstanceSet"`
		TotalCount *int64  `json:"TotalCount"`
		RequestId  *string `json:"RequestId"`
	} `json:"Response"`
}

// DescribeInstances returns one page of instances: by InstanceIDs or by Filters (e.g. "tag:env",
// "zone"; not both), at most MaxLimit. Unknown instance ids are simply absent from the page.
func (c *Client) DescribeInstances(ctx context.Context, region string, in DescribeInstancesInput) (DescribeInstancesOutput, error) {
	if err := checkPage(ActionDescribeInstances, len(in.InstanceIDs), len(in.Filters), in.Offset, in.Limit, "InstanceIDs"); err != nil {
		return DescribeInstancesOutput{}, err
	}
	req := cvmapi.NewDescribeInstancesRequest()
	req.InstanceIds = stringPtrs(in.InstanceIDs)
	req.Filters = sdkFilters(in.Filters)
	if in.Offset > 0 {
		o := int64(in.Offset)
		req.Offset = &o
	}
	if in.Limit > 0 {
		l := int64(in.Limit)
		req.Limit = &l
	}

	resp := &describeInstancesResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.send(ctx, region, ActionDescribeInstances, req, resp); err != nil {
		return DescribeInstancesOutput{}, err
	}
	if resp.Response == nil {
		return DescribeInstancesOutput{}, badResponse(ActionDescribeInstances, "response has no Response object", "")
	}
	out := DescribeInstancesOutput{
		TotalCount: int(derefInt(resp.Response.TotalCount)),
		RequestID:  deref(resp.Response.RequestId),
		Instances:  make([]Instance, 0, len(resp.Response.InstanceSet)),
	}
	for _, src := range resp.Response.InstanceSet {
		inst := Instance{
			ID:    deref(src.InstanceId),
			Name:  deref(src.InstanceName),
			State: deref(src.InstanceState),
			Tags:  tagsFromAPI(src.Tags),
		}
		if src.Placement != nil {
			inst.Zone = deref(src.Placement.Zone)
		}
		for _, d := range src.DataDisks {
			if id := deref(d.DiskId); id != "" {
				inst.DataDiskIDs = append(inst.DataDiskIDs, id)
			}
		}
		out.Instances = append(out.Instances, inst)
	}
	return out, nil
}

func (r *describeInstancesResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}
