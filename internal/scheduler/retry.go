package scheduler

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// Error codes imager records for failures that are not the API's own.
const (
	codePolicyNotFound      = "PolicyNotFound"
	codeHistoryUnavailable  = "HistoryUnavailable"
	codeDataDisksUnresolved = "DataDisksUnresolved"
	codeUnclassified        = "UnclassifiedError"
	codeDryRunOperation     = "DryRunOperation" // the API's answer to a DryRun whose checks passed
	codeQuotaExceeded       = "ImageQuotaLimitExceeded"
	codeTargetGone          = "InvalidInstanceId.NotFound" // a listed instance DescribeInstances no longer knows
	// CodeMissed marks a slot that was never started: it passed while no scheduler could fire
	// it, or its start window closed before its claim could be written.
	CodeMissed = "Missed"
	// CodeTargetsUnresolved fails a fire whose targets could not be resolved and that knows of
	// no instance to fall back on (no listed instance, no earlier fire): it has no run, so the
	// code is on its fire_failed event (docs/notifications.md "Pings").
	CodeTargetsUnresolved = "TargetsUnresolved"
	// CodePreviousImageInProgress marks a slot skipped by `concurrency: forbid`.
	CodePreviousImageInProgress = "PreviousImageInProgress"
)

// Messages recorded on runs that were not sent.
const (
	msgAPIDryRun      = "api dry run: request passed the API's checks"
	msgPolicyDisabled = "policy disabled"
)

// Retry defaults (docs/design.md "Pacing and retries"), used for a Backoff left entirely zero
// in the config. Transient and throttled retries also stop when the slot's start window closes.
var (
	defaultTransient = policy.Backoff{Initial: 200 * time.Millisecond, Max: 30 * time.Second}
	defaultThrottled = policy.Backoff{Initial: time.Second, Max: 10 * time.Second, Attempts: 10}
	defaultBusy      = policy.Backoff{Initial: 30 * time.Second, Max: 5 * time.Minute, MaxElapsed: 15 * time.Minute}
)

// maxLookupPages bounds the DescribeImages pages read to find one name (the filter is fuzzy).
const maxLookupPages = 10

// errStopping reports that a step was abandoned because the scheduler is stopping.
var errStopping = errors.New("scheduler stopping")

// decide acts on a failed CreateImage by the class the CVM client gave its error.
func (s *Scheduler) decide(j *job, ae *cvm.APIError) {
	retry := s.retry()
	switch ae.Class {
	case cvm.ClassThrottled:
		s.pace.Throttle()
		s.retryOrFail(j, ae, retry.Throttled, j.deadline)
	case cvm.ClassTransient:
		s.retryOrFail(j, ae, retry.Transient, j.deadline)
	case cvm.ClassBusy:
		s.retryOrFail(j, ae, retry.Busy, time.Time{})
	case cvm.ClassDuplicateName:
		s.duplicateName(j, ae, retry.Duplicate)
	case cvm.ClassQuota:
		s.quotaExceeded(j, ae)
	default:
		s.fail(j, ae.Code, ae.Message)
	}
}

// retryOrFail queues j again after the class's backoff, or fails it once the backoff gives up:
// after its attempts or elapsed time, or when the next try would start after deadline (the slot's
// start window; zero: none).
//
// A transient failure is retried sooner while the scheduler's retry budget says the API fails
// rarely (backoff.Budget: under half of the last 10 s of CreateImage calls failed transiently,
// and the run has not used up its quick retries): after a short delay instead of its backoff,
// back into the paced queue, where it keeps its place. The pace still bounds the rate, and the
// backoff's stop rules (attempts, elapsed time, the start window) still decide whether there is
// another try. A fire with a share of random InternalErrors then keeps the pace busy to its end
// instead of finishing with calls that wait out seconds of backoff while nothing else is sent.
func (s *Scheduler) retryOrFail(j *job, ae *cvm.APIError, b policy.Backoff, deadline time.Time) {
	j.failures[ae.Class]++
	now := s.clock.Now()
	d, ok := asPolicy(b).Until(j.failures[ae.Class], now.Sub(j.firstCall), now, deadline, s.jitter)
	if !ok {
		msg := ae.Message
		if !deadline.IsZero() && !now.Before(deadline) {
			msg = fmt.Sprintf("%s (retried %d times until the start window closed)", ae.Message, j.failures[ae.Class])
		}
		s.fail(j, ae.Code, msg)
		return
	}
	quick := false
	if ae.Class == cvm.ClassTransient {
		if q, ok := s.budget.Quick(j.failures[ae.Class]); ok && q < d {
			d, quick = q, true
		}
	}
	s.jobLog(j).Info().Str("error_code", ae.Code).Str("class", ae.Class.String()).
		Str("request_id", ae.RequestID).Int("failures", j.failures[ae.Class]).Int64("retry_in_ms", d.Milliseconds()).
		Bool("quick_retry", quick).Msg("CreateImage will be retried")
	s.enqueue(j, now.Add(d))
}

// asPolicy is a configured backoff as the backoff package's policy.
func asPolicy(b policy.Backoff) backoff.Policy {
	return backoff.Policy{Initial: b.Initial, Max: b.Max, Attempts: b.Attempts, MaxElapsed: b.MaxElapsed}
}

// retry returns the configured retry settings, with defaults for backoffs left zero.
func (s *Scheduler) retry() policy.Retry {
	r := s.api().Retry
	if r.Transient == (policy.Backoff{}) {
		r.Transient = defaultTransient
	}
	if r.Throttled == (policy.Backoff{}) {
		r.Throttled = defaultThrottled
	}
	if r.Busy == (policy.Backoff{}) {
		r.Busy = defaultBusy
	}
	return r
}

// duplicateName handles InvalidImageName.Duplicate: adopt the image when it is this slot's own,
// else try a fresh name (at most limit times).
func (s *Scheduler) duplicateName(j *job, ae *cvm.APIError, limit int) {
	img, err := s.findOwnImage(j)
	switch {
	case errors.Is(err, errStopping):
		s.leave(j)
		return
	case err != nil:
		s.lookupFailed(j, err)
		return
	case img != nil:
		s.adopt(j, img)
		return
	}
	if j.renames >= limit {
		s.fail(j, ae.Code, ae.Message)
		return
	}
	j.renames++
	name := policy.ImageName(j.policy, j.instance, j.slot, j.renames)
	ctx, cancel := s.historyContext()
	err = s.hist.RunRename(ctx, j.run.ID, name)
	cancel()
	if err != nil {
		s.checkFenced(err)
		s.jobLog(j).Error().Err(err).Str("new_image_name", name).Msg("cannot record the run's new image name")
	}
	s.jobLog(j).Info().Str("new_image_name", name).Int("renames", j.renames).
		Msg("image name taken by another image; retrying with a fresh name")
	j.name = name
	j.ambiguous = false // ambiguity was about the old name
	s.enqueue(j, s.clock.Now())
}

// quotaExceeded handles ImageQuotaLimitExceeded: no blind retry; the OnQuotaExceeded hook may
// free room (retention) and ask for one more try.
func (s *Scheduler) quotaExceeded(j *job, ae *cvm.APIError) {
	if hook := s.opts.OnQuotaExceeded; hook != nil && !j.quotaRetry {
		j.quotaRetry = true
		if hook(s.stopCtx, j.policy) {
			s.jobLog(j).Info().Str("error_code", ae.Code).Msg("image quota reached; retrying once after the quota hook")
			s.enqueue(j, s.clock.Now())
			return
		}
	}
	s.jobLog(j).Error().Str("error_code", ae.Code).Str("request_id", ae.RequestID).Str("region", j.region).
		Msg("image quota of the region reached; the slot fails")
	s.fail(j, ae.Code, ae.Message)
}

// lookUpOwnImage looks for the run's image by exact name before sending. It reports whether the
// worker should go on and send; false when the run was adopted, requeued or set aside.
func (s *Scheduler) lookUpOwnImage(j *job) bool {
	img, err := s.findOwnImage(j)
	switch {
	case errors.Is(err, errStopping):
		s.leave(j)
		return false
	case err != nil:
		s.lookupFailed(j, err)
		return false
	case img != nil:
		s.adopt(j, img)
		return false
	}
	j.lookupFirst = false
	return true
}

// lookupFailed retries a failed look-up with the transient backoff. A run whose image cannot be
// looked up is neither resent nor failed: it stays pending and the next start reconciles it.
func (s *Scheduler) lookupFailed(j *job, err error) {
	j.lookupFails++
	j.lookupFirst = true
	now := s.clock.Now()
	code := codeUnclassified
	if ae, ok := cvm.AsAPIError(err); ok {
		code = ae.Code
	}
	if d, ok := asPolicy(s.retry().Transient).Until(j.lookupFails, 0, now, j.deadline, s.jitter); ok {
		s.jobLog(j).Warn().Err(err).Int64("retry_in_ms", d.Milliseconds()).Msg("cannot look the image up by name; will retry")
		s.enqueue(j, now.Add(d))
		return
	}
	s.jobLog(j).Error().Err(err).Msg("cannot look the image up by name; the run stays pending until the next start")
	s.finish(j, s.outcome(j, history.StatusPending, code,
		fmt.Sprintf("image lookup failed, left pending for reconciliation: %v", err)))
}

// adopt records an existing image as the run's own: no new image is made.
func (s *Scheduler) adopt(j *job, img *cvm.Image) {
	s.jobLog(j).Info().Str("image_id", img.ID).Str("image_state", img.State).
		Msg("the slot's image already exists; adopting it")
	s.requested(j, img.ID, "")
}

// findOwnImage returns the image named exactly j.name that belongs to j's slot, or nil. The
// image-name filter is fuzzy, so names are compared exactly and every page is read.
func (s *Scheduler) findOwnImage(j *job) (*cvm.Image, error) {
	filter := []cvm.Filter{{Name: "image-name", Values: []string{j.name}}}
	offset := 0
	for range maxLookupPages {
		if err := s.describePace.Wait(s.stopCtx); err != nil {
			return nil, errStopping
		}
		start := s.clock.Now()
		out, err := s.cvm.DescribeImages(s.callCtx, j.region, cvm.DescribeImagesInput{Filters: filter, Offset: offset, Limit: 100})
		ae, _ := asAPIError("DescribeImages", err)
		requestID := out.RequestID
		if ae != nil {
			requestID = ae.RequestID
		}
		s.recordAttempt(j, "DescribeImages", start, s.clock.Since(start), requestID, ae)
		if ae != nil {
			if s.callCtx.Err() != nil {
				return nil, errStopping
			}
			if ae.Class == cvm.ClassThrottled {
				s.describePace.Throttle()
			}
			return nil, fmt.Errorf("look up image %s: %w", j.name, ae)
		}
		for i := range out.Images {
			if out.Images[i].Name == j.name && s.ownImage(j, &out.Images[i]) {
				return &out.Images[i], nil
			}
		}
		offset += len(out.Images)
		if len(out.Images) == 0 || offset >= out.TotalCount {
			return nil, nil
		}
	}
	return nil, nil
}

// ownImage reports whether img, named exactly as j's run, is that run's image. Tags naming this
// policy, instance and slot prove it. Without that proof, an image is taken as the run's own only
// when a call of the run may have created it unseen (network error, timeout, crash) and its
// imager-instance tag, when it has one, names this instance: the first name of a slot is derived
// from the slot and the instance, so another image with that exact name is not expected.
func (s *Scheduler) ownImage(j *job, img *cvm.Image) bool {
	tags := make(map[string]string, len(img.Tags))
	for _, t := range img.Tags {
		tags[t.Key] = t.Value
	}
	if j.policy != nil {
		want := policy.ImageTags(j.policy, j.instance, j.slot)
		match := true
		for _, k := range []string{policy.TagPolicy, policy.TagInstance, policy.TagSlot} {
			w, ok := want[k]
			if got, has := tags[k]; !ok || !has || got != w {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	if !j.ambiguous {
		return false
	}
	v, ok := tags[policy.TagInstance]
	return !ok || v == j.instance
}

// sortedTags turns a tag map into the request's tag list, sorted by key for stable requests.
func sortedTags(m map[string]string) []cvm.Tag {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	tags := make([]cvm.Tag, 0, len(keys))
	for _, k := range keys {
		tags = append(tags, cvm.Tag{Key: k, Value: m[k]})
	}
	return tags
}
