// Package history is imager's record of every slot, API call and outcome, kept in PostgreSQL.
//
// The schema (migrations/*.sql) is a public contract: operators audit it with plain SQL.
// Every query lives in this package; callers pass the time in where tests need to control it.
package history

import "time"

// Status is the state of one image run (docs/audit.md "Runs, attempts and deletions").
type Status string

// Run statuses.
const (
	StatusPending   Status = "pending"   // claimed, not yet accepted by the API
	StatusRequested Status = "requested" // CreateImage accepted; image CREATING
	StatusAvailable Status = "available" // image NORMAL
	StatusFailed    Status = "failed"    // terminal, with error_code
	StatusMissed    Status = "missed"    // slot not run (daemon down, shut down before sending)
	StatusSkipped   Status = "skipped"   // a rule decided not to run; error_message says why
)

// Terminal reports whether no further change is expected for a run in this status.
func (s Status) Terminal() bool {
	return s == StatusAvailable || s == StatusFailed || s == StatusMissed || s == StatusSkipped
}

// Run is one row of image_runs: one (policy, instance, slot).
type Run struct {
	ID           int64
	Policy       string
	InstanceID   string
	Region       string
	ScheduledAt  time.Time
	StartedAt    time.Time
	FinishedAt   *time.Time
	Status       Status
	ImageName    string
	ImageID      string
	ImageSizeGiB *int64
	RequestID    string
	ErrorCode    string
	ErrorMessage string
	Attempts     int
	DaemonID     string
	// Account is the account whose credentials made the run's calls (image_runs.account,
	// docs/policies.md "Accounts"); policy.DefaultAccount without an accounts: block.
	Account string
}

// RunClaimParams describes a slot to claim. Status is StatusPending for a slot about to be sent,
// or StatusSkipped/StatusMissed/StatusFailed (with ErrorCode/ErrorMessage) for a slot a rule decided
// not to send; FinishedAt is set for those terminal claims.
type RunClaimParams struct {
	Policy       string
	InstanceID   string
	Region       string
	ScheduledAt  time.Time
	ImageName    string
	DaemonID     string
	StartedAt    time.Time
	Status       Status
	ErrorCode    string
	ErrorMessage string
	// Account is the account the run's calls are made with (the policy's account); empty means
	// policy.DefaultAccount.
	Account string
	// Manual marks a slot fired by hand (imager once), not by the schedule: RunsClaimFire does
	// not move the policy's last handled slot for it, so slots missed before it are still walked.
	Manual bool
}

// RunFinishParams moves a run to a terminal status.
type RunFinishParams struct {
	RunID        int64
	Status       Status
	ErrorCode    string
	ErrorMessage string
	ImageSizeGiB *int64
	FinishedAt   time.Time
}

// Attempt is one API call made for a run (image_attempts), or for a deletion.
type Attempt struct {
	RunID        int64 // 0 when the call was not made for a run
	DeletionID   int64 // 0 when the call was not made for a deletion
	Attempt      int   // 1-based, per run (or per deletion)
	Action       string
	StartedAt    time.Time
	Duration     time.Duration
	RequestID    string
	ErrorCode    string
	ErrorMessage string
}

// DeletionStatus is the state of one image deletion (image_deletions.status).
type DeletionStatus string

// Deletion statuses.
const (
	DeletionPending DeletionStatus = "pending" // decided, DeleteImages not yet done
	DeletionDeleted DeletionStatus = "deleted" // DeleteImages succeeded
	DeletionFailed  DeletionStatus = "failed"  // the last DeleteImages call failed; retried at the next pass
)

// Deletion is one row of image_deletions: an image imager decided to delete (retention, quota).
type Deletion struct {
	ID           int64
	ImageID      string
	ImageName    string
	Policy       string
	InstanceID   string
	Region       string
	RunID        int64 // 0 when the run that made the image is not known
	CopyID       int64 // the copy deleted (image_copies.id); 0 for a source image
	Reason       string
	RequestedAt  time.Time
	FinishedAt   *time.Time
	Status       DeletionStatus
	RequestID    string
	ErrorCode    string
	ErrorMessage string
	Attempts     int
	// Account is the account whose credentials make the DeleteImages call (image_deletions.account):
	// the account of the run that made the image. DeletionInsert writes policy.DefaultAccount for
	// an empty one.
	Account string
}
