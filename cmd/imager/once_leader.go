package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/scheduler"
)

// oncePollEvery is how often imager once reads the database while the leader fires its request
// and tracks the images.
const oncePollEvery = 250 * time.Millisecond

// onceRequest is what imager once was asked to fire.
type onceRequest struct {
	policy    *policy.Policy
	instances []string
	slot      time.Time // whole second, UTC
	noWait    bool
}

// onceThroughLeader hands the fire to the running leader (a fire_requests row and NOTIFY), then
// follows it in the database: the request until the leader has fired it, then the runs of
// (policy, instances, slot) until they are terminal (or accepted, with --no-wait). The output
// and exit code are those of a fire made by once itself.
func onceThroughLeader(ctx context.Context, d *daemon, req onceRequest, lease history.Lease, stdout, stderr io.Writer, log zerolog.Logger) int {
	// Announce this process (role once) while it follows the request; stopped at the end.
	host, _ := os.Hostname()
	me := history.Replica{DaemonID: d.daemonID, Host: host, PID: os.Getpid(), Role: history.RoleOnce, Version: version, StartedAt: time.Now()}
	if err := d.store.ReplicaSeen(ctx, me); err != nil {
		log.Debug().Err(err).Msg("cannot record this process in replicas")
	}
	defer func() {
		me.Role = history.RoleStopped
		_ = d.store.ReplicaSeen(context.WithoutCancel(ctx), me)
	}()
	id, err := d.store.FireRequestInsert(ctx, history.FireRequest{Policy: req.policy.Name, Instances: req.instances,
		Slot: req.slot, RequestedBy: d.daemonID})
	if err != nil {
		fmt.Fprintf(stderr, "imager once: %v\n", err)
		return exitFail
	}
	log.Info().Int64("fire_request", id).Str("leader", lease.DaemonID).Int64("term", lease.Term).Time("slot", req.slot).
		Msg("a leader is running: it fires the policy through its own pool and pace")

	var f history.FireRequest
	err = pollUntil(ctx, func() (bool, error) {
		f, err = d.store.FireRequestGet(ctx, id)
		return err == nil && (f.Status == history.FireRequestDone || f.Status == history.FireRequestFailed), err
	})
	if err != nil {
		fmt.Fprintf(stderr, "imager once: waiting for the leader: %v\n", err)
		return exitFail
	}
	if f.Status == history.FireRequestFailed {
		fmt.Fprintf(stderr, "imager once: %s\n", f.ErrorMessage)
		return exitFail
	}

	follow := !req.noWait
	deadline := d.clock.Now().Add(req.policy.Image.Timeout + time.Minute)
	var runs []history.Run
	err = pollUntil(ctx, func() (bool, error) {
		runs, err = d.store.RunsAtSlot(ctx, req.policy.Name, req.slot, req.instances)
		if err != nil {
			return false, err
		}
		for _, r := range runs {
			if r.Status == history.StatusPending || (follow && !r.Status.Terminal()) {
				// Past image.timeout the leader fails the run; a leader gone for that long
				// leaves once reporting where the runs stand.
				return d.clock.Now().After(deadline), nil
			}
		}
		return true, nil
	})
	if err != nil {
		fmt.Fprintf(stderr, "imager once: waiting for images: %v\n", err)
		return exitFail
	}
	if follow {
		log.Info().Int("images", len(runs)).Msg("the leader followed the images")
	}
	outcomes := make([]scheduler.Outcome, len(runs))
	for i, r := range runs {
		outcomes[i] = scheduler.Outcome{Policy: r.Policy, InstanceID: r.InstanceID, Slot: r.ScheduledAt, RunID: r.ID,
			ImageName: r.ImageName, ImageID: r.ImageID, RequestID: r.RequestID, Status: r.Status,
			ErrorCode: r.ErrorCode, ErrorMessage: r.ErrorMessage, Attempts: r.Attempts}
	}
	return printOutcomes(ctx, stdout, outcomes, follow)
}

// pollUntil calls done every oncePollEvery until it reports true, fails, or ctx ends.
func pollUntil(ctx context.Context, done func() (bool, error)) error {
	t := time.NewTicker(oncePollEvery)
	defer t.Stop()
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
