package scheduler

import (
	"context"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
)

// CVM is what the scheduler needs from the CVM API. *cvm.Client implements it.
type CVM interface {
	CreateImage(ctx context.Context, region string, in cvm.CreateImageInput) (cvm.CreateImageOutput, error)
	DescribeImages(ctx context.Context, region string, in cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error)
}

// History is what the scheduler needs from the history store. *history.Store implements it.
type History interface {
	// RunClaim inserts the run row for (policy, instance, slot). claimed is false, with the
	// existing row, when the slot was already claimed (by this or another daemon).
	RunClaim(ctx context.Context, p history.RunClaimParams) (run history.Run, claimed bool, err error)
	// RunRename records the name a run will try next (after InvalidImageName.Duplicate).
	RunRename(ctx context.Context, runID int64, imageName string) error
	// RunRequested records an accepted CreateImage: status requested, image id (may be empty),
	// the accepted RequestId.
	RunRequested(ctx context.Context, runID int64, imageID, requestID string) error
	// RunFinish moves a run to a terminal status.
	RunFinish(ctx context.Context, p history.RunFinishParams) error
	// AttemptInsert records one API call and bumps image_runs.attempts for its run.
	AttemptInsert(ctx context.Context, a history.Attempt) error
	// RunsUnfinished lists runs in status pending or requested, oldest first (crash recovery).
	RunsUnfinished(ctx context.Context) ([]history.Run, error)
}

// The implementations the daemon wires in. (They cannot assert this themselves: the scheduler
// imports their packages.)
var (
	_ CVM     = (*cvm.Client)(nil)
	_ History = (*history.Store)(nil)
)
