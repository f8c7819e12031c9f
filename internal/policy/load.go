package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // policies name IANA zones; do not depend on the host (or container) having tzdata

	"gopkg.in/yaml.v3"
)

// FileVersion is the only `version:` this package reads.
const FileVersion = 1

// Load reads the policies at path: one YAML file, or a directory whose *.yaml and *.yml files
// (not hidden ones, not subdirectories) are merged in name order. Decoding is strict and every
// problem is collected: the error is then a *ValidationError listing each one with file and line.
// Alongside a *ValidationError, Load also returns a Config holding the policies that validated on
// their own, so `imager validate` can still show their fire times; never run such a Config. Other
// errors (the path cannot be read) are returned alone. Options change where the environment is
// read from (WithEnv).
func Load(path string, opts ...Option) (*Config, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	if !info.IsDir() {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		return load(path, []source{{name: path, data: data}}, time.Now(), newLoadOptions(opts))
	}
	entries, err := os.ReadDir(path) // sorted by name
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	var srcs []source
	for _, e := range entries {
		name := e.Name()
		ext := filepath.Ext(name)
		if e.IsDir() || strings.HasPrefix(name, ".") || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		file := filepath.Join(path, name)
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		srcs = append(srcs, source{name: file, data: data})
	}
	if len(srcs) == 0 {
		return nil, fmt.Errorf("read policies: no *.yaml or *.yml files in directory %s", path)
	}
	return load(path, srcs, time.Now(), newLoadOptions(opts))
}

// LoadBytes loads one policy file held in memory; name is used in error messages. It behaves as
// Load does for a single file.
func LoadBytes(name string, data []byte, opts ...Option) (*Config, error) {
	return load(name, []source{{name: name, data: data}}, time.Now(), newLoadOptions(opts))
}

// Policy returns the policy with that name, or nil.
func (c *Config) Policy(name string) *Policy {
	if c.byName != nil {
		return c.byName[name]
	}
	for _, p := range c.Policies {
		if p.Name == name {
			return p
		}
	}
	return nil
}

type source struct {
	name string
	data []byte
}

// Defaults for settings a file leaves out.
const (
	DefaultCreateImageRate    = 10
	DefaultDescribeImagesRate = 20
	DefaultWorkers            = 4
	DefaultDuplicateRetries   = 3
	DefaultImageTimeout       = 4 * time.Hour
	DefaultMinKeep            = 1
)

// DefaultAPI returns the `api:` settings used when a file does not set them.
func DefaultAPI() API {
	return API{
		CreateImageRate:    DefaultCreateImageRate,
		DescribeImagesRate: DefaultDescribeImagesRate,
		Workers:            DefaultWorkers,
		Retry: Retry{
			Transient: Backoff{Initial: 200 * time.Millisecond, Max: 30 * time.Second},
			Throttled: Backoff{Initial: time.Second, Max: 10 * time.Second, Attempts: 10},
			Busy:      Backoff{Initial: 30 * time.Second, Max: 5 * time.Minute, MaxElapsed: 15 * time.Minute},
			Duplicate: DefaultDuplicateRetries,
		},
	}
}

var (
	policyNameRe = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)
	instanceRe   = regexp.MustCompile(`^ins-[a-z0-9]{8}$`)
	diskRe       = regexp.MustCompile(`^disk-[a-z0-9]{8}$`)
)

const (
	instanceWhat = "an instance id (ins- followed by 8 lowercase letters or digits)"
	diskWhat     = "a disk id (disk- followed by 8 lowercase letters or digits)"
)

// fileResult is what one file contributed.
type fileResult struct {
	unreadable bool // a syntax error or alias overflow: what it defines is unknown
	api        *API
	apiAt      pos
	apiBad     bool         // the api: block had problems (reported)
	accounts   *rawAccounts // the accounts: block (accounts.go), nil when absent
	defaults   *rawDefaults
	policies   []*rawPolicy
	notify     *Notify // the notify: block (notify.go), nil when absent
	notifyAt   pos
	history    *History // the history: block (history.go), nil when absent
	historyAt  pos
	restore    []*rawRestoreTest // the restore_tests: block (restore.go)
}

// load decodes every source, merges them, applies defaults and validates. label names the whole
// input in errors not tied to one file.
func load(label string, srcs []source, now time.Time, opts loadOptions) (*Config, error) {
	var errs []FieldError
	cfg := &Config{API: DefaultAPI(), Notify: Notify{Keep: DefaultNotifyKeep}, History: History{Keep: DefaultHistoryKeep},
		byName: map[string]*Policy{}}
	var apiAt, defAt, notifyAt, historyAt, accountsAt pos
	var defaults *rawDefaults
	var accounts *rawAccounts
	apiBad := false
	var raws []*rawPolicy
	var restoreRaws []*rawRestoreTest
	unreadable := false
	for _, src := range srcs {
		cfg.Sources = append(cfg.Sources, src.name)
		fr := decodeFile(src.name, src.data, &errs)
		unreadable = unreadable || fr.unreadable
		if fr.api != nil {
			if apiAt.file != "" {
				errs = append(errs, FieldError{File: src.name, Line: fr.apiAt.line, Field: "api",
					Message: fmt.Sprintf("the api block may appear in one file only; it is already in %s", apiAt)})
			} else {
				cfg.API, apiAt, apiBad = *fr.api, fr.apiAt, fr.apiBad
			}
		}
		if fr.accounts != nil {
			if accountsAt.file != "" {
				errs = append(errs, FieldError{File: src.name, Line: fr.accounts.at.line, Field: "accounts",
					Message: fmt.Sprintf("the accounts block may appear in one file only; it is already in %s", accountsAt)})
			} else {
				accounts, accountsAt = fr.accounts, fr.accounts.at
			}
		}
		if fr.defaults != nil {
			if defAt.file != "" {
				errs = append(errs, FieldError{File: src.name, Line: fr.defaults.at.line, Field: "defaults",
					Message: fmt.Sprintf("the defaults block may appear in one file only; it is already in %s", defAt)})
			} else {
				defaults, defAt = fr.defaults, fr.defaults.at
			}
		}
		if fr.notify != nil {
			if notifyAt.file != "" {
				errs = append(errs, FieldError{File: src.name, Line: fr.notifyAt.line, Field: "notify",
					Message: fmt.Sprintf("the notify block may appear in one file only; it is already in %s", notifyAt)})
			} else {
				cfg.Notify, notifyAt = *fr.notify, fr.notifyAt
			}
		}
		if fr.history != nil {
			if historyAt.file != "" {
				errs = append(errs, FieldError{File: src.name, Line: fr.historyAt.line, Field: "history",
					Message: fmt.Sprintf("the history block may appear in one file only; it is already in %s", historyAt)})
			} else {
				cfg.History, historyAt = *fr.history, fr.historyAt
			}
		}
		raws = append(raws, fr.policies...)
		restoreRaws = append(restoreRaws, fr.restore...)
	}
	if defaults == nil {
		// A file that could not be read may have held the defaults: then a policy without a
		// region says nothing new, and the syntax error is the one to fix.
		defaults = &rawDefaults{unknown: unreadable}
	}

	var set *accountSet
	cfg.Accounts, set = buildAccounts(accounts, cfg.API, apiAt, apiBad, unreadable, opts.env, &errs)

	b := builder{errs: &errs, def: defaults, accounts: set, now: now}
	firstAt := map[string]pos{}
	for _, rp := range raws {
		p, ok := b.build(rp)
		if rp.name.set {
			if first, dup := firstAt[rp.name.v]; dup {
				errs = append(errs, FieldError{File: rp.name.at.file, Line: rp.name.at.line, Field: join(rp.field, "name"),
					Message: fmt.Sprintf("duplicate policy name %q (already defined at %s)", clip(rp.name.v), first)})
				continue
			}
			firstAt[rp.name.v] = rp.name.at
		}
		if ok {
			cfg.Policies = append(cfg.Policies, p)
			cfg.byName[p.Name] = p
		}
	}
	declared := map[string]bool{}
	for _, rp := range raws {
		if rp.name.set {
			declared[rp.name.v] = true
		}
	}
	cfg.RestoreTests = b.restoreTests(restoreRaws, cfg, declared)
	if len(raws) == 0 && len(errs) == 0 {
		errs = append(errs, FieldError{File: label, Field: "policies", Message: "no policies defined"})
	}
	if len(errs) > 0 {
		sortFieldErrors(errs)
		return cfg, &ValidationError{Errors: errs}
	}
	return cfg, nil
}

// parseYAML decodes data into its first document node; yaml.v3 is trusted not to panic, but a
// policy file must never crash the daemon, so a panic becomes an error.
func parseYAML(data []byte) (doc *yaml.Node, extra *yaml.Node, err error) {
	defer func() {
		if r := recover(); r != nil {
			doc, extra, err = nil, nil, fmt.Errorf("yaml: cannot parse: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	doc = &yaml.Node{}
	if err := dec.Decode(doc); err != nil {
		return nil, nil, err
	}
	next := &yaml.Node{}
	switch err := dec.Decode(next); {
	case errors.Is(err, io.EOF):
		return doc, nil, nil
	case err != nil:
		return doc, nil, err
	}
	return doc, next, nil
}

var yamlLineRe = regexp.MustCompile(`^yaml: (?:line (\d+): )?`)

// syntaxError turns a yaml.v3 error ("yaml: line 3: did not find expected key") into a FieldError.
func syntaxError(file string, err error) FieldError {
	msg := err.Error()
	line := 0
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	}
	return FieldError{File: file, Line: line, Message: "invalid YAML: " + msg}
}

func countNodes(n *yaml.Node, depth int) int {
	if n == nil || depth > 10_000 {
		return 0
	}
	c := 1
	for _, e := range n.Content {
		c += countNodes(e, depth+1)
	}
	return c
}

// decodeFile decodes one file's top level: version, api, accounts, defaults, notify, history,
// policies.
func decodeFile(file string, data []byte, errs *[]FieldError) fileResult {
	var fr fileResult
	doc, extra, err := parseYAML(data)
	if errors.Is(err, io.EOF) {
		*errs = append(*errs, FieldError{File: file, Line: 1, Field: "version", Message: "the file is empty; it needs at least `version: 1`"})
		return fr
	}
	if err != nil {
		*errs = append(*errs, syntaxError(file, err))
		fr.unreadable = true
		if doc == nil {
			return fr
		}
	}
	if extra != nil {
		*errs = append(*errs, FieldError{File: file, Line: extra.Line, Message: "only one YAML document per file (remove the `---`)"})
	}
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	d := &decoder{file: file, errs: errs, budget: countNodes(root, 0) + aliasBudget}
	version := false
	keys := map[string]func(pair){
		"version": func(p pair) {
			version = true
			v := d.integer(p.v, "version", 0, 1<<30)
			if v.set && v.v != FileVersion {
				d.errorf(v.at.line, "version", "unsupported version %d: this imager reads version %d", v.v, FileVersion)
			}
		},
		"api": func(p pair) {
			start := len(*errs)
			a := d.api(p.v, "api", 1).apply(DefaultAPI(), "", d.report)
			fr.api, fr.apiAt, fr.apiBad = &a, d.at(p.k), len(*errs) > start
		},
		"accounts": func(p pair) {
			fr.accounts = d.accounts(p.v, d.at(p.k))
		},
		"defaults": func(p pair) {
			fr.defaults = d.defaults(p.v, d.at(p.k))
		},
		"notify": func(p pair) {
			fr.notify, fr.notifyAt = d.notify(p.v), d.at(p.k)
		},
		"history": func(p pair) {
			fr.history, fr.historyAt = d.history(p.v), d.at(p.k)
		},
		"restore_tests": func(p pair) { fr.restore = d.restoreTests(p.v) },
		"policies": func(p pair) {
			n := d.resolve(p.v)
			if n == nil || isNull(n) {
				return
			}
			if n.Kind != yaml.SequenceNode {
				d.errorf(n.Line, "policies", "expected a list of policies, got %s", kindName(n))
				return
			}
			for i, e := range n.Content {
				if rp := d.policy(e, index("policies", i)); rp != nil {
					fr.policies = append(fr.policies, rp)
				}
			}
		},
	}
	// Top-level keys starting with "x-" are free for the file's own use, such as anchors to merge
	// into policies (as in Compose files).
	if root.Kind == yaml.MappingNode {
		for i := 0; i < len(root.Content); i += 2 {
			if k := root.Content[i]; k.Kind == yaml.ScalarNode && strings.HasPrefix(k.Value, "x-") {
				keys[k.Value] = func(pair) {}
			}
		}
	}
	top := d.mapping(root, "", 0, keys)
	if d.overflow {
		return fileResult{unreadable: true} // decoding was cut short: judge nothing else in this file
	}
	if top != nil && isNull(top) {
		*errs = append(*errs, FieldError{File: file, Line: max(top.Line, 1), Field: "version", Message: "the file is empty; it needs at least `version: 1`"})
		return fr
	}
	if top != nil && !version {
		d.errorf(max(top.Line, 1), "version", "required: add `version: %d`", FileVersion)
	}
	return fr
}

// rawAPI is an `api:` block as written: the settings it sets, applied over a base by apply
// (DefaultAPI for the top-level block, the top-level block for an account's, accounts.go).
type rawAPI struct {
	field string // "api" or "accounts[i].api"
	errs  int    // problems found while decoding it

	createImageRate, describeImagesRate, workers, duplicate val[int]
	retry                                                   [len(retryClasses)]rawBackoff
}

// rawBackoff is one `api.retry.<class>` block as written.
type rawBackoff struct {
	present bool // the class's key is written (with a mapping or nothing)
	at      pos  // its key
	initial val[time.Duration]
	max     val[time.Duration]
	attempt val[int]
	elapsed val[time.Duration]
}

// retryClasses are the keys of `api.retry` that hold a backoff. windowBounded classes (transient)
// always stop when the slot's start window closes, so they need neither attempts nor max_elapsed.
var retryClasses = [...]struct {
	key           string
	windowBounded bool
	of            func(*Retry) *Backoff
}{
	{"transient", true, func(r *Retry) *Backoff { return &r.Transient }},
	{"throttled", false, func(r *Retry) *Backoff { return &r.Throttled }},
	{"busy", false, func(r *Retry) *Backoff { return &r.Busy }},
}

// api decodes an `api:` block at field. Its values are checked alone here; whether each retry class
// can end depends on the base it is applied over (apply).
func (d *decoder) api(n *yaml.Node, field string, depth int) *rawAPI {
	start := len(*d.errs)
	r := &rawAPI{field: field}
	intKey := func(dst *val[int], key string, lo, hi int) func(pair) {
		return func(p pair) { *dst = d.integer(p.v, join(field, key), lo, hi) }
	}
	classes := map[string]func(pair){
		"duplicate": func(p pair) { r.duplicate = d.integer(p.v, join(field, "retry.duplicate"), 0, 10) },
	}
	for i, c := range retryClasses {
		classes[c.key] = func(p pair) { d.backoff(p, join(field, "retry."+c.key), &r.retry[i], depth+2) }
	}
	d.mapping(n, field, depth, map[string]func(pair){
		"create_image_rate":    intKey(&r.createImageRate, "create_image_rate", 1, 1000),
		"describe_images_rate": intKey(&r.describeImagesRate, "describe_images_rate", 1, 40),
		"workers":              intKey(&r.workers, "workers", 1, 256),
		"retry":                func(p pair) { d.mapping(p.v, join(field, "retry"), depth+1, classes) },
	})
	r.errs = len(*d.errs) - start
	return r
}

// backoff decodes one retry class.
func (d *decoder) backoff(p pair, field string, b *rawBackoff, depth int) {
	n := d.mapping(p.v, field, depth, map[string]func(pair){
		"initial":     func(p pair) { b.initial = d.duration(p.v, join(field, "initial"), time.Millisecond) },
		"max":         func(p pair) { b.max = d.duration(p.v, join(field, "max"), time.Millisecond) },
		"attempts":    func(p pair) { b.attempt = d.integer(p.v, join(field, "attempts"), 0, 1000) },
		"max_elapsed": func(p pair) { b.elapsed = d.duration(p.v, join(field, "max_elapsed"), 0) },
	})
	b.present, b.at = n != nil, d.at(p.k)
}

// apply returns base with the block's settings written over it, and reports each retry class the
// block writes that could not end (max below initial; neither attempts nor max_elapsed). inherited
// names where the settings the block leaves out come from, for those messages ("" for the
// built-in defaults).
func (r *rawAPI) apply(base API, inherited string, report func(at pos, field, msg string)) API {
	a := base
	setInt := func(dst *int, v val[int]) {
		if v.set {
			*dst = v.v
		}
	}
	setDur := func(dst *time.Duration, v val[time.Duration]) {
		if v.set {
			*dst = v.v
		}
	}
	setInt(&a.CreateImageRate, r.createImageRate)
	setInt(&a.DescribeImagesRate, r.describeImagesRate)
	setInt(&a.Workers, r.workers)
	setInt(&a.Retry.Duplicate, r.duplicate)
	for i, c := range retryClasses {
		rb, b := &r.retry[i], c.of(&a.Retry)
		setDur(&b.Initial, rb.initial)
		setDur(&b.Max, rb.max)
		setInt(&b.Attempts, rb.attempt)
		setDur(&b.MaxElapsed, rb.elapsed)
		if !rb.present {
			continue
		}
		field := join(r.field, "retry."+c.key)
		note := ""
		if inherited != "" {
			note = " (" + inherited + ")"
		}
		if b.Max < b.Initial {
			at := rb.at
			if rb.max.set {
				at = rb.max.at
			}
			n := ""
			if !rb.max.present() || !rb.initial.present() {
				n = note
			}
			report(at, join(field, "max"), fmt.Sprintf("max %s is less than initial %s%s", formatDuration(b.Max), formatDuration(b.Initial), n))
		}
		if b.Attempts == 0 && b.MaxElapsed == 0 && !c.windowBounded {
			n := ""
			if !rb.attempt.present() || !rb.elapsed.present() {
				n = note
			}
			report(rb.at, field, "retries would never stop: set attempts or max_elapsed"+n)
		}
	}
	return a
}
