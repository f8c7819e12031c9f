package retention

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// candidate is one retainable run of a (policy, instance) with what the API says of its image.
type candidate struct {
	run   history.Run
	image cvm.Image
	found bool              // DescribeImages reported the image
	open  *history.Deletion // an earlier decision to delete it, not done yet
}

// verdict is why a candidate is not weighed by the rules ("" when it is).
func (c candidate) verdict(policyName string) string {
	switch {
	case !c.found:
		return "image not found by DescribeImages"
	case c.image.State != cvm.ImageStateNormal:
		return "image is " + c.image.State + ", not NORMAL"
	}
	return tagsDisagree(c.image, policyName, c.run)
}

// tagsDisagree says how the image's imager tags differ from what history says of its run, or ""
// when they agree. An image whose tags do not name this policy, this instance and this slot is
// not imager's to delete, whatever history says: someone else's image, or one retagged by hand.
func tagsDisagree(img cvm.Image, policyName string, run history.Run) string {
	tags := make(map[string]string, len(img.Tags))
	for _, t := range img.Tags {
		tags[t.Key] = t.Value
	}
	want := []cvm.Tag{
		{Key: policy.TagPolicy, Value: policyName},
		{Key: policy.TagInstance, Value: run.InstanceID},
		{Key: policy.TagSlot, Value: policy.SlotTag(run.ScheduledAt)},
	}
	var bad []string
	for _, w := range want {
		got, ok := tags[w.Key]
		switch {
		case !ok:
			bad = append(bad, "no "+w.Key+" tag")
		case got != w.Value:
			bad = append(bad, fmt.Sprintf("%s is %q, history says %q", w.Key, got, w.Value))
		}
	}
	if len(bad) == len(want) {
		return "image has no imager tags"
	}
	return strings.Join(bad, "; ")
}

// decide applies the retention rules to the verified images of one (policy, instance), newest
// slot first, and returns the reason to delete each, or "" to keep it. Only images that exist,
// are NORMAL and whose tags agree with history are passed in, so only they count as kept: the
// newest of them and the first max(min_keep, 1) are always kept; beyond those, keep_last N
// deletes all but the N newest, and max_age deletes those whose slot is older than now−max_age.
func decide(r *policy.Retention, now time.Time, verified []candidate) []string {
	slots := make([]time.Time, len(verified))
	for i, c := range verified {
		slots[i] = c.run.ScheduledAt
	}
	return Decide(r, now, slots)
}

// Decide is the retention rules over the slots of the verified images of one (policy, instance),
// newest first: the reason to delete each, or "" to keep it (see decide). The copies' retention
// in each copy_to region uses it too (internal/copies), with the slots of the runs copied.
func Decide(r *policy.Retention, now time.Time, slots []time.Time) []string {
	reasons := make([]string, len(slots))
	keep := max(r.MinKeep, 1)
	for i, slot := range slots {
		if i < keep {
			continue
		}
		switch {
		case r.KeepLast > 0 && i >= r.KeepLast:
			reasons[i] = fmt.Sprintf("keep_last %d: %s newest available image", r.KeepLast, ordinal(i+1))
		case r.MaxAge > 0 && slot.Before(now.Add(-r.MaxAge)):
			reasons[i] = fmt.Sprintf("max_age %s: slot %s is %s old", formatDuration(r.MaxAge),
				policy.SlotTag(slot), formatDuration(now.Sub(slot)))
		}
	}
	return reasons
}

// ordinal writes n as "1st", "2nd", "3rd", "4th", ..., "11th", "21st".
func ordinal(n int) string {
	suffix := "th"
	if n%100 < 11 || n%100 > 13 {
		switch n % 10 {
		case 1:
			suffix = "st"
		case 2:
			suffix = "nd"
		case 3:
			suffix = "rd"
		}
	}
	return strconv.Itoa(n) + suffix
}

// formatDuration writes d as operators read ages: whole days as "30d", days and hours as
// "40d6h", shorter spans in Go's form to the minute ("12h", "1h30m", "45m").
func formatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d >= day {
		days, hours := d/day, (d%day)/time.Hour
		if hours == 0 {
			return strconv.FormatInt(int64(days), 10) + "d"
		}
		return fmt.Sprintf("%dd%dh", days, hours)
	}
	d = d.Truncate(time.Minute)
	if d < time.Minute {
		return "0m"
	}
	s := strings.TrimSuffix(d.String(), "0s") // "1h30m0s" → "1h30m", "12h0m0s" → "12h0m"
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
