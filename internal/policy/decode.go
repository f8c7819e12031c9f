package policy

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// The YAML is decoded into yaml.Node and walked by hand rather than unmarshalled into structs, so
// that every problem carries its file, line and dotted field path, and so that decoding goes on
// after the first problem: `imager validate` reports all of them at once.

// pos is where a value was written.
type pos struct {
	file string
	line int
}

func (p pos) String() string { return p.file + ":" + strconv.Itoa(p.line) }

// val is one decoded setting: set when present with a usable value, bad when present but invalid
// (already reported, so checks that depend on it stay quiet instead of piling up).
type val[T any] struct {
	v   T
	set bool
	bad bool
	at  pos
}

func (v val[T]) present() bool { return v.set || v.bad }

// pick returns own when the policy wrote the setting, else the inherited one.
func pick[T any](own, inherited val[T]) val[T] {
	if own.present() {
		return own
	}
	return inherited
}

// item is one element of a list, with its line.
type item struct {
	v    string
	line int
}

// aliasBudget bounds how many nodes the walk may visit beyond the document's own: YAML aliases are
// pointers, and a "billion laughs" document would expand exponentially.
const aliasBudget = 200_000

// maxDepth bounds nesting (and alias cycles such as `&a [*a]`).
const maxDepth = 64

// decoder walks one file's nodes and collects its problems.
type decoder struct {
	file     string
	errs     *[]FieldError
	budget   int
	overflow bool
}

func (d *decoder) errorf(line int, field, format string, args ...any) {
	*d.errs = append(*d.errs, FieldError{File: d.file, Line: line, Field: clipField(field), Message: fmt.Sprintf(format, clipArgs(args)...)})
}

// report records a problem whose message is already written (not clipped: it quotes no value).
func (d *decoder) report(at pos, field, msg string) {
	*d.errs = append(*d.errs, FieldError{File: at.file, Line: at.line, Field: clipField(field), Message: msg})
}

func (d *decoder) at(n *yaml.Node) pos { return pos{file: d.file, line: n.Line} }

// resolve follows aliases and charges the walk's budget; nil means stop (already reported).
func (d *decoder) resolve(n *yaml.Node) *yaml.Node {
	for hops := 0; n != nil && n.Kind == yaml.AliasNode; hops++ {
		if hops > maxDepth {
			d.errorf(n.Line, "", "alias chain too long")
			return nil
		}
		n = n.Alias
	}
	if n == nil {
		return nil
	}
	d.budget--
	if d.budget < 0 {
		if !d.overflow {
			d.overflow = true
			d.errorf(n.Line, "", "document expands to too many nodes (aliases)")
		}
		return nil
	}
	return n
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

func index(field string, i int) string { return field + "[" + strconv.Itoa(i) + "]" }

// kindName names what a node holds, for "expected X, got Y" messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing (null)"
		case "!!str":
			return "the string " + strconv.Quote(n.Value)
		default:
			return strconv.Quote(n.Value)
		}
	}
	return "something else"
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// pair is one key of a mapping with its value node.
type pair struct {
	key  string
	k, v *yaml.Node
}

// pairs lists a mapping's keys, reporting duplicates and non-string keys, and applies YAML merge
// keys (`<<: *anchor`): keys written in the mapping win over merged ones.
func (d *decoder) pairs(n *yaml.Node, field string, depth int) []pair {
	if depth > maxDepth {
		d.errorf(n.Line, field, "nested too deeply")
		return nil
	}
	var own, merged []pair
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := d.resolve(n.Content[i])
		if k == nil {
			return own
		}
		v := n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merged = append(merged, d.mergeSources(v, field, depth)...)
			continue
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!null" {
			d.errorf(k.Line, field, "keys must be plain names, got %s", kindName(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.errorf(k.Line, join(field, k.Value), "duplicate key (first at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		own = append(own, pair{key: k.Value, k: k, v: v})
	}
	for _, p := range merged {
		if _, dup := seen[p.key]; !dup {
			seen[p.key] = p.k.Line
			own = append(own, p)
		}
	}
	return own
}

func (d *decoder) mergeSources(v *yaml.Node, field string, depth int) []pair {
	v = d.resolve(v)
	if v == nil {
		return nil
	}
	switch v.Kind {
	case yaml.MappingNode:
		return d.pairs(v, field, depth+1)
	case yaml.SequenceNode:
		var out []pair
		seen := map[string]bool{}
		for _, e := range v.Content {
			e = d.resolve(e)
			if e == nil {
				return out
			}
			if e.Kind != yaml.MappingNode {
				d.errorf(e.Line, field, "merge key (<<) takes mappings, got %s", kindName(e))
				continue
			}
			for _, p := range d.pairs(e, field, depth+1) {
				if !seen[p.key] { // the first mapping listed wins
					seen[p.key] = true
					out = append(out, p)
				}
			}
		}
		return out
	}
	d.errorf(v.Line, field, "merge key (<<) takes a mapping, got %s", kindName(v))
	return nil
}

// mapping decodes a mapping with a fixed set of keys; any other key is an error. n may be null
// (treated as an empty mapping). It returns the resolved node, or nil when n is not a mapping.
func (d *decoder) mapping(n *yaml.Node, field string, depth int, keys map[string]func(p pair)) *yaml.Node {
	n = d.resolve(n)
	if n == nil {
		return nil
	}
	if isNull(n) {
		return n
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, field, "expected a mapping, got %s", kindName(n))
		return nil
	}
	for _, p := range d.pairs(n, field, depth) {
		if fn, ok := keys[p.key]; ok {
			fn(p)
			continue
		}
		d.errorf(p.k.Line, join(field, p.key), "unknown key %q%s", p.key, suggest(p.key, keys))
	}
	return n
}

// scalar returns the node when it is a non-null scalar, reporting anything else.
func (d *decoder) scalar(n *yaml.Node, field, want string) *yaml.Node {
	n = d.resolve(n)
	if n == nil {
		return nil
	}
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.errorf(n.Line, field, "expected %s, got %s", want, kindName(n))
		return nil
	}
	return n
}

// str decodes a string. Numbers and booleans are accepted as their text (`cost-center: 1234`).
func (d *decoder) str(n *yaml.Node, field string) val[string] {
	s := d.scalar(n, field, "a string")
	if s == nil {
		return val[string]{bad: true, at: d.at(n)}
	}
	return val[string]{v: s.Value, set: true, at: d.at(s)}
}

// integer decodes an integer within [lo, hi].
func (d *decoder) integer(n *yaml.Node, field string, lo, hi int) val[int] {
	s := d.scalar(n, field, "an integer")
	if s == nil {
		return val[int]{bad: true, at: d.at(n)}
	}
	bad := val[int]{bad: true, at: d.at(s)}
	if s.ShortTag() != "!!int" {
		d.errorf(s.Line, field, "expected an integer, got %s", kindName(s))
		return bad
	}
	i, err := strconv.ParseInt(strings.ReplaceAll(s.Value, "_", ""), 0, 64)
	if err != nil || i < int64(lo) || i > int64(hi) {
		d.errorf(s.Line, field, "%s is out of range %d..%d", s.Value, lo, hi)
		return bad
	}
	return val[int]{v: int(i), set: true, at: d.at(s)}
}

// boolean decodes true or false.
func (d *decoder) boolean(n *yaml.Node, field string) val[bool] {
	s := d.scalar(n, field, "true or false")
	if s == nil {
		return val[bool]{bad: true, at: d.at(n)}
	}
	b, err := strconv.ParseBool(s.Value)
	if s.ShortTag() != "!!bool" || err != nil {
		d.errorf(s.Line, field, "expected true or false, got %s", kindName(s))
		return val[bool]{bad: true, at: d.at(s)}
	}
	return val[bool]{v: b, set: true, at: d.at(s)}
}

// duration decodes a duration string ("90s", "12h", "30d") no shorter than least; a bare 0 is
// accepted as zero.
func (d *decoder) duration(n *yaml.Node, field string, least time.Duration) val[time.Duration] {
	s := d.scalar(n, field, "a duration such as 30s, 15m, 12h or 30d")
	if s == nil {
		return val[time.Duration]{bad: true, at: d.at(n)}
	}
	bad := val[time.Duration]{bad: true, at: d.at(s)}
	var dur time.Duration
	switch s.ShortTag() {
	case "!!str":
		var err error
		if dur, err = ParseDuration(s.Value); err != nil {
			d.errorf(s.Line, field, "%v", err)
			return bad
		}
	case "!!int":
		if i, err := strconv.ParseInt(s.Value, 0, 64); err != nil || i != 0 {
			d.errorf(s.Line, field, "%s needs a unit, e.g. %ss or %sm", s.Value, s.Value, s.Value)
			return bad
		}
	default:
		d.errorf(s.Line, field, "expected a duration such as 30s, 15m, 12h or 30d, got %s", kindName(s))
		return bad
	}
	if dur < least {
		if least == 0 {
			d.errorf(s.Line, field, "must not be negative, got %s", s.Value)
		} else {
			d.errorf(s.Line, field, "must be at least %s, got %s", formatDuration(least), s.Value)
		}
		return bad
	}
	return val[time.Duration]{v: dur, set: true, at: d.at(s)}
}

// list decodes a list of strings, each with its line; ok is false when n is not a list.
func (d *decoder) list(n *yaml.Node, field string) (items []item, ok bool) {
	n = d.resolve(n)
	if n == nil {
		return nil, false
	}
	if isNull(n) {
		return nil, true
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n.Line, field, "expected a list, got %s", kindName(n))
		return nil, false
	}
	for i, e := range n.Content {
		s := d.scalar(e, index(field, i), "a string")
		if s == nil {
			items = append(items, item{line: -1})
			continue
		}
		items = append(items, item{v: s.Value, line: s.Line})
	}
	return items, true
}

// idList checks a list of resource ids against re, reporting malformed and duplicate entries by
// index and value. It returns the good ids.
func (d *decoder) idList(items []item, field string, re *regexp.Regexp, what string) []string {
	var ids []string
	seen := map[string]int{}
	for i, it := range items {
		if it.line < 0 {
			continue // not a string; reported
		}
		f := index(field, i)
		if !re.MatchString(it.v) {
			d.errorf(it.line, f, "%q is not %s", it.v, what)
			continue
		}
		if first, dup := seen[it.v]; dup {
			d.errorf(it.line, f, "duplicate %q (also at line %d)", it.v, first)
			continue
		}
		seen[it.v] = it.line
		ids = append(ids, it.v)
	}
	return ids
}

// suggest returns ` (did you mean "x"?)` for a key close to a known one, else "".
func suggest(key string, keys map[string]func(p pair)) string {
	best, bestDist := "", 3
	for k := range keys {
		if dist := editDistance(key, k); dist < bestDist || (dist == bestDist && k < best) {
			best, bestDist = k, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
