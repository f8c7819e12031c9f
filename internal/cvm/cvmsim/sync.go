package cvmsim

import (
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// syncImages copies one NORMAL image of account in region to other regions (see the package
// comment for the order of its checks and the choices it makes).
func (s *Server) syncImages(account, region string, p params, now time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown("ImageIds", "DestinationRegions", "DryRun", "ImageName", "ImageSetRequired",
		"Encrypt", "KmsKeyId"); aerr != nil {
		return nil, aerr
	}
	ids, _, aerr := p.strList("ImageIds")
	if aerr != nil {
		return nil, aerr
	}
	dests, _, aerr := p.strList("DestinationRegions")
	if aerr != nil {
		return nil, aerr
	}
	name, _, aerr := p.str("ImageName")
	if aerr != nil {
		return nil, aerr
	}
	dryRun, aerr := p.boolean("DryRun")
	if aerr != nil {
		return nil, aerr
	}
	wantSet, aerr := p.boolean("ImageSetRequired")
	if aerr != nil {
		return nil, aerr
	}
	encrypt, aerr := p.boolean("Encrypt")
	if aerr != nil {
		return nil, aerr
	}
	kms, _, aerr := p.str("KmsKeyId")
	if aerr != nil {
		return nil, aerr
	}

	switch {
	case len(ids) == 0:
		return nil, errf("MissingParameter", "The request is missing a required parameter `ImageIds`.")
	case len(dests) == 0:
		return nil, errf("MissingParameter", "The request is missing a required parameter `DestinationRegions`.")
	case len(ids) > 1:
		return nil, errf("InvalidParameterValue.LimitExceeded", "Only one image may be synchronised per request.")
	case !strings.HasPrefix(ids[0], "img-"):
		return nil, errf("InvalidImageId.Malformed", "The image id `%s` is malformed.", ids[0])
	case utf8.RuneCountInString(name) > MaxImageNameLen:
		return nil, errf("InvalidParameter.ValueTooLarge", "The length of `ImageName` exceeds %d characters.", MaxImageNameLen)
	case encrypt:
		return nil, errf("UnsupportedOperation.SyncEncryptImageNotSupport", "Encrypted synchronisation is not supported.")
	case kms != "":
		return nil, errf("InvalidParameter.InvalidKmsKeyId", "`KmsKeyId` is only allowed with `Encrypt`.")
	}
	for i, dst := range dests {
		switch {
		case slices.Contains(dests[:i], dst):
			return nil, errf("InvalidParameterValue", "The destination region `%s` is given twice.", dst)
		case dst == region:
			return nil, errf("InvalidParameterValue.InvalidRegion",
				"The destination region `%s` is the source region; a custom image cannot be synchronised to its own region.", dst)
		case !s.regions[dst]:
			return nil, errf("InvalidRegion.NotFound", "The region `%s` is not found.", dst)
		case s.refuseSync[dst] != "":
			return nil, errf(s.refuseSync[dst], "The region `%s` does not support synchronising images.", dst)
		}
	}

	src, ok := s.images[ids[0]]
	if !ok || src.Account != account || src.Region != region || src.Type != ImageTypePrivate {
		return nil, errf("InvalidImageId.NotFound", "The image `%s` is not found.", ids[0])
	}
	if src.State != ImageStateNormal {
		return nil, errf("InvalidImageId.IncorrectState", "The image `%s` is %s; only a NORMAL image can be synchronised.", src.ID, src.State)
	}
	if name == "" {
		name = src.Name
	}
	for _, dst := range dests {
		if s.down[dst] {
			return nil, errf("InternalError", "An internal error has occurred in region `%s`. Retry your request, but if the problem persists, contact us.", dst)
		}
	}
	for _, dst := range dests {
		if s.byName[nameKey{account, dst, name}] > 0 {
			return nil, errf("InvalidImageName.Duplicate", "The image name `%s` already exists in region `%s`.", name, dst)
		}
		if s.customImageCount(account, dst) >= s.quota {
			return nil, errf("ImageQuotaLimitExceeded", "The custom image quota of %d images in %s is used up.", s.quota, dst)
		}
	}
	if dryRun {
		return nil, errf("DryRunOperation", "The request would have succeeded, but DryRun is set.")
	}

	set := make([]map[string]any, 0, len(dests))
	for _, dst := range dests {
		cp := &simImage{Image: Image{
			ID:            s.freshImageID(),
			Account:       account,
			Name:          name,
			Description:   src.Description,
			Region:        dst,
			SourceImageID: src.ID,
			SourceRegion:  region,
			State:         ImageStateSyncing,
			Type:          ImageTypePrivate,
			CreatedTime:   now,
			SizeGiB:       src.SizeGiB,
			Tags:          maps.Clone(src.Tags),
		}}
		s.issued[cp.ID] = struct{}{}
		s.storeImage(cp)
		set = append(set, map[string]any{"ImageId": cp.ID, "Region": dst})
	}
	if !wantSet {
		return map[string]any{}, nil
	}
	return map[string]any{"ImageSet": set}, nil
}
