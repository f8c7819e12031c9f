package history

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// The rules below decide what a change of a run means for the answers imager keeps beside
// image_runs (latest_images, coverage_state, coverage_days) and for the notification outbox. They
// are pure functions: effects.go reads the rows they need and writes what they decide, in the
// transaction that changes the run (docs/design.md, "Rules in Go, schema in one place").

// OverdueAfter is how long an instance of a policy may go without a new available image before
// it is overdue (coverage.overdue, rpo_breaches, the recovered event): one and a half intervals,
// so one slot that is late or failed is tolerated and a second one is not.
func OverdueAfter(interval time.Duration) time.Duration {
	return time.Duration(math.Ceil(float64(interval) * 1.5))
}

// dayStatusOrder is the order in which a day's runs answer for that day in daily_coverage, best
// first: an image is the best answer; one still being made comes next; then the ways a slot ends
// without an image, the one that needs action first.
var dayStatusOrder = []Status{StatusAvailable, StatusRequested, StatusPending, StatusFailed, StatusMissed, StatusSkipped}

// dayRank is the position of status in dayStatusOrder (1 is best); an unknown status ranks last.
func dayRank(status Status) int {
	for i, s := range dayStatusOrder {
		if s == status {
			return i + 1
		}
	}
	return len(dayStatusOrder) + 1
}

// dayRankSQL is dayRank as an SQL expression over the status column col, for the statements that
// rank many runs at once (the claim, a rebuild).
func dayRankSQL(col string) string {
	var b strings.Builder
	b.WriteString("CASE " + col)
	for i, s := range dayStatusOrder {
		fmt.Fprintf(&b, " WHEN '%s' THEN %d", s, i+1)
	}
	fmt.Fprintf(&b, " ELSE %d END", len(dayStatusOrder)+1)
	return b.String()
}

// dayBeats reports whether a run (status, slot) is a better answer for its day than the day's
// current best run (bestStatus, bestSlot): a better status, or the same status at a later slot.
func dayBeats(status Status, slot time.Time, bestStatus Status, bestSlot time.Time) bool {
	r, b := dayRank(status), dayRank(bestStatus)
	return r < b || (r == b && slot.After(bestSlot))
}

// countsLatest reports whether a run in status counts as an instance's latest image
// (latest_images: accepted or available).
func countsLatest(status Status) bool {
	return status == StatusRequested || status == StatusAvailable
}

// errored reports whether a run ended in a way that fails its fire: failed, missed, or skipped
// by a rule that gave an error code (a skip without code, such as a disabled policy's, is not).
func errored(status Status, errorCode string) bool {
	return status == StatusFailed || status == StatusMissed || (status == StatusSkipped && errorCode != "")
}

// Fire outcomes (notification_fires.outcome).
const (
	fireSuccess = "success"
	fireFail    = "fail"
)

// fireCounts is a fire's tally of its runs by status, kept as the runs are written.
type fireCounts struct {
	Runs, Available, Unfinished, Failed, Missed, Skipped, Errored int
	Expected                                                      *int // runs the fire had to make; nil when not set
}

// add counts one run in status (a new run of the fire), or removes it when sign is -1.
func (c *fireCounts) add(status Status, errorCode string, sign int) {
	switch status {
	case StatusPending, StatusRequested:
		c.Unfinished += sign
	case StatusAvailable:
		c.Available += sign
	case StatusFailed:
		c.Failed += sign
	case StatusMissed:
		c.Missed += sign
	case StatusSkipped:
		c.Skipped += sign
	}
	if errored(status, errorCode) {
		c.Errored += sign
	}
}

// fireVerdict decides a fire from its counts: fail as soon as one run errored; once every run is
// terminal (and at least the expected number exists), success when all are available and fail
// otherwise; a fire that had nothing to make succeeds. "" while undecided.
func fireVerdict(c fireCounts) string {
	switch {
	case c.Errored > 0:
		return fireFail
	case c.Runs > 0 && c.Unfinished == 0 && (c.Expected == nil || c.Runs >= *c.Expected):
		if c.Available == c.Runs {
			return fireSuccess
		}
		return fireFail
	case c.Expected != nil && *c.Expected == 0:
		return fireSuccess
	}
	return ""
}

// recoveredFrom decides whether a run that just became available is a recovery, and from what:
// the instance's previous slot failed or was missed; or an RPO breach of the instance was open
// (the write closes it); or the instance was overdue. "" when it is not a recovery.
func recoveredFrom(previousStatus Status, breachClosed, overdue bool) string {
	switch {
	case previousStatus == StatusFailed || previousStatus == StatusMissed:
		return "previous_run_" + string(previousStatus)
	case breachClosed:
		return "rpo_breach"
	case overdue:
		return "overdue"
	}
	return ""
}

// wasOverdue reports whether, when a run became available at at, its instance had gone longer
// than overdueAfter without an image: since the newest earlier image became available, or, for
// an instance never imaged, since its first slot. A policy disabled or unknown (overdueAfter 0)
// is never overdue.
func wasOverdue(since time.Time, at time.Time, overdueAfter time.Duration) bool {
	return overdueAfter > 0 && !since.IsZero() && since.Before(at.Add(-overdueAfter))
}

// digestIDsMax is the most instance ids a missed or failed event lists in instance_ids;
// instance_ids_truncated says when it left some out.
const digestIDsMax = 100

// digest is the part of a missed or failed event that grows as runs join it.
type digest struct {
	Count     int64
	IDs       []string // distinct, in the order the runs were written, at most digestIDsMax
	Truncated bool
	FirstSlot time.Time // missed events only
	LastSlot  time.Time // missed events only
}

// join adds runs on instances ids (in order, repeats allowed) to d.
func (d *digest) join(n int64, ids []string, truncated bool, first, last time.Time) {
	d.Count += n
	d.Truncated = d.Truncated || truncated
	for _, id := range ids {
		if containsString(d.IDs, id) {
			continue
		}
		if len(d.IDs) >= digestIDsMax {
			d.Truncated = true
			continue
		}
		d.IDs = append(d.IDs, id)
	}
	if !first.IsZero() && (d.FirstSlot.IsZero() || first.Before(d.FirstSlot)) {
		d.FirstSlot = first
	}
	if last.After(d.LastSlot) {
		d.LastSlot = last
	}
}

// single is the one instance the digest is about, or "" when it lists several (or more than it
// shows).
func (d *digest) single() string {
	if len(d.IDs) == 1 && !d.Truncated {
		return d.IDs[0]
	}
	return ""
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// payloadTime is a time as notification payloads write it: RFC 3339, UTC, whole seconds.
func payloadTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05Z")
}
