package web

import (
	"io"
	"strconv"
	"testing"
)

// BenchmarkRenderPage times the template alone for one policy's page of the grid (100 instances
// x 30 days) and 50 failures, the largest page the handler renders per policy.
func BenchmarkRenderPage(b *testing.B) {
	g := grid{Policy: "web", Anchor: "grid-web", Page: 42, Pages: 100, Instances: 10000, First: 4101, Last: 4200}
	for d := 0; d < GridDays; d++ {
		g.Days = append(g.Days, dayHead{Label: strconv.Itoa(d + 1), Title: "Mon 2026-03-" + strconv.Itoa(d+1)})
	}
	for i := 0; i < PageSize; i++ {
		row := gridRow{Instance: "ins-" + strconv.Itoa(10000000+i), Title: "last slot 2026-03-29 03:00 UTC available"}
		for d := 0; d < GridDays; d++ {
			row.Cells = append(row.Cells, cell{Class: "available", Title: "2026-03-29 available: img-12345678"})
		}
		g.Rows = append(g.Rows, row)
	}
	g.pageLinks()
	p := &page{GridDays: GridDays, Role: "leader", DB: dbState{Configured: true, Up: true}, Grids: []grid{g},
		Policies: []policyView{{Name: "web", Schedule: "0 3 * * *", Timezone: "UTC", Enabled: true, Known: true}}}
	for i := 0; i < FailuresShown; i++ {
		p.Failures = append(p.Failures, failure{Policy: "web", Instance: "ins-00000001", Code: "InternalError", Message: "boom <b>"})
	}
	for b.Loop() {
		if err := render(io.Discard, p); err != nil {
			b.Fatal(err)
		}
	}
}
