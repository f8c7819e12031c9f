package policy

import (
	"fmt"
	"regexp"

	"gopkg.in/yaml.v3"
)

// `copy_to` (docs/policies.md "Copies in other regions") lists the other regions each available
// image of a policy is copied to. It is set in defaults or in a policy; a policy's own list replaces
// the defaults' whole (`copy_to: []` clears them).

// regionRe is the shape of a region name: two letters, a city, and an optional qualifier
// (ap-guangzhou, na-siliconvalley, eu-frankfurt, ap-shanghai-fsi). Zones end in a number
// (ap-guangzhou-3) and are not regions.
var (
	regionRe = regexp.MustCompile(`^[a-z]{2}-[a-z]{2,}(?:-[a-z]{2,})?$`)
	zoneRe   = regexp.MustCompile(`^([a-z]{2}-[a-z]{2,}(?:-[a-z]{2,})?)-[0-9]+$`)
)

// rawCopies is a `copy_to` list as written, in defaults or in a policy.
type rawCopies struct {
	present bool // the key is written (a null value is an empty list)
	bad     bool // it or one of its entries is invalid (reported)
	entries []rawCopy
}

// rawCopy is one `copy_to` entry.
type rawCopy struct {
	index     int  // in the list as written
	bad       bool // the entry has a problem of its own (reported)
	region    val[string]
	retention rawRetention
}

// copies decodes a `copy_to` list: mappings with a region, unique within the list, and an optional
// retention.
func (d *decoder) copies(p pair, field string, depth int) (out rawCopies) {
	out.present = true
	start := len(*d.errs)
	defer func() { out.bad = len(*d.errs) > start }()
	n := d.resolve(p.v)
	switch {
	case n == nil:
		return out
	case isNull(n):
		return out
	case n.Kind != yaml.SequenceNode:
		d.errorf(n.Line, field, "expected a list of regions to copy to, such as [{region: ap-singapore}], got %s", kindName(n))
		return out
	}
	seen := map[string]int{}
	for i, e := range n.Content {
		f := index(field, i)
		e = d.resolve(e)
		if e == nil {
			return out
		}
		if e.Kind != yaml.MappingNode {
			d.errorf(e.Line, f, "expected a mapping such as {region: ap-singapore, retention: {keep_last: 3}}, got %s", kindName(e))
			continue
		}
		c := rawCopy{index: i}
		entryStart := len(*d.errs)
		d.mapping(e, f, depth+1, map[string]func(pair){
			"region":    func(p pair) { c.region = d.region(p.v, join(f, "region")) },
			"retention": func(p pair) { d.retention(p, join(f, "retention"), &c.retention) },
		})
		switch {
		case !c.region.present():
			d.errorf(e.Line, join(f, "region"), "required: the region to copy each image to")
		case c.region.set:
			if first, dup := seen[c.region.v]; dup {
				d.errorf(c.region.at.line, join(f, "region"), "duplicate region %q (also at line %d)", c.region.v, first)
			} else {
				seen[c.region.v] = c.region.at.line
			}
		}
		c.bad = len(*d.errs) > entryStart
		out.entries = append(out.entries, c)
	}
	return out
}

// copies sets p.CopyTo from the policy's copy_to, else the defaults', and checks each entry against
// the policy: not its own region, and a retention that fits its schedule. It reports whether it
// used an invalid inherited setting. Call it after retention: an entry without one takes the
// policy's.
func (b *builder) copies(rp *rawPolicy, p *Policy) (inheritedBad bool) {
	list, inherited := &rp.copies, false
	if !list.present {
		list, inherited = &b.def.copies, true
	}
	if !list.present || (inherited && list.bad) {
		return inherited && list.bad
	}
	// where says where to report a problem with a value of the list: at the value when the policy
	// wrote it, at the policy (naming the defaults' line) when it came from defaults.
	where := func(at pos) (pos, string) {
		if inherited {
			return rp.nameOrStart(), fmt.Sprintf(" (set in defaults at %s)", at)
		}
		return at, ""
	}
	for _, c := range list.entries {
		if c.bad {
			continue // reported, and counted with the policy
		}
		field := join(rp.field, index("copy_to", c.index))
		t := CopyTarget{Region: c.region.v}
		if p.Region != "" && c.region.v == p.Region {
			at, note := where(c.region.at)
			b.errorf(at, join(field, "region"), "%q is the policy's own region%s: copy_to lists the other regions its images are copied to", c.region.v, note)
		}
		r := &c.retention
		switch {
		case !r.present:
			if p.Retention != nil {
				own := *p.Retention
				t.Retention = &own
			}
		case r.null:
			// `retention:` with no value: the copies are never pruned, whatever the policy keeps.
		default:
			t.Retention = retentionOf(r)
			b.checkRetention(t.Retention, p, join(field, "retention"),
				func() (pos, string) { return where(r.at) },
				func(key string) (pos, string) {
					if key == "keep_last" {
						return where(r.keepLast.at)
					}
					return where(r.maxAge.at)
				})
		}
		p.CopyTo = append(p.CopyTo, t)
	}
	return false
}

// retentionOf is a retention block that stands alone (a copy_to entry's): the keys it leaves out
// take their built-in defaults. r must be a valid mapping.
func retentionOf(r *rawRetention) *Retention {
	out := &Retention{KeepLast: r.keepLast.v, MaxAge: r.maxAge.v, MinKeep: DefaultMinKeep, DeleteSnapshots: r.deleteSnapshots.v}
	if r.minKeep.set {
		out.MinKeep = r.minKeep.v
	}
	return out
}
