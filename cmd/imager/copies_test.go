package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
)

// Copies in other regions, end to end (docs/policies.md "Copies in other regions"): the real
// binary leads against the simulator, which enforces 10 SyncImages per sliding second per account
// and records every call, and the assertions count what the simulator saw and what history holds.

// copyPolicies rewrites the cluster's policies: the fleet with copyTo (YAML list items), fired
// only on request (imager once), so each test decides its slots.
func (c *cluster) copyPolicies(t *testing.T, copyTo string) {
	t.Helper()
	require.NoError(t, os.WriteFile(c.policies, []byte(fmt.Sprintf(`version: 1
api: {create_image_rate: %d, workers: 4, retry: {transient: {initial: 100ms, max: 1s}, busy: {initial: 200ms, max: 1s, max_elapsed: 1m}}}
defaults: {region: ap-guangzhou, timezone: UTC}
policies:
  - name: fleet
    schedule: "0 0 1 1 *"
    instances: [%s]
    copy_to:
%s
`, fleetRate, strings.Join(c.fleet, ", "), copyTo)), 0o600))
}

// once runs `imager once --policy fleet` beside the running leader and requires it to succeed.
func (c *cluster) once(t *testing.T) {
	t.Helper()
	cmd := exec.Command(c.bin, append(c.args("once", "spool-once"), "--policy", "fleet")...)
	cmd.Env = c.env()
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoErrorf(t, cmd.Run(), "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	require.Contains(t, stdout.String(), fmt.Sprintf("%d slots, 0 not available", len(c.fleet)))
}

// syncCalls returns the SyncImages calls the simulator executed (answered without an error code),
// by source image: their destination regions, one list per call.
func (c *cluster) syncCalls() map[string][][]string {
	out := map[string][][]string{}
	for _, call := range c.sim.Calls() {
		if call.Action != cvmsim.ActionSyncImages || call.Code != "" {
			continue
		}
		ids, _ := call.Params["ImageIds"].([]any)
		dests, _ := call.Params["DestinationRegions"].([]any)
		var regions []string
		for _, d := range dests {
			regions = append(regions, fmt.Sprint(d))
		}
		for _, id := range ids {
			out[fmt.Sprint(id)] = append(out[fmt.Sprint(id)], regions)
		}
	}
	return out
}

// copiesIn returns the images the simulator holds in region that are copies, by source image.
func (c *cluster) copiesIn(region string) map[string][]cvmsim.Image {
	out := map[string][]cvmsim.Image{}
	for _, img := range c.sim.Images() {
		if img.Region == region && img.SourceImageID != "" {
			out[img.SourceImageID] = append(out[img.SourceImageID], img)
		}
	}
	return out
}

// waitCopiesSettled waits until no copy is requested or syncing and every available run has a row
// per wanted region.
func (c *cluster) waitCopiesSettled(t *testing.T, regions int) {
	t.Helper()
	waitUntil(t, "every copy made or failed", func() bool {
		return c.queryInt(t, `SELECT count(*) FROM image_copies WHERE status IN ('requested', 'syncing')`) == 0 &&
			c.queryInt(t, `SELECT count(*) FROM image_copies`) ==
				regions*c.queryInt(t, `SELECT count(*) FROM image_runs WHERE policy = 'fleet' AND status = 'available'`)
	})
}

// TestCopiesToTwoRegions: a policy over 20 instances copies to two regions, keeping 2 copies in
// one of them, and names a third region the endpoint refuses. Three fires later: every source was
// copied exactly once to each good region, in one SyncImages call per source naming both (the
// refused region retried apart), never above 10 calls in a sliding second; the copies are recorded
// available with the simulator's ids; the refused region's copies failed with its code and each
// wrote a copy_failed event; the destination with keep_last 2 holds exactly the 2 newest copies of
// each instance, and an image of imager's naming that imager did not make is untouched there.
func TestCopiesToTwoRegions(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 20)
	c.copyPolicies(t, `      - region: ap-singapore
        retention: {keep_last: 2}
      - region: eu-frankfurt
      - region: na-siliconvalley`)
	c.sim.RefuseSyncTo("na-siliconvalley", "InvalidRegion.Unavailable")
	foreign := cvmsim.Image{ID: "img-f0re1gn0", Name: "fleet-" + c.fleet[0] + "-by-hand", Region: "ap-singapore",
		State: "NORMAL", Type: "PRIVATE_IMAGE"}
	c.sim.AddImage(foreign)

	c.start(t, "a", "spool", "--lease-ttl", "3s")
	for range 3 {
		c.once(t)
		c.waitCopiesSettled(t, 3)
	}
	waitUntil(t, "retention in ap-singapore keeps 2 copies per instance", func() bool {
		return c.queryInt(t, `SELECT count(*) FROM image_copies WHERE region = 'ap-singapore' AND status = 'available'
			AND deleted_at IS NULL`) == 2*len(c.fleet)
	})

	// Every source once to each good region, both in one call.
	sources := c.queryInt(t, `SELECT count(*) FROM image_runs WHERE policy = 'fleet' AND status = 'available'`)
	require.Equal(t, 3*len(c.fleet), sources)
	calls := c.syncCalls()
	require.Len(t, calls, sources, "every source image was copied")
	for src, cs := range calls {
		require.Equal(t, [][]string{{"ap-singapore", "eu-frankfurt"}}, cs, "source %s: one call for both good regions", src)
	}
	require.LessOrEqual(t, c.sim.MaxInAnySecond(cvmsim.ActionSyncImages), 10)
	frankfurt := c.copiesIn("eu-frankfurt")
	require.Len(t, frankfurt, sources, "one copy of each source in eu-frankfurt")
	for src, imgs := range frankfurt {
		require.Len(t, imgs, 1, "source %s copied once to eu-frankfurt", src)
		require.Equal(t, 1, c.queryInt(t, `SELECT count(*) FROM image_copies k JOIN image_runs r ON r.id = k.run_id
			WHERE r.image_id = $1 AND k.region = 'eu-frankfurt' AND k.status = 'available' AND k.image_id = $2
			AND k.available_at IS NOT NULL`, src, imgs[0].ID), "the copy of %s is recorded available with its id", src)
	}

	// The refused region: failed with its code, notified, and nothing else held back.
	require.Equal(t, sources, c.queryInt(t, `SELECT count(*) FROM image_copies WHERE region = 'na-siliconvalley'
		AND status = 'failed' AND error_code = 'InvalidRegion.Unavailable'`))
	require.Equal(t, sources, c.queryInt(t, `SELECT count(*) FROM notifications WHERE event = 'copy_failed'
		AND detail->>'region' = 'na-siliconvalley'`))
	require.Empty(t, c.copiesIn("na-siliconvalley"))

	// Retention in ap-singapore: the 2 newest copies of each instance, and the foreign image.
	singapore := 0
	for _, imgs := range c.copiesIn("ap-singapore") {
		singapore += len(imgs)
	}
	require.Equal(t, 2*len(c.fleet), singapore, "the simulator holds exactly keep_last copies per instance")
	require.Equal(t, len(c.fleet), c.queryInt(t, `SELECT count(*) FROM image_copies k
		WHERE k.region = 'ap-singapore' AND k.deleted_at IS NOT NULL
		AND k.slot = (SELECT min(scheduled_at) FROM image_runs WHERE policy = 'fleet')`), "the oldest copies were deleted")
	found := false
	for _, img := range c.sim.Images() {
		found = found || img.ID == foreign.ID
	}
	require.True(t, found, "an image imager did not make is never deleted")

	// imager latest --region names the newest copy there, and its restore lines that region.
	var copyID, sourceID string
	require.NoError(t, c.pool.QueryRow(context.Background(), `SELECT k.image_id, r.image_id FROM image_copies k
		JOIN image_runs r ON r.id = k.run_id WHERE k.instance_id = $1 AND k.region = 'eu-frankfurt'
		ORDER BY k.slot DESC LIMIT 1`, c.fleet[0]).Scan(&copyID, &sourceID))
	latest := func(region string) (string, error) {
		cmd := exec.Command(c.bin, "latest", "--instance", c.fleet[0], "--region", region, "--database-url", c.dbURL)
		cmd.Env = c.env()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := latest("eu-frankfurt")
	require.NoError(t, err, out)
	require.Regexp(t, `Image: +`+copyID+`\n`, out)
	require.Regexp(t, `Copy of: +`+sourceID+` in ap-guangzhou\n`, out)
	require.Contains(t, out, "tccli cvm RunInstances --region eu-frankfurt --ImageId "+copyID+" ")
	out, err = latest("ap-guangzhou")
	require.NoError(t, err, out)
	require.Regexp(t, `Image: +`+sourceID+`\n`, out, "the image's own region answers the image")
	// imager history lists each run's copies: a copies array in JSON, region:status:id in CSV.
	hist := exec.Command(c.bin, "history", "--policy", "fleet", "--instance", c.fleet[0], "--since", "1h",
		"--format", "json", "--database-url", c.dbURL)
	hist.Env = c.env()
	raw, err := hist.Output()
	require.NoError(t, err)
	var doc struct {
		Runs []struct {
			ImageID string `json:"image_id"`
			Copies  []struct {
				Region  string  `json:"region"`
				Status  string  `json:"status"`
				ImageID *string `json:"image_id"`
			} `json:"copies"`
		} `json:"runs"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc), string(raw))
	require.Len(t, doc.Runs, 3)
	newest := doc.Runs[0]
	require.Equal(t, sourceID, newest.ImageID)
	require.Len(t, newest.Copies, 3, "one per copy_to region")
	byRegion := map[string]string{}
	for _, cp := range newest.Copies {
		byRegion[cp.Region] = cp.Status
		if cp.Region == "eu-frankfurt" {
			require.Equal(t, copyID, *cp.ImageID)
		}
	}
	require.Equal(t, map[string]string{"ap-singapore": "available", "eu-frankfurt": "available", "na-siliconvalley": "failed"}, byRegion)
	hist = exec.Command(c.bin, "history", "--policy", "fleet", "--instance", c.fleet[0], "--since", "1h",
		"--format", "csv", "--database-url", c.dbURL)
	hist.Env = c.env()
	raw, err = hist.Output()
	require.NoError(t, err)
	require.Contains(t, string(raw), "eu-frankfurt:available:"+copyID)

	out, err = latest("na-siliconvalley")
	require.Error(t, err, "no copy there: exit 1")
	require.Contains(t, out, "has no available image or copy in na-siliconvalley")
}

// TestCopyKilledBetweenCallAndWrite: the leader is killed with SIGKILL while SyncImages is being
// answered (the simulator made the copies, the answer is held). The next leader finds each copy by
// its exact name in its destination: no source is copied twice, and the copies end available.
func TestCopyKilledBetweenCallAndWrite(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 4)
	c.copyPolicies(t, `      - region: ap-singapore`)
	c.sim.SetFaults(cvmsim.Faults{Latency: time.Hour, Actions: []string{cvmsim.ActionSyncImages}})
	a := c.start(t, "a", "spool-a", "--lease-ttl", "3s")
	c.once(t)
	waitUntil(t, "a SyncImages call executed and held", func() bool { return len(c.syncCalls()) > 0 })
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGKILL))
	<-a.done
	require.Positive(t, c.queryInt(t, `SELECT count(*) FROM image_copies WHERE status = 'requested' AND image_id IS NULL`),
		"the killed leader recorded the copies requested, not their answer")

	c.sim.SetFaults(cvmsim.Faults{})
	c.start(t, "b", "spool-b", "--lease-ttl", "3s")
	c.waitCopiesSettled(t, 1)
	require.Equal(t, len(c.fleet), c.queryInt(t, `SELECT count(*) FROM image_copies WHERE status = 'available'`))
	for src, cs := range c.syncCalls() {
		require.Len(t, cs, 1, "source %s: one SyncImages call in all", src)
	}
	for src, imgs := range c.copiesIn("ap-singapore") {
		require.Len(t, imgs, 1, "source %s copied once", src)
	}
}

// TestCopyRegionDown: a destination region answers every call with InternalError during a fire.
// The source region's work is untouched (every slot available, coverage not overdue); the copies
// there wait and are made once the region is back, and the other region's copies are made at once.
func TestCopyRegionDown(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 6)
	c.copyPolicies(t, `      - region: ap-singapore
      - region: eu-frankfurt`)
	c.sim.SetRegionDown("ap-singapore", true)
	c.start(t, "a", "spool", "--lease-ttl", "3s")
	c.once(t)
	waitUntil(t, "the source images usable", func() bool {
		return c.queryInt(t, `SELECT count(*) FROM image_runs WHERE policy = 'fleet' AND status = 'available'`) == len(c.fleet)
	})
	require.Zero(t, c.queryInt(t, `SELECT count(*) FROM coverage WHERE policy = 'fleet' AND overdue`))
	require.Zero(t, c.queryInt(t, `SELECT count(*) FROM image_copies WHERE region = 'ap-singapore' AND status = 'available'`))

	c.sim.SetRegionDown("ap-singapore", false)
	c.waitCopiesSettled(t, 2)
	require.Equal(t, 2*len(c.fleet), c.queryInt(t, `SELECT count(*) FROM image_copies WHERE status = 'available'`))
	for _, region := range []string{"ap-singapore", "eu-frankfurt"} {
		for src, imgs := range c.copiesIn(region) {
			require.Len(t, imgs, 1, "source %s copied once to %s", src, region)
		}
	}
}

// TestSyncImagesThrottledLeavesCreateImageAlone: the endpoint allows 1 SyncImages call per second
// while a fire of 60 instances is sent. CreateImage keeps its own pace (no call refused, the
// densest second at the limit), SyncImages is refused and retried, and every copy is made once.
func TestSyncImagesThrottledLeavesCreateImageAlone(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 60)
	c.copyPolicies(t, `      - region: ap-singapore`)
	c.sim.SetLimit(cvmsim.ActionSyncImages, 1)
	c.start(t, "a", "spool", "--lease-ttl", "3s")
	c.once(t)
	c.waitCopiesSettled(t, 1)

	throttled := 0
	for _, call := range c.sim.Calls() {
		if call.Action == cvmsim.ActionSyncImages && call.Code == "RequestLimitExceeded" {
			throttled++
		}
		if call.Action == cvmsim.ActionCreateImage {
			require.NotEqual(t, "RequestLimitExceeded", call.Code, "CreateImage is never throttled")
		}
	}
	require.Positive(t, throttled, "the endpoint refused SyncImages calls above its limit")
	require.Equal(t, fleetRate, c.sim.MaxInAnySecond(cvmsim.ActionCreateImage), "CreateImage kept its full pace")
	require.Equal(t, len(c.fleet), c.queryInt(t, `SELECT count(*) FROM image_copies WHERE status = 'available'`))
	for src, cs := range c.syncCalls() {
		require.Len(t, cs, 1, "source %s: copied by one executed call", src)
	}
}
