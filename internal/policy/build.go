package policy

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// maxUserTags is how many image.tags a policy may set: a resource carries at most 50 tags and
// imager sets 3 of its own.
const maxUserTags = 50 - 3

// intervalSlots is how many upcoming slots are compared to find a schedule's shortest interval.
const intervalSlots = 50

// builder applies defaults to raw policies and runs the checks that need more than one setting.
type builder struct {
	errs     *[]FieldError
	def      *rawDefaults
	accounts *accountSet
	now      time.Time
}

func (b *builder) errorf(at pos, field, format string, args ...any) {
	*b.errs = append(*b.errs, FieldError{File: at.file, Line: at.line, Field: clipField(field), Message: fmt.Sprintf(format, clipArgs(args)...)})
}

// site says where to report a problem with a value the policy may have inherited: at the value
// when the policy wrote it, at the policy (naming the defaults' line) when it came from defaults.
func site[T any](rp *rawPolicy, own, used val[T]) (pos, string) {
	switch {
	case own.present():
		return own.at, ""
	case used.present():
		return rp.nameOrStart(), fmt.Sprintf(" (set in defaults at %s)", used.at)
	}
	return rp.nameOrStart(), ""
}

func (rp *rawPolicy) nameOrStart() pos {
	if rp.name.present() {
		return rp.name.at
	}
	return rp.at
}

// build returns the policy with defaults applied; ok is false when it or anything it inherits is
// invalid (every problem is reported).
func (b *builder) build(rp *rawPolicy) (p *Policy, ok bool) {
	start := len(*b.errs)
	def := b.def
	inheritedBad := false
	p = &Policy{Name: rp.name.v, File: rp.at.file, Line: rp.at.line, Enabled: true}
	f := func(key string) string { return join(rp.field, key) }

	if !rp.name.present() {
		b.errorf(rp.at, f("name"), "required")
	}

	region := pick(rp.region, def.region)
	inheritedBad = inheritedBad || region.bad
	switch {
	case !region.present() && def.unknown:
		inheritedBad = true
	case !region.present():
		b.errorf(rp.nameOrStart(), f("region"), "required: set region in the policy or in defaults")
	}
	p.Region = region.v

	tz := pick(rp.timezone, def.timezone)
	inheritedBad = inheritedBad || tz.bad
	p.Location = time.UTC
	if tz.set {
		p.Location = tz.v
	}

	switch {
	case rp.schedule.set:
		p.ScheduleSpec = rp.schedule.v
		s, err := ParseSchedule(rp.schedule.v, p.Location)
		if err != nil {
			b.errorf(rp.schedule.at, f("schedule"), "%v", err)
			break
		}
		if s.Next(b.now).IsZero() {
			b.errorf(rp.schedule.at, f("schedule"), "%q never fires: no date matches it in the next five years", rp.schedule.v)
			break
		}
		p.Schedule = s
	case !rp.schedule.present():
		b.errorf(rp.nameOrStart(), f("schedule"), "required: a cron expression (\"0 3 * * *\"), a descriptor (@daily) or @every 6h")
	}

	b.targets(rp, p)
	inheritedBad = b.image(rp, p) || inheritedBad
	inheritedBad = b.retention(rp, p) || inheritedBad
	inheritedBad = b.account(rp, p) || inheritedBad
	inheritedBad = b.copies(rp, p) || inheritedBad

	inheritedBad = b.startWindow(rp, p) || inheritedBad

	if rp.enabled.set {
		p.Enabled = rp.enabled.v
	}
	p.Notify = rp.notify.v
	p.Hooks = rp.hooks
	return p, !inheritedBad && rp.decodeErrs == 0 && len(*b.errs) == start
}

// startWindow applies defaults to start_window and concurrency and checks that the window is
// no longer than the schedule's shortest interval (else two slots could be due to start at once).
// It reports whether it used an invalid inherited setting.
func (b *builder) startWindow(rp *rawPolicy, p *Policy) (inheritedBad bool) {
	conc := pick(rp.conc, b.def.conc)
	p.Concurrency = ConcurrencyForbid
	if conc.set {
		p.Concurrency = conc.v
	}
	window := pick(rp.window, b.def.window)
	inheritedBad = conc.bad || window.bad
	p.StartWindow = DefaultStartWindow
	if p.Schedule == nil {
		if window.set {
			p.StartWindow = window.v
		}
		return inheritedBad
	}
	gap, ok := NominalInterval(p.Schedule, b.now)
	switch {
	case window.set && ok && window.v > gap:
		at, note := site(rp, rp.window, window)
		b.errorf(at, join(rp.field, "start_window"), "start_window %s is longer than the %s between slots of %q%s: a slot would still be due when the next one starts; use at most %s",
			formatDuration(window.v), formatDuration(gap), p.ScheduleSpec, note, formatDuration(gap))
	case window.set:
		p.StartWindow = window.v
	case ok && gap < p.StartWindow:
		p.StartWindow = gap
	}
	return inheritedBad
}

func (b *builder) targets(rp *rawPolicy, p *Policy) {
	if !rp.instances.present() && !rp.sel.present() {
		b.errorf(rp.nameOrStart(), rp.field, "no targets: set instances, select, or both")
		return
	}
	p.Instances = rp.instances.v
	if rp.sel.set {
		p.Select = rp.sel.v
		for _, id := range p.Select.Exclude {
			if line, listed := rp.instLines[id]; listed {
				b.errorf(pos{file: rp.at.file, line: line}, join(rp.field, "instances"),
					"%s is listed here and excluded by select.exclude; remove one", id)
			}
		}
	}
}

// image applies defaults to the image block and checks rendered lengths. It reports whether it
// used an invalid inherited setting.
func (b *builder) image(rp *rawPolicy, p *Policy) (inheritedBad bool) {
	own, def := &rp.image, &b.def.image
	f := func(key string) string { return join(rp.field, "image."+key) }

	name := pick(own.name, def.name)
	nameTmpl := own.nameTmpl
	if !own.name.present() {
		nameTmpl = def.nameTmpl
	}
	desc := pick(own.description, def.description)
	descTmpl := own.descTmpl
	if !own.description.present() {
		descTmpl = def.descTmpl
	}
	fp, sp, rb := pick(own.forcePoweroff, def.forcePoweroff), pick(own.sysprep, def.sysprep), pick(own.reboot, def.reboot)
	disks := pick(own.dataDisks, def.dataDisks)
	timeout := pick(own.timeout, def.timeout)
	inheritedBad = name.bad || desc.bad || fp.bad || sp.bad || rb.bad || disks.bad || timeout.bad || def.tagsBad

	canMeasure := p.Name != "" && p.Region != ""
	switch {
	case name.set:
		p.Image.NameTemplate = name.v
		p.nameTmpl = nameTmpl
		if n := nameTmpl.maxLen(p.Name, p.Region); canMeasure && n > MaxNameTemplateLen {
			at, note := site(rp, own.name, name)
			b.errorf(at, f("name"), "template %q renders up to %d characters for this policy%s, but at most %d fit (image names are limited to %d, including the %d-character unique suffix)",
				name.v, n, note, MaxNameTemplateLen, MaxImageNameLen, NameSuffixLen+1)
		}
	case !name.present():
		p.Image.NameTemplate = DefaultNameTemplate
		p.nameTmpl, _ = parseTemplate(DefaultNameTemplate)
		if n := p.nameTmpl.maxLen(p.Name, p.Region); canMeasure && n > MaxNameTemplateLen {
			b.errorf(rp.nameOrStart(), f("name"), "the default template %q renders up to %d characters for this policy, but at most %d fit (image names are limited to %d, including the %d-character unique suffix): shorten the policy name or set image.name",
				DefaultNameTemplate, n, MaxNameTemplateLen, MaxImageNameLen, NameSuffixLen+1)
		}
	}

	if desc.set && desc.v != "" {
		p.Image.DescriptionTemplate = desc.v
		p.descTmpl = descTmpl
		if n := descTmpl.maxLen(p.Name, p.Region); canMeasure && n > MaxImageDescriptionLen {
			at, note := site(rp, own.description, desc)
			b.errorf(at, f("description"), "renders up to %d characters for this policy%s; at most %d", n, note, MaxImageDescriptionLen)
		}
	}

	if fp.set {
		p.Image.ForcePoweroff = &fp.v
	}
	if sp.set {
		p.Image.Sysprep = &sp.v
	}
	if rb.set {
		p.Image.Reboot = &rb.v
	}
	if disks.set {
		p.Image.DataDisks = disks.v
	}
	p.Image.Timeout = DefaultImageTimeout
	if timeout.set {
		p.Image.Timeout = timeout.v
	}

	tags := maps.Clone(def.tags)
	if tags == nil && own.tags != nil {
		tags = map[string]rawTag{}
	}
	maps.Copy(tags, own.tags)
	if len(tags) > maxUserTags {
		at := rp.nameOrStart()
		b.errorf(at, f("tags"), "%d tags (with defaults); at most %d, since imager adds 3 of its own to the 50 a resource may carry", len(tags), maxUserTags)
	}
	if len(tags) > 0 {
		p.Image.Tags = make(map[string]string, len(tags))
		p.tagTmpls = make(map[string]template, len(tags))
		for _, k := range slices.Sorted(maps.Keys(tags)) {
			t := tags[k]
			p.Image.Tags[k] = t.value
			p.tagTmpls[k] = t.tmpl
			if n := t.tmpl.maxLen(p.Name, p.Region); canMeasure && n > MaxTagValueLen {
				at, note := t.at, ""
				if _, mine := own.tags[k]; !mine {
					at, note = rp.nameOrStart(), fmt.Sprintf(" (set in defaults at %s)", t.at)
				}
				b.errorf(at, f("tags."+k), "value renders up to %d characters for this policy%s; at most %d", n, note, MaxTagValueLen)
			}
		}
	}
	return inheritedBad
}

// retention applies defaults to the retention block and checks that it can prune and that it does
// not age out images faster than the schedule makes them.
func (b *builder) retention(rp *rawPolicy, p *Policy) (inheritedBad bool) {
	own, def := &rp.retention, &b.def.retention
	if own.null || (!own.present && !def.present) || (!own.present && def.null) {
		return false
	}
	if own.invalid || (!own.present && def.invalid) {
		return true // reported where written
	}
	keepLast := pick(own.keepLast, def.keepLast)
	maxAge := pick(own.maxAge, def.maxAge)
	minKeep := pick(own.minKeep, def.minKeep)
	delSnap := pick(own.deleteSnapshots, def.deleteSnapshots)
	if keepLast.bad || maxAge.bad || minKeep.bad || delSnap.bad {
		return true // reported where written
	}
	r := &Retention{KeepLast: keepLast.v, MaxAge: maxAge.v, MinKeep: DefaultMinKeep, DeleteSnapshots: delSnap.v}
	if minKeep.set {
		r.MinKeep = minKeep.v
	}
	p.Retention = r

	b.checkRetention(r, p, join(rp.field, "retention"),
		func() (pos, string) {
			if !own.present {
				return rp.nameOrStart(), fmt.Sprintf(" (set in defaults at %s)", def.at)
			}
			return own.at, ""
		},
		func(key string) (pos, string) {
			if key == "keep_last" {
				return site(rp, own.keepLast, keepLast)
			}
			return site(rp, own.maxAge, maxAge)
		})
	return false
}

// checkRetention checks that r can prune and that it does not age out images faster than p's
// schedule makes them. field is the path of the retention block; block and key say where to report
// a problem with the block or with its keep_last or max_age, with a note when it was inherited.
func (b *builder) checkRetention(r *Retention, p *Policy, field string, block func() (pos, string), key func(k string) (pos, string)) {
	if r.KeepLast == 0 && r.MaxAge == 0 {
		at, note := block()
		b.errorf(at, field, "retention keeps everything: set keep_last or max_age%s", note)
		return
	}
	if r.KeepLast > 0 && r.KeepLast < r.MinKeep {
		at, note := key("keep_last")
		b.errorf(at, join(field, "keep_last"), "keep_last %d is less than min_keep %d%s", r.KeepLast, r.MinKeep, note)
	}
	if r.MaxAge > 0 && p.Schedule != nil {
		if gap, ok := shortestInterval(p.Schedule, b.now, r.MaxAge); ok && r.MaxAge < gap {
			at, note := key("max_age")
			b.errorf(at, join(field, "max_age"), "max_age %s is shorter than the %s between slots of %q%s: every image would be past max_age before the next is made; use at least %s",
				formatDuration(r.MaxAge), formatDuration(gap), p.ScheduleSpec, note, formatDuration(gap))
		}
	}
}

// NominalInterval is the shortest gap between consecutive slots of s among the ~50 after now,
// read on the wall clock of the schedule's zone (so a daily schedule's interval is 24h, not the
// 23h of a spring-forward day): start windows are checked against it. ok is false when s has
// fewer than two slots.
func NominalInterval(s Schedule, now time.Time) (time.Duration, bool) {
	if cs, ok := s.(*cronSchedule); ok {
		utc := *cs
		utc.loc = time.UTC
		s = &utc
	}
	return shortestInterval(s, now, 0)
}

// shortestInterval returns the smallest gap between consecutive slots among the next ~50, stopping
// early once a gap no longer than limit is seen (then max_age is fine whatever the rest are).
func shortestInterval(s Schedule, now time.Time, limit time.Duration) (time.Duration, bool) {
	prev := s.Next(now)
	if prev.IsZero() {
		return 0, false
	}
	var shortest time.Duration
	for range intervalSlots {
		next := s.Next(prev)
		if next.IsZero() {
			break
		}
		gap := next.Sub(prev)
		if shortest == 0 || gap < shortest {
			shortest = gap
		}
		if shortest <= limit {
			break
		}
		prev = next
	}
	return shortest, shortest > 0
}
