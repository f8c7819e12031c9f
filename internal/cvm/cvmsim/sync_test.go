package cvmsim

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
)

// callIn is call sent to region with the default key pair.
func callIn(t *testing.T, s *Server, region, action string, params map[string]any) (map[string]any, error) {
	t.Helper()
	return send(t.Context(), commonClient(t, s, region, DefaultSecretID, DefaultSecretKey), action, params)
}

func syncParams(imageID string, dests ...string) map[string]any {
	d := make([]any, len(dests))
	for i, r := range dests {
		d[i] = r
	}
	return map[string]any{"ImageIds": []any{imageID}, "DestinationRegions": d, "ImageSetRequired": true}
}

// imageSet returns SyncImages' ImageSet as region -> image id, in answer order.
func imageSet(t *testing.T, resp map[string]any) (ids map[string]string, order []string) {
	t.Helper()
	set, ok := resp["ImageSet"].([]any)
	require.True(t, ok, "ImageSet in %v", resp)
	ids = map[string]string{}
	for _, e := range set {
		m := e.(map[string]any)
		region, id := m["Region"].(string), m["ImageId"].(string)
		require.Regexp(t, imageIDPattern, id)
		ids[region] = id
		order = append(order, region)
	}
	return ids, order
}

// describeIn returns DescribeImages' ImageSet entries in region for params.
func describeIn(t *testing.T, s *Server, region string, params map[string]any) []map[string]any {
	t.Helper()
	resp, err := callIn(t, s, region, ActionDescribeImages, params)
	require.NoError(t, err)
	var out []map[string]any
	for _, e := range resp["ImageSet"].([]any) {
		out = append(out, e.(map[string]any))
	}
	return out
}

func byID(id string) map[string]any { return map[string]any{"ImageIds": []any{id}} }

func byName(name string) map[string]any {
	return map[string]any{"Filters": []any{map[string]any{"Name": "image-name", "Values": []any{name}}}}
}

// sourceImage adds the NORMAL image the sync tests copy.
func sourceImage(s *Server) {
	s.AddImage(Image{ID: "img-source01", Name: "web-nightly-1", Description: "nightly of web", Region: testRegion,
		Tags: map[string]string{"imager-policy": "nightly"}, SizeGiB: 20})
}

func TestSyncImagesCopiesAndCopiesBecomeNormal(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClockAt(time.Now())
	s := startSim(t, Options{Clock: clock, CopyReadyAfter: 10 * time.Minute, MaxClockSkew: -1})
	sourceImage(s)
	start := clock.Now()

	resp, err := call(t, s, ActionSyncImages, syncParams("img-source01", "ap-shanghai", "eu-frankfurt"))
	require.NoError(t, err)
	ids, order := imageSet(t, resp)
	require.Equal(t, []string{"ap-shanghai", "eu-frankfurt"}, order)
	require.NotEqual(t, ids["ap-shanghai"], ids["eu-frankfurt"])

	for _, region := range order {
		got := describeIn(t, s, region, byID(ids[region]))
		require.Len(t, got, 1, region)
		img := got[0]
		require.Equal(t, ImageStateSyncing, img["ImageState"])
		require.Equal(t, "web-nightly-1", img["ImageName"], "the source's name")
		require.Equal(t, "nightly of web", img["ImageDescription"])
		require.Equal(t, ImageTypePrivate, img["ImageType"])
		require.EqualValues(t, 20, img["ImageSize"])
		require.EqualValues(t, 0, img["SyncPercent"])
		require.Equal(t, []any{map[string]any{"Key": "imager-policy", "Value": "nightly"}}, img["Tags"], "tags are copied")
		require.Equal(t, start.UTC().Format(time.RFC3339), img["CreatedTime"])
		// The name filter finds it too, and only in its own region.
		named := describeIn(t, s, region, byName("web-nightly-1"))
		require.Len(t, named, 1)
		require.Equal(t, ids[region], named[0]["ImageId"])
	}
	require.Empty(t, describeIn(t, s, testRegion, byID(ids["ap-shanghai"])), "a copy is not in the source region")
	src := describeIn(t, s, testRegion, byID("img-source01"))
	require.Equal(t, ImageStateNormal, src[0]["ImageState"], "the source stays NORMAL while it is copied")

	// A SYNCING copy cannot be deleted yet.
	_, err = callIn(t, s, "ap-shanghai", ActionDeleteImages, map[string]any{"ImageIds": []any{ids["ap-shanghai"]}})
	require.Equal(t, "InvalidImageId.IncorrectState", code(t, err))

	clock.Advance(5 * time.Minute)
	half := describeIn(t, s, "ap-shanghai", byID(ids["ap-shanghai"]))[0]
	require.Equal(t, ImageStateSyncing, half["ImageState"])
	require.EqualValues(t, 50, half["SyncPercent"])

	clock.Advance(5*time.Minute - time.Second)
	require.Equal(t, ImageStateSyncing, describeIn(t, s, "ap-shanghai", byID(ids["ap-shanghai"]))[0]["ImageState"])
	clock.Advance(time.Second)
	for _, region := range order {
		img := describeIn(t, s, region, byID(ids[region]))[0]
		require.Equal(t, ImageStateNormal, img["ImageState"], region)
		require.EqualValues(t, 100, img["SyncPercent"])
	}

	// A NORMAL copy is deleted in its region, and only there.
	_, err = call(t, s, ActionDeleteImages, map[string]any{"ImageIds": []any{ids["ap-shanghai"]}})
	require.Equal(t, "InvalidImageId.NotFound", code(t, err), "not from the source region")
	_, err = callIn(t, s, "ap-shanghai", ActionDeleteImages, map[string]any{"ImageIds": []any{ids["ap-shanghai"]}})
	require.NoError(t, err)
	require.Empty(t, describeIn(t, s, "ap-shanghai", byID(ids["ap-shanghai"])))

	// The simulator's own view names the source of each copy.
	var copies []Image
	for _, img := range s.Images() {
		if img.SourceImageID != "" {
			copies = append(copies, img)
		}
	}
	require.Len(t, copies, 1)
	require.Equal(t, "eu-frankfurt", copies[0].Region)
	require.Equal(t, "img-source01", copies[0].SourceImageID)
	require.Equal(t, testRegion, copies[0].SourceRegion)
	require.Equal(t, DefaultSecretID, copies[0].Account)
}

func TestSyncImagesReadyRules(t *testing.T) {
	t.Parallel()
	t.Run("zero: NORMAL by the next call", func(t *testing.T) {
		t.Parallel()
		s := startSim(t, Options{})
		sourceImage(s)
		resp, err := call(t, s, ActionSyncImages, syncParams("img-source01", "ap-beijing"))
		require.NoError(t, err)
		ids, _ := imageSet(t, resp)
		require.Equal(t, ImageStateNormal, describeIn(t, s, "ap-beijing", byID(ids["ap-beijing"]))[0]["ImageState"])
	})
	t.Run("negative: SYNCING until CompleteAll", func(t *testing.T) {
		t.Parallel()
		clock := clockwork.NewFakeClockAt(time.Now())
		s := startSim(t, Options{Clock: clock, CopyReadyAfter: -1, MaxClockSkew: -1})
		sourceImage(s)
		resp, err := call(t, s, ActionSyncImages, syncParams("img-source01", "ap-beijing"))
		require.NoError(t, err)
		ids, _ := imageSet(t, resp)
		clock.Advance(30 * 24 * time.Hour)
		require.Equal(t, ImageStateSyncing, describeIn(t, s, "ap-beijing", byID(ids["ap-beijing"]))[0]["ImageState"])
		s.CompleteAll()
		require.Equal(t, ImageStateNormal, describeIn(t, s, "ap-beijing", byID(ids["ap-beijing"]))[0]["ImageState"])
	})
	t.Run("SetCopyReadyAfter and FailImage", func(t *testing.T) {
		t.Parallel()
		s := startSim(t, Options{})
		sourceImage(s)
		s.SetCopyReadyAfter(-1)
		resp, err := call(t, s, ActionSyncImages, syncParams("img-source01", "ap-beijing"))
		require.NoError(t, err)
		ids, _ := imageSet(t, resp)
		require.Equal(t, ImageStateSyncing, describeIn(t, s, "ap-beijing", byID(ids["ap-beijing"]))[0]["ImageState"])
		s.FailImage(ids["ap-beijing"])
		require.Equal(t, ImageStateCreateFailed, describeIn(t, s, "ap-beijing", byID(ids["ap-beijing"]))[0]["ImageState"])
		s.CompleteAll()
		require.Equal(t, ImageStateCreateFailed, describeIn(t, s, "ap-beijing", byID(ids["ap-beijing"]))[0]["ImageState"])
	})
	t.Run("an added SYNCING image finishes like a copy only with a source", func(t *testing.T) {
		t.Parallel()
		clock := clockwork.NewFakeClockAt(time.Now())
		s := startSim(t, Options{Clock: clock, CopyReadyAfter: time.Minute, ImageReadyAfter: time.Hour, MaxClockSkew: -1})
		s.AddImage(Image{ID: "img-copy0001", Name: "c", Region: "ap-beijing", State: ImageStateSyncing,
			SourceImageID: "img-gone0001", SourceRegion: testRegion})
		s.AddImage(Image{ID: "img-stuck001", Name: "d", Region: "ap-beijing", State: ImageStateSyncing})
		clock.Advance(time.Minute)
		require.Equal(t, ImageStateNormal, describeIn(t, s, "ap-beijing", byID("img-copy0001"))[0]["ImageState"])
		s.CompleteAll()
		require.Equal(t, ImageStateSyncing, describeIn(t, s, "ap-beijing", byID("img-stuck001"))[0]["ImageState"])
	})
}

func TestSyncImagesAnswerShape(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	sourceImage(s)

	p := syncParams("img-source01", "ap-beijing")
	delete(p, "ImageSetRequired")
	resp, err := call(t, s, ActionSyncImages, p)
	require.NoError(t, err)
	require.NotContains(t, resp, "ImageSet", "without ImageSetRequired the answer is RequestId only")
	require.Len(t, describeIn(t, s, "ap-beijing", byName("web-nightly-1")), 1, "the copy was made all the same")

	p = syncParams("img-source01", "ap-singapore")
	p["ImageName"] = "renamed-copy"
	resp, err = call(t, s, ActionSyncImages, p)
	require.NoError(t, err)
	c := lastCall(t, s)
	require.Equal(t, ActionSyncImages, c.Action)
	require.Equal(t, testRegion, c.Region)
	require.Equal(t, DefaultSecretID, c.SecretID)
	require.Empty(t, c.Code)
	ids, _ := imageSet(t, resp)
	require.Equal(t, "renamed-copy", describeIn(t, s, "ap-singapore", byID(ids["ap-singapore"]))[0]["ImageName"])
}

func TestSyncImagesValidation(t *testing.T) {
	t.Parallel()
	with := func(extra map[string]any) map[string]any {
		p := syncParams("img-source01", "ap-shanghai")
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
		setup  func(*Server)
		params map[string]any
		want   string
	}{
		{name: "valid", params: with(nil), want: ""},
		{name: "every parameter", params: with(map[string]any{"ImageName": "n", "DryRun": false, "Encrypt": false}), want: ""},
		{name: "unknown parameter", params: with(map[string]any{"ClientToken": "x"}), want: "UnknownParameter"},
		{name: "missing ImageIds", params: with(map[string]any{"ImageIds": nil}), want: "MissingParameter"},
		{name: "missing destinations", params: with(map[string]any{"DestinationRegions": []any{}}), want: "MissingParameter"},
		{name: "ImageIds not a list", params: with(map[string]any{"ImageIds": "img-source01"}), want: "InvalidParameter"},
		{name: "two images", params: with(map[string]any{"ImageIds": []any{"img-source01", "img-source02"}}), want: "InvalidParameterValue.LimitExceeded"},
		{name: "malformed id", params: with(map[string]any{"ImageIds": []any{"source01"}}), want: "InvalidImageId.Malformed"},
		{name: "name of 61 characters", params: with(map[string]any{"ImageName": strings.Repeat("n", 61)}), want: "InvalidParameter.ValueTooLarge"},
		{name: "encrypted", params: with(map[string]any{"Encrypt": true}), want: "UnsupportedOperation.SyncEncryptImageNotSupport"},
		{name: "kms key without Encrypt", params: with(map[string]any{"KmsKeyId": "k"}), want: "InvalidParameter.InvalidKmsKeyId"},
		{name: "destination twice", params: with(map[string]any{"DestinationRegions": []any{"ap-shanghai", "ap-beijing", "ap-shanghai"}}), want: "InvalidParameterValue"},
		{name: "the source region", params: with(map[string]any{"DestinationRegions": []any{"ap-shanghai", testRegion}}), want: "InvalidParameterValue.InvalidRegion"},
		{name: "unknown region", params: with(map[string]any{"DestinationRegions": []any{"ap-shanghai", "xx-nowhere"}}), want: "InvalidRegion.NotFound"},
		{name: "refused region", setup: func(s *Server) { s.RefuseSyncTo("ap-beijing", "InvalidRegion.Unavailable") },
			params: with(map[string]any{"DestinationRegions": []any{"ap-shanghai", "ap-beijing"}}), want: "InvalidRegion.Unavailable"},
		{name: "refusal lifted", setup: func(s *Server) {
			s.RefuseSyncTo("ap-shanghai", "UnsupportedOperation.Region")
			s.RefuseSyncTo("ap-shanghai", "")
		}, params: with(nil), want: ""},
		{name: "unknown image", params: with(map[string]any{"ImageIds": []any{"img-nothere1"}}), want: "InvalidImageId.NotFound"},
		{name: "image of another region", setup: func(s *Server) { s.AddImage(Image{ID: "img-beijing1", Region: "ap-beijing"}) },
			params: with(map[string]any{"ImageIds": []any{"img-beijing1"}}), want: "InvalidImageId.NotFound"},
		{name: "public image", setup: func(s *Server) { s.AddImage(Image{ID: "img-public01", Region: testRegion, Type: ImageTypePublic}) },
			params: with(map[string]any{"ImageIds": []any{"img-public01"}}), want: "InvalidImageId.NotFound"},
		{name: "image still creating", setup: func(s *Server) {
			s.SetImageReadyAfter(-1)
			s.AddImage(Image{ID: "img-creating", Region: testRegion, State: ImageStateCreating})
		}, params: with(map[string]any{"ImageIds": []any{"img-creating"}}), want: "InvalidImageId.IncorrectState"},
		{name: "failed image", setup: func(s *Server) {
			s.AddImage(Image{ID: "img-failed01", Region: testRegion, State: ImageStateCreateFailed})
		},
			params: with(map[string]any{"ImageIds": []any{"img-failed01"}}), want: "InvalidImageId.IncorrectState"},
		{name: "destination down", setup: func(s *Server) { s.SetRegionDown("ap-beijing", true) },
			params: with(map[string]any{"DestinationRegions": []any{"ap-shanghai", "ap-beijing"}}), want: "InternalError"},
		{name: "name taken in a destination", setup: func(s *Server) { s.AddImage(Image{Name: "web-nightly-1", Region: "ap-shanghai"}) },
			params: with(nil), want: "InvalidImageName.Duplicate"},
		{name: "destination quota used up", setup: func(s *Server) {
			s.SetImageQuota(2)
			s.AddImage(Image{Name: "a", Region: "ap-beijing"})
			s.AddImage(Image{Name: "b", Region: "ap-beijing"})
		}, params: with(map[string]any{"DestinationRegions": []any{"ap-shanghai", "ap-beijing"}}), want: "ImageQuotaLimitExceeded"},
		{name: "source region's quota does not matter", setup: func(s *Server) {
			s.SetImageQuota(2)
			s.AddImage(Image{Name: "a", Region: testRegion})
		}, params: with(nil), want: ""},
		{name: "dry run", params: with(map[string]any{"DryRun": true}), want: "DryRunOperation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startSim(t, Options{})
			sourceImage(s)
			if tt.setup != nil {
				tt.setup(s)
			}
			before := len(s.Images())
			resp, err := call(t, s, ActionSyncImages, tt.params)
			require.Equal(t, tt.want, code(t, err))
			require.Equal(t, tt.want, lastCall(t, s).Code)
			if tt.want != "" {
				require.Len(t, s.Images(), before, "a refused call copies nothing anywhere")
				return
			}
			ids, _ := imageSet(t, resp)
			require.Len(t, s.Images(), before+len(ids))
		})
	}
}

func TestSyncImagesSecondCopyMeetsTheFirst(t *testing.T) {
	t.Parallel()
	// An ambiguous SyncImages (answer lost after the copy started) retried meets its own copy.
	s := startSim(t, Options{})
	sourceImage(s)
	s.SetFaults(Faults{DropRate: 1, DropAfterExecute: true, Actions: []string{ActionSyncImages}})
	_, err := call(t, s, ActionSyncImages, syncParams("img-source01", "ap-shanghai"))
	networkError(t, err)
	s.SetFaults(Faults{})
	_, err = call(t, s, ActionSyncImages, syncParams("img-source01", "ap-shanghai"))
	require.Equal(t, "InvalidImageName.Duplicate", code(t, err))
	found := describeIn(t, s, "ap-shanghai", byName("web-nightly-1"))
	require.Len(t, found, 1, "found by exact name in the destination")
}

func TestSyncImagesLimit(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClockAt(time.Now())
	s := startSim(t, Options{Clock: clock})
	for i := range 12 {
		s.AddImage(Image{ID: fmt.Sprintf("img-src%05d", i), Name: fmt.Sprintf("src-%d", i), Region: testRegion})
	}
	c := commonClient(t, s, testRegion, DefaultSecretID, DefaultSecretKey)
	for i := range 10 {
		_, err := send(t.Context(), c, ActionSyncImages, syncParams(fmt.Sprintf("img-src%05d", i), "ap-shanghai"))
		require.NoError(t, err, "call %d", i)
	}
	clock.Advance(999 * time.Millisecond)
	_, err := send(t.Context(), c, ActionSyncImages, syncParams("img-src00010", "ap-shanghai"))
	require.Equal(t, "RequestLimitExceeded", code(t, err))
	clock.Advance(time.Millisecond)
	_, err = send(t.Context(), c, ActionSyncImages, syncParams("img-src00011", "ap-shanghai"))
	require.NoError(t, err)
	require.Equal(t, 11, s.MaxInAnySecond(ActionSyncImages))
	require.Len(t, describeIn(t, s, "ap-shanghai", map[string]any{"Limit": 100}), 11, "the rejected call copied nothing")
	require.Equal(t, 10, DefaultLimits()[ActionSyncImages])
}
