package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"strconv"
	"time"
)

// Tag keys imager puts on every image it makes. The `imager-` prefix is reserved: policies may not
// set tags that start with it, so these tags always mean "made by imager".
const (
	TagPolicy         = "imager-policy"
	TagInstance       = "imager-instance"
	TagSlot           = "imager-slot"
	ReservedTagPrefix = "imager-"
)

const suffixAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// ImageName is the image name for (policy, instance, slot): the policy's name template rendered
// with the slot's nominal time in the policy's zone, every character outside [A-Za-z0-9-_.]
// replaced by '-', then "-" and an 8-character suffix derived from the policy, instance, slot and
// attempt. attempt 0 is the first name and is the same every time for the same slot, so a daemon
// that crashed after CreateImage recognises its own image; attempts 1, 2, ... give fresh names after
// InvalidImageName.Duplicate. The result never exceeds 60 characters: the template part is cut,
// never the suffix.
func ImageName(p *Policy, instanceID string, slot time.Time, attempt int) string {
	t := p.nameTmpl
	if t == nil {
		var err error
		if t, err = parseTemplate(p.Image.NameTemplate); err != nil || p.Image.NameTemplate == "" {
			t, _ = parseTemplate(DefaultNameTemplate)
		}
	}
	rendered := t.render(newTemplateVars(p, instanceID, slot))

	buf := make([]byte, 0, MaxImageNameLen)
	for _, c := range rendered {
		if len(buf) == MaxNameTemplateLen {
			break
		}
		if !nameChar(c) {
			c = '-'
		}
		buf = append(buf, byte(c))
	}
	if len(buf) > 0 {
		buf = append(buf, '-')
	}
	return string(appendSuffix(buf, p.Name, instanceID, slot, attempt))
}

// appendSuffix appends the 8-character [a-z0-9] suffix of sha256(policy|instance|slot unix|attempt).
func appendSuffix(dst []byte, policy, instanceID string, slot time.Time, attempt int) []byte {
	in := make([]byte, 0, 80)
	in = append(in, policy...)
	in = append(in, '|')
	in = append(in, instanceID...)
	in = append(in, '|')
	in = strconv.AppendInt(in, slot.Unix(), 10)
	in = append(in, '|')
	in = strconv.AppendInt(in, int64(attempt), 10)
	sum := sha256.Sum256(in)
	v := binary.BigEndian.Uint64(sum[:8])
	for range NameSuffixLen {
		dst = append(dst, suffixAlphabet[v%36])
		v /= 36
	}
	return dst
}

// ImageDescription is the rendered `image.description` for (policy, instance, slot), cut to the
// API's 256 characters; empty when the policy has no description template (then none is sent).
func ImageDescription(p *Policy, instanceID string, slot time.Time) string {
	if p.Image.DescriptionTemplate == "" {
		return ""
	}
	t := p.descTmpl
	if t == nil {
		var err error
		if t, err = parseTemplate(p.Image.DescriptionTemplate); err != nil {
			t = template{{lit: p.Image.DescriptionTemplate}}
		}
	}
	return truncateRunes(t.render(newTemplateVars(p, instanceID, slot)), MaxImageDescriptionLen)
}

// ImageTags is every tag the image of (policy, instance, slot) carries: imager's own
// (imager-policy, imager-instance, imager-slot as RFC 3339 UTC), by which it recognises its images,
// plus the policy's `image.tags` with placeholders rendered. imager's own tags always win.
func ImageTags(p *Policy, instanceID string, slot time.Time) map[string]string {
	tags := make(map[string]string, len(p.Image.Tags)+3)
	if len(p.Image.Tags) > 0 {
		v := newTemplateVars(p, instanceID, slot)
		for k, raw := range p.Image.Tags {
			t, ok := p.tagTmpls[k]
			if !ok {
				var err error
				if t, err = parseTemplate(raw); err != nil {
					t = template{{lit: raw}}
				}
			}
			tags[k] = truncateRunes(t.render(v), MaxTagValueLen)
		}
	}
	tags[TagPolicy] = p.Name
	tags[TagInstance] = instanceID
	tags[TagSlot] = SlotTag(slot)
	return tags
}

// SlotTag is the value of the imager-slot tag for a slot: RFC 3339 in UTC, to the second.
func SlotTag(slot time.Time) string {
	return slot.UTC().Format(time.RFC3339)
}

func truncateRunes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	count := 0
	for i := range s {
		if count == n {
			return s[:i]
		}
		count++
	}
	return s
}
