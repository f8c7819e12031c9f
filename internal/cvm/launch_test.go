package cvm

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
)

func TestRunInstancesWireFormat(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
		writeJSON(w, `{"Response":{"InstanceIdSet":["ins-abcd1234"],"RequestId":"req-run"}}`)
	})
	c, logs := newTestClient(t, f)
	out, err := c.RunInstances(bg(), "ap-guangzhou", RunInstancesInput{ImageID: "img-1", Zone: "ap-guangzhou-3",
		InstanceType: "S5.MEDIUM4", VpcID: "vpc-1", SubnetID: "subnet-1", SecurityGroupIDs: []string{"sg-1", "sg-2"},
		InstanceName: "restore", ClientToken: "tok-1", Tags: []Tag{{Key: "k", Value: "v"}}, DryRun: true})
	require.NoError(t, err)
	require.Equal(t, RunInstancesOutput{InstanceIDs: []string{"ins-abcd1234"}, RequestID: "req-run"}, out)
	call := f.onlyCall(t)
	require.Equal(t, "RunInstances", call.Action)
	require.Equal(t, "2017-03-12", call.Version)
	require.Equal(t, map[string]any{
		"ImageId": "img-1", "Placement": map[string]any{"Zone": "ap-guangzhou-3"}, "InstanceType": "S5.MEDIUM4",
		"InstanceChargeType":  "POSTPAID_BY_HOUR",
		"VirtualPrivateCloud": map[string]any{"VpcId": "vpc-1", "SubnetId": "subnet-1"},
		"SecurityGroupIds":    []any{"sg-1", "sg-2"}, "InstanceName": "restore", "ClientToken": "tok-1",
		"TagSpecification": []any{map[string]any{"ResourceType": "instance",
			"Tags": []any{map[string]any{"Key": "k", "Value": "v"}}}},
		"DryRun": true,
	}, call.Body)
	require.Contains(t, logs.String(), `"request_id":"req-run"`)

	// The minimal launch sends only what is required.
	f2 := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
		writeJSON(w, `{"Response":{"InstanceIdSet":["ins-1"],"RequestId":"r"}}`)
	})
	c2, _ := newTestClient(t, f2)
	_, err = c2.RunInstances(bg(), "ap-guangzhou", RunInstancesInput{ImageID: "img-1", Zone: "ap-guangzhou-3"})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"ImageId": "img-1", "Placement": map[string]any{"Zone": "ap-guangzhou-3"},
		"InstanceChargeType": "POSTPAID_BY_HOUR"}, f2.onlyCall(t).Body)
}

func TestRunInstancesResponseShapes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		body   string
		dryRun bool
		want   RunInstancesOutput
		code   string
	}{
		{"ids", `{"Response":{"InstanceIdSet":["ins-1",null,""],"Other":1,"RequestId":"r1"}}`, false,
			RunInstancesOutput{InstanceIDs: []string{"ins-1"}, RequestID: "r1"}, ""},
		{"no ids is ambiguous", `{"Response":{"RequestId":"r2"}}`, false, RunInstancesOutput{}, CodeBadResponse},
		{"a dry run may answer no ids", `{"Response":{"RequestId":"r3"}}`, true, RunInstancesOutput{RequestID: "r3"}, ""},
		{"no Response", `{}`, false, RunInstancesOutput{}, CodeBadResponse},
		{"quota", `{"Response":{"Error":{"Code":"LimitExceeded.InstanceQuota","Message":"m"},"RequestId":"r4"}}`, false,
			RunInstancesOutput{}, "LimitExceeded.InstanceQuota"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) { writeJSON(w, tt.body) })
			c, _ := newTestClient(t, f)
			out, err := c.RunInstances(bg(), "ap-guangzhou", RunInstancesInput{ImageID: "img-1", Zone: "ap-guangzhou-3", DryRun: tt.dryRun})
			if tt.code != "" {
				ae := requireAPIError(t, err)
				require.Equal(t, tt.code, ae.Code)
				if tt.code == CodeBadResponse {
					require.True(t, ae.Ambiguous())
				}
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, out)
		})
	}
}

func TestLaunchInputRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	ok := RunInstancesInput{ImageID: "img-1", Zone: "ap-guangzhou-3"}
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "ins-" + strings.Repeat("a", 3) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		}
		return out
	}
	tests := []struct {
		name string
		run  func(*Client) error
	}{
		{"no image", func(c *Client) error { in := ok; in.ImageID = ""; _, err := c.RunInstances(bg(), "r", in); return err }},
		{"no zone", func(c *Client) error { in := ok; in.Zone = ""; _, err := c.RunInstances(bg(), "r", in); return err }},
		{"token too long", func(c *Client) error {
			in := ok
			in.ClientToken = strings.Repeat("t", 65)
			_, err := c.RunInstances(bg(), "r", in)
			return err
		}},
		{"token not ASCII", func(c *Client) error {
			in := ok
			in.ClientToken = "tök"
			_, err := c.RunInstances(bg(), "r", in)
			return err
		}},
		{"name too long", func(c *Client) error {
			in := ok
			in.InstanceName = strings.Repeat("n", 61)
			_, err := c.RunInstances(bg(), "r", in)
			return err
		}},
		{"subnet without vpc", func(c *Client) error {
			in := ok
			in.SubnetID = "s"
			_, err := c.RunInstances(bg(), "r", in)
			return err
		}},
		{"duplicate tag", func(c *Client) error {
			in := ok
			in.Tags = []Tag{{"a", "1"}, {"a", "2"}}
			_, err := c.RunInstances(bg(), "r", in)
			return err
		}},
		{"terminate none", func(c *Client) error { _, err := c.TerminateInstances(bg(), "r", nil); return err }},
		{"terminate 101", func(c *Client) error { _, err := c.TerminateInstances(bg(), "r", ids(101)); return err }},
		{"terminate twice the same", func(c *Client) error {
			_, err := c.TerminateInstances(bg(), "r", []string{"ins-1", "ins-1"})
			return err
		}},
		{"status none", func(c *Client) error { _, err := c.DescribeInstancesStatus(bg(), "r", nil); return err }},
		{"status 101", func(c *Client) error { _, err := c.DescribeInstancesStatus(bg(), "r", ids(101)); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, nil)
			c, _ := newTestClient(t, f)
			ae := requireAPIError(t, tt.run(c))
			require.Equal(t, CodeInvalidInput, ae.Code)
			require.Equal(t, ClassPermanent, ae.Class)
			require.Empty(t, f.recorded())
		})
	}
	// The limits themselves pass.
	f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
		writeJSON(w, `{"Response":{"InstanceIdSet":["ins-1"],"RequestId":"r"}}`)
	})
	c, _ := newTestClient(t, f)
	in := ok
	in.ClientToken, in.InstanceName = strings.Repeat("t", 64), strings.Repeat("n", 60)
	_, err := c.RunInstances(bg(), "ap-guangzhou", in)
	require.NoError(t, err)
}

func TestTerminateAndStatusWireFormat(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, call recordedCall) {
		if call.Action == ActionDescribeInstancesStatus {
			writeJSON(w, `{"Response":{"TotalCount":2,"InstanceStatusSet":[{"InstanceId":"ins-1","InstanceState":"RUNNING"},{"InstanceId":"ins-2","InstanceState":"PENDING","X":1},{"InstanceId":null}],"RequestId":"r-s"}}`)
			return
		}
		writeJSON(w, `{"Response":{"RequestId":"r-t"}}`)
	})
	c, _ := newTestClient(t, f)
	st, err := c.DescribeInstancesStatus(bg(), "ap-guangzhou", []string{"ins-1", "ins-2", "ins-3"})
	require.NoError(t, err)
	require.Equal(t, DescribeInstancesStatusOutput{States: map[string]string{"ins-1": "RUNNING", "ins-2": "PENDING"}, RequestID: "r-s"}, st)
	rid, err := c.TerminateInstances(bg(), "ap-guangzhou", []string{"ins-1"})
	require.NoError(t, err)
	require.Equal(t, "r-t", rid)
	calls := f.recorded()
	require.Len(t, calls, 2)
	require.Equal(t, map[string]any{"InstanceIds": []any{"ins-1", "ins-2", "ins-3"}, "Limit": float64(100)}, calls[0].Body)
	require.Equal(t, map[string]any{"InstanceIds": []any{"ins-1"}}, calls[1].Body)
}

func TestLaunchErrorClasses(t *testing.T) {
	t.Parallel()
	for code, class := range map[string]Class{
		"LimitExceeded.InstanceQuota":                   ClassPermanent,
		"InvalidZone.MismatchRegion":                    ClassPermanent,
		"InvalidImageId.NotFound":                       ClassPermanent,
		"InvalidParameterValue.InvalidImageState":       ClassBusy,
		"UnsupportedOperation.InstanceStatePending":     ClassBusy,
		"MutexOperation.TaskRunning":                    ClassBusy,
		"UnsupportedOperation.InstanceStateTerminating": ClassPermanent,
		"InvalidClientToken.TooLong":                    ClassPermanent,
		"InvalidInstanceId.NotFound":                    ClassPermanent,
	} {
		require.Equal(t, class, Classify(code), code)
	}
}

func TestCallUsesTheServiceHostAndScope(t *testing.T) {
	t.Parallel()
	require.Equal(t, "tat.tencentcloudapi.com", mustHost(serviceEndpoint("tat", "ap-guangzhou", "")))
	require.Equal(t, "tat.ap-shanghai-fsi.tencentcloudapi.com", mustHost(serviceEndpoint("tat", "ap-shanghai-fsi", "")))
	f := newFakeAPI(t, nil)
	c, _ := newTestClient(t, f)
	other := Service{Name: "tat", Version: "2020-10-28", Classify: func(string) Class { return ClassQuota }}
	// The fake API verifies the scope "cvm": a request signed for tat fails there, and the
	// service's own Classify classifies the answer.
	err := c.Call(bg(), other, "ap-guangzhou", "RunCommand", NewRequest(other, "RunCommand"), newEmptyResponse())
	ae := requireAPIError(t, err)
	require.Equal(t, "AuthFailure.SignatureFailure", ae.Code)
	require.Equal(t, ClassQuota, ae.Class)
	call := f.onlyCallAllowingSigErr(t)
	require.Equal(t, "2020-10-28", call.Version)
	require.Contains(t, call.Authorization, "/tat/tc3_request")
	require.Len(t, c.regions, 1)
	_, _, err = c.DescribeImageQuota(bg(), "ap-guangzhou")
	require.Error(t, err) // the fake answers a bare RequestId
	require.Len(t, c.regions, 2, "one SDK client per service and region")
}

func mustHost(_, host string) string { return host }

func newEmptyResponse() *tchttp.CommonResponse { return tchttp.NewCommonResponse() }

// onlyCallAllowingSigErr asserts exactly one request arrived and returns it, signed well or not.
func (f *fakeAPI) onlyCallAllowingSigErr(t *testing.T) recordedCall {
	t.Helper()
	calls := f.recorded()
	require.Len(t, calls, 1)
	return calls[0]
}
