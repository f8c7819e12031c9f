package cvmsim

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// seedInstances adds the instances the CreateImage tests use.
func seedInstances(s *Server) {
	s.AddInstance(Instance{ID: "ins-good0001", Region: testRegion, DataDiskIDs: []string{"disk-data0001", "disk-data0002"}})
	s.AddInstance(Instance{ID: "ins-good0002", Region: testRegion})
	s.AddInstance(Instance{ID: "ins-unsup001", Region: testRegion, Unsupported: true})
	s.AddInstance(Instance{ID: "ins-stop0001", Region: testRegion, State: "STOPPING"})
	s.AddInstance(Instance{ID: "ins-shanghai", Region: "ap-shanghai"})
}

func TestCreateImageValidation(t *testing.T) {
	t.Parallel()
	with := func(extra map[string]any) map[string]any {
		p := map[string]any{"InstanceId": "ins-good0001", "ImageName": "backup-1"}
		for k, v := range extra {
			if v == nil {
				delete(p, k)
			} else {
				p[k] = v
			}
		}
		return p
	}
	tests := []struct {
		name   string
		opts   Options
		setup  func(*Server)
		params map[string]any
		want   string
	}{
		{name: "minimal", params: with(nil), want: ""},
		{name: "every parameter", params: with(map[string]any{
			"ImageDescription": "nightly", "ForcePoweroff": "true", "Sysprep": "false", "Reboot": "false",
			"DataDiskIds": []any{"disk-data0001"}, "DryRun": false, "ImageFamily": "web",
			"TagSpecification": []any{map[string]any{"ResourceType": "image", "Tags": []any{map[string]any{"Key": "k", "Value": "v"}}}},
		}), want: ""},
		{name: "missing InstanceId", params: with(map[string]any{"InstanceId": nil}), want: "MissingParameter"},
		{name: "empty InstanceId", params: with(map[string]any{"InstanceId": ""}), want: "MissingParameter"},
		{name: "missing ImageName", params: with(map[string]any{"ImageName": nil}), want: "MissingParameter"},
		{name: "ImageName not a string", params: with(map[string]any{"ImageName": 7}), want: "InvalidParameter"},
		{name: "unknown parameter", params: with(map[string]any{"ClientToken": "abc"}), want: "UnknownParameter"},
		{name: "Reboot rejected when configured", opts: Options{RejectReboot: true}, params: with(map[string]any{"Reboot": "true"}), want: "UnknownParameter"},
		{name: "ForcePoweroff not true/false", params: with(map[string]any{"ForcePoweroff": "yes"}), want: "InvalidParameterValue"},
		{name: "Sysprep as JSON bool", params: with(map[string]any{"Sysprep": true}), want: "InvalidParameterValue"},
		{name: "Reboot upper case", params: with(map[string]any{"Reboot": "TRUE"}), want: "InvalidParameterValue"},
		{name: "name of 60 characters", params: with(map[string]any{"ImageName": strings.Repeat("n", 60)}), want: ""},
		{name: "name of 60 multibyte characters", params: with(map[string]any{"ImageName": strings.Repeat("名", 60)}), want: ""},
		{name: "name of 61 characters", params: with(map[string]any{"ImageName": strings.Repeat("n", 61)}), want: "InvalidParameter.ValueTooLarge"},
		{name: "description of 257 characters", params: with(map[string]any{"ImageDescription": strings.Repeat("d", 257)}), want: "InvalidParameter.ValueTooLarge"},
		{name: "unknown instance", params: with(map[string]any{"InstanceId": "ins-missing1"}), want: "InvalidInstanceId.NotFound"},
		{name: "instance of another region", params: with(map[string]any{"InstanceId": "ins-shanghai"}), want: "InvalidInstanceId.NotFound"},
		{name: "unsupported instance", params: with(map[string]any{"InstanceId": "ins-unsup001"}), want: "InvalidInstance.NotSupported"},
		{name: "stopping instance", params: with(map[string]any{"InstanceId": "ins-stop0001"}), want: "UnsupportedOperation.InstanceStateStopping"},
		{name: "removed instance", setup: func(s *Server) { s.RemoveInstance("ins-good0001") }, params: with(nil), want: "InvalidInstanceId.NotFound"},
		{name: "duplicate name", setup: func(s *Server) { s.AddImage(Image{Name: "backup-1", Region: testRegion}) }, params: with(nil), want: "InvalidImageName.Duplicate"},
		{name: "duplicate of a failed image", setup: func(s *Server) {
			s.AddImage(Image{Name: "backup-1", Region: testRegion, State: ImageStateCreateFailed})
		}, params: with(nil), want: "InvalidImageName.Duplicate"},
		{name: "same name in another region", setup: func(s *Server) { s.AddImage(Image{Name: "backup-1", Region: "ap-shanghai"}) }, params: with(nil), want: ""},
		{name: "image of the instance still creating", setup: func(s *Server) {
			s.SetImageReadyAfter(-1)
			s.AddImage(Image{Name: "earlier", Region: testRegion, InstanceID: "ins-good0001", State: ImageStateCreating})
		}, params: with(nil), want: "MutexOperation.TaskRunning"},
		{name: "image of another instance creating", setup: func(s *Server) {
			s.SetImageReadyAfter(-1)
			s.AddImage(Image{Name: "earlier", Region: testRegion, InstanceID: "ins-good0002", State: ImageStateCreating})
		}, params: with(nil), want: ""},
		{name: "quota used up", setup: func(s *Server) {
			s.SetImageQuota(2)
			s.AddImage(Image{Name: "a", Region: testRegion})
			s.AddImage(Image{Name: "b", Region: testRegion})
		}, params: with(nil), want: "ImageQuotaLimitExceeded"},
		{name: "public images do not use quota", setup: func(s *Server) {
			s.SetImageQuota(1)
			s.AddImage(Image{Name: "TencentOS", Region: testRegion, Type: ImageTypePublic})
		}, params: with(nil), want: ""},
		{name: "quota is per region", setup: func(s *Server) {
			s.SetImageQuota(1)
			s.AddImage(Image{Name: "a", Region: "ap-shanghai"})
		}, params: with(nil), want: ""},
		{name: "data disk of another instance", params: with(map[string]any{"DataDiskIds": []any{"disk-data0001", "disk-other01"}}), want: "InvalidParameter.DataDiskNotBelongSpecifiedInstance"},
		{name: "system disk as data disk", params: with(map[string]any{"DataDiskIds": []any{"disk-sys-good0001"}}), want: "InvalidParameter.DataDiskIdContainsRootDisk"},
		{name: "DataDiskIds not a list", params: with(map[string]any{"DataDiskIds": "disk-data0001"}), want: "InvalidParameter"},
		{name: "snapshots", params: with(map[string]any{"SnapshotIds": []any{"snap-1"}}), want: "InvalidParameter.SnapshotNotFound"},
		{name: "dry run", params: with(map[string]any{"DryRun": true}), want: "DryRunOperation"},
		{name: "dry run still validates", params: with(map[string]any{"DryRun": true, "InstanceId": "ins-missing1"}), want: "InvalidInstanceId.NotFound"},
		{name: "tags for another resource type", params: with(map[string]any{
			"TagSpecification": []any{map[string]any{"ResourceType": "instance", "Tags": []any{map[string]any{"Key": "k", "Value": "v"}}}},
		}), want: "InvalidParameterValue"},
		{name: "tag without key", params: with(map[string]any{
			"TagSpecification": []any{map[string]any{"ResourceType": "image", "Tags": []any{map[string]any{"Value": "v"}}}},
		}), want: "InvalidParameterValue"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startSim(t, tt.opts)
			seedInstances(s)
			if tt.setup != nil {
				tt.setup(s)
			}
			before := len(s.Images())
			resp, err := call(t, s, ActionCreateImage, tt.params)
			require.Equal(t, tt.want, code(t, err), "error: %v", err)
			require.Equal(t, tt.want, lastCall(t, s).Code)
			if tt.want != "" {
				require.Len(t, s.Images(), before, "a refused call creates nothing")
				return
			}
			require.Regexp(t, imageIDPattern, resp["ImageId"])
			require.Len(t, s.Images(), before+1)
		})
	}
}

func TestCreateImageRecordsTheImage(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{ImageReadyAfter: -1})
	seedInstances(s)
	params := map[string]any{
		"InstanceId": "ins-good0001", "ImageName": "web-2025", "ImageDescription": "nightly",
		"DataDiskIds": []any{"disk-data0002"},
		"TagSpecification": []any{map[string]any{"ResourceType": "image", "Tags": []any{
			map[string]any{"Key": "imager-policy", "Value": "nightly"},
			map[string]any{"Key": "imager-instance", "Value": "ins-good0001"},
		}}},
	}
	resp, err := call(t, s, ActionCreateImage, params)
	require.NoError(t, err)
	id, _ := resp["ImageId"].(string)
	require.Regexp(t, imageIDPattern, id)
	require.Regexp(t, uuidPattern, resp["RequestId"])

	images := s.Images()
	require.Len(t, images, 1)
	img := images[0]
	require.Equal(t, id, img.ID)
	require.Equal(t, "web-2025", img.Name)
	require.Equal(t, "nightly", img.Description)
	require.Equal(t, testRegion, img.Region)
	require.Equal(t, "ins-good0001", img.InstanceID)
	require.Equal(t, ImageStateCreating, img.State)
	require.Equal(t, ImageTypePrivate, img.Type)
	require.EqualValues(t, DefaultImageSizeGiB, img.SizeGiB)
	require.Equal(t, map[string]string{"imager-policy": "nightly", "imager-instance": "ins-good0001"}, img.Tags)
	require.Equal(t, []string{"disk-data0002"}, img.DataDiskIDs)
	require.False(t, img.CreatedTime.IsZero())

	c := lastCall(t, s)
	require.Equal(t, "web-2025", c.Params["ImageName"])
	require.Equal(t, resp["RequestId"], c.RequestID)

	// The snapshot is a copy.
	images[0].Tags["imager-policy"] = "changed"
	require.Equal(t, "nightly", s.Images()[0].Tags["imager-policy"])

	// A second image of the same instance waits for the first.
	_, err = call(t, s, ActionCreateImage, createParams("ins-good0001", "web-2026"))
	require.Equal(t, "MutexOperation.TaskRunning", code(t, err))
	s.CompleteAll()
	_, err = call(t, s, ActionCreateImage, createParams("ins-good0001", "web-2026"))
	require.NoError(t, err)
}

func TestCreateImageSeedShape(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{SeedShape: true})
	seedInstances(s)
	resp, err := call(t, s, ActionCreateImage, createParams("ins-good0001", "seed-1"))
	require.NoError(t, err)
	require.NotContains(t, resp, "ImageId")
	require.Regexp(t, uuidPattern, resp["RequestId"])
	require.Equal(t, []string{"seed-1"}, imageNames(s), "the image exists all the same")

	s.SetSeedShape(false)
	resp, err = call(t, s, ActionCreateImage, createParams("ins-good0002", "seed-2"))
	require.NoError(t, err)
	require.Regexp(t, imageIDPattern, resp["ImageId"])
}

func TestRequestIDsAreUnique(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{Limits: map[string]int{ActionDescribeImageQuota: 0}})
	seen := map[string]bool{}
	for range 50 {
		resp, err := call(t, s, ActionDescribeImageQuota, nil)
		require.NoError(t, err)
		id := resp["RequestId"].(string)
		require.False(t, seen[id], "duplicate RequestId %s", id)
		seen[id] = true
	}
}
