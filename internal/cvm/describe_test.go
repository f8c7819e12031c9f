package cvm

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestDescribeImagesRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   DescribeImagesInput
		want map[string]any
	}{
		{"by ids", DescribeImagesInput{ImageIDs: []string{"img-1", "img-2"}, Limit: 100},
			map[string]any{"ImageIds": []any{"img-1", "img-2"}, "Limit": float64(100)}},
		{"by filters with paging", DescribeImagesInput{
			Filters: []Filter{{Name: "image-name", Values: []string{"web-1"}}, {Name: "tag:imager-policy", Values: []string{"p"}}},
			Offset:  20, Limit: 50},
			map[string]any{
				"Filters": []any{
					map[string]any{"Name": "image-name", "Values": []any{"web-1"}},
					map[string]any{"Name": "tag:imager-policy", "Values": []any{"p"}},
				},
				"Offset": float64(20), "Limit": float64(50)}},
		{"nothing set", DescribeImagesInput{}, map[string]any{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
				writeJSON(w, `{"Response":{"ImageSet":[],"TotalCount":0,"RequestId":"req-d"}}`)
			})
			c, _ := newTestClient(t, f)
			out, err := c.DescribeImages(bg(), "ap-chengdu", tt.in)
			require.NoError(t, err)
			require.Equal(t, "req-d", out.RequestID)
			require.Empty(t, out.Images)
			call := f.onlyCall(t)
			require.Equal(t, "DescribeImages", call.Action)
			require.Equal(t, "ap-chengdu", call.Region)
			require.Equal(t, tt.want, call.Body)
		})
	}
}

func TestDescribeRefusesBadPaging(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, nil)
	c, _ := newTestClient(t, f)
	both := []Filter{{Name: "image-type", Values: []string{"PRIVATE_IMAGE"}}}
	for _, in := range []DescribeImagesInput{
		{ImageIDs: []string{"img-1"}, Filters: both},
		{Limit: 101},
		{Limit: -1},
		{Offset: -1},
	} {
		_, err := c.DescribeImages(bg(), "ap-guangzhou", in)
		ae := requireAPIError(t, err)
		require.Equal(t, CodeInvalidInput, ae.Code, "%+v", in)
		require.Equal(t, "DescribeImages", ae.Action)
	}
	for _, in := range []DescribeInstancesInput{
		{InstanceIDs: []string{"ins-6pb6lrmy"}, Filters: []Filter{{Name: "zone", Values: []string{"ap-guangzhou-3"}}}},
		{Limit: 101},
	} {
		_, err := c.DescribeInstances(bg(), "ap-guangzhou", in)
		ae := requireAPIError(t, err)
		require.Equal(t, CodeInvalidInput, ae.Code, "%+v", in)
	}
	_, err := c.DeleteImages(bg(), "ap-guangzhou", nil, true)
	require.Equal(t, CodeInvalidInput, requireAPIError(t, err).Code)
	require.Empty(t, f.recorded(), "nothing is sent for refused input")
}

func TestDescribeImagesResponse(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
		writeJSON(w, `{"Response":{"TotalCount":7,"RequestId":"req-imgs","ImageSet":[
			{"ImageId":"img-aaaa1111","ImageName":"web-1","ImageDescription":"d","ImageState":"NORMAL",
			 "ImageType":"PRIVATE_IMAGE","CreatedTime":"2026-03-01T03:00:05Z","ImageSize":50,
			 "Tags":[{"Key":"imager-policy","Value":"web-nightly"}],"OsName":"TencentOS","SnapshotSet":[{"SnapshotId":"snap-1"}]},
			{"ImageId":"img-bbbb2222","ImageName":"web-2","ImageState":"CREATING","ImageType":"PRIVATE_IMAGE",
			 "CreatedTime":"2026-03-01 11:00:05","ImageSize":null,"Tags":null},
			{"ImageId":"img-cccc3333","ImageState":"CREATEFAILED","CreatedTime":"yesterday"},
			{"ImageId":"img-dddd4444","CreatedTime":"2026-03-01T11:00:05+08:00"}
		]}}`)
	})
	c, logs := newTestClient(t, f)
	out, err := c.DescribeImages(bg(), "ap-guangzhou", DescribeImagesInput{Limit: 4})
	require.NoError(t, err)
	at := time.Date(2026, 3, 1, 3, 0, 5, 0, time.UTC)
	require.Equal(t, DescribeImagesOutput{
		TotalCount: 7,
		RequestID:  "req-imgs",
		Images: []Image{
			{ID: "img-aaaa1111", Name: "web-1", Description: "d", State: ImageStateNormal, Type: "PRIVATE_IMAGE",
				CreatedTime: at, SizeGiB: 50, Tags: []Tag{{Key: "imager-policy", Value: "web-nightly"}}},
			{ID: "img-bbbb2222", Name: "web-2", State: ImageStateCreating, Type: "PRIVATE_IMAGE", CreatedTime: at},
			{ID: "img-cccc3333", State: ImageStateCreateFailed},
			{ID: "img-dddd4444", CreatedTime: at},
		},
	}, out)
	require.Contains(t, logs.String(), "unparseable CreatedTime")
	require.Contains(t, logs.String(), `"request_id":"req-imgs"`)
}

func TestParseAPITime(t *testing.T) {
	t.Parallel()
	want := time.Date(2026, 3, 1, 3, 0, 5, 0, time.UTC)
	for _, s := range []string{"2026-03-01T03:00:05Z", "2026-03-01T11:00:05+08:00", "2026-03-01 11:00:05"} {
		got, err := ParseAPITime(s)
		require.NoError(t, err, s)
		require.True(t, want.Equal(got), "%s: got %v", s, got)
		require.Equal(t, time.UTC, got.Location())
	}
	got, err := ParseAPITime("2026-03-01T03:00:05.25Z")
	require.NoError(t, err)
	require.Equal(t, want.Add(250*time.Millisecond), got)
	for _, s := range []string{"", "yesterday", "2026-03-01", "03/01/2026 03:00"} {
		_, err := ParseAPITime(s)
		require.Error(t, err, s)
	}
}

func TestDeleteImages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		deleteSnapshots bool
		want            map[string]any
	}{
		{"keep snapshots", false, map[string]any{"ImageIds": []any{"img-1", "img-2"}}},
		{"delete snapshots", true, map[string]any{"ImageIds": []any{"img-1", "img-2"}, "DeleteBindedSnap": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
				writeJSON(w, `{"Response":{"RequestId":"req-del"}}`)
			})
			c, _ := newTestClient(t, f)
			id, err := c.DeleteImages(bg(), "ap-guangzhou", []string{"img-1", "img-2"}, tt.deleteSnapshots)
			require.NoError(t, err)
			require.Equal(t, "req-del", id)
			call := f.onlyCall(t)
			require.Equal(t, "DeleteImages", call.Action)
			require.Equal(t, tt.want, call.Body)
		})
	}
}

func TestDeleteImagesStateError(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
		writeJSON(w, `{"Response":{"Error":{"Code":"InvalidImageId.IncorrectState","Message":"image is creating"},"RequestId":"req-x"}}`)
	})
	c, _ := newTestClient(t, f)
	_, err := c.DeleteImages(bg(), "ap-guangzhou", []string{"img-1"}, false)
	ae := requireAPIError(t, err)
	require.Equal(t, "DeleteImages", ae.Action)
	require.Equal(t, "InvalidImageId.IncorrectState", ae.Code)
	require.Equal(t, ClassBusy, ae.Class, "the image is not deletable yet: try again later")
	require.Equal(t, "req-x", ae.RequestID)
}

func TestDescribeImageQuota(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, body string
		quota      int
		code       string
	}{
		{"quota", `{"Response":{"ImageNumQuota":500,"RequestId":"req-q"}}`, 500, ""},
		{"quota missing", `{"Response":{"RequestId":"req-q"}}`, 0, CodeBadResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) { writeJSON(w, tt.body) })
			c, _ := newTestClient(t, f)
			quota, id, err := c.DescribeImageQuota(bg(), "ap-hongkong")
			call := f.onlyCall(t)
			require.Equal(t, "DescribeImageQuota", call.Action)
			require.Equal(t, "ap-hongkong", call.Region)
			require.Equal(t, map[string]any{}, call.Body)
			require.Equal(t, "req-q", id)
			if tt.code != "" {
				ae := requireAPIError(t, err)
				require.Equal(t, tt.code, ae.Code)
				require.Equal(t, "req-q", ae.RequestID)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.quota, quota)
		})
	}
}

func TestDescribeInstances(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
		writeJSON(w, `{"Response":{"TotalCount":120,"RequestId":"req-ins","InstanceSet":[
			{"InstanceId":"ins-6pb6lrmy","InstanceName":"web-1","InstanceState":"RUNNING",
			 "Placement":{"Zone":"ap-guangzhou-3","ProjectId":0},
			 "Tags":[{"Key":"env","Value":"prod"},{"Key":"tier","Value":"web"}],
			 "SystemDisk":{"DiskId":"disk-sys00001","DiskSize":50},
			 "DataDisks":[{"DiskId":"disk-aaaa1111","DiskSize":100},{"DiskId":"disk-bbbb2222","DiskSize":200}],
			 "CPU":2,"Memory":4},
			{"InstanceId":"ins-2b3c4d5e","InstanceState":"STOPPED","Placement":null,"DataDisks":null,"Tags":[]}
		]}}`)
	})
	c, _ := newTestClient(t, f)
	out, err := c.DescribeInstances(bg(), "ap-guangzhou", DescribeInstancesInput{
		Filters: []Filter{{Name: "tag:env", Values: []string{"prod"}}, {Name: "zone", Values: []string{"ap-guangzhou-3"}}},
		Offset:  100, Limit: 100,
	})
	require.NoError(t, err)
	require.Equal(t, DescribeInstancesOutput{
		TotalCount: 120,
		RequestID:  "req-ins",
		Instances: []Instance{
			{ID: "ins-6pb6lrmy", Name: "web-1", Zone: "ap-guangzhou-3", State: "RUNNING",
				Tags:        []Tag{{Key: "env", Value: "prod"}, {Key: "tier", Value: "web"}},
				DataDiskIDs: []string{"disk-aaaa1111", "disk-bbbb2222"}},
			{ID: "ins-2b3c4d5e", State: "STOPPED"},
		},
	}, out)
	call := f.onlyCall(t)
	require.Equal(t, "DescribeInstances", call.Action)
	require.Equal(t, map[string]any{
		"Filters": []any{
			map[string]any{"Name": "tag:env", "Values": []any{"prod"}},
			map[string]any{"Name": "zone", "Values": []any{"ap-guangzhou-3"}},
		},
		"Offset": float64(100), "Limit": float64(100),
	}, call.Body)
}

func TestDescribeInstancesByIDs(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
		writeJSON(w, `{"Response":{"TotalCount":0,"InstanceSet":[],"RequestId":"req-none"}}`)
	})
	c, _ := newTestClient(t, f)
	out, err := c.DescribeInstances(bg(), "ap-guangzhou", DescribeInstancesInput{InstanceIDs: []string{"ins-6pb6lrmy"}})
	require.NoError(t, err)
	require.Empty(t, out.Instances)
	require.Equal(t, map[string]any{"InstanceIds": []any{"ins-6pb6lrmy"}}, f.onlyCall(t).Body)
}
