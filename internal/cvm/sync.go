package cvm

import (
	"context"

	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
)

// syncImagesRequest carries the SyncImages parameters imager sends. Absent parameters are nil so the
// SDK's JSON encoder leaves them out.
type syncImagesRequest struct {
	*tchttp.BaseRequest

	ImageIds           []string `json:"ImageIds,omitempty" name:"ImageIds"`
	DestinationRegions []string `json:"DestinationRegions,omitempty" name:"DestinationRegions"`
	ImageName          *string  `json:"ImageName,omitempty" name:"ImageName"`
	ImageSetRequired   *bool    `json:"ImageSetRequired,omitempty" name:"ImageSetRequired"`
	DryRun             *bool    `json:"DryRun,omitempty" name:"DryRun"`
}

// syncImagesResponse holds the SyncImages fields imager reads; the rest is ignored so that additions
// to the API never break parsing. ImageSet is absent when ImageSetRequired was not sent.
type syncImagesResponse struct {
	*tchttp.BaseResponse
	Response *struct {
		ImageSet []struct {
			ImageId *string `json:"ImageId"`
			Region  *string `json:"Region"`
		} `json:"ImageSet"`
		RequestId *string `json:"RequestId"`
	} `json:"Response"`
}

// SyncImages asks the API to copy in.ImageID, a NORMAL image in region, to every region of
// in.DestinationRegions; each copy is SYNCING in its destination until it becomes NORMAL there.
// ImageSetRequired is always sent, so the answer names each copy's id; an answer without them (or an
// entry without an id or a region, which is skipped) leaves the caller to find the copy by exact name
// in its destination. Input the API would refuse for certain (no image, no destination, the source
// region or a duplicate among the destinations) is refused here, before anything is sent.
func (c *Client) SyncImages(ctx context.Context, region string, in SyncImagesInput) (SyncImagesOutput, error) {
	if in.ImageID == "" {
		return SyncImagesOutput{}, invalidInput(ActionSyncImages, "ImageID is required")
	}
	if len(in.DestinationRegions) == 0 {
		return SyncImagesOutput{}, invalidInput(ActionSyncImages, "at least one destination region is required")
	}
	seen := make(map[string]bool, len(in.DestinationRegions))
	for _, dst := range in.DestinationRegions {
		switch {
		case dst == "":
			return SyncImagesOutput{}, invalidInput(ActionSyncImages, "a destination region is empty")
		case dst == region:
			return SyncImagesOutput{}, invalidInput(ActionSyncImages, "destination region %s is the source region", dst)
		case seen[dst]:
			return SyncImagesOutput{}, invalidInput(ActionSyncImages, "destination region %s is given twice", dst)
		}
		seen[dst] = true
	}

	t := true
	req := &syncImagesRequest{
		BaseRequest:        newBaseRequest(ActionSyncImages),
		ImageIds:           []string{in.ImageID},
		DestinationRegions: in.DestinationRegions,
		ImageSetRequired:   &t,
	}
	if in.ImageName != "" {
		req.ImageName = &in.ImageName
	}
	if in.DryRun {
		req.DryRun = &t
	}

	resp := &syncImagesResponse{BaseResponse: &tchttp.BaseResponse{}}
	if err := c.send(ctx, region, ActionSyncImages, req, resp); err != nil {
		return SyncImagesOutput{}, err
	}
	if resp.Response == nil {
		return SyncImagesOutput{}, badResponse(ActionSyncImages, "response has no Response object", "")
	}
	out := SyncImagesOutput{RequestID: deref(resp.Response.RequestId)}
	for _, im := range resp.Response.ImageSet {
		cp := ImageCopy{ImageID: deref(im.ImageId), Region: deref(im.Region)}
		if cp.ImageID == "" || cp.Region == "" {
			continue
		}
		out.Copies = append(out.Copies, cp)
	}
	return out, nil
}

func (r *syncImagesResponse) RequestID() string {
	if r.Response == nil {
		return ""
	}
	return deref(r.Response.RequestId)
}
