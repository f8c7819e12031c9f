package cvm

import (
	"context"
	"strconv"
	"time"

	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
	cvmapi "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/cvm/v20170312"
)

// MaxLimit is the largest page the Describe* calls accept.
const MaxLimit = 100

// Action names, as sent in X-TC-Action and reported in APIError.Action.
const (
	ActionCreateImage        = "CreateImage"
	ActionDescribeImages     = "DescribeImages"
	ActionDeleteImages       = "DeleteImages"
	ActionDescribeImageQuota = "DescribeImageQuota"
	ActionDescribeInstances  = "DescribeInstances"
	ActionSyncImages         = "SyncImages"
)

// createImageRequest carries every CreateImage parameter, Reboot included, which the SDK's typed
// request lacks. Absent parameters are nil: the SDK's JSON encoder omits nil, not empty, values.
type createImageRequest struct {
	*tchttp.BaseRequest

	InstanceId       *string            `json:"InstanceId,omitempty" name:"InstanceId"`
	ImageName        *string            `json:"ImageName,omitempty" name:"ImageName"`
	ImageDescription *string            `json:"ImageDescription,omitempty" name:"ImageDescription"`
	ForcePoweroff    *string            `json:"ForcePoweroff,omitempty" name:"ForcePoweroff"`
	Sysprep          *string            `json:"Sysprep,omitempty" name:"Sysprep"`
	Reboot           *string            `json:"Reboot,omitempty" name:"Reboot"`
	DataDiskIds      []string           `json:"DataDiskIds,omitempty" name:"DataDiskIds"`
	TagSpecification []tagSpecification `json:"TagSpecification,omitempty" name:"TagSpecification"`
	DryRun           *bool              `json:"DryRun,omitempty" name:"DryRun"`
}

// tagSpecification is one element of CreateImage's TagSpecification.
type tagSpecification struct {
	ResourceType string   `json:"ResourceType" name:"ResourceType"`
	Tags         []apiTag `json:"Tags" name:"Tags"`
}

// apiTag is a tag as the API encodes it, in requests and responses.
type apiTag struct {
	Key   *string `json:"Key" name:"Key"`
	Value *string `json:"Value" name:"Value"`
}

// createImageResponse accepts both shapes: the seed's (RequestId only) and today's (ImageId too,
// possibly null).
type createImageResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		ImageId   *string `json:"ImageId"`
		RequestId *string `json:"RequestId"`
	} `json:"Response"`
}

// CreateImage asks the API to make an image of in.InstanceID. Optional parameters are sent only when
// set; booleans travel as the strings "true"/"false". Reboot is a seed-era parameter that current SDKs
// lack and today's API may refuse (UnknownParameter): it is sent only when the policy sets it.
func (c *Client) CreateImage(ctx context.Context, region string, in CreateImageInput) (CreateImageOutput, error) {
	if in.InstanceID == "" || in.ImageName == "" {
		return CreateImageOutput{}, invalidInput(ActionCreateImage, "InstanceID and ImageName are required")
	}
	req := &createImageRequest{BaseRequest: newBaseRequest(ActionCreateImage)}
	req.InstanceId = &in.InstanceID
	req.ImageName = &in.ImageName
	if in.ImageDescription != "" {
		req.ImageDescription = &in.ImageDescription
	}
	req.ForcePoweroff = boolString(in.ForcePoweroff)
	req.Sysprep = boolString(in.Sysprep)
	req.Reboot = boolString(in.Reboot)
	if len(in.DataDiskIDs) > 0 {
		req.DataDiskIds = in.DataDiskIDs
	}
	if len(in.Tags) > 0 {
		spec := tagSpecification{ResourceType: "image", Tags: make([]apiTag, len(in.Tags))}
		for i := range in.Tags {
			spec.Tags[i] = apiTag{Key: &in.Tags[i].Key, Value: &in.Tags[i].Value}
		}
		req.TagSpecification = []tagSpecification{spec}
	}
	if in.DryRun {
		t := true
		req.DryRun = &t
	}

	resp := &createImageResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.send(ctx, region, ActionCreateImage, req, resp); err != nil {
		return CreateImageOutput{}, err
	}
	if resp.Response == nil {
		return CreateImageOutput{}, badResponse(ActionCreateImage, "response has no Response object", "")
	}
	return CreateImageOutput{ImageID: deref(resp.Response.ImageId), RequestID: deref(resp.Response.RequestId)}, nil
}

// describeImagesResponse holds the DescribeImages fields imager reads; the rest is ignored so that
// additions to the API never break parsing.
type describeImagesResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		ImageSet []struct {
			ImageId          *string  `json:"ImageId"`
			ImageName        *string  `json:"ImageName"`
			ImageDescription *string  `json:"ImageDescription"`
			ImageState       *string  `json:"ImageState"`
			ImageType        *string  `json:"ImageType"`
			CreatedTime      *string  `json:"CreatedTime"`
			ImageSize        *int64   `json:"ImageSize"`
			Tags             []apiTag `json:"Tags"`
		} `json:"ImageSet"`
		TotalCount *int64  `json:"TotalCount"`
		RequestId  *string `json:"RequestId"`
	} `json:"Response"`
}

// DescribeImages returns one page of images: by ImageIDs or by Filters (not both), at most MaxLimit.
// The image-name filter is fuzzy: callers compare names exactly.
func (c *Client) DescribeImages(ctx context.Context, region string, in DescribeImagesInput) (DescribeImagesOutput, error) {
	if err := checkPage(ActionDescribeImages, len(in.ImageIDs), len(in.Filters), in.Offset, in.Limit, "ImageIDs"); err != nil {
		return DescribeImagesOutput{}, err
	}
	req := cvmapi.NewDescribeImagesRequest()
	req.ImageIds = stringPtrs(in.ImageIDs)
	req.Filters = sdkFilters(in.Filters)
	if in.Offset > 0 {
		o := uint64(in.Offset)
		req.Offset = &o
	}
	if in.Limit > 0 {
		l := uint64(in.Limit)
		req.Limit = &l
	}

	resp := &describeImagesResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.send(ctx, region, ActionDescribeImages, req, resp); err != nil {
		return DescribeImagesOutput{}, err
	}
	if resp.Response == nil {
		return DescribeImagesOutput{}, badResponse(ActionDescribeImages, "response has no Response object", "")
	}
	out := DescribeImagesOutput{
		TotalCount: int(derefInt(resp.Response.TotalCount)),
		RequestID:  deref(resp.Response.RequestId),
		Images:     make([]Image, 0, len(resp.Response.ImageSet)),
	}
	for _, im := range resp.Response.ImageSet {
		img := Image{
			ID:          deref(im.ImageId),
			Name:        deref(im.ImageName),
			Description: deref(im.ImageDescription),
			State:       deref(im.ImageState),
			Type:        deref(im.ImageType),
			SizeGiB:     derefInt(im.ImageSize),
			Tags:        tagsFromAPI(im.Tags),
		}
		if s := deref(im.CreatedTime); s != "" {
			t, err := ParseAPITime(s)
			if err != nil {
				// One odd timestamp must not hide the page; the zero time says "unknown".
				c.log.Warn().Str("image_id", img.ID).Str("created_time", s).Msg("unparseable CreatedTime")
			}
			img.CreatedTime = t
		}
		out.Images = append(out.Images, img)
	}
	return out, nil
}

// legacyTimeZone is the zone of the API's older "2006-01-02 15:04:05" timestamps: China Standard
// Time, the zone of Tencent Cloud's consoles and documents.
var legacyTimeZone = time.FixedZone("CST", 8*60*60)

// ParseAPITime parses a timestamp as the API writes it: RFC 3339 (today), or the older
// "2006-01-02 15:04:05" taken as China Standard Time (UTC+8). The result is in UTC.
func ParseAPITime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err == nil {
		return t.UTC(), nil
	}
	if t2, err2 := time.ParseInLocation(time.DateTime, s, legacyTimeZone); err2 == nil {
		return t2.UTC(), nil
	}
	return time.Time{}, err
}

// deleteImagesResponse is DeleteImages' answer.
type deleteImagesResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		RequestId *string `json:"RequestId"`
	} `json:"Response"`
}

// DeleteImages deletes images. DeleteBindedSnap is sent (as true) only when deleteSnapshots is set,
// so the API's default (keep the snapshots) applies otherwise.
func (c *Client) DeleteImages(ctx context.Context, region string, imageIDs []string, deleteSnapshots bool) (requestID string, err error) {
	if len(imageIDs) == 0 {
		return "", invalidInput(ActionDeleteImages, "no image ids")
	}
	req := cvmapi.NewDeleteImagesRequest()
	req.ImageIds = stringPtrs(imageIDs)
	if deleteSnapshots {
		t := true
		req.DeleteBindedSnap = &t
	}
	resp := &deleteImagesResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.send(ctx, region, ActionDeleteImages, req, resp); err != nil {
		return "", err
	}
	if resp.Response == nil {
		return "", badResponse(ActionDeleteImages, "response has no Response object", "")
	}
	return deref(resp.Response.RequestId), nil
}

// describeImageQuotaResponse is DescribeImageQuota's answer.
type describeImageQuotaResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		ImageNumQuota *int64  `json:"ImageNumQuota"`
		RequestId     *string `json:"RequestId"`
	} `json:"Response"`
}

// DescribeImageQuota returns how many custom images the account may hold in region. The default has
// changed over the years (10, 50, 500): always ask.
func (c *Client) DescribeImageQuota(ctx context.Context, region string) (quota int, requestID string, err error) {
	req := cvmapi.NewDescribeImageQuotaRequest()
	resp := &describeImageQuotaResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.send(ctx, region, ActionDescribeImageQuota, req, resp); err != nil {
		return 0, "", err
	}
	if resp.Response == nil {
		return 0, "", badResponse(ActionDescribeImageQuota, "response has no Response object", "")
	}
	requestID = deref(resp.Response.RequestId)
	if resp.Response.ImageNumQuota == nil {
		return 0, requestID, badResponse(ActionDescribeImageQuota, "response has no ImageNumQuota", requestID)
	}
	return int(*resp.Response.ImageNumQuota), requestID, nil
}

// checkPage validates the paging and selection inputs shared by the Describe* calls.
func checkPage(action string, ids, filters, offset, limit int, idsName string) error {
	switch {
	case ids > 0 && filters > 0:
		return invalidInput(action, "%s and Filters cannot be used together", idsName)
	case offset < 0:
		return invalidInput(action, "Offset %d is negative", offset)
	case limit < 0 || limit > MaxLimit:
		return invalidInput(action, "Limit %d is outside 0..%d", limit, MaxLimit)
	}
	return nil
}

// newBaseRequest returns an initialised SDK request base for a CVM action.
func newBaseRequest(action string) *tchttp.BaseRequest {
	return NewRequest(ServiceCVM, action)
}

// boolString encodes an optional boolean the way CreateImage wants it: "true"/"false", or absent.
func boolString(b *bool) *string {
	if b == nil {
		return nil
	}
	s := strconv.FormatBool(*b)
	return &s
}

// stringPtrs converts to the SDK's []*string, keeping nil for an empty input so it is omitted.
func stringPtrs(ss []string) []*string {
	if len(ss) == 0 {
		return nil
	}
	out := make([]*string, len(ss))
	for i := range ss {
		out[i] = &ss[i]
	}
	return out
}

// sdkFilters converts filters to the SDK's type, nil when there are none.
func sdkFilters(fs []Filter) []*cvmapi.Filter {
	if len(fs) == 0 {
		return nil
	}
	out := make([]*cvmapi.Filter, len(fs))
	for i := range fs {
		out[i] = &cvmapi.Filter{Name: &fs[i].Name, Values: stringPtrs(fs[i].Values)}
		if out[i].Values == nil {
			out[i].Values = []*string{} // the API wants the key even when empty
		}
	}
	return out
}

// tagsFromAPI converts tags from a response, nil when there are none.
func tagsFromAPI(ts []apiTag) []Tag {
	if len(ts) == 0 {
		return nil
	}
	out := make([]Tag, 0, len(ts))
	for _, t := range ts {
		out = append(out, Tag{Key: deref(t.Key), Value: deref(t.Value)})
	}
	return out
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func derefInt(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// RequestID methods let Call log the RequestId of successful calls.

func (r *createImageResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}

func (r *describeImagesResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}

func (r *deleteImagesResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}

func (r *describeImageQuotaResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}
