package copies

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// sourceBusy reports whether SyncImages refused the call because the source image cannot be
// copied yet (not NORMAL, or held by another operation): no copy was made, call again later.
func sourceBusy(ae *cvm.APIError) bool {
	switch ae.Code {
	case "InvalidImageId.IncorrectState", "FailedOperation.InvalidImageState", "InvalidParameterValue.InvalidImageState":
		return true
	}
	return ae.Class == cvm.ClassBusy
}

// source is the image a run's copies are made of.
type source struct {
	runID     int64
	account   string
	policy    string
	instance  string
	region    string
	imageID   string
	imageName string
}

func sourceOfRun(d history.CopyDue) source {
	return source{runID: d.Run.ID, account: d.Account, policy: d.Run.Policy, instance: d.Run.InstanceID,
		region: d.Run.Region, imageID: d.Run.ImageID, imageName: d.Run.ImageName}
}

func sourceOfCopy(cp history.Copy) source {
	return source{runID: cp.RunID, account: cp.Account, policy: cp.Policy, instance: cp.InstanceID,
		region: cp.SourceRegion, imageID: cp.SourceImageID, imageName: cp.ImageName}
}

func (s source) logger(l zerolog.Logger) *zerolog.Logger {
	ll := l.With().Int64("run_id", s.runID).Str("policy", s.policy).Str("instance", s.instance).
		Str("account", s.account).Str("source_region", s.region).Str("source_image_id", s.imageID).Logger()
	return &ll
}

// startDue starts the copies due: one SyncImages call per run with every region missing a copy,
// DueBatch runs at a time.
func (c *Copier) startDue(ctx context.Context, cfg *policy.Config, res *passResult) {
	ws := wants(cfg)
	if len(ws) == 0 {
		return
	}
	// A batch at a time until none is left: a run whose request is recorded is no longer due, and
	// a request that cannot be recorded ends the pass (res.err).
	var first int64 // the first run of the previous batch: a batch that starts with it again made no progress
	for ctx.Err() == nil && res.err == nil {
		due, err := c.hist.CopiesDue(ctx, ws, DueBatch)
		if err != nil {
			res.err = err
			return
		}
		if len(due) == 0 || due[0].Run.ID == first {
			return // nothing due, or runs whose copies wait (an account without a client)
		}
		first = due[0].Run.ID
		for _, d := range due {
			if ctx.Err() != nil || res.err != nil {
				return
			}
			c.syncRun(ctx, cfg, sourceOfRun(d), d.Regions, false, res)
		}
		if len(due) < DueBatch {
			return
		}
	}
}

// resolve deals with the copies left requested without an id. One whose last call was refused
// is called again once its retry_at has passed; one whose last call has no known outcome is
// looked up by exact name in its destination first (found: it exists, syncing), and called again
// only when absent. One requested for longer than its policy's image.timeout fails.
func (c *Copier) resolve(ctx context.Context, cfg *policy.Config, requested []history.Copy, res *passResult) {
	now := c.clock.Now()
	type group struct {
		src     source
		regions []string
	}
	var order []int64
	groups := map[int64]*group{}
	for _, cp := range requested {
		if ctx.Err() != nil {
			return
		}
		log := c.copyLog(cp)
		if timeout := imageTimeout(cfg, cp.Policy); now.Sub(cp.RequestedAt) > timeout {
			msg := fmt.Sprintf("not copied within image.timeout %s of the first request", timeout)
			if cp.ErrorCode != "" {
				msg += fmt.Sprintf(" (last error %s: %s)", cp.ErrorCode, cp.ErrorMessage)
			}
			c.fail(ctx, cp, CodeTimeout, msg, res)
			continue
		}
		switch {
		case cp.RetryAt != nil && now.Before(*cp.RetryAt):
			res.retryAt(*cp.RetryAt)
			continue
		case cp.RetryAt == nil:
			client := c.clients(cp.Account)
			if client == nil {
				log.Warn().Msg("no CVM client for the copy's account; copy waits")
				continue
			}
			img, found, err := c.lookupByName(ctx, client, cp.Account, cp.Region, cp.ImageName)
			if err != nil {
				log.Warn().Err(err).Msg("cannot look the copy up by name; retried at the next pass")
				continue
			}
			if found {
				c.answered(ctx, cp, img.ID, "", sourceOfCopy(cp).logger(c.log).Info().Str("region", cp.Region).
					Str("image_id", img.ID).Str("image_state", img.State), "copy found by exact name")
				continue
			}
			log.Info().Msg("copy not found by name: SyncImages is called again")
		}
		g := groups[cp.RunID]
		if g == nil {
			g = &group{src: sourceOfCopy(cp)}
			groups[cp.RunID] = g
			order = append(order, cp.RunID)
		}
		g.regions = append(g.regions, cp.Region)
	}
	for _, id := range order {
		if ctx.Err() != nil {
			return
		}
		g := groups[id]
		c.syncRun(ctx, cfg, g.src, g.regions, false, res)
	}
}

// syncRun copies src to regions: the rows are recorded requested before each call, the call is
// made on the account's pace, and the answer decides each region (see the package comment and the
// cases below). quotaTried says the quota gate already ran for this copy in this pass.
func (c *Copier) syncRun(ctx context.Context, cfg *policy.Config, src source, regions []string, quotaTried bool, res *passResult) {
	log := src.logger(c.log)
	regions = slices.DeleteFunc(slices.Clone(regions), func(r string) bool { return r == src.region })
	client := c.clients(src.account)
	if client == nil {
		log.Warn().Strs("regions", regions).Msg("no CVM client for the account; copies wait")
		return
	}
	for calls := 0; len(regions) > 0 && calls < maxCallsPerRun && ctx.Err() == nil; calls++ {
		hctx, cancel := writeContext(ctx)
		rows, attempt, err := c.hist.CopyRequested(hctx, src.runID, regions, c.clock.Now())
		cancel()
		if err != nil {
			log.Error().Err(err).Strs("regions", regions).Msg("cannot record the copy request; not calling SyncImages")
			res.err = err
			return
		}
		byRegion := map[string]history.Copy{}
		regions = regions[:0]
		for _, r := range rows {
			if r.Status == history.CopyStatusRequested && r.ImageID == "" {
				byRegion[r.Region] = r
				regions = append(regions, r.Region)
			}
		}
		if len(regions) == 0 {
			return
		}
		sp := c.syncPace(src.account)
		if err := sp.Wait(ctx); err != nil {
			// Nothing sent: the rows say requested with an unknown outcome and are looked up by
			// name at the next pass, which finds nothing and calls.
			return
		}
		start := c.clock.Now()
		out, callErr := client.SyncImages(ctx, src.region, cvm.SyncImagesInput{ImageID: src.imageID,
			DestinationRegions: slices.Clone(regions), ImageName: src.imageName})
		elapsed := c.clock.Since(start)
		observe(sp, elapsed)
		res.calls++
		ae := cvm.ClassifyError(cvm.ActionSyncImages, callErr)
		a := history.Attempt{RunID: src.runID, Attempt: attempt, Action: cvm.ActionSyncImages, StartedAt: start,
			Duration: elapsed, RequestID: out.RequestID}
		if ae != nil {
			a.RequestID, a.ErrorCode, a.ErrorMessage = ae.RequestID, ae.Code, ae.Message
		}
		c.recordAttempt(ctx, a)
		ids := make([]int64, 0, len(regions))
		for _, r := range regions {
			ids = append(ids, byRegion[r].ID)
		}
		if ae == nil {
			got := map[string]string{}
			for _, cp := range out.Copies {
				got[cp.Region] = cp.ImageID
			}
			for _, r := range regions {
				c.answered(ctx, byRegion[r], got[r], out.RequestID, log.Info().Str("region", r).Str("image_id", got[r]).
					Str("request_id", out.RequestID).Int64("elapsed_ms", elapsed.Milliseconds()), "copy requested")
			}
			return
		}
		clog := log.With().Strs("regions", regions).Str("error_code", ae.Code).Str("request_id", ae.RequestID).
			Int64("elapsed_ms", elapsed.Milliseconds()).Logger()
		throttle(sp, ae)
		switch {
		case ae.Ambiguous():
			// The API may have started the copies: record that the outcome is unknown, then look
			// each one up by name and call again only for those absent.
			c.callFailed(ctx, ids, ae, nil)
			clog.Warn().Err(callErr).Msg("SyncImages outcome unknown; looking the copies up by name")
			var absent []string
			for _, r := range regions {
				img, found, err := c.lookupByName(ctx, client, src.account, r, src.imageName)
				switch {
				case err != nil:
					clog.Warn().Err(err).Str("region", r).Msg("cannot look the copy up by name; retried at the next pass")
				case found:
					c.answered(ctx, byRegion[r], img.ID, "", log.Info().Str("region", r).Str("image_id", img.ID), "copy found by exact name")
				default:
					absent = append(absent, r)
				}
			}
			regions = absent
		case cvm.RegionRefused(ae.Code):
			refused := refusedRegions(ae, regions)
			if len(refused) == 0 {
				// The answer does not say which region: one call per region tells.
				clog.Warn().Msg("a destination region was refused; copying one region at a time")
				for _, r := range regions {
					c.syncRun(ctx, cfg, src, []string{r}, quotaTried, res)
				}
				return
			}
			for _, r := range refused {
				c.fail(ctx, byRegion[r], ae.Code, ae.Message, res)
			}
			regions = slices.DeleteFunc(regions, func(r string) bool { return slices.Contains(refused, r) })
		case ae.Class == cvm.ClassQuota && !quotaTried:
			quotaTried = true
			clog.Warn().Msg("image quota reached in a destination; pruning expired copies there before one more try")
			for _, r := range regions {
				c.quotaGate(ctx, cfg, src.account, r, res)
			}
		case ae.Class == cvm.ClassQuota && len(regions) > 1:
			// Still over the quota somewhere: one region at a time finds where.
			for _, r := range regions {
				c.syncRun(ctx, cfg, src, []string{r}, true, res)
			}
			return
		case ae.Class == cvm.ClassDuplicateName:
			// A copy of that name is in a destination already: an earlier call of ours whose
			// answer was lost, or someone else's image. Only one found by name is adopted.
			for _, r := range regions {
				img, found, err := c.lookupByName(ctx, client, src.account, r, src.imageName)
				switch {
				case err != nil:
					c.callFailed(ctx, []int64{byRegion[r].ID}, ae, nil)
				case found:
					c.answered(ctx, byRegion[r], img.ID, "", log.Info().Str("region", r).Str("image_id", img.ID), "copy found by exact name")
				default:
					c.fail(ctx, byRegion[r], ae.Code, ae.Message, res)
				}
			}
			return
		case sourceBusy(ae), ae.Class == cvm.ClassThrottled, ae.Class == cvm.ClassTransient:
			// Microseconds: the time as PostgreSQL keeps it.
			at := c.clock.Now().Add(c.retryDelay(cfg, ae, byRegion[regions[0]].Attempts)).Truncate(time.Microsecond)
			c.callFailed(ctx, ids, ae, &at)
			res.retryAt(at)
			clog.Warn().Err(callErr).Int64("retry_in_ms", at.Sub(c.clock.Now()).Milliseconds()).Msg("SyncImages refused; retrying later")
			return
		default:
			for _, r := range regions {
				c.fail(ctx, byRegion[r], ae.Code, ae.Message, res)
			}
			return
		}
	}
}

// refusedRegions is the regions of a region refusal: the one region of the call, or those the
// message names; none when it names none (or all of several: nothing tells them apart).
func refusedRegions(ae *cvm.APIError, regions []string) []string {
	if len(regions) == 1 {
		return regions
	}
	var out []string
	for _, r := range regions {
		if strings.Contains(ae.Message, r) {
			out = append(out, r)
		}
	}
	if len(out) == len(regions) {
		return nil
	}
	return out
}

// retryDelay is the wait before calling again after a refusal: the class's api.retry backoff
// (busy, throttled, transient), by the number of calls the copy had.
func (c *Copier) retryDelay(cfg *policy.Config, ae *cvm.APIError, attempts int) time.Duration {
	b, def := cfg.API.Retry.Transient, backoff.Policy{Initial: 200 * time.Millisecond, Max: 30 * time.Second}
	switch {
	case sourceBusy(ae):
		b, def = cfg.API.Retry.Busy, backoff.Policy{Initial: 30 * time.Second, Max: 5 * time.Minute}
	case ae.Class == cvm.ClassThrottled:
		b, def = cfg.API.Retry.Throttled, backoff.Policy{Initial: time.Second, Max: 10 * time.Second}
	}
	p := backoff.Policy{Initial: b.Initial, Max: b.Max}
	if p.Initial <= 0 {
		p.Initial = def.Initial
	}
	if p.Max <= 0 {
		p.Max = def.Max
	}
	d, _ := p.Next(max(attempts, 1), 0, c.jitter)
	return d
}

// lookupByName finds the image named exactly name in region (the image-name filter is fuzzy;
// names are compared exactly). Of several, the newest is taken, and the others are logged.
func (c *Copier) lookupByName(ctx context.Context, client CVM, account, region, name string) (cvm.Image, bool, error) {
	var matches []cvm.Image
	offset := 0
	for range 10 {
		out, err := c.describe(ctx, client, account, region, cvm.DescribeImagesInput{
			Filters: []cvm.Filter{{Name: "image-name", Values: []string{name}}}, Offset: offset, Limit: cvm.MaxLimit})
		if err != nil {
			return cvm.Image{}, false, err
		}
		for _, img := range out.Images {
			if img.Name == name {
				matches = append(matches, img)
			}
		}
		offset += len(out.Images)
		if len(out.Images) == 0 || offset >= out.TotalCount {
			break
		}
	}
	if len(matches) == 0 {
		return cvm.Image{}, false, nil
	}
	slices.SortStableFunc(matches, func(a, b cvm.Image) int { return b.CreatedTime.Compare(a.CreatedTime) })
	if len(matches) > 1 {
		var others []string
		for _, m := range matches[1:] {
			others = append(others, m.ID)
		}
		c.log.Warn().Str("region", region).Str("image_name", name).Str("image_id", matches[0].ID).Strs("other_image_ids", others).
			Msg("several images have the copy's name; the newest is taken")
	}
	return matches[0], true, nil
}

// describe makes one DescribeImages call on the account's Describe pace. A failed call is not
// retried here: what it was for is asked again at the next pass.
func (c *Copier) describe(ctx context.Context, client CVM, account, region string, in cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error) {
	dp := c.descPace(account)
	if err := dp.Wait(ctx); err != nil {
		return cvm.DescribeImagesOutput{}, fmt.Errorf("wait for the DescribeImages pace: %w", err)
	}
	start := c.clock.Now()
	out, err := client.DescribeImages(ctx, region, in)
	observe(dp, c.clock.Since(start))
	if err != nil {
		ae := cvm.ClassifyError(cvm.ActionDescribeImages, err)
		throttle(dp, ae)
		return cvm.DescribeImagesOutput{}, fmt.Errorf("DescribeImages in %s: %w", region, err)
	}
	return out, nil
}

// answered records that copy cp exists (syncing), and logs it with ev.
func (c *Copier) answered(ctx context.Context, cp history.Copy, imageID, requestID string, ev *zerolog.Event, msg string) {
	hctx, cancel := writeContext(ctx)
	defer cancel()
	if err := c.hist.CopyAnswered(hctx, cp.ID, imageID, requestID); err != nil {
		c.copyLog(cp).Error().Err(err).Str("image_id", imageID).Str("request_id", requestID).Msg("cannot record the copy's answer")
		ev.Discard()
		return
	}
	ev.Int64("copy_id", cp.ID).Msg(msg)
}

// callFailed records a failed call on copies ids; retryAt nil says its outcome is not known.
func (c *Copier) callFailed(ctx context.Context, ids []int64, ae *cvm.APIError, retryAt *time.Time) {
	hctx, cancel := writeContext(ctx)
	defer cancel()
	if err := c.hist.CopyCallFailed(hctx, ids, ae.Code, ae.Message, ae.RequestID, retryAt); err != nil {
		c.log.Error().Err(err).Ints64("copy_ids", ids).Str("error_code", ae.Code).Msg("cannot record the failed SyncImages call")
	}
}

// fail ends copy cp with code.
func (c *Copier) fail(ctx context.Context, cp history.Copy, code, msg string, res *passResult) {
	hctx, cancel := writeContext(ctx)
	defer cancel()
	log := c.copyLog(cp)
	if err := c.hist.CopyFailed(hctx, cp.ID, code, msg, c.clock.Now()); err != nil {
		log.Error().Err(err).Str("error_code", code).Msg("cannot record the failed copy")
		return
	}
	delete(c.missing, cp.ID)
	res.failed++
	log.Warn().Str("error_code", code).Str("error_message", msg).Msg("copy failed")
}

// recordAttempt records one SyncImages call on its run; a failure to record is logged.
func (c *Copier) recordAttempt(ctx context.Context, a history.Attempt) {
	hctx, cancel := writeContext(ctx)
	defer cancel()
	if err := c.hist.AttemptInsert(hctx, a); err != nil {
		c.log.Error().Err(err).Str("action", a.Action).Int64("run_id", a.RunID).Str("request_id", a.RequestID).
			Msg("cannot record API call")
	}
}

// copyLog is the logger of one copy's events.
func (c *Copier) copyLog(cp history.Copy) *zerolog.Logger {
	l := c.log.With().Int64("copy_id", cp.ID).Int64("run_id", cp.RunID).Str("policy", cp.Policy).
		Str("instance", cp.InstanceID).Str("account", cp.Account).Str("source_region", cp.SourceRegion).
		Str("source_image_id", cp.SourceImageID).Str("region", cp.Region).Logger()
	return &l
}
