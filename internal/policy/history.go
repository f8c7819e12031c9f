package policy

import (
	"time"

	"gopkg.in/yaml.v3"
)

// History is the top-level `history:` block: how long imager keeps the rows of its PostgreSQL
// history once they no longer change (README "History (PostgreSQL)"). The leader prunes every
// hour; `imager prune-history` does the same by hand.
type History struct {
	// Keep is how long finished runs (with their attempts), done deletions and coverage days stay;
	// default DefaultHistoryKeep. A run that is still an answer (the last run or last available
	// image of an instance, the image to restore from) or whose image imager has not deleted is
	// kept however old.
	Keep time.Duration
}

// DefaultHistoryKeep is how long history is kept when `history.keep` is not set: a year and a
// month, so last year's same month can still be compared. MinHistoryKeep is the least it may
// be: below a month, `imager history`, the audit queries over the last weeks and the comparison
// of a monthly schedule's run with the previous one would find their rows gone.
const (
	DefaultHistoryKeep = 400 * 24 * time.Hour
	MinHistoryKeep     = 30 * 24 * time.Hour
)

// history decodes the top-level `history:` block.
func (d *decoder) history(n *yaml.Node) *History {
	out := &History{Keep: DefaultHistoryKeep}
	d.mapping(n, "history", 1, map[string]func(pair){
		"keep": func(p pair) {
			if v := d.duration(p.v, "history.keep", MinHistoryKeep); v.set {
				out.Keep = v.v
			}
		},
	})
	return out
}
