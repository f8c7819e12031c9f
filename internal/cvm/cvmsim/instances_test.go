package cvmsim

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	cvmapi "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/cvm/v20170312"
)

func instanceFixture(s *Server) {
	s.AddInstance(Instance{ID: "ins-web00001", Region: testRegion, Zone: "ap-guangzhou-3", Name: "web-1",
		Tags: map[string]string{"env": "prod", "tier": "web"}, DataDiskIDs: []string{"disk-w1data01"}})
	s.AddInstance(Instance{ID: "ins-web00002", Region: testRegion, Zone: "ap-guangzhou-4", Name: "web-2",
		Tags: map[string]string{"env": "prod", "tier": "web"}})
	s.AddInstance(Instance{ID: "ins-db000001", Region: testRegion, Zone: "ap-guangzhou-3", Name: "db-1",
		Tags: map[string]string{"env": "prod", "tier": "db"}})
	s.AddInstance(Instance{ID: "ins-dev00001", Region: testRegion, Zone: "ap-guangzhou-3", Name: "web-dev",
		Tags: map[string]string{"env": "dev", "tier": "web"}, State: "STOPPED"})
	s.AddInstance(Instance{ID: "ins-untagged", Region: testRegion, Zone: "ap-guangzhou-4", Name: "scratch"})
	s.AddInstance(Instance{ID: "ins-shanghai", Region: "ap-shanghai", Zone: "ap-shanghai-2", Name: "web-sh",
		Tags: map[string]string{"env": "prod", "tier": "web"}})
}

func instanceIDs(resp *cvmapi.DescribeInstancesResponse) []string {
	var ids []string
	for _, in := range resp.Response.InstanceSet {
		ids = append(ids, *in.InstanceId)
	}
	return ids
}

func TestDescribeInstancesFilters(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ids     []string
		filters []*cvmapi.Filter
		want    []string
		code    string
	}{
		{name: "everything in the region", want: []string{"ins-web00001", "ins-web00002", "ins-db000001", "ins-dev00001", "ins-untagged"}},
		{name: "by id", ids: []string{"ins-db000001", "ins-nothere1", "ins-shanghai"}, want: []string{"ins-db000001"}},
		{name: "tag selector", filters: []*cvmapi.Filter{filterOf("tag:env", "prod"), filterOf("tag:tier", "web")}, want: []string{"ins-web00001", "ins-web00002"}},
		{name: "tag values are ORed", filters: []*cvmapi.Filter{filterOf("tag:env", "prod", "dev"), filterOf("tag:tier", "web")}, want: []string{"ins-web00001", "ins-web00002", "ins-dev00001"}},
		{name: "tag-key", filters: []*cvmapi.Filter{filterOf("tag-key", "tier")}, want: []string{"ins-web00001", "ins-web00002", "ins-db000001", "ins-dev00001"}},
		{name: "tag-value", filters: []*cvmapi.Filter{filterOf("tag-value", "db")}, want: []string{"ins-db000001"}},
		{name: "zone", filters: []*cvmapi.Filter{filterOf("zone", "ap-guangzhou-4")}, want: []string{"ins-web00002", "ins-untagged"}},
		{name: "zone and tags", filters: []*cvmapi.Filter{filterOf("zone", "ap-guangzhou-3"), filterOf("tag:tier", "web")}, want: []string{"ins-web00001", "ins-dev00001"}},
		{name: "instance-id", filters: []*cvmapi.Filter{filterOf("instance-id", "ins-untagged")}, want: []string{"ins-untagged"}},
		{name: "instance-name is fuzzy", filters: []*cvmapi.Filter{filterOf("instance-name", "web")}, want: []string{"ins-web00001", "ins-web00002", "ins-dev00001"}},
		{name: "instance-state", filters: []*cvmapi.Filter{filterOf("instance-state", "STOPPED")}, want: []string{"ins-dev00001"}},
		{name: "ids and filters together", ids: []string{"ins-web00001"}, filters: []*cvmapi.Filter{filterOf("zone", "ap-guangzhou-3")}, code: "InvalidParameter"},
		{name: "unknown filter", filters: []*cvmapi.Filter{filterOf("image-id", "img-1")}, code: "InvalidFilter"},
		{name: "malformed id", ids: []string{"web-1"}, code: "InvalidInstanceId.Malformed"},
	}
	s := startSim(t, Options{Limits: map[string]int{ActionDescribeInstances: 0}})
	instanceFixture(s)
	c := typedClient(t, s, testRegion)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := cvmapi.NewDescribeInstancesRequest()
			req.InstanceIds = common.StringPtrs(tt.ids)
			req.Filters = tt.filters
			resp, err := c.DescribeInstancesWithContext(t.Context(), req)
			require.Equal(t, tt.code, code(t, err))
			if tt.code != "" {
				return
			}
			require.Equal(t, tt.want, instanceIDs(resp))
			require.EqualValues(t, len(tt.want), *resp.Response.TotalCount)
		})
	}
}

func TestDescribeInstancesFields(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	instanceFixture(s)
	req := cvmapi.NewDescribeInstancesRequest()
	req.InstanceIds = common.StringPtrs([]string{"ins-web00001"})
	resp, err := typedClient(t, s, testRegion).DescribeInstancesWithContext(t.Context(), req)
	require.NoError(t, err)
	require.Len(t, resp.Response.InstanceSet, 1)
	in := resp.Response.InstanceSet[0]
	require.Equal(t, "web-1", *in.InstanceName)
	require.Equal(t, "RUNNING", *in.InstanceState)
	require.Equal(t, "ap-guangzhou-3", *in.Placement.Zone)
	require.Len(t, in.DataDisks, 1)
	require.Equal(t, "disk-w1data01", *in.DataDisks[0].DiskId)
	require.Equal(t, "disk-sys-web00001", *in.SystemDisk.DiskId)
	require.Len(t, in.Tags, 2)
	require.Equal(t, "env", *in.Tags[0].Key)
	require.Equal(t, "prod", *in.Tags[0].Value)
}

func TestDescribeInstancesPagination(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	var want []string
	for i := range 45 {
		id := fmt.Sprintf("ins-%08d", i)
		want = append(want, id)
		s.AddInstance(Instance{ID: id, Region: testRegion, Tags: map[string]string{"env": "prod"}})
	}
	s.AddInstance(Instance{ID: "ins-devonly1", Region: testRegion, Tags: map[string]string{"env": "dev"}})
	c := typedClient(t, s, testRegion)

	var got []string
	for offset := int64(0); ; offset += 20 {
		req := cvmapi.NewDescribeInstancesRequest()
		req.Filters = []*cvmapi.Filter{filterOf("tag:env", "prod")}
		req.Offset = ptr(offset)
		resp, err := c.DescribeInstancesWithContext(t.Context(), req)
		require.NoError(t, err)
		require.EqualValues(t, 45, *resp.Response.TotalCount)
		got = append(got, instanceIDs(resp)...)
		if len(resp.Response.InstanceSet) < 20 {
			break
		}
	}
	require.Equal(t, want, got)

	req := cvmapi.NewDescribeInstancesRequest()
	req.Limit = ptr(int64(101))
	_, err := c.DescribeInstancesWithContext(t.Context(), req)
	require.Equal(t, "InvalidParameterValue.LimitExceeded", code(t, err))
}

func TestInstancesSnapshotAndRemove(t *testing.T) {
	t.Parallel()
	s := New(Options{})
	defer s.Close()
	s.AddInstance(Instance{ID: "ins-a0000001", Tags: map[string]string{"k": "v"}})
	s.AddInstance(Instance{ID: "ins-b0000001"})
	s.AddInstance(Instance{ID: "ins-a0000001", Name: "renamed"}) // replaces, keeps its place
	got := s.Instances()
	require.Len(t, got, 2)
	require.Equal(t, "renamed", got[0].Name)
	require.Equal(t, DefaultRegion, got[0].Region)
	require.Equal(t, DefaultRegion+"-1", got[0].Zone)
	require.Equal(t, "RUNNING", got[0].State)
	s.RemoveInstance("ins-a0000001")
	s.RemoveInstance("ins-nothere1")
	got = s.Instances()
	require.Len(t, got, 1)
	require.Equal(t, "ins-b0000001", got[0].ID)
	require.Panics(t, func() { s.AddInstance(Instance{}) })
}
