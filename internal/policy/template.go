package policy

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// DefaultNameTemplate is the image name template of a policy without `image.name`.
const DefaultNameTemplate = "{policy}-{instance}-{time}"

// Limits of the CreateImage API and of imager's naming scheme (docs/policies.md "Image names").
const (
	MaxImageNameLen        = 60  // ImageName limit of CreateImage
	MaxImageDescriptionLen = 256 // ImageDescription limit of CreateImage
	NameSuffixLen          = 8   // the unique suffix's length, after a '-'
	// MaxNameTemplateLen is how long a rendered name template may be: the rest is "-" + suffix.
	MaxNameTemplateLen = MaxImageNameLen - 1 - NameSuffixLen
	MaxTagKeyLen       = 127
	MaxTagValueLen     = 255
)

// placeholderMaxLen is the exact longest rendering of each placeholder that does not depend on the
// policy ({policy} and {region} are measured per policy).
var placeholderMaxLen = map[string]int{
	"instance": len("ins-xxxxxxxx"),
	"date":     len("20060102"),
	"time":     len("20060102-1504"),
	"slot":     len("20060102T150405Z"),
}

const knownPlaceholders = "{policy} {instance} {region} {date} {time} {slot}"

// segment is one piece of a template: a literal, or a placeholder name (without braces).
type segment struct {
	lit string
	ph  string
}

// template is a parsed name, description or tag value template.
type template []segment

// parseTemplate splits s into literals and known placeholders. A '{' must open a known placeholder;
// a lone '}' is a literal (names reject it separately, descriptions may use it).
func parseTemplate(s string) (template, error) {
	var t template
	for s != "" {
		i := strings.IndexByte(s, '{')
		if i < 0 {
			t = append(t, segment{lit: s})
			break
		}
		if i > 0 {
			t = append(t, segment{lit: s[:i]})
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("unclosed %q (placeholders are %s)", clip(s[i:]), knownPlaceholders)
		}
		name := s[i+1 : i+j]
		switch name {
		case "policy", "instance", "region", "date", "time", "slot":
			t = append(t, segment{ph: name})
		default:
			return nil, fmt.Errorf("unknown placeholder {%s} (known: %s)", name, knownPlaceholders)
		}
		s = s[i+j+1:]
	}
	return t, nil
}

// maxLen is the longest the template can render to, in characters, for this policy name and
// region: every placeholder's length is known exactly.
func (t template) maxLen(policyName, region string) int {
	n := 0
	for _, sg := range t {
		switch sg.ph {
		case "":
			n += utf8.RuneCountInString(sg.lit)
		case "policy":
			n += len(policyName)
		case "region":
			n += len(region)
		default:
			n += placeholderMaxLen[sg.ph]
		}
	}
	return n
}

// templateVars are the values of the placeholders for one (policy, instance, slot).
type templateVars struct {
	policy, instance, region, date, time, slot string
}

func newTemplateVars(p *Policy, instanceID string, slot time.Time) templateVars {
	loc := p.Location
	if loc == nil {
		loc = time.UTC
	}
	local := slot.In(loc)
	return templateVars{
		policy:   p.Name,
		instance: instanceID,
		region:   p.Region,
		date:     local.Format("20060102"),
		time:     local.Format("20060102-1504"),
		slot:     slot.UTC().Format("20060102T150405Z"),
	}
}

func (t template) render(v templateVars) string {
	var b strings.Builder
	for _, sg := range t {
		switch sg.ph {
		case "":
			b.WriteString(sg.lit)
		case "policy":
			b.WriteString(v.policy)
		case "instance":
			b.WriteString(v.instance)
		case "region":
			b.WriteString(v.region)
		case "date":
			b.WriteString(v.date)
		case "time":
			b.WriteString(v.time)
		case "slot":
			b.WriteString(v.slot)
		}
	}
	return b.String()
}

// nameChar reports whether c may appear in an image name sent to the API.
func nameChar(c rune) bool {
	return c == '-' || c == '_' || c == '.' ||
		('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
}

// badNameLiteral returns the first character of the template's literals that may not appear in
// an image name, or -1 when all are allowed.
func (t template) badNameLiteral() rune {
	for _, sg := range t {
		for _, c := range sg.lit {
			if !nameChar(c) {
				return c
			}
		}
	}
	return -1
}
