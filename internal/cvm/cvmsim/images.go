package cvmsim

import (
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Image states and types, as the API spells them.
const (
	ImageStateCreating     = "CREATING"
	ImageStateNormal       = "NORMAL"
	ImageStateCreateFailed = "CREATEFAILED"
	ImageStateSyncing      = "SYNCING"
	ImageStateImporting    = "IMPORTING"

	ImageTypePrivate = "PRIVATE_IMAGE"
	ImageTypePublic  = "PUBLIC_IMAGE"
	ImageTypeShared  = "SHARED_IMAGE"
)

// Length limits of CreateImage.
const (
	MaxImageNameLen        = 60
	MaxImageDescriptionLen = 256
)

// Image is one image the simulator holds. InstanceID and DataDiskIDs are what it was made from,
// SourceImageID and SourceRegion what a copy was made from; the API itself never reports them.
type Image struct {
	ID            string
	Account       string // SecretID of the owning account; the first account when added without one
	Name          string
	Description   string
	Region        string
	InstanceID    string
	SourceImageID string // the image SyncImages copied; "" for an image that is no copy
	SourceRegion  string // the region of SourceImageID
	State         string
	Type          string
	CreatedTime   time.Time
	SizeGiB       int64
	Tags          map[string]string
	DataDiskIDs   []string
}

func (img Image) clone() Image {
	img.Tags = maps.Clone(img.Tags)
	img.DataDiskIDs = slices.Clone(img.DataDiskIDs)
	return img
}

// simImage is an Image with the simulator's bookkeeping.
type simImage struct {
	Image
	seq        int64     // creation order, breaks CreatedTime ties
	readyAt    time.Time // when a CREATING or SYNCING image finishes
	hold       bool      // CREATING or SYNCING until CompleteAll
	failOnDone bool      // finishes CREATEFAILED instead of NORMAL
}

type nameKey struct{ account, region, name string }

// AddImage adds (or replaces, by ID) an image, e.g. one made by someone else without imager's
// tags. Empty fields get defaults: the first account, a fresh ID, DefaultRegion, state NORMAL,
// PRIVATE_IMAGE, CreatedTime now, DefaultImageSizeGiB. A CREATING image finishes like a created
// one; a SYNCING image finishes like a copy when it names its SourceImageID, and otherwise stays
// SYNCING (a copy whose end the test does not simulate). The image's region becomes a region of
// every account. It panics for an Account the simulator does not hold.
func (s *Server) AddImage(img Image) {
	s.mu.Lock()
	defer s.mu.Unlock()
	img = img.clone()
	img.Account = s.ownerOf(img.Account, "AddImage")
	if img.ID == "" {
		img.ID = s.freshImageID()
	}
	if img.Region == "" {
		img.Region = DefaultRegion
	}
	s.regions[img.Region] = true
	if img.State == "" {
		img.State = ImageStateNormal
	}
	if img.Type == "" {
		img.Type = ImageTypePrivate
	}
	if img.CreatedTime.IsZero() {
		img.CreatedTime = s.clock.Now()
	}
	if img.SizeGiB == 0 {
		img.SizeGiB = DefaultImageSizeGiB
	}
	if old, ok := s.images[img.ID]; ok {
		s.removeImage(old)
	}
	s.issued[img.ID] = struct{}{}
	s.storeImage(&simImage{Image: img})
}

// FailImage sets the image's state to CREATEFAILED now, whatever it was. Unknown ids are ignored.
func (s *Server) FailImage(imageID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if img, ok := s.images[imageID]; ok {
		img.State = ImageStateCreateFailed
		delete(s.pending, imageID)
	}
}

// FailNextImages makes the next n images created by CreateImage finish CREATEFAILED instead of
// NORMAL (when they would have finished, or at CompleteAll).
func (s *Server) FailNextImages(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = n
}

// CompleteAll finishes every CREATING or SYNCING image now: NORMAL, or CREATEFAILED for those
// marked by FailNextImages.
func (s *Server) CompleteAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, img := range s.pending {
		s.finish(img)
	}
}

// Images returns a snapshot of every image of every account that exists (deleted images are
// gone), oldest first, with states advanced to Clock.Now.
func (s *Server) Images() []Image {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceImages(s.clock.Now())
	all := s.sortedImages(func(*simImage) bool { return true })
	slices.Reverse(all)
	out := make([]Image, 0, len(all))
	for _, img := range all {
		out = append(out, img.clone())
	}
	return out
}

// advanceImages finishes every CREATING or SYNCING image whose time has come.
func (s *Server) advanceImages(now time.Time) {
	for _, img := range s.pending {
		if !img.hold && !now.Before(img.readyAt) {
			s.finish(img)
		}
	}
}

func (s *Server) finish(img *simImage) {
	img.State = ImageStateNormal
	if img.failOnDone {
		img.State = ImageStateCreateFailed
	}
	delete(s.pending, img.ID)
}

// storeImage stores img. A CREATING image finishes after ImageReadyAfter; a copy made by
// SyncImages (SYNCING, with a SourceImageID) after CopyReadyAfter.
func (s *Server) storeImage(img *simImage) {
	s.seq++
	img.seq = s.seq
	after, pending := s.readyAfter, img.State == ImageStateCreating
	if img.State == ImageStateSyncing && img.SourceImageID != "" {
		after, pending = s.copyAfter, true
	}
	if pending {
		img.readyAt = img.CreatedTime.Add(after)
		img.hold = after < 0
		s.pending[img.ID] = img
	}
	s.images[img.ID] = img
	s.byName[nameKey{img.Account, img.Region, img.Name}]++
}

func (s *Server) removeImage(img *simImage) {
	delete(s.images, img.ID)
	delete(s.pending, img.ID)
	k := nameKey{img.Account, img.Region, img.Name}
	if s.byName[k] <= 1 {
		delete(s.byName, k)
	} else {
		s.byName[k]--
	}
}

func (s *Server) freshImageID() string {
	for {
		id := newResourceID("img-")
		if _, used := s.issued[id]; !used {
			return id
		}
	}
}

// sortedImages returns the images that pass keep, newest first (the order DescribeImages uses).
func (s *Server) sortedImages(keep func(*simImage) bool) []*simImage {
	var out []*simImage
	for _, img := range s.images {
		if keep(img) {
			out = append(out, img)
		}
	}
	slices.SortFunc(out, func(a, b *simImage) int {
		if c := b.CreatedTime.Compare(a.CreatedTime); c != 0 {
			return c
		}
		return int(b.seq - a.seq)
	})
	return out
}

func (s *Server) customImageCount(account, region string) int {
	n := 0
	for _, img := range s.images {
		if img.Account == account && img.Region == region && img.Type == ImageTypePrivate {
			n++
		}
	}
	return n
}

// unsupportedStates maps instance states in which CreateImage is refused to the API's codes.
var unsupportedStates = map[string]string{
	"STARTING":    "UnsupportedOperation.InstanceStateStarting",
	"STOPPING":    "UnsupportedOperation.InstanceStateStopping",
	"REBOOTING":   "UnsupportedOperation.InstanceStateRebooting",
	"TERMINATING": "UnsupportedOperation.InstanceStateTerminating",
}

func (s *Server) createImage(account, region string, p params, now time.Time) (map[string]any, *apiError) {
	known := []string{"InstanceId", "ImageName", "ImageDescription", "ForcePoweroff", "Sysprep",
		"DataDiskIds", "SnapshotIds", "DryRun", "TagSpecification", "ImageFamily"}
	if !s.rejectReboot {
		known = append(known, "Reboot")
	}
	if aerr := p.checkKnown(known...); aerr != nil {
		return nil, aerr
	}
	instanceID, _, aerr := p.str("InstanceId")
	if aerr != nil {
		return nil, aerr
	}
	name, _, aerr := p.str("ImageName")
	if aerr != nil {
		return nil, aerr
	}
	desc, _, aerr := p.str("ImageDescription")
	if aerr != nil {
		return nil, aerr
	}
	if _, _, aerr := p.str("ImageFamily"); aerr != nil {
		return nil, aerr
	}
	for _, key := range []string{"ForcePoweroff", "Sysprep", "Reboot"} {
		if v, ok := p[key]; ok && v != "true" && v != "false" {
			return nil, errf("InvalidParameterValue", "The value of parameter `%s` must be \"true\" or \"false\".", key)
		}
	}
	disks, _, aerr := p.strList("DataDiskIds")
	if aerr != nil {
		return nil, aerr
	}
	snapshots, _, aerr := p.strList("SnapshotIds")
	if aerr != nil {
		return nil, aerr
	}
	dryRun, aerr := p.boolean("DryRun")
	if aerr != nil {
		return nil, aerr
	}
	tags, aerr := tagSpecification(p, "image", "InvalidParameterValue")
	if aerr != nil {
		return nil, aerr
	}

	if name == "" {
		return nil, errf("MissingParameter", "The request is missing a required parameter `ImageName`.")
	}
	if len(snapshots) > 0 {
		return nil, errf("InvalidParameter.SnapshotNotFound", "The snapshot `%s` does not exist.", snapshots[0])
	}
	if instanceID == "" {
		return nil, errf("MissingParameter", "The request is missing a required parameter `InstanceId`.")
	}
	if utf8.RuneCountInString(name) > MaxImageNameLen {
		return nil, errf("InvalidParameter.ValueTooLarge", "The length of `ImageName` exceeds %d characters.", MaxImageNameLen)
	}
	if utf8.RuneCountInString(desc) > MaxImageDescriptionLen {
		return nil, errf("InvalidParameter.ValueTooLarge", "The length of `ImageDescription` exceeds %d characters.", MaxImageDescriptionLen)
	}
	inst, ok := s.instances[instanceID]
	if !ok || inst.Account != account || inst.Region != region {
		return nil, errf("InvalidInstanceId.NotFound", "The instance `%s` is not found.", instanceID)
	}
	if inst.Unsupported {
		return nil, errf("InvalidInstance.NotSupported", "The instance `%s` does not support creating images.", instanceID)
	}
	if code, busy := unsupportedStates[inst.State]; busy {
		return nil, errf(code, "The instance `%s` is in state %s.", instanceID, inst.State)
	}
	for _, d := range disks {
		if d == inst.SystemDiskID {
			return nil, errf("InvalidParameter.DataDiskIdContainsRootDisk", "`DataDiskIds` contains the system disk `%s`.", d)
		}
		if !slices.Contains(inst.DataDiskIDs, d) {
			return nil, errf("InvalidParameter.DataDiskNotBelongSpecifiedInstance",
				"The data disk `%s` does not belong to instance `%s`.", d, instanceID)
		}
	}
	if s.byName[nameKey{account, region, name}] > 0 {
		return nil, errf("InvalidImageName.Duplicate", "The image name `%s` already exists.", name)
	}
	for _, img := range s.pending {
		if img.State == ImageStateCreating && img.Account == account && img.Region == region && img.InstanceID == instanceID {
			return nil, errf("MutexOperation.TaskRunning", "An image of instance `%s` is being created (%s).", instanceID, img.ID)
		}
	}
	if s.customImageCount(account, region) >= s.quota {
		return nil, errf("ImageQuotaLimitExceeded", "The custom image quota of %d images in %s is used up.", s.quota, region)
	}
	if dryRun {
		return nil, errf("DryRunOperation", "The request would have succeeded, but DryRun is set.")
	}

	img := &simImage{Image: Image{
		ID:          s.freshImageID(),
		Account:     account,
		Name:        name,
		Description: desc,
		Region:      region,
		InstanceID:  instanceID,
		State:       ImageStateCreating,
		Type:        ImageTypePrivate,
		CreatedTime: now,
		SizeGiB:     DefaultImageSizeGiB,
		Tags:        tags,
		DataDiskIDs: disks,
	}}
	if s.failNext > 0 {
		s.failNext--
		img.failOnDone = true
	}
	s.issued[img.ID] = struct{}{}
	s.storeImage(img)
	if s.seedShape {
		return map[string]any{}, nil
	}
	return map[string]any{"ImageId": img.ID}, nil
}

// tagSpecification reads TagSpecification [{ResourceType: resourceType, Tags: [{Key, Value}]}]; a
// key given twice answers dupCode.
func tagSpecification(p params, resourceType, dupCode string) (map[string]string, *apiError) {
	v, ok := p["TagSpecification"]
	if !ok || v == nil {
		return nil, nil
	}
	specs, ok := v.([]any)
	if !ok {
		return nil, typeError("TagSpecification", "Array of TagSpecification")
	}
	tags := map[string]string{}
	for _, e := range specs {
		spec, ok := e.(map[string]any)
		if !ok {
			return nil, typeError("TagSpecification", "Array of TagSpecification")
		}
		if rt, _ := spec["ResourceType"].(string); rt != resourceType {
			return nil, errf("InvalidParameterValue", "TagSpecification.ResourceType must be `%s`, not `%v`.", resourceType, spec["ResourceType"])
		}
		list, ok := spec["Tags"].([]any)
		if !ok {
			return nil, typeError("TagSpecification.Tags", "Array of Tag")
		}
		for _, t := range list {
			tag, ok := t.(map[string]any)
			if !ok {
				return nil, typeError("TagSpecification.Tags", "Array of Tag")
			}
			key, kok := tag["Key"].(string)
			value, vok := tag["Value"].(string)
			if !kok || !vok || key == "" {
				return nil, errf("InvalidParameterValue", "Every tag needs a non-empty string Key and a string Value.")
			}
			if _, dup := tags[key]; dup {
				return nil, errf(dupCode, "The tag key `%s` is given twice.", key)
			}
			tags[key] = value
		}
	}
	if len(tags) > 50 {
		return nil, errf("InvalidParameterValue.TagQuotaLimitExceeded", "At most 50 tags are allowed per resource.")
	}
	return tags, nil
}

func knownImageFilter(name string) bool {
	switch name {
	case "image-id", "image-type", "image-name", "platform":
		return true
	}
	return isTagFilter(name)
}

func imageMatches(img *simImage, filters []filter) bool {
	for _, f := range filters {
		if m, handled := matchTags(f, img.Tags); handled {
			if !m {
				return false
			}
			continue
		}
		var ok bool
		switch f.name {
		case "image-id":
			ok = slices.Contains(f.values, img.ID)
		case "image-type":
			ok = slices.Contains(f.values, img.Type)
		case "image-name":
			ok = containsAny(img.Name, f.values)
		case "platform":
			ok = slices.Contains(f.values, imagePlatform)
		}
		if !ok {
			return false
		}
	}
	return true
}

const imagePlatform = "TencentOS"

func (s *Server) describeImages(account, region string, p params, now time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown("ImageIds", "Filters", "Offset", "Limit", "InstanceType"); aerr != nil {
		return nil, aerr
	}
	ids, _, aerr := p.strList("ImageIds")
	if aerr != nil {
		return nil, aerr
	}
	filters, _, aerr := p.filters(knownImageFilter)
	if aerr != nil {
		return nil, aerr
	}
	if _, _, aerr := p.str("InstanceType"); aerr != nil {
		return nil, aerr
	}
	if len(ids) > 0 && len(filters) > 0 {
		return nil, errf("InvalidParameter.InvalidParameterCoexistImageIdsFilters", "`ImageIds` and `Filters` cannot be given together.")
	}
	if len(ids) > 100 {
		return nil, errf("InvalidParameterValue.LimitExceeded", "At most 100 `ImageIds` are allowed per request.")
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, "img-") {
			return nil, errf("InvalidImageId.Malformed", "The image id `%s` is malformed.", id)
		}
	}
	offset, limit, aerr := p.page()
	if aerr != nil {
		return nil, aerr
	}
	matched := s.sortedImages(func(img *simImage) bool {
		if img.Account != account || img.Region != region {
			return false
		}
		if len(ids) > 0 {
			return slices.Contains(ids, img.ID)
		}
		return imageMatches(img, filters)
	})
	lo, hi := pageOf(len(matched), offset, limit)
	set := make([]map[string]any, 0, hi-lo)
	for _, img := range matched[lo:hi] {
		set = append(set, imageJSON(img, now))
	}
	return map[string]any{"ImageSet": set, "TotalCount": len(matched)}, nil
}

// syncPercent is a SYNCING image's progress: the elapsed share of its copy time, below 100.
func syncPercent(img *simImage, now time.Time) int {
	if img.State != ImageStateSyncing {
		return 100
	}
	total := img.readyAt.Sub(img.CreatedTime)
	if img.hold || total <= 0 {
		return 0
	}
	return min(99, max(0, int(100*now.Sub(img.CreatedTime)/total)))
}

func imageJSON(img *simImage, now time.Time) map[string]any {
	source := "CREATE_IMAGE"
	if img.Type == ImageTypePublic {
		source = "OFFICIAL"
	}
	return map[string]any{
		"ImageId":            img.ID,
		"ImageName":          img.Name,
		"ImageDescription":   img.Description,
		"ImageState":         img.State,
		"ImageType":          img.Type,
		"CreatedTime":        img.CreatedTime.UTC().Format(time.RFC3339),
		"ImageSize":          img.SizeGiB,
		"ImageSource":        source,
		"ImageCreator":       "100000000001",
		"OsName":             "TencentOS Server 3.1 (TK4)",
		"Platform":           imagePlatform,
		"Architecture":       "x86_64",
		"SyncPercent":        syncPercent(img, now),
		"IsSupportCloudinit": true,
		"LicenseType":        "TencentCloud",
		"ImageDeprecated":    false,
		"SnapshotSet":        []any{},
		"Tags":               sortedTags(img.Tags),
	}
}

func (s *Server) deleteImages(account, region string, p params, _ time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown("ImageIds", "DeleteBindedSnap", "DryRun"); aerr != nil {
		return nil, aerr
	}
	ids, _, aerr := p.strList("ImageIds")
	if aerr != nil {
		return nil, aerr
	}
	if _, aerr := p.boolean("DeleteBindedSnap"); aerr != nil {
		return nil, aerr
	}
	dryRun, aerr := p.boolean("DryRun")
	if aerr != nil {
		return nil, aerr
	}
	if len(ids) == 0 {
		return nil, errf("MissingParameter", "The request is missing a required parameter `ImageIds`.")
	}
	if len(ids) > 100 {
		return nil, errf("InvalidParameterValue.LimitExceeded", "At most 100 `ImageIds` are allowed per request.")
	}
	victims := make([]*simImage, 0, len(ids))
	for _, id := range ids {
		if !strings.HasPrefix(id, "img-") {
			return nil, errf("InvalidImageId.Malformed", "The image id `%s` is malformed.", id)
		}
		img, ok := s.images[id]
		if !ok || img.Account != account || img.Region != region || img.Type != ImageTypePrivate {
			return nil, errf("InvalidImageId.NotFound", "The image `%s` is not found.", id)
		}
		switch img.State {
		case ImageStateCreating, ImageStateSyncing, ImageStateImporting:
			return nil, errf("InvalidImageId.IncorrectState", "The image `%s` is %s and cannot be deleted.", id, img.State)
		}
		if !slices.Contains(victims, img) {
			victims = append(victims, img)
		}
	}
	if dryRun {
		return nil, errf("DryRunOperation", "The request would have succeeded, but DryRun is set.")
	}
	for _, img := range victims {
		s.removeImage(img)
	}
	return map[string]any{}, nil
}

func (s *Server) describeImageQuota(_, _ string, p params, _ time.Time) (map[string]any, *apiError) {
	if aerr := p.checkKnown(); aerr != nil {
		return nil, aerr
	}
	return map[string]any{"ImageNumQuota": s.quota}, nil
}
