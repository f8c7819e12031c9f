package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// broadcast is a "something changed" signal: wait on C(), which is closed at the next change.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

func (b *broadcast) C() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

func (b *broadcast) fire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
	}
	b.ch = make(chan struct{})
}

// fakeHistory is an in-memory History with image_runs' unique key and status rules.
type fakeHistory struct {
	changed broadcast

	mu            sync.Mutex
	runs          []history.Run // id = index + 1
	attempts      []history.Attempt
	renames       []string
	claimErr      error // returned by RunsClaimFire when set
	claimErrs     int   // when > 0, only this many more claims answer claimErr
	claimLost     int   // this many claims commit but answer an error (the answer was lost)
	unfinishedErr error // returned by RunsUnfinished when set
	fenced        bool  // every claim and take-over answers history.ErrFenced
	fenceWrites   bool  // every outcome write (attempt, requested, finish) answers history.ErrFenced
	lastSlots     map[string]time.Time
	slotSets      int        // PolicySlotsSet calls
	emptyFires    []fakeFire // FireWithoutRuns calls
	takenOver     []int64
	claimCalls    int
}

// fakeFire is one FireWithoutRuns call.
type fakeFire struct {
	policy        string
	slot          time.Time
	code, message string
}

var _ History = (*fakeHistory)(nil)

func (h *fakeHistory) RunsClaimFire(_ context.Context, ps []history.RunClaimParams) ([]history.Run, []bool, error) {
	defer h.changed.fire()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.claimCalls++
	if h.fenced {
		return nil, nil, fmt.Errorf("claim: %w", history.ErrFenced)
	}
	if h.claimErr != nil {
		if h.claimErrs > 0 {
			h.claimErrs--
			if h.claimErrs == 0 {
				defer func() { h.claimErr = nil }()
			}
		}
		return nil, nil, h.claimErr
	}
	lost := h.claimLost > 0
	if lost {
		h.claimLost--
	}
	runs := make([]history.Run, len(ps))
	claimed := make([]bool, len(ps))
	for i, p := range ps {
		runs[i], claimed[i] = h.claimOne(p)
		if h.lastSlots == nil {
			h.lastSlots = map[string]time.Time{}
		}
		if p.ScheduledAt.After(h.lastSlots[p.Policy]) {
			h.lastSlots[p.Policy] = p.ScheduledAt
		}
	}
	if lost {
		return nil, nil, errFake
	}
	return runs, claimed, nil
}

func (h *fakeHistory) PolicySlots(context.Context) (map[string]time.Time, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]time.Time{}
	for k, v := range h.lastSlots {
		out[k] = v
	}
	return out, nil
}

func (h *fakeHistory) PolicySlotsSet(_ context.Context, slots map[string]time.Time) error {
	defer h.changed.fire()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fenced {
		return history.ErrFenced
	}
	h.slotSets++
	h.moveSlotsLocked(slots)
	return nil
}

func (h *fakeHistory) moveSlotsLocked(slots map[string]time.Time) {
	if h.lastSlots == nil {
		h.lastSlots = map[string]time.Time{}
	}
	for policy, slot := range slots {
		if slot.After(h.lastSlots[policy]) {
			h.lastSlots[policy] = slot
		}
	}
}

func (h *fakeHistory) FireWithoutRuns(_ context.Context, policy string, slot time.Time, code, message string) error {
	defer h.changed.fire()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fenced {
		return history.ErrFenced
	}
	h.moveSlotsLocked(map[string]time.Time{policy: slot})
	h.emptyFires = append(h.emptyFires, fakeFire{policy: policy, slot: slot, code: code, message: message})
	return nil
}

// PreviousTargets returns the instances of the policy's latest slot before `before` with runs,
// less those recorded gone, as the store does.
func (h *fakeHistory) PreviousTargets(_ context.Context, policy string, before time.Time) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var latest time.Time
	for _, r := range h.runs {
		if r.Policy == policy && r.ScheduledAt.Before(before) && r.ScheduledAt.After(latest) {
			latest = r.ScheduledAt
		}
	}
	var out []string
	for _, r := range h.runs {
		if r.Policy == policy && r.ScheduledAt.Equal(latest) && r.ErrorCode != "InvalidInstanceId.NotFound" {
			out = append(out, r.InstanceID)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (h *fakeHistory) RunsInProgress(_ context.Context, policy string, instances []string, before time.Time) (map[string]history.Run, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]history.Run{}
	for _, r := range h.runs {
		if r.Policy == policy && slices.Contains(instances, r.InstanceID) && r.ScheduledAt.Before(before) &&
			(r.Status == history.StatusPending || r.Status == history.StatusRequested) {
			if prev, ok := out[r.InstanceID]; !ok || r.ScheduledAt.After(prev.ScheduledAt) {
				out[r.InstanceID] = r
			}
		}
	}
	return out, nil
}

func (h *fakeHistory) RunsTakeOver(_ context.Context, ids []int64, daemonID string) (int64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fenced {
		return 0, history.ErrFenced
	}
	var n int64
	for _, id := range ids {
		if r, err := h.run(id); err == nil && !r.Status.Terminal() {
			r.DaemonID = daemonID
			h.takenOver = append(h.takenOver, id)
			n++
		}
	}
	return n, nil
}

// claimOne inserts one row unless the slot has one; h.mu is held.
func (h *fakeHistory) claimOne(p history.RunClaimParams) (history.Run, bool) {
	for _, r := range h.runs {
		if r.Policy == p.Policy && r.InstanceID == p.InstanceID && r.ScheduledAt.Equal(p.ScheduledAt) {
			return r, false
		}
	}
	r := history.Run{
		ID:           int64(len(h.runs) + 1),
		Policy:       p.Policy,
		InstanceID:   p.InstanceID,
		Region:       p.Region,
		ScheduledAt:  p.ScheduledAt,
		StartedAt:    p.StartedAt,
		Status:       p.Status,
		ImageName:    p.ImageName,
		ErrorCode:    p.ErrorCode,
		ErrorMessage: p.ErrorMessage,
		DaemonID:     p.DaemonID,
		Account:      p.Account,
	}
	if r.Account == "" {
		r.Account = policy.DefaultAccount // as the store writes it
	}
	if p.Status.Terminal() {
		at := p.StartedAt
		r.FinishedAt = &at
	}
	h.runs = append(h.runs, r)
	return r, true
}

func (h *fakeHistory) run(id int64) (*history.Run, error) {
	if id < 1 || int(id) > len(h.runs) {
		return nil, fmt.Errorf("run %d: not found", id)
	}
	return &h.runs[id-1], nil
}

func (h *fakeHistory) RunRename(_ context.Context, runID int64, name string) error {
	defer h.changed.fire()
	h.mu.Lock()
	defer h.mu.Unlock()
	r, err := h.run(runID)
	if err != nil {
		return err
	}
	if r.Status != history.StatusPending {
		return fmt.Errorf("rename run %d in status %s", runID, r.Status)
	}
	r.ImageName = name
	h.renames = append(h.renames, name)
	return nil
}

func (h *fakeHistory) RunRequested(_ context.Context, runID int64, imageID, requestID string) error {
	defer h.changed.fire()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fenceWrites {
		return history.ErrFenced
	}
	r, err := h.run(runID)
	if err != nil {
		return err
	}
	if r.Status != history.StatusPending {
		return fmt.Errorf("run %d requested in status %s", runID, r.Status)
	}
	r.Status, r.ImageID, r.RequestID = history.StatusRequested, imageID, requestID
	return nil
}

func (h *fakeHistory) RunFinish(_ context.Context, p history.RunFinishParams) error {
	defer h.changed.fire()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fenceWrites {
		return history.ErrFenced
	}
	r, err := h.run(p.RunID)
	if err != nil {
		return err
	}
	if !p.Status.Terminal() {
		return fmt.Errorf("finish run %d with status %s", p.RunID, p.Status)
	}
	if r.Status != history.StatusPending && r.Status != history.StatusRequested {
		return fmt.Errorf("finish run %d in status %s", p.RunID, r.Status)
	}
	at := p.FinishedAt
	r.Status, r.ErrorCode, r.ErrorMessage, r.FinishedAt = p.Status, p.ErrorCode, p.ErrorMessage, &at
	return nil
}

func (h *fakeHistory) AttemptInsert(_ context.Context, a history.Attempt) error {
	defer h.changed.fire()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fenceWrites {
		return history.ErrFenced
	}
	r, err := h.run(a.RunID)
	if err != nil {
		return err
	}
	for _, b := range h.attempts {
		if b.RunID == a.RunID && b.Attempt == a.Attempt {
			return fmt.Errorf("attempt %d of run %d recorded twice", a.Attempt, a.RunID)
		}
	}
	h.attempts = append(h.attempts, a)
	r.Attempts++
	return nil
}

func (h *fakeHistory) RunsUnfinished(context.Context) ([]history.Run, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.unfinishedErr != nil {
		return nil, h.unfinishedErr
	}
	var out []history.Run
	for _, r := range h.runs {
		if r.Status == history.StatusPending || r.Status == history.StatusRequested {
			out = append(out, r)
		}
	}
	return out, nil
}

// seed inserts a run as a previous daemon left it.
func (h *fakeHistory) seed(r history.Run) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	r.ID = int64(len(h.runs) + 1)
	h.runs = append(h.runs, r)
	return r.ID
}

func (h *fakeHistory) snapshot() (runs []history.Run, attempts []history.Attempt, renames []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.runs), slices.Clone(h.attempts), slices.Clone(h.renames)
}

func (h *fakeHistory) attemptsOf(runID int64) []history.Attempt {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []history.Attempt
	for _, a := range h.attempts {
		if a.RunID == runID {
			out = append(out, a)
		}
	}
	return out
}

// waitFor blocks until cond holds over the runs, or ctx ends.
func (h *fakeHistory) waitFor(ctx context.Context, cond func(runs []history.Run) bool) error {
	for {
		ch := h.changed.C()
		h.mu.Lock()
		ok := cond(h.runs)
		h.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// cvmCall is one call the fake CVM received.
type cvmCall struct {
	Action   string
	At       time.Time // fake clock time when the call arrived
	Region   string
	Create   cvm.CreateImageInput
	Describe cvm.DescribeImagesInput
}

// step scripts one CreateImage answer. handled false falls through to the default behaviour.
type step func(ctx context.Context, in cvm.CreateImageInput) (out cvm.CreateImageOutput, err error, handled bool)

// fakeCVM is a CVM scripted per instance and call. By default CreateImage makes an image (or
// answers InvalidImageName.Duplicate when the name is taken) and DescribeImages filters by
// image-name as the API does: fuzzy (substring).
type fakeCVM struct {
	clock   clockwork.Clock
	changed broadcast

	mu       sync.Mutex
	calls    []cvmCall
	scripts  map[string][]step // per instance, by CreateImage call number
	perInst  map[string]int
	images   []cvm.Image
	dropTags bool // answer as a server that keeps no tags
	seq      int
	describe func(in cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error, bool)
}

var _ CVM = (*fakeCVM)(nil)

func newFakeCVM(clock clockwork.Clock) *fakeCVM {
	return &fakeCVM{clock: clock, scripts: map[string][]step{}, perInst: map[string]int{}}
}

func (f *fakeCVM) script(instance string, steps ...step) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scripts[instance] = append(f.scripts[instance], steps...)
}

func (f *fakeCVM) CreateImage(ctx context.Context, region string, in cvm.CreateImageInput) (cvm.CreateImageOutput, error) {
	f.mu.Lock()
	f.calls = append(f.calls, cvmCall{Action: "CreateImage", At: f.clock.Now(), Region: region, Create: in})
	n := f.perInst[in.InstanceID]
	f.perInst[in.InstanceID]++
	var st step
	if s := f.scripts[in.InstanceID]; n < len(s) {
		st = s[n]
	}
	f.mu.Unlock()
	f.changed.fire()

	if st != nil {
		if out, err, handled := st(ctx, in); handled {
			return out, err
		}
	}
	return f.create(in)
}

// create is the default CreateImage behaviour.
func (f *fakeCVM) create(in cvm.CreateImageInput) (cvm.CreateImageOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	req := fmt.Sprintf("req-%04d", f.seq)
	for _, img := range f.images {
		if img.Name == in.ImageName {
			return cvm.CreateImageOutput{}, &cvm.APIError{Action: "CreateImage", Code: "InvalidImageName.Duplicate",
				Message: "image name exists", RequestID: req, Class: cvm.ClassDuplicateName}
		}
	}
	img := cvm.Image{ID: fmt.Sprintf("img-%08d", f.seq), Name: in.ImageName, State: cvm.ImageStateCreating}
	if !f.dropTags {
		img.Tags = slices.Clone(in.Tags)
	}
	f.images = append(f.images, img)
	return cvm.CreateImageOutput{ImageID: img.ID, RequestID: req}, nil
}

func (f *fakeCVM) DescribeImages(_ context.Context, region string, in cvm.DescribeImagesInput) (cvm.DescribeImagesOutput, error) {
	f.mu.Lock()
	f.calls = append(f.calls, cvmCall{Action: "DescribeImages", At: f.clock.Now(), Region: region, Describe: in})
	hook := f.describe
	f.mu.Unlock()
	f.changed.fire()
	if hook != nil {
		if out, err, handled := hook(in); handled {
			return out, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	var match []cvm.Image
	for _, img := range f.images {
		ok := true
		for _, flt := range in.Filters {
			if flt.Name == "image-name" && !slices.ContainsFunc(flt.Values, func(v string) bool { return strings.Contains(img.Name, v) }) {
				ok = false
			}
		}
		if ok {
			match = append(match, img)
		}
	}
	total := len(match)
	lo := min(in.Offset, total)
	hi := total
	if in.Limit > 0 {
		hi = min(lo+in.Limit, total)
	}
	return cvm.DescribeImagesOutput{Images: match[lo:hi], TotalCount: total, RequestID: fmt.Sprintf("req-%04d", f.seq)}, nil
}

// addImage puts an image in the fake account, as someone else (or an earlier call) made it.
func (f *fakeCVM) addImage(img cvm.Image) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.images = append(f.images, img)
}

func (f *fakeCVM) snapshot() (calls []cvmCall, images []cvm.Image) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls), slices.Clone(f.images)
}

func (f *fakeCVM) callsOf(action string) []cvmCall {
	calls, _ := f.snapshot()
	return slices.DeleteFunc(calls, func(c cvmCall) bool { return c.Action != action })
}

func (f *fakeCVM) count(action string) int { return len(f.callsOf(action)) }

// Scripted answers.

func apiError(code string, class cvm.Class) step {
	return func(context.Context, cvm.CreateImageInput) (cvm.CreateImageOutput, error, bool) {
		return cvm.CreateImageOutput{}, &cvm.APIError{Action: "CreateImage", Code: code, Message: code + " from the fake",
			RequestID: "req-" + strings.ToLower(code), Class: class}, true
	}
}

// failAfterCreating makes the image, then reports a network error: the call's outcome is unknown.
func (f *fakeCVM) failAfterCreating() step {
	return func(_ context.Context, in cvm.CreateImageInput) (cvm.CreateImageOutput, error, bool) {
		if _, err := f.create(in); err != nil {
			return cvm.CreateImageOutput{}, err, true
		}
		return cvm.CreateImageOutput{}, &cvm.APIError{Action: "CreateImage", Code: cvm.CodeNetworkError,
			Message: "connection reset", Class: cvm.ClassTransient}, true
	}
}

// blockUntil holds the call until release is closed (then answers by default) or ctx ends.
func blockUntil(started chan<- struct{}, release <-chan struct{}) step {
	return func(ctx context.Context, _ cvm.CreateImageInput) (cvm.CreateImageOutput, error, bool) {
		close(started)
		select {
		case <-release:
			return cvm.CreateImageOutput{}, nil, false
		case <-ctx.Done():
			return cvm.CreateImageOutput{}, ctx.Err(), true
		}
	}
}

var errFake = errors.New("fake failure")

// waitEmptyFires blocks until FireWithoutRuns was called n times and returns the calls.
func (h *fakeHistory) waitEmptyFires(ctx context.Context, n int) ([]fakeFire, error) {
	for {
		ch := h.changed.C()
		h.mu.Lock()
		got := slices.Clone(h.emptyFires)
		h.mu.Unlock()
		if len(got) >= n {
			return got, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return got, ctx.Err()
		}
	}
}

// The fake history has no hooks: tests of hooks run on PostgreSQL (hooks_test.go).

func (h *fakeHistory) HookRunsRequest(context.Context, history.HookPhase, []int64, time.Time) ([]history.HookRun, error) {
	return nil, errors.New("fake history: no hooks")
}

func (h *fakeHistory) HookRunsInvoked(context.Context, []int64, string) error {
	return errors.New("fake history: no hooks")
}

func (h *fakeHistory) HookRunFinish(context.Context, history.HookResult) (history.HookRun, error) {
	return history.HookRun{}, errors.New("fake history: no hooks")
}

func (h *fakeHistory) HookRunsPostDue(context.Context, string) ([]history.HookRun, error) {
	return nil, nil
}
