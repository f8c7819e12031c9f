package restore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
)

// SweepResult is what one Sweep did.
type SweepResult struct {
	Terminated []string // launched instances terminated (or found gone)
	Failed     []int64  // rows failed with CodeInterrupted
	Foreign    []string // tagged instances no row of this history names: left alone
}

// Sweep ends what processes that stopped left behind, for the tester's account: every row not
// finished is failed with CodeInterrupted (no live process runs it: the tester has just started on
// this leadership, and rows of the one before are not its to finish), and every launched instance
// of a row not terminated is terminated. Instances are found by their row and by their tag
// (TagTest, in the regions of the account's tests and of its open rows), so an instance whose
// RunInstances answer was lost is terminated too. An instance tagged with a token this history
// does not know (another imager on the same account) is left alone. Start runs it first; it is
// safe to call again. It returns the first error met, after doing what it could.
func (t *Tester) Sweep(ctx context.Context) (SweepResult, error) {
	var res SweepResult
	if err := t.check(); err != nil {
		return res, err
	}
	open, err := t.hist.RestoresOpen(ctx, t.account)
	if err != nil {
		return res, fmt.Errorf("restore sweep: %w", err)
	}
	regions := regionsOf(t.cfg(), t.account)
	for _, row := range open {
		if !slices.Contains(regions, row.Region) {
			regions = append(regions, row.Region)
		}
	}
	var errs []error
	tagged := map[string]cvm.Instance{} // by token
	tagRegion := map[string]string{}
	for _, region := range regions {
		found, err := t.tagged(ctx, region)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for token, in := range found {
			tagged[token], tagRegion[token] = in, region
		}
	}
	for _, row := range open {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		if t.isInflight(row.ID) || t.mine(row) {
			continue
		}
		log := t.testLog(row)
		if row.LaunchedInstanceID == "" {
			if in, ok := tagged[row.ClientToken]; ok {
				row.LaunchedInstanceID = in.ID
				hctx, cancel := writeContext(ctx)
				if err := t.hist.RestoreLaunched(hctx, row.ID, in.ID, t.clock.Now().UTC()); err != nil {
					log.Error().Err(err).Str("launched_instance", in.ID).Msg("cannot record the instance found by its tag")
				}
				cancel()
			}
		}
		delete(tagged, row.ClientToken)
		if !row.Finished() {
			msg := "the process running the test stopped before it ended"
			if row.LaunchedInstanceID != "" {
				msg += fmt.Sprintf("; instance %s was terminated by the sweep", row.LaunchedInstanceID)
			}
			hctx, cancel := writeContext(ctx)
			_, err := t.hist.RestoreFinish(hctx, row.ID, history.RestoreOutcome{ErrorCode: CodeInterrupted, ErrorMessage: msg,
				At: t.clock.Now().UTC()})
			cancel()
			if err != nil {
				errs = append(errs, err)
			} else {
				res.Failed = append(res.Failed, row.ID)
				log.Warn().Str("error_code", CodeInterrupted).Str("status", string(row.Status)).Msg("restore test left unfinished; failed by the sweep")
			}
		}
		if row.LaunchedInstanceID == "" {
			continue
		}
		if at := t.terminate(ctx, row, row.LaunchedInstanceID); at != nil {
			res.Terminated = append(res.Terminated, row.LaunchedInstanceID)
		} else {
			errs = append(errs, fmt.Errorf("restore sweep: instance %s of restore test %d not terminated", row.LaunchedInstanceID, row.ID))
		}
	}
	// Tagged instances whose rows are closed (terminated before, but still there) or unknown.
	tokens := make([]string, 0, len(tagged))
	for token := range tagged {
		tokens = append(tokens, token)
	}
	slices.Sort(tokens)
	for _, token := range tokens {
		in := tagged[token]
		if in.State == cvm.InstanceStateTerminating {
			continue
		}
		row, err := t.hist.RestoreByToken(ctx, token)
		switch {
		case errors.Is(err, history.ErrNotFound):
			res.Foreign = append(res.Foreign, in.ID)
			t.log.Warn().Str("launched_instance", in.ID).Str("region", tagRegion[token]).
				Msg("instance carries imager's restore tags but no restore test of this history names it; left alone")
			continue
		case err != nil:
			errs = append(errs, err)
			continue
		case t.isInflight(row.ID) || t.mine(row):
			continue
		}
		if at := t.terminate(ctx, row, in.ID); at != nil {
			res.Terminated = append(res.Terminated, in.ID)
		} else {
			errs = append(errs, fmt.Errorf("restore sweep: instance %s of restore test %d not terminated", in.ID, row.ID))
		}
	}
	if len(res.Terminated)+len(res.Failed) > 0 {
		t.log.Info().Strs("terminated", res.Terminated).Ints64("failed", res.Failed).Msg("restore sweep done")
	}
	return res, errors.Join(errs...)
}

// mine reports whether an unfinished row was started by this process since Start (a RunNow whose
// row is written but not yet marked in flight): the sweep leaves it to its test.
func (t *Tester) mine(row history.RestoreTest) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !row.Finished() && !t.started.IsZero() && !row.StartedAt.Before(t.started)
}

// tagged lists the instances of region carrying TagTest, by their TagToken.
func (t *Tester) tagged(ctx context.Context, region string) (map[string]cvm.Instance, error) {
	out := map[string]cvm.Instance{}
	for offset := 0; ; {
		var page cvm.DescribeInstancesOutput
		ae := t.call(ctx, cvm.ActionDescribeInstances, func(ctx context.Context) (string, error) {
			var err error
			page, err = t.cvm.DescribeInstances(ctx, region, cvm.DescribeInstancesInput{
				Filters: []cvm.Filter{{Name: "tag-key", Values: []string{TagTest}}}, Offset: offset, Limit: cvm.MaxLimit})
			return page.RequestID, err
		})
		if ae != nil {
			return nil, fmt.Errorf("restore sweep: list tagged instances in %s: %w", region, ae)
		}
		for _, in := range page.Instances {
			for _, tag := range in.Tags {
				if tag.Key == TagToken && tag.Value != "" {
					out[tag.Value] = in
				}
			}
		}
		offset += len(page.Instances)
		if len(page.Instances) == 0 || offset >= page.TotalCount {
			return out, nil
		}
	}
}

// reap, at every pass, terminates what the tests of this process did not: instances of finished
// rows not terminated (a TerminateInstances that failed), and instances of unfinished rows no test
// here runs that are past keep_for (their process is gone or stuck), whose rows fail with
// CodeTimeout. An unfinished row within keep_for may be another live process's (`imager
// restore-test --now`): it is left to it.
func (t *Tester) reap(ctx context.Context) {
	open, err := t.hist.RestoresOpen(ctx, t.account)
	if err != nil {
		if ctx.Err() == nil {
			t.log.Warn().Err(err).Msg("cannot list open restore tests; retried at the next pass")
		}
		return
	}
	now := t.clock.Now()
	for _, row := range open {
		if ctx.Err() != nil || t.isInflight(row.ID) {
			continue
		}
		if !row.Finished() {
			since := row.StartedAt
			if row.LaunchedAt != nil {
				since = *row.LaunchedAt
			}
			if now.Before(since.Add(row.KeepFor)) {
				continue
			}
			hctx, cancel := writeContext(ctx)
			_, err := t.hist.RestoreFinish(hctx, row.ID, history.RestoreOutcome{ErrorCode: CodeTimeout,
				ErrorMessage: fmt.Sprintf("not finished within keep_for %s", row.KeepFor), At: now.UTC()})
			cancel()
			if err != nil {
				log := t.testLog(row)
				log.Error().Err(err).Msg("cannot fail the restore test past keep_for")
			}
		}
		if row.LaunchedInstanceID != "" {
			t.terminate(ctx, row, row.LaunchedInstanceID)
		}
	}
}

// terminate destroys instance id of row and records it; it returns when that was recorded, nil
// when it is still to do (the next pass tries again). Busy, throttled and transient refusals are
// retried after a poll interval, at most terminateAttempts calls, while ctx lasts; an instance the
// API does not know, or already TERMINATING, is gone. The calls outlive ctx: a test that is
// stopped still terminates its instance.
func (t *Tester) terminate(ctx context.Context, row history.RestoreTest, id string) *time.Time {
	log := t.testLog(row).With().Str("launched_instance", id).Logger()
	wctx := context.WithoutCancel(ctx)
	for attempt := 1; attempt <= terminateAttempts; attempt++ {
		cctx, cancel := context.WithTimeout(wctx, callTimeout)
		var requestID string
		ae := t.call(cctx, cvm.ActionTerminateInstances, func(ctx context.Context) (string, error) {
			var err error
			requestID, err = t.cvm.TerminateInstances(ctx, row.Region, []string{id})
			return requestID, err
		})
		cancel()
		gone := ae != nil && (ae.Code == "InvalidInstanceId.NotFound" || ae.Code == "UnsupportedOperation.InstanceStateTerminating")
		if ae == nil || gone {
			at := t.clock.Now().UTC()
			hctx, cancel := writeContext(ctx)
			err := t.hist.RestoreTerminated(hctx, row.ID, at)
			cancel()
			if err != nil {
				log.Error().Err(err).Msg("instance terminated, but cannot record it")
				return nil
			}
			ev := log.Info().Str("request_id", requestID)
			if gone {
				ev = ev.Str("error_code", ae.Code)
			}
			ev.Msg("restore instance terminated")
			return &at
		}
		retry := ae.Ambiguous() || ae.Class == cvm.ClassBusy || ae.Class == cvm.ClassThrottled || ae.Class == cvm.ClassTransient
		log.Warn().Str("error_code", ae.Code).Str("request_id", ae.RequestID).Int("attempt", attempt).Msg("TerminateInstances failed")
		if !retry || ctx.Err() != nil || attempt == terminateAttempts {
			return nil
		}
		if err := t.sleep(ctx, t.interval); err != nil {
			return nil
		}
	}
	return nil
}
