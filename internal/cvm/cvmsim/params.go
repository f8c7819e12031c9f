package cvmsim

import (
	"math"
	"slices"
	"strconv"
	"strings"
)

// params is a decoded JSON request body.
type params map[string]any

// checkKnown answers UnknownParameter for the first key not in known.
func (p params) checkKnown(known ...string) *apiError {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic: report the same key every time
	for _, k := range keys {
		if !slices.Contains(known, k) {
			return errf("UnknownParameter", "The parameter `%s` is not recognized.", k)
		}
	}
	return nil
}

func typeError(key, want string) *apiError {
	return errf("InvalidParameter", "The value type of parameter `%s` is incorrect, it should be %s.", key, want)
}

// str returns a string parameter and whether it was present (JSON null counts as absent).
func (p params) str(key string) (string, bool, *apiError) {
	v, ok := p[key]
	if !ok || v == nil {
		return "", false, nil
	}
	s, ok := v.(string)
	if !ok {
		return "", false, typeError(key, "String")
	}
	return s, true, nil
}

// strList returns an array-of-strings parameter.
func (p params) strList(key string) ([]string, bool, *apiError) {
	v, ok := p[key]
	if !ok || v == nil {
		return nil, false, nil
	}
	return toStrList(key, v)
}

func toStrList(key string, v any) ([]string, bool, *apiError) {
	arr, ok := v.([]any)
	if !ok {
		return nil, false, typeError(key, "Array of String")
	}
	out := make([]string, 0, len(arr))
	for _, e := range arr {
		s, ok := e.(string)
		if !ok {
			return nil, false, typeError(key, "Array of String")
		}
		out = append(out, s)
	}
	return out, true, nil
}

// boolean returns a Boolean parameter (JSON true/false, or the strings "true"/"false").
func (p params) boolean(key string) (bool, *apiError) {
	switch v := p[key].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, typeError(key, "Boolean")
		}
		return b, nil
	default:
		return false, typeError(key, "Boolean")
	}
}

// integer returns a non-negative Integer parameter, or def when absent.
func (p params) integer(key string, def int) (int, *apiError) {
	var n float64
	switch v := p[key].(type) {
	case nil:
		return def, nil
	case float64:
		n = v
	case string:
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, typeError(key, "Integer")
		}
		n = f
	default:
		return 0, typeError(key, "Integer")
	}
	if n != math.Trunc(n) || n < 0 || n > math.MaxInt32 {
		return 0, errf("InvalidParameterValue", "The value of parameter `%s` must be a non-negative integer.", key)
	}
	return int(n), nil
}

// page reads Offset and Limit (default 20, at most 100; 0 means the default).
func (p params) page() (offset, limit int, aerr *apiError) {
	if offset, aerr = p.integer("Offset", 0); aerr != nil {
		return 0, 0, aerr
	}
	if limit, aerr = p.integer("Limit", 20); aerr != nil {
		return 0, 0, aerr
	}
	if limit == 0 {
		limit = 20
	}
	if limit > 100 {
		return 0, 0, errf("InvalidParameterValue.LimitExceeded", "The value of parameter `Limit` must be at most 100.")
	}
	return offset, limit, nil
}

// filter is one entry of Filters.
type filter struct {
	name   string
	values []string
}

// filters reads Filters: at most 10, each with a known name and 1 to 5 values.
func (p params) filters(known func(name string) bool) ([]filter, bool, *apiError) {
	v, ok := p["Filters"]
	if !ok || v == nil {
		return nil, false, nil
	}
	arr, ok := v.([]any)
	if !ok {
		return nil, false, typeError("Filters", "Array of Filter")
	}
	if len(arr) > 10 {
		return nil, false, errf("InvalidParameterValue.LimitExceeded", "At most 10 filters are allowed per request.")
	}
	out := make([]filter, 0, len(arr))
	for i, e := range arr {
		obj, ok := e.(map[string]any)
		if !ok {
			return nil, false, typeError("Filters", "Array of Filter")
		}
		key := "Filters." + strconv.Itoa(i)
		name, ok := obj["Name"].(string)
		if !ok || name == "" {
			return nil, false, errf("InvalidFilter", "`%s.Name` is missing.", key)
		}
		if !known(name) {
			return nil, false, errf("InvalidFilter", "The filter `%s` is not supported.", name)
		}
		var values []string
		if raw, ok := obj["Values"]; ok && raw != nil {
			var aerr *apiError
			if values, _, aerr = toStrList(key+".Values", raw); aerr != nil {
				return nil, false, aerr
			}
		}
		if len(values) == 0 {
			return nil, false, errf("InvalidFilter", "The filter `%s` has no values.", name)
		}
		if len(values) > 5 {
			return nil, false, errf("InvalidFilterValue.LimitExceeded", "The filter `%s` has more than 5 values.", name)
		}
		out = append(out, filter{name: name, values: values})
	}
	return out, true, nil
}

// matchTags applies the tag filters every Describe action shares; handled is false for other
// filter names.
func matchTags(f filter, tags map[string]string) (matched, handled bool) {
	switch {
	case f.name == "tag-key":
		return slices.ContainsFunc(f.values, func(k string) bool { _, ok := tags[k]; return ok }), true
	case f.name == "tag-value":
		for _, v := range tags {
			if slices.Contains(f.values, v) {
				return true, true
			}
		}
		return false, true
	case strings.HasPrefix(f.name, "tag:"):
		v, ok := tags[strings.TrimPrefix(f.name, "tag:")]
		return ok && slices.Contains(f.values, v), true
	}
	return false, false
}

// isTagFilter reports whether name is one of the shared tag filters.
func isTagFilter(name string) bool {
	return name == "tag-key" || name == "tag-value" || (strings.HasPrefix(name, "tag:") && len(name) > len("tag:"))
}

// containsAny reports whether s contains any of subs (the APIs' fuzzy name match).
func containsAny(s string, subs []string) bool {
	return slices.ContainsFunc(subs, func(sub string) bool { return strings.Contains(s, sub) })
}

// sortedTags renders tags as the API's [{Key, Value}], sorted by key.
func sortedTags(tags map[string]string) []map[string]any {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		out = append(out, map[string]any{"Key": k, "Value": tags[k]})
	}
	return out
}

// pageOf returns the [offset, offset+limit) part of n items as bounds.
func pageOf(n, offset, limit int) (lo, hi int) {
	lo = min(offset, n)
	hi = min(lo+limit, n)
	return lo, hi
}

// object returns an object parameter (empty when absent); its own keys are read with the parent's
// name as a prefix, e.g. "Placement.Zone".
func (p params) object(key string) (params, *apiError) {
	v, ok := p[key]
	if !ok || v == nil {
		return params{}, nil
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, typeError(key, "Object")
	}
	out := make(params, len(obj))
	for k, val := range obj {
		out[key+"."+k] = val
	}
	return out, nil
}
