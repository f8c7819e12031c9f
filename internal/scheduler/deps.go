package scheduler

import (
	"context"
	"time"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
)

// CVM is what the scheduler needs from the CVM API. *cvm.Client implements it.
type CVM interface {
	CreateImage(ctx context.Context, region string, in cvm.CreateImageInput) (cvm.CreateImageOutput, error)
	DescribeImages(ctx context.Context, region string, in cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error)
}

// Warmer is a History that can open and prepare its connections ahead of a fire (*history.Store
// and *history.Recorder are). The cron loop calls it warmAhead before each slot.
type Warmer interface {
	WarmConnections(ctx context.Context, n int)
}

// History is what the scheduler needs from the history store. *history.Store implements it.
//
// Every write may answer history.ErrFenced: this process's leadership term is no longer current,
// and the scheduler stops sending at once (Options.OnFenced).
type History interface {
	// RunsClaimFire writes every slot row of one fire in one transaction and moves the policy's
	// last handled slot forward. claimed[i] is false, with the existing row, for a slot claimed
	// before (by this or another daemon).
	RunsClaimFire(ctx context.Context, ps []history.RunClaimParams) (runs []history.Run, claimed []bool, err error)
	// PolicySlots returns each policy's last handled slot.
	PolicySlots(ctx context.Context) (map[string]time.Time, error)
	// PolicySlotsSet moves policies' last handled slots forward without a fire (marks).
	PolicySlotsSet(ctx context.Context, slots map[string]time.Time) error
	// FireWithoutRuns moves a policy's last handled slot to a fire that has no run, and records
	// the fire's outcome: succeeded with code empty (no targets), else failed with code and message.
	FireWithoutRuns(ctx context.Context, policy string, slot time.Time, code, message string) error
	// PreviousTargets returns the instances of the policy's latest slot before `before` that has
	// runs (the fallback when the targets cannot be resolved).
	PreviousTargets(ctx context.Context, policy string, before time.Time) ([]string, error)
	// RunsInProgress returns, per instance, the policy's latest run before the slot that is
	// still pending or requested (concurrency: forbid).
	RunsInProgress(ctx context.Context, policy string, instances []string, before time.Time) (map[string]history.Run, error)
	// RunsTakeOver records this daemon (and its term) as the owner of unfinished runs it is
	// about to reconcile.
	RunsTakeOver(ctx context.Context, ids []int64, daemonID string) (int64, error)
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

	// The hooks' rows (hooks.go), never spooled.

	// HookRunsRequest records a phase's command for runs before it is sent; it returns the rows
	// written (none for a run that has that phase already, or a post without a pre that ran).
	HookRunsRequest(ctx context.Context, phase history.HookPhase, runIDs []int64, at time.Time) ([]history.HookRun, error)
	// HookRunsInvoked records the TAT invocation that carries hooks.
	HookRunsInvoked(ctx context.Context, ids []int64, invocationID string) error
	// HookRunFinish records a hook's end, with its hook_failed event when it did not succeed.
	HookRunFinish(ctx context.Context, r history.HookResult) (history.HookRun, error)
	// HookRunsPostDue lists an account's pre hooks whose post was never requested.
	HookRunsPostDue(ctx context.Context, account string) ([]history.HookRun, error)
}

// The implementations the daemon wires in. (They cannot assert this themselves: the scheduler
// imports their packages.)
var (
	_ CVM     = (*cvm.Client)(nil)
	_ History = (*history.Store)(nil)
)
