package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// maxQuoted is how much of a value an error message quotes: a 10 MB policy name is reported by
// its first characters and its length, not echoed whole.
const maxQuoted = 80

// clip shortens s to about maxQuoted characters for an error message, saying how long it was.
func clip(s string) string { return clipTo(s, maxQuoted) }

// clipField shortens a field path, which may end in a key the file wrote (a tag key); keys near
// their own limits (127 characters for tags) still show whole.
func clipField(s string) string { return clipTo(s, 3*maxQuoted) }

func clipTo(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	cut := limit - 16 // room for the size
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…[%d bytes]", s[:cut], len(s))
}

// clipArgs clips the string arguments of an error message (the values it quotes).
func clipArgs(args []any) []any {
	for i, a := range args {
		if s, ok := a.(string); ok {
			args[i] = clip(s)
		}
	}
	return args
}

// FieldError is one problem found in a policy file, located precisely enough for an operator to
// jump to it: the file, the 1-based line (0 when the problem is not tied to a line), and the dotted
// path of the field (e.g. `policies[2].schedule`; empty for YAML syntax errors).
type FieldError struct {
	File    string
	Line    int
	Field   string
	Message string
}

// Error formats the problem as `file:line: field: message`.
func (e FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// ValidationError holds every problem found while loading policies, so `imager validate` can report
// them all at once instead of one per run. Errors are ordered by file, then line, then field.
type ValidationError struct {
	Errors []FieldError
}

// Error prints every problem, one `file:line: field: message` per line.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		lines[i] = fe.Error()
	}
	return strings.Join(lines, "\n")
}

// sortFieldErrors orders errors by file, line and field so output is stable and reads top-down.
func sortFieldErrors(errs []FieldError) {
	slices.SortStableFunc(errs, func(a, b FieldError) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Field, b.Field))
	})
}
