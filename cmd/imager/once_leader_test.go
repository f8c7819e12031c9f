package main

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
)

// TestOnceTakesOverFromALeaderThatWentAway: once finds a live lease whose holder never serves
// its request (a leader that died right after renewing). Once hands the fire over as it must,
// stays in the election, takes the lease when it lapses by the database clock, and serves its
// own request under its term.
func TestOnceTakesOverFromALeaderThatWentAway(t *testing.T) {
	e := newE2E(t)
	for _, id := range instanceIDs("gone", 3) {
		e.sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou"})
	}
	policies := e.writePolicies(t, `version: 1
defaults: {region: ap-guangzhou}
policies:
  - {name: web, schedule: "@daily", instances: [ins-gone0001, ins-gone0002, ins-gone0003]}
`)
	code, _, stderr := e.imager(t, "migrate", "--database-url", e.dbURL)
	require.Equal(t, 0, code, stderr)
	_, err := connect(t, e.dbURL).Exec(context.Background(), `INSERT INTO leader_lease
		(name, term, daemon_id, host, pid, acquired_at, renewed_at, expires_at)
		VALUES ('leader', 4, 'ghost/1/1', 'ghost', 1, now(), now(), now() + interval '2 seconds')`)
	require.NoError(t, err)

	code, stdout, stderr := e.imager(t, append(e.daemonArgs("once", policies), "--policy", "web", "--lease-ttl", "3s")...)
	require.Equalf(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	require.Contains(t, stdout, "3 slots, 0 not available")
	require.Contains(t, stderr, `"leader":"ghost/1/1"`)
	require.Contains(t, stderr, "a leader is running")
	require.Contains(t, stderr, `"term":5`)
	require.Contains(t, stderr, "firing at the request of imager once")

	var status string
	var takenTerm int64
	require.NoError(t, connect(t, e.dbURL).QueryRow(context.Background(),
		`SELECT status, taken_term FROM fire_requests`).Scan(&status, &takenTerm))
	require.Equal(t, "done", status)
	require.Equal(t, int64(5), takenTerm)
	require.Equal(t, 3, countCreates(e.sim))
}

func countCreates(sim *cvmsim.Server) int {
	n := 0
	for _, c := range sim.Calls() {
		if c.Action == cvmsim.ActionCreateImage && c.Code == "" {
			n++
		}
	}
	return n
}
