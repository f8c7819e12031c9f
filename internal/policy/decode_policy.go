package policy

import (
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// rawImage is an `image:` block as written, in defaults or in a policy.
type rawImage struct {
	name          val[string]
	nameTmpl      template
	description   val[string]
	descTmpl      template
	forcePoweroff val[bool]
	sysprep       val[bool]
	reboot        val[bool]
	dataDisks     val[DataDisks]
	tags          map[string]rawTag
	tagsBad       bool
	timeout       val[time.Duration]
}

// rawTag is one `image.tags` entry.
type rawTag struct {
	value string
	tmpl  template
	at    pos
}

// rawRetention is a `retention:` block as written.
type rawRetention struct {
	present         bool
	null            bool // `retention:` with no value in a policy: no retention, whatever defaults say
	invalid         bool // not a mapping (reported)
	at              pos
	keepLast        val[int]
	maxAge          val[time.Duration]
	minKeep         val[int]
	deleteSnapshots val[bool]
}

// rawDefaults is the `defaults:` block.
type rawDefaults struct {
	unknown   bool // no defaults block was read, but an unreadable file may hold one
	at        pos
	region    val[string]
	timezone  val[*time.Location]
	image     rawImage
	retention rawRetention
	window    val[time.Duration]
	conc      val[Concurrency]
	copies    rawCopies
}

// rawPolicy is one entry of `policies:` as written, before defaults apply.
type rawPolicy struct {
	field      string // policies[i]
	at         pos
	decodeErrs int

	name      val[string]
	schedule  val[string]
	region    val[string]
	timezone  val[*time.Location]
	instances val[[]string]
	instLines map[string]int
	sel       val[*Selector]
	image     rawImage
	retention rawRetention
	enabled   val[bool]
	notify    val[PolicyNotify]
	window    val[time.Duration]
	conc      val[Concurrency]
	account   val[string]
	copies    rawCopies
	hooks     *Hooks // hooks.go
}

func (d *decoder) defaults(n *yaml.Node, at pos) *rawDefaults {
	def := &rawDefaults{at: at}
	d.mapping(n, "defaults", 1, map[string]func(pair){
		"region":    func(p pair) { def.region = d.region(p.v, "defaults.region") },
		"timezone":  func(p pair) { def.timezone = d.timezone(p.v, "defaults.timezone") },
		"image":     func(p pair) { d.image(p.v, "defaults.image", &def.image) },
		"retention": func(p pair) { d.retention(p, "defaults.retention", &def.retention) },
		"start_window": func(p pair) {
			def.window = d.duration(p.v, "defaults.start_window", time.Second)
		},
		"concurrency": func(p pair) { def.conc = d.concurrency(p.v, "defaults.concurrency") },
		"copy_to":     func(p pair) { def.copies = d.copies(p, "defaults.copy_to", 2) },
	})
	return def
}

func (d *decoder) policy(n *yaml.Node, field string) *rawPolicy {
	start := len(*d.errs)
	n = d.resolve(n)
	if n == nil {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, field, "expected a policy (a mapping with name, schedule, ...), got %s", kindName(n))
		return nil
	}
	rp := &rawPolicy{field: field, at: d.at(n)}
	d.mapping(n, field, 1, map[string]func(pair){
		"name": func(p pair) {
			f := join(field, "name")
			rp.name = d.str(p.v, f)
			if rp.name.set && !policyNameRe.MatchString(rp.name.v) {
				d.errorf(rp.name.at.line, f, "%q is not a policy name: 1 to 32 characters of a-z, 0-9 and -", rp.name.v)
				rp.name.set, rp.name.bad = false, true
			}
		},
		"schedule": func(p pair) { rp.schedule = d.str(p.v, join(field, "schedule")) },
		"region":   func(p pair) { rp.region = d.region(p.v, join(field, "region")) },
		"timezone": func(p pair) { rp.timezone = d.timezone(p.v, join(field, "timezone")) },
		"instances": func(p pair) {
			f := join(field, "instances")
			before := len(*d.errs)
			items, ok := d.list(p.v, f)
			ids := d.idList(items, f, instanceRe, instanceWhat)
			rp.instances = val[[]string]{v: ids, set: ok && len(*d.errs) == before, at: d.at(p.k)}
			rp.instances.bad = !rp.instances.set
			rp.instLines = map[string]int{}
			for _, it := range items {
				if _, dup := rp.instLines[it.v]; !dup {
					rp.instLines[it.v] = it.line
				}
			}
		},
		"select":    func(p pair) { rp.sel = d.selector(p, join(field, "select")) },
		"image":     func(p pair) { d.image(p.v, join(field, "image"), &rp.image) },
		"retention": func(p pair) { d.retention(p, join(field, "retention"), &rp.retention) },
		"enabled":   func(p pair) { rp.enabled = d.boolean(p.v, join(field, "enabled")) },
		"notify":    func(p pair) { rp.notify = d.policyNotify(p.v, join(field, "notify")) },
		"start_window": func(p pair) {
			rp.window = d.duration(p.v, join(field, "start_window"), time.Second)
		},
		"concurrency": func(p pair) { rp.conc = d.concurrency(p.v, join(field, "concurrency")) },
		"account":     func(p pair) { rp.account = d.str(p.v, join(field, "account")) },
		"copy_to":     func(p pair) { rp.copies = d.copies(p, join(field, "copy_to"), 2) },
		"hooks":       func(p pair) { rp.hooks = d.hooks(p.v, join(field, "hooks")) },
	})
	rp.decodeErrs = len(*d.errs) - start
	return rp
}

// concurrency decodes `concurrency: forbid|allow`.
func (d *decoder) concurrency(n *yaml.Node, field string) val[Concurrency] {
	v := d.str(n, field)
	out := val[Concurrency]{v: Concurrency(v.v), set: v.set, bad: v.bad, at: v.at}
	if v.set && out.v != ConcurrencyForbid && out.v != ConcurrencyAllow {
		d.errorf(v.at.line, field, "%q is not a concurrency: use forbid (the default: skip a slot while the previous image is still being made) or allow", v.v)
		out.set, out.bad = false, true
	}
	return out
}

func (d *decoder) region(n *yaml.Node, field string) val[string] {
	v := d.str(n, field)
	if v.set && !regionRe.MatchString(v.v) {
		if m := zoneRe.FindStringSubmatch(v.v); m != nil {
			d.errorf(v.at.line, field, "%q is an availability zone, not a region: use %s", v.v, m[1])
		} else {
			d.errorf(v.at.line, field, "%q is not a region (e.g. ap-guangzhou, ap-shanghai-fsi)", v.v)
		}
		v.set, v.bad = false, true
	}
	return v
}

func (d *decoder) timezone(n *yaml.Node, field string) val[*time.Location] {
	s := d.str(n, field)
	out := val[*time.Location]{set: s.set, bad: s.bad, at: s.at}
	if !s.set {
		return out
	}
	loc, err := loadZone(s.v)
	if err != nil {
		d.errorf(s.at.line, field, "%v", err)
		out.set, out.bad = false, true
		return out
	}
	out.v = loc
	return out
}

// nameTemplate checks an image.name template: known placeholders, allowed literal characters.
// Its rendered length depends on the policy and is checked when defaults are applied.
func (d *decoder) nameTemplate(n *yaml.Node, field string) (val[string], template) {
	v := d.str(n, field)
	if !v.set {
		return v, nil
	}
	fail := func(format string, args ...any) (val[string], template) {
		d.errorf(v.at.line, field, format, args...)
		v.set, v.bad = false, true
		return v, nil
	}
	if v.v == "" {
		return fail("must not be empty (leave image.name out for the default %q)", DefaultNameTemplate)
	}
	t, err := parseTemplate(v.v)
	if err != nil {
		return fail("%v", err)
	}
	if c := t.badNameLiteral(); c >= 0 {
		return fail("character %q is not allowed in image names (only A-Z a-z 0-9 - _ . and placeholders)", c)
	}
	return v, t
}

// textTemplate checks a description or tag value template.
func (d *decoder) textTemplate(n *yaml.Node, field string) (val[string], template) {
	v := d.str(n, field)
	if !v.set {
		return v, nil
	}
	t, err := parseTemplate(v.v)
	if err != nil {
		d.errorf(v.at.line, field, "%v", err)
		v.set, v.bad = false, true
		return v, nil
	}
	return v, t
}

func (d *decoder) image(n *yaml.Node, field string, img *rawImage) {
	d.mapping(n, field, 2, map[string]func(pair){
		"name":        func(p pair) { img.name, img.nameTmpl = d.nameTemplate(p.v, join(field, "name")) },
		"description": func(p pair) { img.description, img.descTmpl = d.textTemplate(p.v, join(field, "description")) },
		"force_poweroff": func(p pair) {
			img.forcePoweroff = d.boolean(p.v, join(field, "force_poweroff"))
		},
		"sysprep":    func(p pair) { img.sysprep = d.boolean(p.v, join(field, "sysprep")) },
		"reboot":     func(p pair) { img.reboot = d.boolean(p.v, join(field, "reboot")) },
		"data_disks": func(p pair) { img.dataDisks = d.dataDisks(p, join(field, "data_disks")) },
		"tags":       func(p pair) { d.tags(p.v, join(field, "tags"), img) },
		"timeout":    func(p pair) { img.timeout = d.duration(p.v, join(field, "timeout"), time.Second) },
	})
}

func (d *decoder) dataDisks(p pair, field string) val[DataDisks] {
	n := d.resolve(p.v)
	bad := val[DataDisks]{bad: true, at: d.at(p.k)}
	if n == nil {
		return bad
	}
	if n.Kind == yaml.ScalarNode && !isNull(n) {
		if n.Value == "all" {
			return val[DataDisks]{v: DataDisks{All: true}, set: true, at: d.at(n)}
		}
		d.errorf(n.Line, field, "expected `all` or a list of disk ids, got %s", kindName(n))
		return bad
	}
	before := len(*d.errs)
	items, ok := d.list(n, field)
	if !ok {
		return bad
	}
	ids := d.idList(items, field, diskRe, diskWhat)
	if len(*d.errs) != before {
		return bad
	}
	return val[DataDisks]{v: DataDisks{IDs: ids}, set: true, at: d.at(p.k)}
}

func (d *decoder) tags(n *yaml.Node, field string, img *rawImage) {
	n = d.resolve(n)
	if n == nil {
		img.tagsBad = true
		return
	}
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, field, "expected a mapping of tag keys to values, got %s", kindName(n))
		img.tagsBad = true
		return
	}
	if img.tags == nil {
		img.tags = map[string]rawTag{}
	}
	for _, p := range d.pairs(n, field, 3) {
		f := join(field, p.key)
		switch {
		case strings.TrimSpace(p.key) == "":
			d.errorf(p.k.Line, field, "tag keys must not be empty")
			img.tagsBad = true
			continue
		case utf8.RuneCountInString(p.key) > MaxTagKeyLen:
			d.errorf(p.k.Line, f, "tag key is %d characters long; at most %d", utf8.RuneCountInString(p.key), MaxTagKeyLen)
			img.tagsBad = true
			continue
		case strings.HasPrefix(p.key, ReservedTagPrefix):
			d.errorf(p.k.Line, f, "tag keys starting with %q are reserved for imager's own tags", ReservedTagPrefix)
			img.tagsBad = true
			continue
		}
		v, t := d.textTemplate(p.v, f)
		if !v.set {
			img.tagsBad = true
			continue
		}
		img.tags[p.key] = rawTag{value: v.v, tmpl: t, at: v.at}
	}
}

func (d *decoder) retention(p pair, field string, r *rawRetention) {
	r.present, r.at = true, d.at(p.k)
	n := d.mapping(p.v, field, 2, map[string]func(pair){
		"keep_last":        func(p pair) { r.keepLast = d.integer(p.v, join(field, "keep_last"), 0, 1_000_000) },
		"max_age":          func(p pair) { r.maxAge = d.duration(p.v, join(field, "max_age"), 0) },
		"min_keep":         func(p pair) { r.minKeep = d.integer(p.v, join(field, "min_keep"), 1, 1_000_000) },
		"delete_snapshots": func(p pair) { r.deleteSnapshots = d.boolean(p.v, join(field, "delete_snapshots")) },
	})
	switch {
	case n == nil:
		r.invalid = true
	case isNull(n):
		r.null = true
	}
}

func (d *decoder) selector(p pair, field string) val[*Selector] {
	sel := &Selector{}
	before := len(*d.errs)
	tagsSeen := false
	n := d.mapping(p.v, field, 2, map[string]func(pair){
		"tags": func(p pair) {
			tagsSeen = true
			f := join(field, "tags")
			n := d.resolve(p.v)
			if n == nil {
				return
			}
			if isNull(n) {
				d.errorf(n.Line, f, "a tag selector needs at least one key")
				return
			}
			if n.Kind != yaml.MappingNode {
				d.errorf(n.Line, f, "expected a mapping of tag keys to values, got %s", kindName(n))
				return
			}
			sel.Tags = map[string]string{}
			for _, tp := range d.pairs(n, f, 3) {
				if strings.TrimSpace(tp.key) == "" {
					d.errorf(tp.k.Line, f, "tag keys must not be empty")
					continue
				}
				if v := d.str(tp.v, join(f, tp.key)); v.set {
					sel.Tags[tp.key] = v.v
				}
			}
			if len(n.Content) == 0 {
				d.errorf(n.Line, f, "a tag selector needs at least one key")
			}
		},
		"zones": func(p pair) {
			f := join(field, "zones")
			items, _ := d.list(p.v, f)
			for i, it := range items {
				if it.line < 0 {
					continue
				}
				if strings.TrimSpace(it.v) == "" {
					d.errorf(it.line, index(f, i), "zone must not be empty")
					continue
				}
				sel.Zones = append(sel.Zones, it.v)
			}
		},
		"exclude": func(p pair) {
			f := join(field, "exclude")
			items, _ := d.list(p.v, f)
			sel.Exclude = d.idList(items, f, instanceRe, instanceWhat)
		},
	})
	if n != nil && !tagsSeen {
		d.errorf(p.k.Line, join(field, "tags"), "required: a tag selector needs at least one key, e.g. tags: {env: prod}")
	}
	ok := len(*d.errs) == before
	return val[*Selector]{v: sel, set: ok, bad: !ok, at: d.at(p.k)}
}
