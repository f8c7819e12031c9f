package cvm

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSyncImagesWireFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   SyncImagesInput
		want map[string]any // the whole JSON body
	}{
		{
			name: "one destination",
			in:   SyncImagesInput{ImageID: "img-6pb6lrmy", DestinationRegions: []string{"ap-shanghai"}},
			want: map[string]any{"ImageIds": []any{"img-6pb6lrmy"}, "DestinationRegions": []any{"ap-shanghai"},
				"ImageSetRequired": true},
		},
		{
			name: "name, several destinations, dry run",
			in: SyncImagesInput{ImageID: "img-6pb6lrmy", DestinationRegions: []string{"ap-shanghai", "eu-frankfurt"},
				ImageName: "web-nightly-20240102", DryRun: true},
			want: map[string]any{"ImageIds": []any{"img-6pb6lrmy"},
				"DestinationRegions": []any{"ap-shanghai", "eu-frankfurt"},
				"ImageName":          "web-nightly-20240102", "ImageSetRequired": true, "DryRun": true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
				writeJSON(w, `{"Response":{"ImageSet":[{"ImageId":"img-aaaa1111","Region":"ap-shanghai"}],"RequestId":"req-s"}}`)
			})
			c, logs := newTestClient(t, f)
			out, err := c.SyncImages(bg(), "ap-guangzhou", tt.in)
			require.NoError(t, err)
			require.Equal(t, SyncImagesOutput{Copies: []ImageCopy{{ImageID: "img-aaaa1111", Region: "ap-shanghai"}},
				RequestID: "req-s"}, out)
			call := f.onlyCall(t)
			require.Equal(t, "SyncImages", call.Action)
			require.Equal(t, "2017-03-12", call.Version)
			require.Equal(t, "ap-guangzhou", call.Region)
			require.Equal(t, tt.want, call.Body)
			require.Contains(t, logs.String(), `"action":"SyncImages"`)
			require.Contains(t, logs.String(), `"request_id":"req-s"`)
		})
	}
}

func TestSyncImagesResponseShapes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want SyncImagesOutput
		code string
	}{
		{"two copies", `{"Response":{"ImageSet":[{"ImageId":"img-1","Region":"ap-shanghai"},{"ImageId":"img-2","Region":"eu-frankfurt"}],"RequestId":"req-1"}}`,
			SyncImagesOutput{Copies: []ImageCopy{{"img-1", "ap-shanghai"}, {"img-2", "eu-frankfurt"}}, RequestID: "req-1"}, ""},
		{"RequestId only", `{"Response":{"RequestId":"req-2"}}`, SyncImagesOutput{RequestID: "req-2"}, ""},
		{"ImageSet null", `{"Response":{"ImageSet":null,"RequestId":"req-3"}}`, SyncImagesOutput{RequestID: "req-3"}, ""},
		{"incomplete entries skipped", `{"Response":{"ImageSet":[{"ImageId":null,"Region":"ap-shanghai"},{"ImageId":"img-2"},{"ImageId":"img-3","Region":"ap-beijing","Extra":1}],"RequestId":"req-4"}}`,
			SyncImagesOutput{Copies: []ImageCopy{{"img-3", "ap-beijing"}}, RequestID: "req-4"}, ""},
		{"unknown fields ignored", `{"Response":{"ImageSet":[],"Other":{"a":[1]},"RequestId":"req-5"}}`,
			SyncImagesOutput{RequestID: "req-5"}, ""},
		{"no Response", `{"Something":{}}`, SyncImagesOutput{}, CodeBadResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) { writeJSON(w, tt.body) })
			c, _ := newTestClient(t, f)
			out, err := c.SyncImages(bg(), "ap-guangzhou", SyncImagesInput{ImageID: "img-0", DestinationRegions: []string{"ap-shanghai"}})
			if tt.code != "" {
				ae := requireAPIError(t, err)
				require.Equal(t, tt.code, ae.Code)
				require.Equal(t, "SyncImages", ae.Action)
				require.True(t, ae.Ambiguous(), "the API may have started copies")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, out)
		})
	}
}

func TestSyncImagesRefusesBadInput(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, nil)
	c, _ := newTestClient(t, f)
	for _, in := range []SyncImagesInput{
		{DestinationRegions: []string{"ap-shanghai"}},
		{ImageID: "img-1"},
		{ImageID: "img-1", DestinationRegions: []string{}},
		{ImageID: "img-1", DestinationRegions: []string{"ap-shanghai", "ap-guangzhou"}},
		{ImageID: "img-1", DestinationRegions: []string{"ap-shanghai", "ap-beijing", "ap-shanghai"}},
		{ImageID: "img-1", DestinationRegions: []string{""}},
	} {
		_, err := c.SyncImages(bg(), "ap-guangzhou", in)
		ae := requireAPIError(t, err)
		require.Equal(t, CodeInvalidInput, ae.Code, "%+v", in)
		require.Equal(t, "SyncImages", ae.Action)
		require.Equal(t, ClassPermanent, ae.Class)
		require.False(t, ae.Ambiguous())
	}
	require.Empty(t, f.recorded(), "nothing is sent for refused input")
}

func TestSyncImagesErrorClasses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code          string
		class         Class
		regionRefused bool
	}{
		{"InvalidImageId.IncorrectState", ClassBusy, false},
		{"FailedOperation.InvalidImageState", ClassBusy, false},
		{"InvalidParameterValue.InvalidImageState", ClassBusy, false},
		{"ImageQuotaLimitExceeded", ClassQuota, false},
		{"InvalidImageName.Duplicate", ClassDuplicateName, false},
		{"InvalidImageId.NotFound", ClassPermanent, false},
		{"UnsupportedRegion", ClassPermanent, true},
		{"InvalidRegion.NotFound", ClassPermanent, true},
		{"InvalidRegion.Unavailable", ClassPermanent, true},
		{"InvalidParameterValue.InvalidRegion", ClassPermanent, true},
		{"UnsupportedOperation.Region", ClassPermanent, true},
		{"InternalError", ClassTransient, false},
		{"RequestLimitExceeded", ClassThrottled, false},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			t.Parallel()
			f := newFakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ recordedCall) {
				writeJSON(w, `{"Response":{"Error":{"Code":"`+tt.code+`","Message":"no"},"RequestId":"req-e"}}`)
			})
			c, _ := newTestClient(t, f)
			_, err := c.SyncImages(bg(), "ap-guangzhou", SyncImagesInput{ImageID: "img-1", DestinationRegions: []string{"ap-shanghai"}})
			ae := requireAPIError(t, err)
			require.Equal(t, &APIError{Action: "SyncImages", Code: tt.code, Message: "no", RequestID: "req-e", Class: tt.class}, ae)
			require.Equal(t, tt.regionRefused, RegionRefused(ae.Code))
			f.onlyCall(t)
		})
	}
}
