// Package policy loads, validates and renders imager's YAML policy files (docs/policies.md):
// which instances to image, when, and how the images are named, tagged and retained.
package policy

import (
	"time"
)

// Config is the validated result of loading one policy file or a directory of them.
type Config struct {
	API      API        // the top-level api: block; the defaults of every account's api:
	Accounts []*Account // the accounts: block, or the one DefaultAccount when it is absent (accounts.go)
	Notify   Notify     // the top-level notify: block (notify.go)
	History  History    // the top-level history: block (history.go)
	Policies []*Policy  // in file order (files sorted by name)
	// RestoreTests is the top-level restore_tests: block, in file order (restore.go).
	RestoreTests []*RestoreTest
	Sources      []string // the files read

	byName map[string]*Policy
}

// API holds the account-wide API settings (the `api:` block).
type API struct {
	CreateImageRate    int // CreateImage calls per sliding second (default 10)
	DescribeImagesRate int // DescribeImages calls per second (default 20, API limit 40)
	Workers            int // CreateImage calls in flight at once (default 4)
	Retry              Retry
}

// Retry holds the backoff settings per error class (`api.retry`), configurable so tests run fast.
type Retry struct {
	Transient Backoff // default: initial 200ms, max 30s, until the slot's start window closes
	Throttled Backoff // default: initial 1s, max 10s, attempts 10
	Busy      Backoff // default: initial 30s, max 5m, max_elapsed 15m
	Duplicate int     // fresh names to try after InvalidImageName.Duplicate (default 3)
}

// Backoff is exponential backoff with full jitter: delay n is a random duration in
// [Initial*2^(n-1)/2, min(Max, Initial*2^(n-1))]. The call is abandoned after Attempts calls in
// all (when > 0) or once MaxElapsed has passed since the first call (when > 0).
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	Attempts   int
	MaxElapsed time.Duration
}

// Policy is one validated policy with defaults applied.
type Policy struct {
	Name         string
	File         string // where it was defined, for messages
	Line         int
	ScheduleSpec string
	Schedule     Schedule
	Region       string
	Account      string // the name of the account the policy's calls are made with (accounts.go)
	// CopyTo lists the other regions each available image is copied to (`copy_to`), empty for none.
	CopyTo    []CopyTarget
	Location  *time.Location // the policy's time zone (CRON_TZ= in the schedule wins for firing)
	Instances []string       // explicit targets (ins-xxxxxxxx)
	Select    *Selector      // tag-selected targets, nil when not set
	Image     ImageSpec
	Retention *Retention   // nil when not set: images are never pruned
	Notify    PolicyNotify // the policy's notify: block (notify.go)
	Enabled   bool
	// StartWindow is how long after its nominal time a slot may still start (`start_window`,
	// default the smaller of 1h and the schedule's shortest interval). A slot found later is
	// recorded missed; transient retries of a slot stop when its window closes.
	StartWindow time.Duration
	// Concurrency says whether a slot is sent while the same instance's previous image of the
	// policy is still being made (`concurrency`, default forbid).
	Concurrency Concurrency
	// Hooks runs commands on each instance around its CreateImage (`hooks:`, hooks.go); nil: none.
	Hooks *Hooks

	// Parsed templates, set by Load. Hand-built policies leave them nil and the render functions
	// parse the strings above instead.
	nameTmpl template
	descTmpl template
	tagTmpls map[string]template
}

// Concurrency is the `concurrency:` setting of a policy.
type Concurrency string

// The values of `concurrency:`.
const (
	// ConcurrencyForbid records a slot skipped (PreviousImageInProgress) while the instance's
	// previous image of the policy is still pending or requested.
	ConcurrencyForbid Concurrency = "forbid"
	// ConcurrencyAllow sends every slot whatever the previous one is doing.
	ConcurrencyAllow Concurrency = "allow"
)

// DefaultStartWindow caps the default start window of a policy.
const DefaultStartWindow = time.Hour

// ImageSpec is how each image of the policy is made.
type ImageSpec struct {
	NameTemplate        string // default "{policy}-{instance}-{time}"
	DescriptionTemplate string // empty: no description is sent
	ForcePoweroff       *bool  // nil: not sent
	Sysprep             *bool
	Reboot              *bool
	DataDisks           DataDisks
	Tags                map[string]string // values may use the name placeholders
	Timeout             time.Duration     // completion timeout (default 4h)
}

// DataDisks selects the data disks of a whole-machine image.
type DataDisks struct {
	All bool     // `data_disks: all`
	IDs []string // `data_disks: [disk-xxxxxxxx, ...]`
}

// Selector picks targets by tag at every fire (`select:`).
type Selector struct {
	Tags    map[string]string
	Zones   []string
	Exclude []string
}

// Retention bounds the images kept per (policy, instance) (`retention:`).
type Retention struct {
	KeepLast        int           // 0: no count limit
	MaxAge          time.Duration // 0: no age limit
	MinKeep         int           // default 1; never keep fewer available images
	DeleteSnapshots bool
}

// CopyTarget is one `copy_to` entry: a region each available image of the policy is copied to,
// and how many copies are kept there.
type CopyTarget struct {
	Region    string
	Retention *Retention // the entry's retention:, else the policy's (nil: copies never pruned)
}

// Account is one entry of the `accounts:` block: whose credentials sign a policy's calls, with
// that account's own API limits. Exactly one of the credential sources is set; none of them is a
// secret itself (a secret is only ever read from the environment or the profile file when used).
type Account struct {
	Name string
	File string
	Line int
	// Field is the entry's path (`accounts[i]`) for messages; empty for the DefaultAccount.
	Field string
	// SecretIDEnv and SecretKeyEnv name the environment variables holding the key pair.
	SecretIDEnv, SecretKeyEnv string
	// Profile names a tccli profile: the credentials file ~/.tccli/<profile>.credential that
	// `tccli configure --profile <profile>` writes.
	Profile string
	// Role, when set, is assumed through STS on top of the SDK's default credential chain.
	Role *Role
	// API is the account's api: block, with the top-level api: block as its defaults.
	API API
}

// Role is an account's `role:` (STS AssumeRole).
type Role struct {
	ARN         string
	SessionName string
	Duration    time.Duration
}

// DefaultAccount is the name of the one account used when the file has no `accounts:` block: the
// SDK's default credential chain, with the top-level api: block.
const DefaultAccount = "default"

// Schedule yields a policy's slots: nominal fire times.
type Schedule interface {
	// Next returns the first slot strictly after t. A schedule with a fixed hour fires a slot in
	// a skipped DST hour once at the jump and a slot in a repeated hour once (at the first
	// occurrence); one whose hour field is `*` or a step fires at every matching wall-clock time
	// that exists, in both copies of a repeated hour. @every slots are aligned to multiples of the
	// interval since the Unix epoch, so they agree across restarts and replicas.
	Next(t time.Time) time.Time
}
