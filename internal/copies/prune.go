package copies

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/retention"
)

// codeImageNotFound is DeleteImages' answer for an image that does not exist: the deletion's goal
// is reached.
const codeImageNotFound = "InvalidImageId.NotFound"

// The copies' retention, per copy_to region: only imager's own copies are weighed — a copy whose
// row exists, and whose image in the region has exactly the row's id and name and is NORMAL. Of
// those, the copy_to entry's retention keeps what internal/retention keeps of source images
// (retention.Decide: the newest and min_keep always, keep_last, max_age by the run's slot). No
// other image of the region is ever touched, and deleting a source image never deletes its copies.
// Every deletion is an image_deletions row written before the DeleteImages call, with the call's
// attempt and its outcome after it.

// pruneAll weighs the copies of every policy in every copy_to region with a retention.
func (c *Copier) pruneAll(ctx context.Context, cfg *policy.Config, res *passResult) {
	for _, p := range cfg.Policies {
		for _, t := range p.CopyTo {
			if ctx.Err() != nil {
				return
			}
			if t.Retention != nil {
				c.pruneTarget(ctx, p, t, "", res)
			}
		}
	}
}

// prunePair weighs the copies of one (policy, instance) in one region.
func (c *Copier) prunePair(ctx context.Context, cfg *policy.Config, k pairRegion, res *passResult) {
	p := cfg.Policy(k.policy)
	if p == nil {
		return
	}
	for _, t := range p.CopyTo {
		if t.Region == k.region && t.Retention != nil {
			c.pruneTarget(ctx, p, t, k.instance, res)
		}
	}
}

// quotaGate makes room in region for account's copies: it prunes the copies there of every policy
// of the account that copies to region. It runs at most once per quotaGateEvery per (account,
// region): the copies of a fire that meet the quota together prune once.
func (c *Copier) quotaGate(ctx context.Context, cfg *policy.Config, account, region string, res *passResult) {
	k := gateKey{account, region}
	now := c.clock.Now()
	if last, ok := c.gates[k]; ok && now.Sub(last) < quotaGateEvery {
		return
	}
	c.gates[k] = now
	before := res.deleted
	for _, p := range cfg.Policies {
		if accountOf(p) != account {
			continue
		}
		for _, t := range p.CopyTo {
			if t.Region == region && t.Retention != nil && ctx.Err() == nil {
				c.pruneTarget(ctx, p, t, "", res)
			}
		}
	}
	c.log.Info().Str("account", account).Str("region", region).Int("deleted", res.deleted-before).
		Msg("quota gate: expired copies pruned")
}

// pruneTarget weighs the copies of policy p in t.Region (one instance, or all for "").
func (c *Copier) pruneTarget(ctx context.Context, p *policy.Policy, t policy.CopyTarget, instance string, res *passResult) {
	log := c.log.With().Str("policy", p.Name).Str("region", t.Region).Logger()
	copies, err := c.hist.CopiesRetainable(ctx, p.Name, instance, t.Region)
	if err != nil {
		log.Error().Err(err).Msg("copies' retention: cannot list copies")
		return
	}
	if len(copies) == 0 {
		return
	}
	open, err := c.hist.CopyDeletionsOpen(ctx, p.Name, instance, t.Region)
	if err != nil {
		log.Error().Err(err).Msg("copies' retention: cannot list open deletions")
		return
	}
	openByCopy := map[int64]history.Deletion{}
	for _, d := range open {
		openByCopy[d.CopyID] = d
	}
	// The cross-check: what the region holds now of each copy, by id, per account.
	images := map[string]cvm.Image{}
	byAccount := map[string][]string{}
	for _, cp := range copies {
		byAccount[cp.Account] = append(byAccount[cp.Account], cp.ImageID)
	}
	for _, account := range slices.Sorted(maps.Keys(byAccount)) {
		client := c.clients(account)
		if client == nil {
			log.Warn().Str("account", account).Msg("copies' retention: no CVM client for the account")
			return
		}
		for batch := range slices.Chunk(byAccount[account], cvm.MaxLimit) {
			got, err := c.describeIDs(ctx, client, account, t.Region, batch)
			if err != nil {
				log.Warn().Err(err).Msg("copies' retention: cannot cross-check copies; nothing deleted")
				return
			}
			for id, img := range got {
				images[id] = img
			}
		}
	}
	now := c.clock.Now()
	for i := 0; i < len(copies); {
		j := i + 1
		for j < len(copies) && copies[j].InstanceID == copies[i].InstanceID {
			j++
		}
		var verified []history.Copy
		for _, cp := range copies[i:j] {
			img, found := images[cp.ImageID]
			d, isOpen := openByCopy[cp.ID]
			switch {
			case isOpen && !found:
				// Deleted, but the outcome was never recorded (a crash after the call).
				c.finishDeletion(ctx, cp, d.ID, history.DeletionDeleted, "", "", "image no longer exists (DescribeImages)")
			case !found || img.ID != cp.ImageID || img.Name != cp.ImageName || img.State != cvm.ImageStateNormal:
				log.Debug().Int64("copy_id", cp.ID).Str("image_id", cp.ImageID).
					Msg("copy not weighed by retention (absent, renamed or not NORMAL): never deleted, not counted as kept")
			default:
				verified = append(verified, cp)
			}
		}
		slots := make([]time.Time, len(verified))
		for k, cp := range verified {
			slots[k] = cp.Slot
		}
		for k, reason := range retention.Decide(t.Retention, now, slots) {
			if reason == "" || ctx.Err() != nil {
				continue
			}
			var d *history.Deletion
			if od, ok := openByCopy[verified[k].ID]; ok {
				d = &od
			}
			if c.deleteCopy(ctx, verified[k], reason, d, t.Retention.DeleteSnapshots) {
				res.deleted++
			}
		}
		i = j
	}
}

// deleteCopy deletes one copy: the decision is recorded first (nothing is deleted without a row),
// then DeleteImages is called once on the account's pace and recorded as the deletion's attempt,
// and the outcome is recorded (deleted: the copy's deleted_at with it; failed: retried at the next
// pass that still finds it justified). It reports whether the image was deleted now.
func (c *Copier) deleteCopy(ctx context.Context, cp history.Copy, reason string, open *history.Deletion, snapshots bool) bool {
	log := c.copyLog(cp).With().Str("image_id", cp.ImageID).Str("reason", reason).Logger()
	client := c.clients(cp.Account)
	if client == nil {
		return false
	}
	hctx, cancel := writeContext(ctx)
	defer cancel()
	attempts := 0
	id := int64(0)
	if open != nil {
		id, attempts = open.ID, open.Attempts
	} else {
		var created bool
		var err error
		id, created, err = c.hist.CopyDeletionInsert(hctx, cp.ID, reason, c.clock.Now())
		if err != nil {
			log.Error().Err(err).Msg("cannot record the copy's deletion; not deleting")
			return false
		}
		if !created {
			return false // decided and done meanwhile (open ones come with open)
		}
	}
	dp := c.delPace(cp.Account)
	if err := dp.Wait(ctx); err != nil {
		return false // nothing sent; the row stays pending and the next pass retries it
	}
	start := c.clock.Now()
	requestID, err := client.DeleteImages(ctx, cp.Region, []string{cp.ImageID}, snapshots)
	elapsed := c.clock.Since(start)
	observe(dp, elapsed)
	ae := cvm.ClassifyError(cvm.ActionDeleteImages, err)
	a := history.Attempt{DeletionID: id, Attempt: attempts + 1, Action: cvm.ActionDeleteImages, StartedAt: start,
		Duration: elapsed, RequestID: requestID}
	if ae != nil {
		a.RequestID, a.ErrorCode, a.ErrorMessage = ae.RequestID, ae.Code, ae.Message
		throttle(dp, ae)
	}
	if err := c.hist.AttemptInsert(hctx, a); err != nil {
		log.Error().Err(err).Int64("deletion_id", id).Msg("cannot record API call")
	}
	switch {
	case ae == nil:
		c.finishDeletion(ctx, cp, id, history.DeletionDeleted, requestID, "", "")
		log.Info().Int64("deletion_id", id).Str("request_id", requestID).Int64("elapsed_ms", elapsed.Milliseconds()).Msg("copy deleted")
		return true
	case ae.Code == codeImageNotFound:
		c.finishDeletion(ctx, cp, id, history.DeletionDeleted, ae.RequestID, "", "image already gone ("+codeImageNotFound+")")
		return false
	}
	c.finishDeletion(ctx, cp, id, history.DeletionFailed, ae.RequestID, ae.Code, ae.Message)
	log.Warn().Int64("deletion_id", id).Str("error_code", ae.Code).Str("request_id", ae.RequestID).
		Msg("copy deletion failed; retried at the next pass")
	return false
}

// finishDeletion records a copy deletion's outcome.
func (c *Copier) finishDeletion(ctx context.Context, cp history.Copy, id int64, status history.DeletionStatus, requestID, code, msg string) {
	hctx, cancel := writeContext(ctx)
	defer cancel()
	if err := c.hist.DeletionFinish(hctx, id, status, requestID, code, msg, c.clock.Now()); err != nil {
		c.copyLog(cp).Error().Err(err).Int64("deletion_id", id).Str("status", string(status)).
			Msg("cannot record the outcome of the copy's deletion")
	}
}
