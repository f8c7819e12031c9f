// Package lifecycle follows imager's images after CreateImage was accepted.
//
// The Tracker polls DescribeImages for every run in status requested until its image is NORMAL
// (run available), CREATEFAILED, past the policy's image.timeout, or gone; its state lives only in
// PostgreSQL, so it resumes after a restart.
package lifecycle

import (
	"context"
	"time"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
)

// TrackerHistory is what the Tracker needs from history. *history.Store implements it; wrap a
// *history.Recorder with RecorderHistory so writes are spooled while the database is away.
type TrackerHistory interface {
	// RunsRequestedOf lists the runs of account (every account for "") in status requested,
	// oldest slot first (limit <= 0: all).
	RunsRequestedOf(ctx context.Context, account string, limit int) ([]history.Run, error)
	// RunGet returns one run (WaitTerminal reads the runs it is asked about).
	RunGet(ctx context.Context, runID int64) (history.Run, error)
	// RunAvailable records that a run's image is NORMAL: status available, size, finish time.
	RunAvailable(ctx context.Context, runID int64, sizeGiB *int64, imageID string, at time.Time) error
	// RunSetImageID records the image id of a run found by exact name.
	RunSetImageID(ctx context.Context, runID int64, imageID string) error
	// RunFinish moves a run to a terminal status (failed here).
	RunFinish(ctx context.Context, p history.RunFinishParams) error
	// AttemptInsert records one API call made for a run.
	AttemptInsert(ctx context.Context, a history.Attempt) error
}

// TrackerCVM is what the Tracker needs from the CVM API. *cvm.Client implements it.
type TrackerCVM interface {
	DescribeImages(ctx context.Context, region string, in cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error)
}

// Pace spaces DescribeImages calls. The daemon passes the DescribePace (*pace.Limiter) of the
// scheduler of the same account, so every DescribeImages of the account shares its
// api.describe_images_rate, and another account's calls wait on that account's pace.
type Pace interface {
	Wait(ctx context.Context) error
}

// throttler and observer are the optional parts of a Pace (*pace.Limiter has both): told of a
// RequestLimitExceeded answer, and of each call's round trip.
type (
	throttler interface{ Throttle() }
	observer  interface{ Observe(time.Duration) }
)

// RecorderHistory adapts a *history.Recorder to TrackerHistory: writes go through the recorder
// (spooled and replayed when the database is briefly away), reads go to its store.
func RecorderHistory(r *history.Recorder) TrackerHistory {
	return recorderHistory{r}
}

type recorderHistory struct {
	*history.Recorder
}

func (h recorderHistory) RunsRequestedOf(ctx context.Context, account string, limit int) ([]history.Run, error) {
	return h.Store().RunsRequestedOf(ctx, account, limit)
}

func (h recorderHistory) RunGet(ctx context.Context, runID int64) (history.Run, error) {
	return h.Store().RunGet(ctx, runID)
}

var (
	_ TrackerHistory = (*history.Store)(nil)
	_ TrackerHistory = recorderHistory{}
	_ TrackerCVM     = (*cvm.Client)(nil)
)
