package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
)

// TestOnceWithSelectorRetentionAndQuota is the image lifecycle (docs/policies.md, docs/design.md "Completion tracking") run through the binary: a tag
// selector images exactly the tagged instances; keep_last 2 over four fires leaves the two newest
// images per instance with every deletion and its RequestId in history; someone else's image is
// never deleted; a small quota makes imager prune first and proceed.
func TestOnceWithSelectorRetentionAndQuota(t *testing.T) {
	e := newE2E(t)
	tagged := []string{"ins-app00001", "ins-app00002", "ins-app00003"}
	for _, id := range tagged {
		e.sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou", Zone: "ap-guangzhou-3",
			Tags: map[string]string{"env": "prod", "tier": "app"}})
	}
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-web00001", Region: "ap-guangzhou", Zone: "ap-guangzhou-3",
		Tags: map[string]string{"env": "prod", "tier": "web"}})
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-dev00001", Region: "ap-guangzhou", Zone: "ap-guangzhou-3",
		Tags: map[string]string{"env": "dev", "tier": "app"}})
	e.sim.AddImage(cvmsim.Image{ID: "img-someone1", Name: "hand-made-backup", Region: "ap-guangzhou",
		InstanceID: "ins-app00001", State: cvmsim.ImageStateNormal})

	write := func(keepLast int) string {
		return e.writePolicies(t, fmt.Sprintf(`version: 1
defaults: {region: ap-guangzhou}
policies:
  - name: prod-app
    schedule: "@daily"
    select: {tags: {env: prod, tier: app}}
    image: {tags: {team: "{policy}"}}
    retention: {keep_last: %d}
`, keepLast))
	}
	// Each fire is its own nightly slot (--slot), as the schedule would make them.
	night := 0
	once := func(policies string) string {
		t.Helper()
		night++
		slot := fmt.Sprintf("2026-10-%02dT03:00:00Z", night)
		code, stdout, stderr := e.imager(t, append(e.daemonArgs("once", policies), "--policy", "prod-app", "--slot", slot)...)
		require.Equalf(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
		return stdout
	}

	policies := write(2)
	for range 4 {
		out := once(policies)
		require.Contains(t, out, "3 slots, 0 not available")
		for _, id := range tagged {
			require.Contains(t, out, id)
		}
	}
	imagesOf := func() map[string]int {
		n := map[string]int{}
		for _, img := range e.sim.Images() {
			n[img.InstanceID]++
			if img.ID != "img-someone1" {
				require.Equal(t, "prod-app", img.Tags["imager-policy"])
				require.Equal(t, "prod-app", img.Tags["team"])
			}
		}
		return n
	}
	require.Equal(t, map[string]int{"ins-app00001": 3, "ins-app00002": 2, "ins-app00003": 2}, imagesOf(),
		"two imager images per instance, plus someone else's image left alone")

	conn := connect(t, e.dbURL)
	var deleted, withRequest int
	require.NoError(t, conn.QueryRow(context.Background(), `
		SELECT count(*), count(*) FILTER (WHERE d.request_id IS NOT NULL AND EXISTS (
		    SELECT 1 FROM image_attempts a WHERE a.deletion_id = d.id AND a.request_id = d.request_id))
		FROM image_deletions d WHERE d.status = 'deleted'`).Scan(&deleted, &withRequest))
	require.Equal(t, 6, deleted, "two pruned images per instance")
	require.Equal(t, 6, withRequest)
	var keptSlots []string
	rows, err := conn.Query(context.Background(), `
		SELECT DISTINCT to_char(r.scheduled_at AT TIME ZONE 'UTC', 'MM-DD') FROM image_runs r
		WHERE r.status = 'available' AND NOT EXISTS (SELECT 1 FROM image_deletions d WHERE d.image_id = r.image_id)
		ORDER BY 1`)
	require.NoError(t, err)
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		keptSlots = append(keptSlots, s)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"10-03", "10-04"}, keptSlots, "the kept images are those of the two newest slots")

	// Quota: 7 images exist (6 ours + 1 foreign). Raise keep_last to 3 and fire twice: 3 more
	// images each time, then lower it to 1 with a quota of 8: the gate must prune to 1 per
	// instance (+1 foreign = 4) before the fire, and the 3 new slots fit.
	policies = write(3)
	once(policies)
	require.Len(t, e.sim.Images(), 10)
	e.sim.SetImageQuota(8)
	policies = write(1)
	out := once(policies)
	require.Contains(t, out, "3 slots, 0 not available")
	require.NotContains(t, out, "ImageQuotaLimitExceeded")
	require.LessOrEqual(t, len(e.sim.Images()), 8)
	for _, c := range e.sim.Calls() {
		require.NotEqual(t, "ImageQuotaLimitExceeded", c.Code, "the gate must prune before sending")
	}
	require.True(t, strings.Contains(fmt.Sprint(imagesOf()), "ins-app00001:2"), "someone else's image survives: %v", imagesOf())
}
