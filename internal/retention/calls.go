package retention

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// Retries within a pass: a transient or throttled DescribeImages or DeleteImages call is tried
// at most maxAttempts times, the backoff doubling from the configured initial delay (api.retry).
// What still fails waits for the next pass.
const (
	maxAttempts    = 3
	defaultBackoff = time.Second
	maxBackoff     = 10 * time.Second
)

// historyTimeout bounds each history write of a deletion. Writes are not cancelled with the
// pass: a DeleteImages call that was made must be recorded, even during shutdown.
const historyTimeout = 10 * time.Second

// codeImageNotFound is DeleteImages' answer for an image that does not exist: the deletion's
// goal is reached, so it counts as deleted.
const codeImageNotFound = "InvalidImageId.NotFound"

// msgGone is the message of a deletion closed because DescribeImages no longer reports its image.
const msgGone = "image no longer exists (DescribeImages)"

// describeImages returns what DescribeImages says now of the images of runs, by image id: by
// ImageIds, per region, at most 100 per call, paced. Images the API does not report are absent.
func (p *Pruner) describeImages(ctx context.Context, runs []history.Run) (map[string]cvm.Image, error) {
	byRegion := map[string][]string{}
	for _, r := range runs {
		if !slices.Contains(byRegion[r.Region], r.ImageID) {
			byRegion[r.Region] = append(byRegion[r.Region], r.ImageID)
		}
	}
	images := make(map[string]cvm.Image, len(runs))
	for _, region := range slices.Sorted(maps.Keys(byRegion)) {
		for batch := range slices.Chunk(byRegion[region], cvm.MaxLimit) {
			out, err := p.describeBatch(ctx, region, batch)
			if err != nil {
				return nil, fmt.Errorf("cross-check %d images in %s: %w", len(batch), region, err)
			}
			for _, img := range out.Images {
				if slices.Contains(batch, img.ID) {
					images[img.ID] = img
				}
			}
		}
	}
	return images, nil
}

// describeBatch makes one DescribeImages call by ids, retrying transient and throttled errors.
// Failed calls are recorded as attempts made for no run or deletion.
func (p *Pruner) describeBatch(ctx context.Context, region string, ids []string) (cvm.DescribeImagesOutput, error) {
	var out cvm.DescribeImagesOutput
	err := backoff.Retry(ctx, p.clock, backoff.Policy{Attempts: maxAttempts}, func(try int) error {
		if err := p.describePace.Wait(ctx); err != nil {
			return backoff.Permanent(fmt.Errorf("wait for the DescribeImages pace: %w", err))
		}
		start := p.clock.Now()
		var err error
		out, err = p.cvm.DescribeImages(ctx, region, cvm.DescribeImagesInput{ImageIDs: ids, Limit: cvm.MaxLimit})
		observe(p.describePace, p.clock.Since(start))
		if err == nil {
			return nil
		}
		ae := apiError(cvm.ActionDescribeImages, err)
		p.recordAttempt(ctx, history.Attempt{Attempt: try, Action: cvm.ActionDescribeImages, StartedAt: start,
			Duration: p.clock.Since(start), RequestID: ae.RequestID, ErrorCode: ae.Code, ErrorMessage: ae.Message})
		throttled(ae, p.describePace)
		if !retryable(ae, try) {
			return backoff.Permanent(err)
		}
		return backoff.After(err, p.backoff(ae, try))
	}, backoff.OnRetry(func(try int, err error, delay time.Duration) {
		ae := apiError(cvm.ActionDescribeImages, err)
		p.log.Warn().Err(err).Str("region", region).Str("error_code", ae.Code).Str("request_id", ae.RequestID).
			Int("attempt", try).Int64("retry_in_ms", delay.Milliseconds()).Msg("DescribeImages failed; retrying")
	}))
	switch {
	case errors.Is(err, backoff.ErrInterrupted):
		return cvm.DescribeImagesOutput{}, fmt.Errorf("retry DescribeImages: %w", ctx.Err())
	case err != nil:
		return cvm.DescribeImagesOutput{}, err
	}
	return out, nil
}

// execute carries out ds in order and returns how many images DeleteImages deleted (an image
// found already gone is recorded deleted but not counted: it freed nothing now); the error joins
// every deletion that failed (each waits for the next pass).
func (p *Pruner) execute(ctx context.Context, ds []Decision) (int, error) {
	deleted := 0
	var errs []error
	for i, d := range ds {
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("prune: %w (%d deletions not attempted)", ctx.Err(), len(ds)-i))
			break
		}
		ok, err := p.deleteImage(ctx, d)
		if ok {
			deleted++
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return deleted, errors.Join(errs...)
}

// deleteImage deletes one image: the decision is recorded first (nothing is deleted without a
// row), then DeleteImages is called, retried a few times on transient and throttled errors, each
// call recorded as an attempt, and the outcome recorded on the row. deleted is true when this
// call removed the image.
func (p *Pruner) deleteImage(ctx context.Context, d Decision) (deleted bool, err error) {
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), historyTimeout)
	defer cancel()
	log := p.log.With().Str("policy", d.Policy).Str("instance", d.InstanceID).Str("region", d.Region).
		Str("image_id", d.ImageID).Str("image_name", d.ImageName).Str("reason", d.Reason).Logger()
	what := fmt.Sprintf("delete image %s (%s/%s)", d.ImageID, d.Policy, d.InstanceID)

	if d.gone {
		log.Info().Int64("deletion_id", d.DeletionID).Msg("image no longer exists; deletion closed")
		return false, p.finish(hctx, what, d.DeletionID, history.DeletionDeleted, "", "", msgGone)
	}

	id, attempts := d.DeletionID, d.attempts
	if id == 0 {
		var created bool
		id, created, err = p.hist.DeletionInsert(hctx, history.Deletion{
			ImageID: d.ImageID, ImageName: d.ImageName, Policy: d.Policy, InstanceID: d.InstanceID,
			Region: d.Region, RunID: d.RunID, Reason: d.Reason, RequestedAt: p.clock.Now(), Account: d.Account,
		})
		if err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		if !created { // decided meanwhile by another pass or daemon
			row, err := p.hist.DeletionGet(hctx, id)
			if err != nil {
				return false, fmt.Errorf("%s: %w", what, err)
			}
			if row.Status == history.DeletionDeleted {
				return false, nil
			}
			attempts = row.Attempts
		}
	}

	var (
		requestID string
		callErr   error
		ae        *cvm.APIError
		paceErr   error
	)
	err = backoff.Retry(ctx, p.clock, backoff.Policy{Attempts: maxAttempts}, func(try int) error {
		if err := p.deletePace.Wait(ctx); err != nil {
			paceErr = err
			return backoff.Permanent(err)
		}
		start := p.clock.Now()
		requestID, callErr = p.cvm.DeleteImages(ctx, d.Region, []string{d.ImageID}, d.DeleteSnapshots)
		observe(p.deletePace, p.clock.Since(start))
		ae = nil
		if callErr != nil {
			ae = apiError(cvm.ActionDeleteImages, callErr)
			requestID = ae.RequestID
		}
		a := history.Attempt{DeletionID: id, Attempt: attempts + try, Action: cvm.ActionDeleteImages,
			StartedAt: start, Duration: p.clock.Since(start), RequestID: requestID}
		if ae != nil {
			a.ErrorCode, a.ErrorMessage = ae.Code, ae.Message
		}
		p.recordAttempt(ctx, a)
		switch {
		case ae == nil || ae.Code == codeImageNotFound:
			return nil // the outcome is recorded below
		case retryable(ae, try):
			throttled(ae, p.deletePace)
			return backoff.After(callErr, p.backoff(ae, try))
		default:
			throttled(ae, p.deletePace)
			return backoff.Permanent(callErr)
		}
	}, backoff.OnRetry(func(try int, err error, delay time.Duration) {
		log.Warn().Err(err).Str("error_code", ae.Code).Str("request_id", requestID).Int("attempt", try).
			Int64("retry_in_ms", delay.Milliseconds()).Msg("DeleteImages failed; retrying")
	}))

	switch {
	case paceErr != nil:
		// Nothing sent for this try: the row stays as it is and the next pass retries it.
		return false, fmt.Errorf("%s: wait for the DeleteImages pace: %w", what, paceErr)
	case err == nil && ae == nil:
		log.Info().Str("request_id", requestID).Bool("delete_snapshots", d.DeleteSnapshots).Msg("image deleted")
		return true, p.finish(hctx, what, id, history.DeletionDeleted, requestID, "", "")
	case err == nil:
		log.Info().Str("request_id", requestID).Msg("image already gone")
		return false, p.finish(hctx, what, id, history.DeletionDeleted, requestID, "",
			"image already gone ("+codeImageNotFound+")")
	}
	log.Warn().Err(callErr).Str("error_code", ae.Code).Str("request_id", requestID).
		Msg("deletion failed; retried at the next pass")
	if err := p.finish(hctx, what, id, history.DeletionFailed, requestID, ae.Code, ae.Message); err != nil {
		return false, errors.Join(fmt.Errorf("%s: %w", what, callErr), err)
	}
	return false, fmt.Errorf("%s (retried at the next pass): %w", what, callErr)
}

// finish records a deletion's outcome.
func (p *Pruner) finish(ctx context.Context, what string, id int64, status history.DeletionStatus, requestID, code, msg string) error {
	if err := p.hist.DeletionFinish(ctx, id, status, requestID, code, msg, p.clock.Now()); err != nil {
		return fmt.Errorf("%s: record outcome: %w", what, err)
	}
	return nil
}

// recordAttempt records one API call; a failure to record is logged, not fatal: the call's
// outcome is still recorded on the deletion row.
func (p *Pruner) recordAttempt(ctx context.Context, a history.Attempt) {
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), historyTimeout)
	defer cancel()
	if err := p.hist.AttemptInsert(hctx, a); err != nil {
		p.log.Error().Err(err).Str("action", a.Action).Int64("deletion_id", a.DeletionID).
			Str("request_id", a.RequestID).Msg("cannot record API call")
	}
}

// retryable reports whether a call that failed with ae on try may be tried again in this pass.
func retryable(ae *cvm.APIError, try int) bool {
	return try < maxAttempts && (ae.Class == cvm.ClassTransient || ae.Class == cvm.ClassThrottled)
}

// throttled slows pace after a RequestLimitExceeded, when pace can be slowed (a *pace.Limiter
// can: every caller sharing it then slows down).
func throttled(ae *cvm.APIError, pace Pace) {
	if t, ok := pace.(throttler); ok && ae.Class == cvm.ClassThrottled {
		t.Throttle()
	}
}

// backoff is the wait before try+1 (internal/backoff): from the configured initial delay of the
// error's class (api.retry.transient or .throttled; 1s if unset), doubled per try with jitter, at
// most 10s.
func (p *Pruner) backoff(ae *cvm.APIError, try int) time.Duration {
	var b policy.Backoff
	if api, ok := p.api(); ok {
		b = api.Retry.Transient
		if ae.Class == cvm.ClassThrottled {
			b = api.Retry.Throttled
		}
	}
	bp := backoff.Policy{Initial: b.Initial, Max: maxBackoff}
	if bp.Initial <= 0 {
		bp.Initial = defaultBackoff
	}
	if b.Max > 0 && b.Max < bp.Max {
		bp.Max = b.Max
	}
	d, _ := bp.Next(try, 0, p.jitter)
	return d
}

// apiError classifies a failed call's error (cvm.ClassifyError): an error the client did not
// classify is transient and retried like a network error.
func apiError(action string, err error) *cvm.APIError {
	return cvm.ClassifyError(action, err)
}

// observe feeds a call's round trip to pace when it measures jitter (*pace.Limiter).
func observe(pace Pace, rtt time.Duration) {
	if o, ok := pace.(observer); ok {
		o.Observe(rtt)
	}
}
