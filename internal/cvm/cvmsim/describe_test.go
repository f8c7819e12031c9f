package cvmsim

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	cvmapi "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/cvm/v20170312"
)

func filterOf(name string, values ...string) *cvmapi.Filter {
	return &cvmapi.Filter{Name: ptr(name), Values: common.StringPtrs(values)}
}

// imageFixture adds images with known ids, newest last.
func imageFixture(s *Server) {
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	add := func(i int, id, name, typ string, tags map[string]string) {
		s.AddImage(Image{ID: id, Name: name, Region: testRegion, Type: typ, Tags: tags, CreatedTime: t0.Add(time.Duration(i) * time.Hour)})
	}
	add(0, "img-web00001", "imager-web-1", ImageTypePrivate, map[string]string{"imager-policy": "nightly", "env": "prod"})
	add(1, "img-web00002", "imager-web-2", ImageTypePrivate, map[string]string{"imager-policy": "nightly", "env": "dev"})
	add(2, "img-db000001", "imager-db-1", ImageTypePrivate, map[string]string{"imager-policy": "weekly", "env": "prod"})
	add(3, "img-manual01", "hand-made-web", ImageTypePrivate, nil)
	add(4, "img-public01", "TencentOS Server", ImageTypePublic, nil)
	s.AddImage(Image{ID: "img-shang001", Name: "imager-web-1", Region: "ap-shanghai", CreatedTime: t0})
}

func describeIDs(resp *cvmapi.DescribeImagesResponse) []string {
	var ids []string
	for _, img := range resp.Response.ImageSet {
		ids = append(ids, *img.ImageId)
	}
	return ids
}

func TestDescribeImagesFilters(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ids     []string
		filters []*cvmapi.Filter
		want    []string // newest first
	}{
		{name: "everything in the region", want: []string{"img-public01", "img-manual01", "img-db000001", "img-web00002", "img-web00001"}},
		{name: "by id, unknown ids absent", ids: []string{"img-web00001", "img-nothere1", "img-shang001"}, want: []string{"img-web00001"}},
		{name: "image-id filter", filters: []*cvmapi.Filter{filterOf("image-id", "img-db000001", "img-manual01")}, want: []string{"img-manual01", "img-db000001"}},
		{name: "image-name is fuzzy", filters: []*cvmapi.Filter{filterOf("image-name", "web")}, want: []string{"img-manual01", "img-web00002", "img-web00001"}},
		{name: "image-name values are ORed", filters: []*cvmapi.Filter{filterOf("image-name", "db", "web-2")}, want: []string{"img-db000001", "img-web00002"}},
		{name: "image-type", filters: []*cvmapi.Filter{filterOf("image-type", ImageTypePublic)}, want: []string{"img-public01"}},
		{name: "tag-key", filters: []*cvmapi.Filter{filterOf("tag-key", "imager-policy")}, want: []string{"img-db000001", "img-web00002", "img-web00001"}},
		{name: "tag-value", filters: []*cvmapi.Filter{filterOf("tag-value", "weekly")}, want: []string{"img-db000001"}},
		{name: "tag:key", filters: []*cvmapi.Filter{filterOf("tag:env", "prod")}, want: []string{"img-db000001", "img-web00001"}},
		{name: "filters are ANDed", filters: []*cvmapi.Filter{filterOf("tag:env", "prod"), filterOf("tag:imager-policy", "nightly")}, want: []string{"img-web00001"}},
		{name: "no match", filters: []*cvmapi.Filter{filterOf("tag:env", "staging")}, want: nil},
	}
	s := startSim(t, Options{Limits: map[string]int{ActionDescribeImages: 0}})
	imageFixture(s)
	c := typedClient(t, s, testRegion)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := cvmapi.NewDescribeImagesRequest()
			req.ImageIds = common.StringPtrs(tt.ids)
			req.Filters = tt.filters
			resp, err := c.DescribeImagesWithContext(t.Context(), req)
			require.NoError(t, err)
			require.Equal(t, tt.want, describeIDs(resp))
			require.EqualValues(t, len(tt.want), *resp.Response.TotalCount)
		})
	}
}

func TestDescribeImagesFields(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	created := time.Date(2025, 3, 1, 2, 3, 4, 0, time.UTC)
	s.AddImage(Image{ID: "img-aaaaaaa1", Name: "n", Description: "d", Region: testRegion, CreatedTime: created,
		SizeGiB: 80, Tags: map[string]string{"b": "2", "a": "1"}})
	resp, err := typedClient(t, s, testRegion).DescribeImagesWithContext(t.Context(), cvmapi.NewDescribeImagesRequest())
	require.NoError(t, err)
	require.Len(t, resp.Response.ImageSet, 1)
	img := resp.Response.ImageSet[0]
	require.Equal(t, "img-aaaaaaa1", *img.ImageId)
	require.Equal(t, "n", *img.ImageName)
	require.Equal(t, "d", *img.ImageDescription)
	require.Equal(t, ImageStateNormal, *img.ImageState)
	require.Equal(t, ImageTypePrivate, *img.ImageType)
	require.Equal(t, "CREATE_IMAGE", *img.ImageSource)
	require.EqualValues(t, 80, *img.ImageSize)
	got, err := time.Parse(time.RFC3339, *img.CreatedTime)
	require.NoError(t, err)
	require.True(t, created.Equal(got))
	require.Len(t, img.Tags, 2)
	require.Equal(t, "a", *img.Tags[0].Key)
	require.Equal(t, "1", *img.Tags[0].Value)
	require.Equal(t, "b", *img.Tags[1].Key)
	require.Regexp(t, uuidPattern, *resp.Response.RequestId)
}

func TestDescribeImagesErrors(t *testing.T) {
	t.Parallel()
	many := func(n int) []*cvmapi.Filter {
		var fs []*cvmapi.Filter
		for range n {
			fs = append(fs, filterOf("tag-key", "k"))
		}
		return fs
	}
	tests := []struct {
		name  string
		build func(*cvmapi.DescribeImagesRequest)
		want  string
	}{
		{name: "ids and filters together", build: func(r *cvmapi.DescribeImagesRequest) {
			r.ImageIds = common.StringPtrs([]string{"img-web00001"})
			r.Filters = []*cvmapi.Filter{filterOf("image-type", ImageTypePrivate)}
		}, want: "InvalidParameter.InvalidParameterCoexistImageIdsFilters"},
		{name: "ten filters", build: func(r *cvmapi.DescribeImagesRequest) { r.Filters = many(10) }, want: ""},
		{name: "eleven filters", build: func(r *cvmapi.DescribeImagesRequest) { r.Filters = many(11) }, want: "InvalidParameterValue.LimitExceeded"},
		{name: "six values", build: func(r *cvmapi.DescribeImagesRequest) {
			r.Filters = []*cvmapi.Filter{filterOf("image-id", "img-1", "img-2", "img-3", "img-4", "img-5", "img-6")}
		}, want: "InvalidFilterValue.LimitExceeded"},
		{name: "unknown filter", build: func(r *cvmapi.DescribeImagesRequest) { r.Filters = []*cvmapi.Filter{filterOf("owner", "me")} }, want: "InvalidFilter"},
		{name: "filter without values", build: func(r *cvmapi.DescribeImagesRequest) { r.Filters = []*cvmapi.Filter{filterOf("image-type")} }, want: "InvalidFilter"},
		{name: "limit 100", build: func(r *cvmapi.DescribeImagesRequest) { r.Limit = ptr(uint64(100)) }, want: ""},
		{name: "limit 101", build: func(r *cvmapi.DescribeImagesRequest) { r.Limit = ptr(uint64(101)) }, want: "InvalidParameterValue.LimitExceeded"},
		{name: "malformed id", build: func(r *cvmapi.DescribeImagesRequest) { r.ImageIds = common.StringPtrs([]string{"ins-12345678"}) }, want: "InvalidImageId.Malformed"},
	}
	s := startSim(t, Options{Limits: map[string]int{ActionDescribeImages: 0}})
	c := typedClient(t, s, testRegion)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := cvmapi.NewDescribeImagesRequest()
			tt.build(req)
			_, err := c.DescribeImagesWithContext(t.Context(), req)
			require.Equal(t, tt.want, code(t, err))
		})
	}
}

func TestDescribeImagesPagination(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	for i := range 25 {
		s.AddImage(Image{ID: fmt.Sprintf("img-p%07d", i), Name: fmt.Sprintf("page-%02d", i), Region: testRegion, CreatedTime: t0.Add(time.Duration(i) * time.Minute)})
	}
	c := typedClient(t, s, testRegion)

	// Default limit is 20.
	resp, err := c.DescribeImagesWithContext(t.Context(), cvmapi.NewDescribeImagesRequest())
	require.NoError(t, err)
	require.Len(t, resp.Response.ImageSet, 20)
	require.EqualValues(t, 25, *resp.Response.TotalCount)

	var all []string
	for _, offset := range []uint64{0, 10, 20, 30} {
		req := cvmapi.NewDescribeImagesRequest()
		req.Filters = []*cvmapi.Filter{filterOf("image-name", "page-")}
		req.Offset, req.Limit = ptr(offset), ptr(uint64(10))
		resp, err := c.DescribeImagesWithContext(t.Context(), req)
		require.NoError(t, err)
		require.EqualValues(t, 25, *resp.Response.TotalCount, "offset %d", offset)
		all = append(all, describeIDs(resp)...)
	}
	require.Len(t, all, 25)
	require.Equal(t, "img-p0000024", all[0], "newest first")
	require.Equal(t, "img-p0000000", all[24])
	slices.Sort(all)
	require.Len(t, slices.Compact(all), 25, "pages do not overlap")
}

func TestDeleteImages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		ids       []string
		dryRun    bool
		want      string
		remaining []string
	}{
		{name: "one", ids: []string{"img-normal01"}, remaining: []string{"img-failed01", "img-creatin1", "img-public01", "img-shang001"}},
		{name: "several with snapshots", ids: []string{"img-normal01", "img-failed01"}, remaining: []string{"img-creatin1", "img-public01", "img-shang001"}},
		{name: "repeated id", ids: []string{"img-normal01", "img-normal01"}, remaining: []string{"img-failed01", "img-creatin1", "img-public01", "img-shang001"}},
		{name: "unknown", ids: []string{"img-normal01", "img-nothere1"}, want: "InvalidImageId.NotFound"},
		{name: "other region", ids: []string{"img-shang001"}, want: "InvalidImageId.NotFound"},
		{name: "public image", ids: []string{"img-public01"}, want: "InvalidImageId.NotFound"},
		{name: "creating is all or none", ids: []string{"img-normal01", "img-creatin1"}, want: "InvalidImageId.IncorrectState"},
		{name: "dry run", ids: []string{"img-normal01"}, dryRun: true, want: "DryRunOperation"},
		{name: "no ids", ids: nil, want: "MissingParameter"},
		{name: "malformed", ids: []string{"ins-normal01"}, want: "InvalidImageId.Malformed"},
	}
	everything := []string{"img-normal01", "img-failed01", "img-creatin1", "img-public01", "img-shang001"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startSim(t, Options{ImageReadyAfter: -1})
			s.AddImage(Image{ID: "img-normal01", Name: "a", Region: testRegion})
			s.AddImage(Image{ID: "img-failed01", Name: "b", Region: testRegion, State: ImageStateCreateFailed})
			s.AddImage(Image{ID: "img-creatin1", Name: "c", Region: testRegion, State: ImageStateCreating})
			s.AddImage(Image{ID: "img-public01", Name: "d", Region: testRegion, Type: ImageTypePublic})
			s.AddImage(Image{ID: "img-shang001", Name: "e", Region: "ap-shanghai"})

			req := cvmapi.NewDeleteImagesRequest()
			req.ImageIds = common.StringPtrs(tt.ids)
			req.DeleteBindedSnap = ptr(true)
			if tt.dryRun {
				req.DryRun = ptr(true)
			}
			_, err := typedClient(t, s, testRegion).DeleteImagesWithContext(t.Context(), req)
			require.Equal(t, tt.want, code(t, err))

			var left []string
			for _, img := range s.Images() {
				left = append(left, img.ID)
			}
			want := tt.remaining
			if tt.want != "" {
				want = everything
			}
			require.ElementsMatch(t, want, left)
		})
	}
}

func TestDeletedNameCanBeReused(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	seedInstances(s)
	resp, err := call(t, s, ActionCreateImage, createParams("ins-good0001", "reused"))
	require.NoError(t, err)
	_, err = call(t, s, ActionDeleteImages, map[string]any{"ImageIds": []any{resp["ImageId"]}})
	require.NoError(t, err)
	_, err = call(t, s, ActionCreateImage, createParams("ins-good0001", "reused"))
	require.NoError(t, err)
	require.Equal(t, []string{"reused"}, imageNames(s))
}

func TestDescribeImageQuota(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	c := typedClient(t, s, testRegion)
	resp, err := c.DescribeImageQuotaWithContext(t.Context(), cvmapi.NewDescribeImageQuotaRequest())
	require.NoError(t, err)
	require.EqualValues(t, DefaultImageQuota, *resp.Response.ImageNumQuota)
	s.SetImageQuota(3)
	resp, err = c.DescribeImageQuotaWithContext(t.Context(), cvmapi.NewDescribeImageQuotaRequest())
	require.NoError(t, err)
	require.EqualValues(t, 3, *resp.Response.ImageNumQuota)
}
