package policy

import (
	"cmp"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// `restore_tests:` (docs/restore-tests.md) is a top-level list of scheduled restore tests: on its
// schedule, each test launches an instance from the latest available image of a policy (or its
// copy in a copy_to region), runs a check command on it through TAT, records the outcome and
// terminates the instance.

// RestoreTest is one validated entry of `restore_tests:`.
type RestoreTest struct {
	Name string
	File string // where it was defined, for messages
	Line int
	// Policy is the name of the policy whose images are tested; the test runs with its account.
	Policy string
	// Region is where the instance is launched: the policy's region, or (`region:`) one of its
	// copy_to regions, when Copy is true and the latest available copy there is launched.
	Region string
	Copy   bool
	// ScheduleSpec is the schedule as written; Schedule fires the test's slots (in the policy's
	// time zone unless the spec names one with CRON_TZ=).
	ScheduleSpec string
	Schedule     Schedule
	// Sample is how many of the policy's instances one slot tests, chosen in turn (the ones whose
	// last test is the oldest first) so every instance is tested over time.
	Sample  int
	Launch  RestoreLaunch
	Check   RestoreCheck
	KeepFor time.Duration // the instance is terminated after the check, and at the latest this long after launch
}

// RestoreLaunch is the `launch:` block of a restore test: where and how the instance is launched
// (always pay-as-you-go, so TerminateInstances destroys it at once).
type RestoreLaunch struct {
	Zone             string // required, in the test's region
	InstanceType     string // empty: the API's default
	VpcID            string // with SubnetID, or neither (the API's default network)
	SubnetID         string
	SecurityGroupIDs []string
}

// RestoreCheck is the `check:` block of a restore test: the command run through TAT on the
// launched instance; the test passes when it exits 0 within Timeout.
type RestoreCheck struct {
	Command     string
	CommandType string // SHELL (default) or POWERSHELL
	Timeout     time.Duration
}

// Defaults and limits of restore tests.
const (
	DefaultRestoreSample       = 1
	MaxRestoreSample           = 100
	DefaultRestoreCheckTimeout = 5 * time.Minute
	MaxRestoreCheckTimeout     = 24 * time.Hour
	DefaultRestoreKeepFor      = 30 * time.Minute
	// MinRestoreSetup is the least time keep_for must leave beyond check.timeout for the instance
	// to become RUNNING and its TAT agent to come online.
	MinRestoreSetup = time.Minute
	// maxRestoreCommandBytes is TAT's Content limit (64 KiB once base64-encoded).
	maxRestoreCommandBytes = 64 * 1024 / 4 * 3
)

var (
	restoreZoneRe         = zoneRe
	restoreInstanceTypeRe = regexp.MustCompile(`^[A-Z][A-Z0-9]*\.[A-Z0-9]+$`)
	vpcRe                 = regexp.MustCompile(`^vpc-[a-z0-9]+$`)
	subnetRe              = regexp.MustCompile(`^subnet-[a-z0-9]+$`)
	securityGroupRe       = regexp.MustCompile(`^sg-[a-z0-9]+$`)
)

// RestoreTest returns the restore test with that name, or nil.
func (c *Config) RestoreTest(name string) *RestoreTest {
	for _, t := range c.RestoreTests {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// RestoreTestsOf returns the restore tests whose policy runs with account, in file order.
func (c *Config) RestoreTestsOf(account string) []*RestoreTest {
	var out []*RestoreTest
	for _, t := range c.RestoreTests {
		if p := c.Policy(t.Policy); p != nil && accountName(p) == account {
			out = append(out, t)
		}
	}
	return out
}

func accountName(p *Policy) string {
	if p.Account == "" {
		return DefaultAccount
	}
	return p.Account
}

// TurnInterval is how long the test takes to reach every one of n instances in turn: one slot
// interval per sample of them. ok is false when the schedule has no two slots after now.
func (t *RestoreTest) TurnInterval(n int, now time.Time) (time.Duration, bool) {
	every, ok := NominalInterval(t.Schedule, now)
	if !ok {
		return 0, false
	}
	sample := max(t.Sample, 1)
	rounds := max((n+sample-1)/sample, 1)
	return time.Duration(rounds) * every, true
}

// rawRestoreTest is one entry of `restore_tests:` as written.
type rawRestoreTest struct {
	field      string // restore_tests[i]
	at         pos
	decodeErrs int

	name      val[string]
	policy    val[string]
	region    val[string]
	schedule  val[string]
	sample    val[int]
	zone      val[string]
	instType  val[string]
	vpc       val[string]
	subnet    val[string]
	groups    []string
	launchAt  pos
	launchSet bool
	command   val[string]
	cmdType   val[string]
	timeout   val[time.Duration]
	checkAt   pos
	checkSet  bool
	keepFor   val[time.Duration]
}

// restoreTests decodes the top-level `restore_tests:` list.
func (d *decoder) restoreTests(n *yaml.Node) []*rawRestoreTest {
	n = d.resolve(n)
	if n == nil || isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n.Line, "restore_tests", "expected a list of restore tests, got %s", kindName(n))
		return nil
	}
	var out []*rawRestoreTest
	for i, e := range n.Content {
		if rt := d.restoreTest(e, index("restore_tests", i)); rt != nil {
			out = append(out, rt)
		}
	}
	return out
}

func (d *decoder) restoreTest(n *yaml.Node, field string) *rawRestoreTest {
	start := len(*d.errs)
	n = d.resolve(n)
	if n == nil {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, field, "expected a restore test (a mapping with name, policy, schedule, launch, check), got %s", kindName(n))
		return nil
	}
	rt := &rawRestoreTest{field: field, at: d.at(n)}
	f := func(key string) string { return join(field, key) }
	d.mapping(n, field, 1, map[string]func(pair){
		"name": func(p pair) {
			rt.name = d.str(p.v, f("name"))
			if rt.name.set && !policyNameRe.MatchString(rt.name.v) {
				d.errorf(rt.name.at.line, f("name"), "%q is not a restore test name: 1 to 32 characters of a-z, 0-9 and -", rt.name.v)
				rt.name.set, rt.name.bad = false, true
			}
		},
		"policy":   func(p pair) { rt.policy = d.str(p.v, f("policy")) },
		"region":   func(p pair) { rt.region = d.region(p.v, f("region")) },
		"schedule": func(p pair) { rt.schedule = d.str(p.v, f("schedule")) },
		"sample":   func(p pair) { rt.sample = d.integer(p.v, f("sample"), 1, MaxRestoreSample) },
		"launch": func(p pair) {
			lf := f("launch")
			rt.launchAt, rt.launchSet = d.at(p.k), true
			d.mapping(p.v, lf, 2, map[string]func(pair){
				"zone": func(p pair) {
					rt.zone = d.str(p.v, join(lf, "zone"))
					if rt.zone.set && !restoreZoneRe.MatchString(rt.zone.v) {
						d.errorf(rt.zone.at.line, join(lf, "zone"), "%q is not an availability zone (e.g. ap-guangzhou-3)", rt.zone.v)
						rt.zone.set, rt.zone.bad = false, true
					}
				},
				"instance_type": func(p pair) {
					rt.instType = d.str(p.v, join(lf, "instance_type"))
					if rt.instType.set && !restoreInstanceTypeRe.MatchString(rt.instType.v) {
						d.errorf(rt.instType.at.line, join(lf, "instance_type"), "%q is not an instance type (e.g. S5.SMALL2)", rt.instType.v)
						rt.instType.set, rt.instType.bad = false, true
					}
				},
				"vpc_id":    func(p pair) { rt.vpc = d.idValue(p.v, join(lf, "vpc_id"), vpcRe, "a VPC id (vpc-...)") },
				"subnet_id": func(p pair) { rt.subnet = d.idValue(p.v, join(lf, "subnet_id"), subnetRe, "a subnet id (subnet-...)") },
				"security_group_ids": func(p pair) {
					gf := join(lf, "security_group_ids")
					items, _ := d.list(p.v, gf)
					rt.groups = d.idList(items, gf, securityGroupRe, "a security group id (sg-...)")
				},
			})
		},
		"check": func(p pair) {
			cf := f("check")
			rt.checkAt, rt.checkSet = d.at(p.k), true
			d.mapping(p.v, cf, 2, map[string]func(pair){
				"command": func(p pair) {
					rt.command = d.str(p.v, join(cf, "command"))
					switch {
					case rt.command.set && strings.TrimSpace(rt.command.v) == "":
						d.errorf(rt.command.at.line, join(cf, "command"), "must not be empty")
						rt.command.set, rt.command.bad = false, true
					case rt.command.set && len(rt.command.v) > maxRestoreCommandBytes:
						d.errorf(rt.command.at.line, join(cf, "command"), "is %d bytes long, at most %d are allowed (TAT's 64 KiB once encoded)",
							len(rt.command.v), maxRestoreCommandBytes)
						rt.command.set, rt.command.bad = false, true
					}
				},
				"command_type": func(p pair) {
					rt.cmdType = d.str(p.v, join(cf, "command_type"))
					if rt.cmdType.set && rt.cmdType.v != "SHELL" && rt.cmdType.v != "POWERSHELL" {
						d.errorf(rt.cmdType.at.line, join(cf, "command_type"), "%q is not SHELL or POWERSHELL", rt.cmdType.v)
						rt.cmdType.set, rt.cmdType.bad = false, true
					}
				},
				"timeout": func(p pair) {
					rt.timeout = d.duration(p.v, join(cf, "timeout"), time.Second)
					if rt.timeout.set && (rt.timeout.v > MaxRestoreCheckTimeout || rt.timeout.v%time.Second != 0) {
						d.errorf(rt.timeout.at.line, join(cf, "timeout"), "must be a whole number of seconds up to %s, got %s",
							formatDuration(MaxRestoreCheckTimeout), formatDuration(rt.timeout.v))
						rt.timeout.set, rt.timeout.bad = false, true
					}
				},
			})
		},
		"keep_for": func(p pair) { rt.keepFor = d.duration(p.v, f("keep_for"), time.Minute) },
	})
	rt.decodeErrs = len(*d.errs) - start
	return rt
}

// idValue decodes one resource id matching re.
func (d *decoder) idValue(n *yaml.Node, field string, re *regexp.Regexp, what string) val[string] {
	v := d.str(n, field)
	if v.set && !re.MatchString(v.v) {
		d.errorf(v.at.line, field, "%q is not %s", v.v, what)
		v.set, v.bad = false, true
	}
	return v
}

// restoreTests builds the restore tests against the policies: each names a policy of the file (one
// declared but invalid is reported with that policy, not again here), a region that is the
// policy's or one of its copy_to regions, and a zone in that region. declared lists every policy
// name the files wrote.
func (b *builder) restoreTests(raws []*rawRestoreTest, cfg *Config, declared map[string]bool) []*RestoreTest {
	var out []*RestoreTest
	firstAt := map[string]pos{}
	for _, rt := range raws {
		t, ok := b.restoreTest(rt, cfg, declared)
		if rt.name.set {
			if first, dup := firstAt[rt.name.v]; dup {
				b.errorf(rt.name.at, join(rt.field, "name"), "duplicate restore test name %q (already defined at %s)", rt.name.v, first)
				continue
			}
			firstAt[rt.name.v] = rt.name.at
		}
		if ok {
			out = append(out, t)
		}
	}
	return out
}

func (b *builder) restoreTest(rt *rawRestoreTest, cfg *Config, declared map[string]bool) (*RestoreTest, bool) {
	start := len(*b.errs)
	f := func(key string) string { return join(rt.field, key) }
	where := rt.at
	if rt.name.present() {
		where = rt.name.at
	}
	t := &RestoreTest{Name: rt.name.v, File: rt.at.file, Line: rt.at.line, Sample: DefaultRestoreSample,
		KeepFor: DefaultRestoreKeepFor, Check: RestoreCheck{Timeout: DefaultRestoreCheckTimeout, CommandType: "SHELL"}}
	if !rt.name.present() {
		b.errorf(rt.at, f("name"), "required")
	}
	var p *Policy
	switch {
	case rt.policy.set:
		p = cfg.Policy(rt.policy.v)
		if p == nil && !declared[rt.policy.v] {
			names := make([]string, 0, len(cfg.Policies))
			for _, q := range cfg.Policies {
				names = append(names, q.Name)
			}
			b.errorf(rt.policy.at, f("policy"), "no policy is named %q (policies: %s)", rt.policy.v, strings.Join(names, ", "))
		}
		t.Policy = rt.policy.v
	case !rt.policy.present():
		b.errorf(where, f("policy"), "required: the policy whose latest image is tested")
	}
	if p != nil {
		t.Region = p.Region
		if rt.region.set && rt.region.v != p.Region {
			if !slices.ContainsFunc(p.CopyTo, func(c CopyTarget) bool { return c.Region == rt.region.v }) {
				b.errorf(rt.region.at, f("region"), "%q is neither policy %s's region (%s) nor one of its copy_to regions: no image of it is there",
					rt.region.v, p.Name, p.Region)
			}
			t.Region, t.Copy = rt.region.v, true
		}
	}

	loc := time.UTC
	if p != nil && p.Location != nil {
		loc = p.Location
	}
	switch {
	case rt.schedule.set:
		t.ScheduleSpec = rt.schedule.v
		s, err := ParseSchedule(rt.schedule.v, loc)
		if err != nil {
			b.errorf(rt.schedule.at, f("schedule"), "%v", err)
			break
		}
		if s.Next(b.now).IsZero() {
			b.errorf(rt.schedule.at, f("schedule"), "%q never fires: no date matches it in the next five years", rt.schedule.v)
			break
		}
		t.Schedule = s
	case !rt.schedule.present():
		b.errorf(where, f("schedule"), "required: a cron expression (\"0 6 * * 0\"), a descriptor (@weekly) or @every 24h")
	}
	if rt.sample.set {
		t.Sample = rt.sample.v
	}

	switch {
	case !rt.launchSet:
		b.errorf(where, f("launch"), "required: at least launch.zone, the availability zone the instance is launched in")
	case rt.zone.set:
		t.Launch.Zone = rt.zone.v
		if m := zoneRe.FindStringSubmatch(rt.zone.v); m != nil && t.Region != "" && m[1] != t.Region {
			b.errorf(rt.zone.at, f("launch.zone"), "%q is not in region %s, where the test's image is", rt.zone.v, t.Region)
		}
	case !rt.zone.present():
		b.errorf(rt.launchAt, f("launch.zone"), "required: the availability zone the instance is launched in (e.g. %s-3)", cmp.Or(t.Region, "ap-guangzhou"))
	}
	t.Launch.InstanceType, t.Launch.VpcID, t.Launch.SubnetID = rt.instType.v, rt.vpc.v, rt.subnet.v
	t.Launch.SecurityGroupIDs = rt.groups
	switch {
	case rt.vpc.set && !rt.subnet.present():
		b.errorf(rt.vpc.at, f("launch.subnet_id"), "required with vpc_id")
	case rt.subnet.set && !rt.vpc.present():
		b.errorf(rt.subnet.at, f("launch.vpc_id"), "required with subnet_id")
	}

	switch {
	case !rt.checkSet:
		b.errorf(where, f("check"), "required: check.command, the command that must exit 0 on the restored instance")
	case rt.command.set:
		t.Check.Command = rt.command.v
	case !rt.command.present():
		b.errorf(rt.checkAt, f("check.command"), "required: the command that must exit 0 on the restored instance")
	}
	if rt.cmdType.set {
		t.Check.CommandType = rt.cmdType.v
	}
	if rt.timeout.set {
		t.Check.Timeout = rt.timeout.v
	}
	if rt.keepFor.set {
		t.KeepFor = rt.keepFor.v
	}
	if !rt.keepFor.bad && !rt.timeout.bad && t.KeepFor < t.Check.Timeout+MinRestoreSetup {
		at, field := rt.at, f("keep_for")
		if rt.keepFor.set {
			at = rt.keepFor.at
		} else if rt.timeout.set {
			at, field = rt.timeout.at, f("check.timeout")
		}
		b.errorf(at, field, "keep_for %s must exceed check.timeout %s by at least %s (the instance must start and its TAT agent come online first)",
			formatDuration(t.KeepFor), formatDuration(t.Check.Timeout), formatDuration(MinRestoreSetup))
	}
	return t, p != nil && rt.decodeErrs == 0 && len(*b.errs) == start
}
