package policy

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ParseDuration parses a Go duration string ("90s", "1h30m") that may also use days ("30d",
// "1d12h", "1.5d"), since retention ages are naturally written in days. A day is 24 hours.
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	bad := func(why string) (time.Duration, error) {
		return 0, fmt.Errorf("invalid duration %q: %s", clip(orig), why)
	}
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "0" {
		return 0, nil
	}
	if s == "" {
		return bad("empty")
	}
	var days float64
	var rest strings.Builder
	for s != "" {
		i := 0
		for i < len(s) && (s[i] == '.' || ('0' <= s[i] && s[i] <= '9')) {
			i++
		}
		if i == 0 {
			return bad("expected a number, e.g. 90s, 15m, 12h or 30d")
		}
		num := s[:i]
		s = s[i:]
		j := 0
		for j < len(s) && s[j] != '.' && (s[j] < '0' || s[j] > '9') {
			j++
		}
		unit := s[:j]
		s = s[j:]
		if unit == "" {
			return bad("missing unit, e.g. 90s, 15m, 12h or 30d")
		}
		if unit != "d" {
			rest.WriteString(num)
			rest.WriteString(unit)
			continue
		}
		f, err := strconv.ParseFloat(num, 64)
		if err != nil {
			return bad("bad number " + strconv.Quote(num))
		}
		days += f
	}
	var d time.Duration
	if rest.Len() > 0 {
		var err error
		if d, err = time.ParseDuration(rest.String()); err != nil {
			return bad("use units ns, us, ms, s, m, h or d")
		}
	}
	if days > 0 {
		dd := days * float64(24*time.Hour)
		if dd >= float64(math.MaxInt64-d) {
			return bad("too large")
		}
		d += time.Duration(dd)
	}
	if neg {
		d = -d
	}
	return d, nil
}

// formatDuration prints d the way operators write it: whole days as "30d", otherwise Go's form
// without trailing zero units ("12h", "1h30m").
func formatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d != 0 && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
