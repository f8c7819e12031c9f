package cvm

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCreateImageWireFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		region string
		in     CreateImageInput
		want   map[string]any // the whole JSON body
	}{
		{
			name:   "required only",
			region: "ap-guangzhou",
			in:     CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "web-1"},
			want:   map[string]any{"InstanceId": "ins-6pb6lrmy", "ImageName": "web-1"},
		},
		{
			name:   "all booleans true",
			region: "ap-shanghai-fsi",
			in: CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "web-1",
				ForcePoweroff: ptr(true), Sysprep: ptr(true), Reboot: ptr(true)},
			want: map[string]any{"InstanceId": "ins-6pb6lrmy", "ImageName": "web-1",
				"ForcePoweroff": "true", "Sysprep": "true", "Reboot": "true"},
		},
		{
			name:   "all booleans false are still sent",
			region: "ap-beijing",
			in: CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "web-1",
				ForcePoweroff: ptr(false), Sysprep: ptr(false), Reboot: ptr(false)},
			want: map[string]any{"InstanceId": "ins-6pb6lrmy", "ImageName": "web-1",
				"ForcePoweroff": "false", "Sysprep": "false", "Reboot": "false"},
		},
		{
			name:   "reboot alone",
			region: "ap-guangzhou",
			in:     CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "web-1", Reboot: ptr(false)},
			want:   map[string]any{"InstanceId": "ins-6pb6lrmy", "ImageName": "web-1", "Reboot": "false"},
		},
		{
			name:   "mixed booleans",
			region: "ap-guangzhou",
			in: CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "web-1",
				ForcePoweroff: ptr(true), Sysprep: ptr(false)},
			want: map[string]any{"InstanceId": "ins-6pb6lrmy", "ImageName": "web-1",
				"ForcePoweroff": "true", "Sysprep": "false"},
		},
		{
			name:   "description, disks, tags, dry run",
			region: "ap-guangzhou",
			in: CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "web-1",
				ImageDescription: "Nightly image of ins-6pb6lrmy",
				DataDiskIDs:      []string{"disk-aaaa1111", "disk-bbbb2222"},
				Tags:             []Tag{{Key: "imager-policy", Value: "web-nightly"}, {Key: "env", Value: ""}},
				DryRun:           true},
			want: map[string]any{"InstanceId": "ins-6pb6lrmy", "ImageName": "web-1",
				"ImageDescription": "Nightly image of ins-6pb6lrmy",
				"DataDiskIds":      []any{"disk-aaaa1111", "disk-bbbb2222"},
				"TagSpecification": []any{map[string]any{
					"ResourceType": "image",
					"Tags": []any{
						map[string]any{"Key": "imager-policy", "Value": "web-nightly"},
						map[string]any{"Key": "env", "Value": ""},
					},
				}},
				"DryRun": true},
		},
		{
			name:   "empty slices are left out",
			region: "ap-guangzhou",
			in: CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "web-1",
				DataDiskIDs: []string{}, Tags: []Tag{}},
			want: map[string]any{"InstanceId": "ins-6pb6lrmy", "ImageName": "web-1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
				writeJSON(w, `{"Response":{"ImageId":"img-12345678","RequestId":"req-1"}}`)
			})
			c, _ := newTestClient(t, f)

			out, err := c.CreateImage(bg(), tt.region, tt.in)
			require.NoError(t, err)
			require.Equal(t, CreateImageOutput{ImageID: "img-12345678", RequestID: "req-1"}, out)

			call := f.onlyCall(t)
			require.Equal(t, "CreateImage", call.Action)
			require.Equal(t, "2017-03-12", call.Version)
			require.Equal(t, tt.region, call.Region)
			require.Equal(t, "application/json", call.ContentType)
			require.Regexp(t, `^TC3-HMAC-SHA256 Credential=`+testSecretID+`/\d{4}-\d{2}-\d{2}/cvm/tc3_request, SignedHeaders=content-type;host, Signature=[0-9a-f]{64}$`, call.Authorization)
			require.Equal(t, tt.want, call.Body)
		})
	}
}

func TestCreateImageResponseShapes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want CreateImageOutput
	}{
		{"seed shape, RequestId only", `{"Response":{"RequestId":"71e69b56-32be-4412-ab45-49eded6a87be"}}`,
			CreateImageOutput{RequestID: "71e69b56-32be-4412-ab45-49eded6a87be"}},
		{"with ImageId", `{"Response":{"ImageId":"img-6pb6lrmy","RequestId":"req-2"}}`,
			CreateImageOutput{ImageID: "img-6pb6lrmy", RequestID: "req-2"}},
		{"ImageId null", `{"Response":{"ImageId":null,"RequestId":"req-3"}}`,
			CreateImageOutput{RequestID: "req-3"}},
		{"unknown fields ignored", `{"Response":{"ImageId":"img-1","Extra":{"a":[1,2]},"RequestId":"req-4"}}`,
			CreateImageOutput{ImageID: "img-1", RequestID: "req-4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) { writeJSON(w, tt.body) })
			c, _ := newTestClient(t, f)
			out, err := c.CreateImage(bg(), "ap-guangzhou", CreateImageInput{InstanceID: "ins-6pb6lrmy", ImageName: "n"})
			require.NoError(t, err)
			require.Equal(t, tt.want, out)
		})
	}
}

func TestCreateImageRefusesMissingRequiredInput(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, nil)
	c, _ := newTestClient(t, f)
	for _, in := range []CreateImageInput{{ImageName: "n"}, {InstanceID: "ins-6pb6lrmy"}} {
		_, err := c.CreateImage(bg(), "ap-guangzhou", in)
		ae := requireAPIError(t, err)
		require.Equal(t, CodeInvalidInput, ae.Code)
		require.Equal(t, ClassPermanent, ae.Class)
		require.False(t, ae.Ambiguous())
	}
	require.Empty(t, f.recorded(), "nothing is sent for refused input")
}
