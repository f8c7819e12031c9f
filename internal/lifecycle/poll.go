package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// actionDescribeImages is the action recorded in image_attempts.
const actionDescribeImages = cvm.ActionDescribeImages

// errCutOff ends describe's retries when a call was cut off or never sent because the
// tracker is stopping.
var errCutOff = errors.New("DescribeImages cut off: the tracker is stopping")

// maxLookupPages bounds the pages read to find one image by name (the filter is fuzzy).
const maxLookupPages = 10

// pollResult sums up one poll.
type pollResult struct {
	runs        int   // requested runs loaded
	calls       int   // DescribeImages calls made, retries included
	failedCalls int   // of which failed (a fault of the API or the network, not of one image id)
	lookups     int   // questions asked (a batch of ids, a page of a tag look-up, a name)
	gaveUp      int   // of which still failed after their retries (left for the next poll)
	terminal    int   // runs recorded terminal
	readErr     error // the requested runs could not be read
}

// failed reports whether the poll as a whole failed: history could not be read, or most of its
// questions went unanswered even after their retries. A few failed calls among many answered
// ones do not slow the polls down.
func (r pollResult) failed() bool {
	return r.readErr != nil || (r.lookups > 0 && 2*r.gaveUp > r.lookups)
}

// call is one DescribeImages call, as image_attempts records it.
type call struct {
	start     time.Time
	elapsed   time.Duration
	requestID string
	err       *cvm.APIError
}

// poll makes one pass over the requested runs.
func (t *Tracker) poll(ctx context.Context) pollResult {
	var res pollResult
	rctx, cancel := context.WithTimeout(ctx, historyTimeout)
	runs, err := t.hist.RunsRequestedOf(rctx, t.account, 0)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			res.readErr = err
			t.log.Warn().Err(err).Msg("cannot list the runs to track")
		}
		return res
	}
	res.runs = len(runs)

	live := make(map[int64]bool, len(runs))
	var regions []string
	byRegion := map[string][]*history.Run{}
	for i := range runs {
		r := &runs[i]
		live[r.ID] = true
		if t.finished[r.ID] {
			continue // recorded terminal here; the write is still on its way to the database
		}
		if _, ok := byRegion[r.Region]; !ok {
			regions = append(regions, r.Region)
		}
		byRegion[r.Region] = append(byRegion[r.Region], r)
	}
	t.forgetAllBut(live)

	for _, region := range regions {
		if ctx.Err() != nil {
			return res
		}
		t.pollRegion(ctx, region, byRegion[region], &res)
	}
	if ctx.Err() == nil {
		t.checkWaiters(ctx, live)
	}
	t.log.Debug().Int("runs", res.runs).Int("calls", res.calls).Int("failed_calls", res.failedCalls).
		Int("terminal", res.terminal).Msg("poll done")
	return res
}

// forgetAllBut drops the loop's memory of runs that are no longer requested.
func (t *Tracker) forgetAllBut(live map[int64]bool) {
	for _, m := range []map[int64]int{t.missing, t.attempts} {
		for id := range m {
			if !live[id] {
				delete(m, id)
			}
		}
	}
	for id := range t.finished {
		if !live[id] {
			delete(t.finished, id)
		}
	}
}

// pollRegion follows the runs of one region: by image id in batches of BatchSize, then the runs
// without an image id by imager's tags (tagLookup). A question that still fails after its
// retries skips only its own runs; the rest of the pass goes on.
func (t *Tracker) pollRegion(ctx context.Context, region string, runs []*history.Run, res *pollResult) {
	var ids []string
	byImage := map[string][]*history.Run{}
	var unnamed []*history.Run
	for _, r := range runs {
		if r.ImageID == "" {
			unnamed = append(unnamed, r)
			continue
		}
		if _, ok := byImage[r.ImageID]; !ok {
			ids = append(ids, r.ImageID)
		}
		byImage[r.ImageID] = append(byImage[r.ImageID], r)
	}
	for lo := 0; lo < len(ids); lo += BatchSize {
		if ctx.Err() != nil {
			return
		}
		t.pollBatch(ctx, region, ids[lo:min(lo+BatchSize, len(ids))], byImage, res)
	}
	t.pollUnnamed(ctx, region, unnamed, res)
}

// pollBatch asks about one batch of image ids and acts on each run's image.
func (t *Tracker) pollBatch(ctx context.Context, region string, batch []string, byImage map[string][]*history.Run, res *pollResult) {
	var runs []*history.Run
	for _, id := range batch {
		runs = append(runs, byImage[id]...)
	}
	out, c, ok := t.describe(ctx, region, cvm.DescribeImagesInput{ImageIDs: batch, Limit: len(batch)}, runs, res)
	if !ok {
		if c == nil || !unknownImageID(c.err) {
			return
		}
		if len(batch) == 1 {
			// The API refuses this id outright: it does not know the image.
			for _, r := range byImage[batch[0]] {
				t.imageMissing(ctx, r, nil, res)
			}
			return
		}
		// One id spoils the batch: ask about each alone to find it.
		for _, id := range batch {
			if ctx.Err() != nil {
				return
			}
			t.pollBatch(ctx, region, []string{id}, byImage, res)
		}
		return
	}
	found := make(map[string]*cvm.Image, len(out.Images))
	for i := range out.Images {
		found[out.Images[i].ID] = &out.Images[i]
	}
	for _, id := range batch {
		for _, r := range byImage[id] {
			if img := found[id]; img != nil {
				t.observe(ctx, r, img, c, res)
			} else {
				t.imageMissing(ctx, r, c, res)
			}
		}
	}
}

// unnamedGroup is the runs of one fire of one policy whose CreateImage answer had no ImageId.
type unnamedGroup struct {
	policy, slot string
	runs         []*history.Run
}

// pollUnnamed finds the images of runs whose CreateImage answer had no ImageId. Every image
// imager makes carries its policy and slot as tags, so the runs of one fire are looked up
// together: DescribeImages filtered by tag:imager-policy and tag:imager-slot, 100 per page,
// then names compared exactly. Only a run that look-up misses (an image made without imager's
// tags, or one the API has not indexed yet) is looked up by its own name.
func (t *Tracker) pollUnnamed(ctx context.Context, region string, runs []*history.Run, res *pollResult) {
	var groups []*unnamedGroup
	byKey := map[[2]string]*unnamedGroup{}
	for _, r := range runs {
		if r.ImageName == "" {
			t.imageMissing(ctx, r, nil, res)
			continue
		}
		k := [2]string{r.Policy, policy.SlotTag(r.ScheduledAt)}
		g := byKey[k]
		if g == nil {
			g = &unnamedGroup{policy: k[0], slot: k[1]}
			byKey[k] = g
			groups = append(groups, g)
		}
		g.runs = append(g.runs, r)
	}
	for _, g := range groups {
		if ctx.Err() != nil {
			return
		}
		t.tagLookup(ctx, region, g, res)
	}
}

// tagLookup finds the images of one group by imager's tags, page by page.
func (t *Tracker) tagLookup(ctx context.Context, region string, g *unnamedGroup, res *pollResult) {
	filters := []cvm.Filter{
		{Name: "tag:" + policy.TagPolicy, Values: []string{g.policy}},
		{Name: "tag:" + policy.TagSlot, Values: []string{g.slot}},
	}
	byName := map[string][]*history.Run{}
	for _, r := range g.runs {
		byName[r.ImageName] = append(byName[r.ImageName], r)
	}
	matched := map[int64]bool{}
	offset := 0
	for range maxLookupPages {
		out, c, ok := t.describe(ctx, region, cvm.DescribeImagesInput{Filters: filters, Offset: offset, Limit: cvm.MaxLimit}, g.runs, res)
		if !ok {
			return // nothing decided for these runs: the next poll asks again
		}
		for i := range out.Images {
			img := &out.Images[i]
			for _, r := range byName[img.Name] {
				if !matched[r.ID] && imageOfRun(img, r) {
					matched[r.ID] = true
					t.foundByName(ctx, r, img, c, res)
				}
			}
		}
		offset += len(out.Images)
		if len(out.Images) == 0 || offset >= out.TotalCount {
			break
		}
	}
	for _, r := range g.runs {
		if !matched[r.ID] && ctx.Err() == nil {
			t.pollByName(ctx, region, r, res)
		}
	}
}

// unknownImageID reports whether a failed DescribeImages refused an image id itself
// (InvalidImageId.NotFound, .Malformed, ...), rather than failing as a whole.
func unknownImageID(ae *cvm.APIError) bool {
	return ae != nil && strings.HasPrefix(ae.Code, "InvalidImageId.")
}

// pollByName finds the image of one run whose CreateImage answer had no ImageId by the
// image-name filter: the filter is fuzzy, so names are compared exactly, and an image whose
// imager tags name another policy or instance is not this run's.
func (t *Tracker) pollByName(ctx context.Context, region string, r *history.Run, res *pollResult) {
	filter := []cvm.Filter{{Name: "image-name", Values: []string{r.ImageName}}}
	offset := 0
	var last *call
	for range maxLookupPages {
		out, c, ok := t.describe(ctx, region, cvm.DescribeImagesInput{Filters: filter, Offset: offset, Limit: cvm.MaxLimit},
			[]*history.Run{r}, res)
		if !ok {
			return
		}
		last = c
		for i := range out.Images {
			if img := &out.Images[i]; img.Name == r.ImageName && imageOfRun(img, r) {
				t.foundByName(ctx, r, img, c, res)
				return
			}
		}
		offset += len(out.Images)
		if len(out.Images) == 0 || offset >= out.TotalCount {
			break
		}
	}
	t.imageMissing(ctx, r, last, res)
}

// imageOfRun reports whether img, named as r's image, may be r's: imager's tags, when present,
// must name r's policy, instance and slot.
func imageOfRun(img *cvm.Image, r *history.Run) bool {
	want := map[string]string{
		policy.TagPolicy:   r.Policy,
		policy.TagInstance: r.InstanceID,
		policy.TagSlot:     policy.SlotTag(r.ScheduledAt),
	}
	for _, tag := range img.Tags {
		if w, ok := want[tag.Key]; ok && tag.Value != w {
			return false
		}
	}
	return true
}

// foundByName records the image id found for r, then acts on the image's state. The call that
// found it is recorded: it is how the run got its image id.
func (t *Tracker) foundByName(ctx context.Context, r *history.Run, img *cvm.Image, c *call, res *pollResult) {
	wctx, cancel := writeContext(ctx)
	err := t.hist.RunSetImageID(wctx, r.ID, img.ID)
	cancel()
	if err != nil {
		t.runLog(r).Error().Err(err).Str("image_id", img.ID).Msg("cannot record the image id found by name")
		return
	}
	r.ImageID = img.ID
	t.runLog(r).Info().Str("image_state", img.State).Msg("image found by exact name")
	t.recordCall(ctx, r, c)
	t.observe(ctx, r, img, nil, res)
}

// describe asks DescribeImages one question, paced, retrying a failed call on its own with the
// tracker's backoff (backoff.Retry; bounded by attempts and by half a poll interval) so that
// one InternalError does not leave its runs unpolled until the next poll. Every failed call is
// recorded on every run it was made for. It reports ok false with the last call when the
// question still failed (nil when ctx ended); an unknown image id is not retried.
func (t *Tracker) describe(ctx context.Context, region string, in cvm.DescribeImagesInput, runs []*history.Run, res *pollResult) (cvm.DescribeImagesOutput, *call, bool) {
	res.lookups++
	var (
		out  cvm.DescribeImagesOutput
		last *call
	)
	err := backoff.Retry(ctx, t.clock, t.retry, func(int) error {
		var ok bool
		out, last, ok = t.describeOnce(ctx, region, in, runs, res)
		switch {
		case ok:
			return nil
		case last == nil:
			return backoff.Permanent(errCutOff)
		case unknownImageID(last.err) || last.err.Class != cvm.ClassTransient && last.err.Class != cvm.ClassThrottled:
			return backoff.Permanent(last.err)
		}
		return last.err
	}, backoff.WithJitter(t.jitter))
	switch {
	case err == nil:
		return out, last, true
	case last == nil || errors.Is(err, backoff.ErrInterrupted):
		return out, nil, false
	case !unknownImageID(last.err):
		res.gaveUp++
	}
	return out, last, false
}

// describeOnce makes one paced DescribeImages call. On a failure it records the call on every
// run it was made for and reports ok false with the call (nil when ctx ended).
func (t *Tracker) describeOnce(ctx context.Context, region string, in cvm.DescribeImagesInput, runs []*history.Run, res *pollResult) (cvm.DescribeImagesOutput, *call, bool) {
	if t.pace != nil {
		if err := t.pace.Wait(ctx); err != nil {
			return cvm.DescribeImagesOutput{}, nil, false
		}
	}
	start := t.clock.Now()
	out, err := t.cvm.DescribeImages(ctx, region, in)
	c := &call{start: start, elapsed: t.clock.Since(start), requestID: out.RequestID}
	if o, ok := t.pace.(observer); ok {
		o.Observe(c.elapsed)
	}
	res.calls++
	if err == nil {
		return out, c, true
	}
	if ctx.Err() != nil {
		return out, nil, false // stopping: the call was cut off, not failed
	}
	ae := cvm.ClassifyError(actionDescribeImages, err)
	c.err, c.requestID = ae, ae.RequestID
	if !unknownImageID(ae) {
		res.failedCalls++
	}
	if ae.Class == cvm.ClassThrottled {
		if th, ok := t.pace.(throttler); ok {
			th.Throttle()
		}
	}
	t.log.Warn().Str("region", region).Str("error_code", ae.Code).Str("request_id", ae.RequestID).
		Str("error_message", ae.Message).Int("runs", len(runs)).Msg("DescribeImages failed")
	for _, r := range runs {
		t.recordCall(ctx, r, c)
	}
	return out, c, false
}

// observe acts on the state of r's image. c is the call that reported it, recorded when the
// run ends (nil: already recorded).
func (t *Tracker) observe(ctx context.Context, r *history.Run, img *cvm.Image, c *call, res *pollResult) {
	delete(t.missing, r.ID)
	switch img.State {
	case cvm.ImageStateNormal:
		t.available(ctx, r, img, c, res)
	case cvm.ImageStateCreateFailed, "IMPORTFAILED":
		t.fail(ctx, r, CodeCreateFailed, fmt.Sprintf("image %s ended in state %s", img.ID, img.State), c, res)
	default: // CREATING (or another passing state)
		limit := t.imageTimeout(r.Policy)
		if waited := t.clock.Now().Sub(r.StartedAt); waited > limit {
			t.fail(ctx, r, CodeTimeout, fmt.Sprintf("image %s still %s %s after the run started (image.timeout %s)",
				img.ID, img.State, waited.Truncate(time.Second), limit), c, res)
		}
	}
}

// imageMissing counts a poll that did not find r's image, and fails the run after MissingPolls.
func (t *Tracker) imageMissing(ctx context.Context, r *history.Run, c *call, res *pollResult) {
	t.missing[r.ID]++
	n := t.missing[r.ID]
	what := fmt.Sprintf("image %s", r.ImageID)
	if r.ImageID == "" {
		what = fmt.Sprintf("no image named exactly %q", r.ImageName)
	}
	if n < MissingPolls {
		t.runLog(r).Warn().Int("missed_polls", n).Msgf("%s not found by DescribeImages", what)
		return
	}
	if r.ImageID == "" {
		what = fmt.Sprintf("image named %q", r.ImageName)
	}
	t.fail(ctx, r, CodeImageNotFound, fmt.Sprintf("%s not found by DescribeImages in %d consecutive polls", what, n), c, res)
}

// available records r's image as usable, runs the OnAvailable hook, and tells the waiters.
func (t *Tracker) available(ctx context.Context, r *history.Run, img *cvm.Image, c *call, res *pollResult) {
	t.setInFlight(r.ID, true)
	defer t.setInFlight(r.ID, false)
	t.recordCall(ctx, r, c)
	now := t.clock.Now().UTC()
	size := img.SizeGiB
	wctx, cancel := writeContext(ctx)
	err := t.hist.RunAvailable(wctx, r.ID, &size, img.ID, now)
	cancel()
	if err != nil {
		t.finishFailed(r, err, history.StatusAvailable)
		return
	}
	t.finished[r.ID] = true
	res.terminal++
	r.Status, r.FinishedAt, r.ImageSizeGiB, r.ImageID = history.StatusAvailable, &now, &size, img.ID
	r.ErrorCode, r.ErrorMessage = "", ""
	t.runLog(r).Info().Int64("size_gib", size).Int64("took_ms", now.Sub(r.StartedAt).Milliseconds()).Msg("image available")
	if t.onAvail != nil {
		t.onAvail(ctx, *r)
	}
	t.terminal(*r)
	t.deliver(*r)
}

// fail records r as failed with code, and tells the waiters.
func (t *Tracker) fail(ctx context.Context, r *history.Run, code, message string, c *call, res *pollResult) {
	t.setInFlight(r.ID, true)
	defer t.setInFlight(r.ID, false)
	t.recordCall(ctx, r, c)
	now := t.clock.Now().UTC()
	wctx, cancel := writeContext(ctx)
	err := t.hist.RunFinish(wctx, history.RunFinishParams{
		RunID: r.ID, Status: history.StatusFailed, ErrorCode: code, ErrorMessage: message, FinishedAt: now,
	})
	cancel()
	if err != nil {
		t.finishFailed(r, err, history.StatusFailed)
		return
	}
	t.finished[r.ID] = true
	res.terminal++
	r.Status, r.FinishedAt, r.ErrorCode, r.ErrorMessage = history.StatusFailed, &now, code, message
	t.runLog(r).Warn().Str("error_code", code).Str("error_message", message).Msg("image failed")
	t.terminal(*r)
	t.deliver(*r)
}

// finishFailed logs a terminal status that could not be recorded. A run finished meanwhile by
// someone else (another daemon) is left alone; otherwise the next poll tries again.
func (t *Tracker) finishFailed(r *history.Run, err error, status history.Status) {
	if errors.Is(err, history.ErrConflict) {
		t.finished[r.ID] = true
		t.runLog(r).Info().Err(err).Msg("run already finished elsewhere")
		return
	}
	t.runLog(r).Error().Err(err).Str("status", string(status)).Msg("cannot record the run's end; retrying at the next poll")
}

// recordCall writes one DescribeImages call made for r to image_attempts.
func (t *Tracker) recordCall(ctx context.Context, r *history.Run, c *call) {
	if c == nil {
		return
	}
	n := max(r.Attempts, t.attempts[r.ID]) + 1
	t.attempts[r.ID] = n
	r.Attempts = n
	a := history.Attempt{
		RunID:     r.ID,
		Attempt:   n,
		Action:    actionDescribeImages,
		StartedAt: c.start,
		Duration:  c.elapsed,
		RequestID: c.requestID,
	}
	if c.err != nil {
		a.ErrorCode, a.ErrorMessage = c.err.Code, c.err.Message
	}
	wctx, cancel := writeContext(ctx)
	err := t.hist.AttemptInsert(wctx, a)
	cancel()
	if err != nil {
		t.runLog(r).Error().Err(err).Int("attempt", n).Str("request_id", c.requestID).Msg("cannot record the DescribeImages call")
	}
}

// runLog is the logger for one run.
func (t *Tracker) runLog(r *history.Run) *zerolog.Logger {
	c := t.log.With().Int64("run_id", r.ID).Str("policy", r.Policy).Str("instance", r.InstanceID).
		Str("region", r.Region).Str("image_name", r.ImageName)
	if r.ImageID != "" { // a caller that learns the id adds it itself: one image_id per line
		c = c.Str("image_id", r.ImageID)
	}
	l := c.Logger()
	return &l
}

// terminal runs the OnTerminal hook for a run this Tracker moved to a terminal status.
func (t *Tracker) terminal(r history.Run) {
	if t.onTerminal != nil {
		t.onTerminal(r)
	}
}
