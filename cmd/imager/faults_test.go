package main

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/pgcluster"
)

// The rest of the fault suite (docs/testing.md, "Fault suite"): PostgreSQL outages, a daemon down across
// slots, and API faults. They use the cluster of replicas_test.go; the outage tests run on a
// PostgreSQL server of their own, which they halt and resume.

// ownPostgres starts a PostgreSQL server for one test and returns it with the URL of a fresh
// database on it.
func ownPostgres(t *testing.T) (*pgcluster.Cluster, string) {
	t.Helper()
	ctx := context.Background()
	pg, err := pgcluster.Start(ctx, pgcluster.Options{Logger: zerolog.Nop()})
	require.NoError(t, err, "start a PostgreSQL server of the test's own (install the PostgreSQL server binaries)")
	t.Cleanup(func() { _ = pg.Stop() })
	url, err := pg.CreateDatabase(ctx, "imager")
	require.NoError(t, err)
	return pg, url
}

// waitWallClock waits until the wall clock reaches at: the scenarios that use it are about real
// time (a slot falling due, an outage lasting so long), not synchronisation.
func waitWallClock(at time.Time) {
	if d := time.Until(at); d > 0 {
		<-time.After(d)
	}
}

// checkSlotAccounted asserts that the fleet's slot has exactly one row per instance, each in one
// of statuses (terminal, or requested: tracked until its image is made).
func (c *cluster) checkSlotAccounted(t *testing.T, slot time.Time, statuses ...string) {
	t.Helper()
	require.Equal(t, len(c.fleet), c.queryInt(t, `SELECT count(DISTINCT instance_id) FROM image_runs
		WHERE policy = 'fleet' AND scheduled_at = $1`, slot), "every instance has a row at %s", slot)
	require.Equal(t, len(c.fleet), c.queryInt(t, `SELECT count(*) FROM image_runs
		WHERE policy = 'fleet' AND scheduled_at = $1 AND status = ANY($2)`, slot, statuses),
		"every row of %s ends %v", slot, statuses)
}

// waitAllAvailable waits until every run of the fleet's slot is available.
func (c *cluster) waitAllAvailable(t *testing.T, slot time.Time) {
	t.Helper()
	waitUntil(t, "every image of the slot usable", func() bool {
		return c.queryInt(t, `SELECT count(*) FROM image_runs WHERE policy = 'fleet' AND scheduled_at = $1
			AND status = 'available'`, slot) == len(c.fleet)
	})
}

// acceptedBetween counts the CreateImage calls the simulator accepted between from and to.
func (c *cluster) acceptedBetween(from, to time.Time) int {
	n := 0
	for _, call := range c.sim.Calls() {
		if call.Action == cvmsim.ActionCreateImage && call.Code == "" && !call.Dropped &&
			!call.At.Before(from) && call.At.Before(to) {
			n++
		}
	}
	return n
}

// TestPostgreSQLStoppedMidFire: PostgreSQL stops for 20 s while the leader fires 120 slots. The
// leader goes on sending and spools its outcomes until it can no longer renew its lease; it
// steps down at its own deadline and is elected again, under a new term, once the database is
// back. The outcomes spooled under the old term are refused as fenced on replay, but the calls
// (attempts are not fenced) reach image_attempts, and the new term reconciles the pending runs
// by name, taking each adopted run's RequestId from its accepted attempt: every slot has its
// row and ends usable, no slot has two images, and no accepted RequestId is lost.
func TestPostgreSQLStoppedMidFire(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg, url := ownPostgres(t)
	c := newClusterWith(t, 120, clusterOptions{dbURL: url})
	a := c.start(t, "a", "spool", "--lease-ttl", "3s")
	slot := c.firingSlot(t, 20)

	term := c.leaseTerm(t)
	require.NoError(t, pg.Halt(ctx))
	haltedAt := time.Now()
	a.waitLog(t, "no longer leader")              // the database is down: only the process can tell
	waitWallClock(haltedAt.Add(20 * time.Second)) // the outage lasts 20 s
	require.NoError(t, pg.Resume(ctx))
	resumedAt := time.Now()
	c.pool.Reset()          // its connections died with the server
	c.waitLeads(t, a, term) // elected again, under a new term
	c.waitSlotDone(t, slot)
	c.waitAllAvailable(t, slot)
	a.stop(t)

	require.Positive(t, c.acceptedBetween(haltedAt, resumedAt),
		"calls were accepted while PostgreSQL was down (the case under test)")
	require.True(t, a.hasLog("spooled history write fenced"), "outcomes spooled under the old term were refused")
	c.checkSlotAccounted(t, slot, "available")
	c.checkPace(t)
	c.checkOneImagePerSlot(t)
	require.Equal(t, 0, c.checkRequestsRecorded(t, 0), "every accepted RequestId is on its run and in image_attempts")
}

// TestDaemonDownAcrossTwoSlots: the daemon is down while two slots fall due; when it starts
// again, the latest slot (still inside its start window) runs and the other is recorded missed,
// one row per instance, with error_code Missed.
//
// Waiting for real slots would take minutes, so the downtime is made honestly from recorded
// state instead: the daemon runs once (recording the fleet's last handled slot, its latest slot
// at the start), stops, and that record is moved back by two schedule intervals, which is
// exactly what the database holds after a downtime across two slots. The schedule is every 10
// minutes so that the restart falls inside the latest slot's window (a boundary crossed during
// the test only adds a missed slot, which the assertions allow).
func TestDaemonDownAcrossTwoSlots(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const interval = 10 * time.Minute
	c := newClusterWith(t, 10, clusterOptions{schedule: "@every 10m"})
	a := c.start(t, "a", "spool")
	var handled time.Time
	waitUntil(t, "the fleet's last handled slot recorded", func() bool {
		return c.pool.QueryRow(ctx, `SELECT last_slot FROM policy_slots WHERE policy = 'fleet'`).Scan(&handled) == nil
	})
	a.stop(t)

	downSince := handled.Add(-2 * interval)
	_, err := c.pool.Exec(ctx, `UPDATE policy_slots SET last_slot = $1 WHERE policy = 'fleet'`, downSince)
	require.NoError(t, err)
	b := c.start(t, "b", "spool")
	var latest time.Time
	waitUntil(t, "the slots of the downtime recorded", func() bool {
		err := c.pool.QueryRow(ctx, `SELECT max(scheduled_at) FROM image_runs WHERE policy = 'fleet'
			AND scheduled_at > $1 HAVING count(DISTINCT scheduled_at) >= 2`, downSince).Scan(&latest)
		return err == nil
	})
	c.waitSlotDone(t, latest)
	c.waitAllAvailable(t, latest)
	b.stop(t)

	c.checkSlotAccounted(t, latest, "available")
	missedSlots := 0
	for s := downSince.Add(interval); s.Before(latest); s = s.Add(interval) {
		c.checkSlotAccounted(t, s, "missed")
		require.Equal(t, len(c.fleet), c.queryInt(t, `SELECT count(*) FROM image_runs WHERE policy = 'fleet'
			AND scheduled_at = $1 AND error_code = 'Missed'
			AND error_message = 'slot passed while no imager leader was running' AND attempts = 0`, s))
		missedSlots++
	}
	require.GreaterOrEqual(t, missedSlots, 1, "the earlier slot of the downtime is missed")
	require.Equal(t, len(c.fleet)*(missedSlots+1), c.queryInt(t, `SELECT count(*) FROM image_runs
		WHERE policy = 'fleet' AND scheduled_at > $1`, downSince), "no other rows")
	c.checkPace(t)
	c.checkOneImagePerSlot(t)
	require.Equal(t, 0, c.checkRequestsRecorded(t, 0))
}

// TestPostgreSQLDownAtTheSlot: PostgreSQL stops 2 s before a slot (start_window 20s). Back within
// the window, the slot's claim, retried meanwhile, is written and the slot runs; back after it,
// the slot is recorded missed (error_code Missed, PostgreSQL named as the cause) once the
// database is back, and nothing is sent for it. The lease outlasts the outage, so the leader
// keeps leading and the slot takes the claim-retry path, not a new leader's walk.
func TestPostgreSQLDownAtTheSlot(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		downFor time.Duration // from the slot
		runs    bool
	}{
		{name: "back within the start window", downFor: 6 * time.Second, runs: true},
		{name: "back after the start window", downFor: 26 * time.Second, runs: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pg, url := ownPostgres(t)
			c := newClusterWith(t, 10, clusterOptions{dbURL: url, startWindow: "20s"})
			a := c.start(t, "a", "spool", "--lease-ttl", "60s")
			a.waitLog(t, "leading: firing schedules") // the leader's work started: no state says so
			// The next whole minute at least 8 s away: the halt comes after the start, before the slot.
			slot := time.Now().Add(8 * time.Second).Truncate(time.Minute).Add(time.Minute)

			waitWallClock(slot.Add(-2 * time.Second))
			require.NoError(t, pg.Halt(ctx))
			waitWallClock(slot.Add(tc.downFor))
			require.NoError(t, pg.Resume(ctx))
			c.pool.Reset()

			if tc.runs {
				c.waitSlotDone(t, slot)
				c.waitAllAvailable(t, slot)
				a.stop(t)
				c.checkSlotAccounted(t, slot, "available")
				require.True(t, a.hasLog("slot claimed after retrying"))
			} else {
				waitUntil(t, "the slot recorded missed", func() bool {
					return c.queryInt(t, `SELECT count(*) FROM image_runs WHERE policy = 'fleet' AND scheduled_at = $1`, slot) > 0
				})
				a.stop(t)
				c.checkSlotAccounted(t, slot, "missed")
				require.Equal(t, len(c.fleet), c.queryInt(t, `SELECT count(*) FROM image_runs WHERE policy = 'fleet'
					AND scheduled_at = $1 AND error_code = 'Missed' AND attempts = 0
					AND error_message LIKE 'PostgreSQL was unreachable when the slot fell due%'`, slot))
				sent := 0
				for _, call := range c.sim.Calls() {
					name, _ := call.Params["ImageName"].(string)
					if call.Action == cvmsim.ActionCreateImage &&
						c.queryInt(t, `SELECT count(*) FROM image_runs WHERE image_name = $1 AND scheduled_at = $2`, name, slot) > 0 {
						sent++
					}
				}
				require.Zero(t, sent, "nothing is sent for a slot that could not be claimed")
			}
			c.checkPace(t)
			c.checkOneImagePerSlot(t)
			require.Equal(t, 0, c.checkRequestsRecorded(t, 0))
		})
	}
}

// TestAPIFaults: a fire of 100 slots meets 20 % InternalError (CreateImage and DescribeImages), a
// burst of RequestLimitExceeded at its start, and a stretch of calls answered after the client's
// timeout (executed, answer lost). Every slot is accepted exactly once and its image made usable,
// every CreateImage call is one attempt row (with its RequestId whenever the answer arrived), a
// timed-out call's image is adopted by name, and every injected throttle was met and retried.
func TestAPIFaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const burst = 5
	c := newCluster(t, 100)
	faulty := []string{cvmsim.ActionCreateImage, cvmsim.ActionDescribeImages}
	c.sim.SetFaults(cvmsim.Faults{InternalErrorRate: 0.2, Actions: faulty})
	for range burst {
		c.sim.QueueErrors(cvmsim.ActionCreateImage, "RequestLimitExceeded")
	}
	a := c.start(t, "a", "spool", "--lease-ttl", "3s", "--api-timeout", "2s")

	creates := func() int {
		n := 0
		for _, call := range c.sim.Calls() {
			if call.Action == cvmsim.ActionCreateImage {
				n++
			}
		}
		return n
	}
	// Mid-fire, CreateImage answers come after the client's 2 s timeout for a few calls.
	waitUntil(t, "30 CreateImage calls", func() bool { return creates() >= 30 })
	lateFrom := creates()
	c.sim.SetFaults(cvmsim.Faults{InternalErrorRate: 0.2, Latency: 3 * time.Second, Actions: []string{cvmsim.ActionCreateImage}})
	waitUntil(t, "calls during the slow stretch", func() bool { return creates() >= lateFrom+6 })
	c.sim.SetFaults(cvmsim.Faults{InternalErrorRate: 0.2, Actions: faulty})
	lateTo := creates()

	var slot time.Time
	require.NoError(t, c.pool.QueryRow(ctx, `SELECT min(scheduled_at) FROM image_runs WHERE policy = 'fleet'`).Scan(&slot))
	c.waitSlotDone(t, slot)
	c.waitAllAvailable(t, slot)
	a.stop(t)

	calls := c.sim.Calls()
	codes := map[string]int{}
	perName := map[string]int{}
	total := 0
	for _, call := range calls {
		if call.Action != cvmsim.ActionCreateImage {
			continue
		}
		total++
		codes[call.Code]++
		if call.Code == "" {
			name, _ := call.Params["ImageName"].(string)
			perName[name]++
		}
	}
	// The injected burst, plus any call that reached the simulator late on a busy machine (checkPace
	// checks each is recorded).
	require.GreaterOrEqual(t, codes["RequestLimitExceeded"], burst, "the injected burst was met")
	require.Positive(t, codes["InternalError"])
	require.Len(t, perName, len(c.fleet), "every slot accepted")
	for name, n := range perName {
		require.Equalf(t, 1, n, "%s accepted %d times", name, n)
	}
	require.Equal(t, total, c.queryInt(t, `SELECT count(*) FROM image_attempts WHERE action = 'CreateImage'`),
		"every CreateImage call is one attempt")
	timedOut := c.queryInt(t, `SELECT count(*) FROM image_attempts WHERE action = 'CreateImage' AND error_code = 'Timeout'`)
	require.Positive(t, timedOut, "calls timed out (the case under test)")
	require.LessOrEqual(t, timedOut, lateTo-lateFrom+4, "only calls of the slow stretch (and those in flight at its ends) timed out")
	unanswered := 0
	for _, call := range calls {
		if call.Action != cvmsim.ActionCreateImage {
			continue
		}
		if c.queryInt(t, `SELECT count(*) FROM image_attempts WHERE request_id = $1`, call.RequestID) == 0 {
			unanswered++
		}
	}
	require.Equal(t, timedOut, unanswered, "every call whose answer arrived is in image_attempts with its RequestId")

	c.checkSlotAccounted(t, slot, "available")
	require.LessOrEqualf(t, c.sim.MaxInAnySecond(cvmsim.ActionCreateImage), fleetRate,
		"CreateImage calls in the densest second:\n%s", c.densestSecond())
	c.checkOneImagePerSlot(t)
	// The accepted calls whose answer timed out are adopted by name; every other is recorded.
	c.checkRequestsRecorded(t, timedOut)
}
