package history_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

const coveragePolicies = `version: 1
defaults:
  region: ap-guangzhou
policies:
  - name: web-daily
    schedule: "0 3 * * *"
    timezone: Asia/Shanghai
    instances: [ins-aaaaaaaa, ins-bbbbbbbb, ins-cccccccc]
  - name: db-hourly
    schedule: "@every 1h"
    enabled: false
    instances: [ins-dddddddd]
`

func TestPolicyRows(t *testing.T) {
	t.Parallel()
	cfg, err := policy.LoadBytes("p.yaml", []byte(coveragePolicies))
	require.NoError(t, err)
	now := time.Date(2026, 3, 29, 12, 30, 0, 0, time.UTC)
	rows := history.PolicyRows(cfg, now)
	require.Len(t, rows, 2)
	require.Equal(t, history.PolicyRow{Name: "web-daily", Schedule: "0 3 * * *", Timezone: "Asia/Shanghai",
		Interval: 24 * time.Hour, Enabled: true, SourceFile: "p.yaml", SourceLine: 5, LoadedAt: now}, rows[0])
	require.Equal(t, time.Hour, rows[1].Interval)
	require.Equal(t, "UTC", rows[1].Timezone)
	require.False(t, rows[1].Enabled)
	require.Equal(t, 9, rows[1].SourceLine)
}

func TestPoliciesSync(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	t0 := time.Date(2026, 3, 29, 12, 0, 0, 0, time.UTC)
	web := history.PolicyRow{Name: "web", Schedule: "0 3 * * *", Timezone: "UTC", Interval: 24 * time.Hour,
		Enabled: true, SourceFile: "a.yaml", SourceLine: 4, LoadedAt: t0}
	db := web
	db.Name, db.SourceLine = "db", 9
	_, err := s.PoliciesSync(ctx, []history.PolicyRow{web, db}, t0)
	require.NoError(t, err)

	// A run at 20:00 UTC is on the 29th in UTC and on the 30th in Shanghai.
	r := claim(t, s, "web", "ins-aaaaaaaa", time.Date(2026, 3, 29, 20, 0, 0, 0, time.UTC))
	days, err := s.DailyCoverageList(ctx, "web", t0.AddDate(0, 0, -1), t0.AddDate(0, 0, 2))
	require.NoError(t, err)
	require.Len(t, days, 1)
	require.Equal(t, time.Date(2026, 3, 29, 0, 0, 0, 0, time.UTC), days[0].Day)
	require.Equal(t, r.ID, days[0].RunID)

	t1 := t0.Add(time.Hour)
	web.Timezone, web.LoadedAt = "Asia/Shanghai", t1
	bad := db
	bad.Name, bad.Timezone, bad.LoadedAt = "odd", "Mars/Olympus_Mons", t1
	got, err := s.PoliciesSync(ctx, []history.PolicyRow{web, bad}, t1)
	require.NoError(t, err)
	require.False(t, got[0].TimezoneInvalid)
	require.True(t, got[1].TimezoneInvalid, "PostgreSQL does not know the zone")
	require.Equal(t, "UTC", got[1].Timezone)

	list, err := s.PoliciesList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 3)
	require.Equal(t, "db", list[0].Name)
	require.NotNil(t, list[0].RemovedAt, "db is no longer loaded: marked, not deleted")
	require.Equal(t, t1, *list[0].RemovedAt)
	require.Equal(t, "odd", list[1].Name)
	require.Nil(t, list[1].RemovedAt)
	require.Equal(t, "Asia/Shanghai", list[2].Timezone)
	require.Equal(t, t1, list[2].LoadedAt)

	days, err = s.DailyCoverageList(ctx, "web", t0.AddDate(0, 0, -1), t0.AddDate(0, 0, 2))
	require.NoError(t, err)
	require.Len(t, days, 1)
	require.Equal(t, time.Date(2026, 3, 30, 0, 0, 0, 0, time.UTC), days[0].Day, "days recomputed in the new zone")

	// Loading db again clears removed_at.
	_, err = s.PoliciesSync(ctx, []history.PolicyRow{web, db}, t1)
	require.NoError(t, err)
	list, err = s.PoliciesList(ctx)
	require.NoError(t, err)
	require.Nil(t, list[0].RemovedAt)

	known, err := s.PolicyKnown(ctx, "odd")
	require.NoError(t, err)
	require.True(t, known, "in the policies table")
	known, err = s.PolicyKnown(ctx, "nope")
	require.NoError(t, err)
	require.False(t, known)

	_, err = s.PoliciesSync(ctx, []history.PolicyRow{{Name: "x"}}, t1)
	require.ErrorIs(t, err, history.ErrInvalid)
}

// finishRun claims a run and brings it to status; available and failed runs finish at done.
func finishRun(t *testing.T, s *history.Store, pol, inst string, slot time.Time, st history.Status, code string, done time.Time) history.Run {
	t.Helper()
	return endRun(t, s, claim(t, s, pol, inst, slot), st, code, done)
}

// endRun moves the pending run r to st (requested first, with an image id), at done.
func endRun(t *testing.T, s *history.Store, r history.Run, st history.Status, code string, done time.Time) history.Run {
	t.Helper()
	ctx := context.Background()
	if st == history.StatusPending {
		return r
	}
	require.NoError(t, s.RunRequested(ctx, r.ID, "img-"+r.InstanceID[4:]+r.ScheduledAt.Format("0215"), "req"))
	switch st {
	case history.StatusAvailable:
		require.NoError(t, s.RunAvailable(ctx, r.ID, ptr[int64](20), "", done))
	case history.StatusFailed, history.StatusMissed, history.StatusSkipped:
		require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: r.ID, Status: st, ErrorCode: code, FinishedAt: done}))
	}
	r, err := s.RunGet(ctx, r.ID)
	require.NoError(t, err)
	return r
}

func TestCoverageViews(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	// The views compare with the database's now(): the fixture is laid out backwards from it.
	now := time.Now().UTC().Truncate(time.Hour)
	day := 24 * time.Hour
	_, err := s.PoliciesSync(ctx, []history.PolicyRow{
		{Name: "web", Schedule: "0 * * * *", Timezone: "UTC", Interval: day, Enabled: true, SourceFile: "a.yaml", SourceLine: 3, LoadedAt: now},
		{Name: "off", Schedule: "0 * * * *", Timezone: "UTC", Interval: day, Enabled: false, SourceFile: "a.yaml", SourceLine: 9, LoadedAt: now},
	}, now)
	require.NoError(t, err)

	// ins-a: imaged 3 days ago, failed since: overdue, last status failed.
	avail := finishRun(t, s, "web", "ins-aaaaaaaa", now.Add(-3*day), history.StatusAvailable, "", now.Add(-3*day+20*time.Minute))
	finishRun(t, s, "web", "ins-aaaaaaaa", now.Add(-2*day), history.StatusFailed, "Timeout", now.Add(-2*day+time.Hour))
	finishRun(t, s, "web", "ins-aaaaaaaa", now.Add(-day), history.StatusFailed, "CREATEFAILED", now.Add(-day+time.Hour))
	// ins-b: imaged 12 hours ago: covered.
	finishRun(t, s, "web", "ins-bbbbbbbb", now.Add(-day), history.StatusFailed, "Timeout", now.Add(-day+time.Hour))
	finishRun(t, s, "web", "ins-bbbbbbbb", now.Add(-12*time.Hour), history.StatusAvailable, "", now.Add(-11*time.Hour))
	// ins-c: never imaged, first slot 2 days ago (> 1.5 days): overdue.
	finishRun(t, s, "web", "ins-cccccccc", now.Add(-2*day), history.StatusMissed, "", now.Add(-2*day))
	finishRun(t, s, "web", "ins-cccccccc", now.Add(-day), history.StatusPending, "", time.Time{})
	// ins-d: never imaged, first slot an hour ago: not overdue yet.
	finishRun(t, s, "web", "ins-dddddddd", now.Add(-time.Hour), history.StatusRequested, "", time.Time{})
	// ins-e: dropped from the policy a week ago: not targeted any more, left out.
	finishRun(t, s, "web", "ins-eeeeeeee", now.Add(-7*day), history.StatusFailed, "X", now.Add(-7*day))
	// A disabled policy is never overdue; a policy without a policies row is not in coverage.
	finishRun(t, s, "off", "ins-aaaaaaaa", now.Add(-5*day), history.StatusFailed, "X", now.Add(-5*day))
	finishRun(t, s, "gone", "ins-aaaaaaaa", now.Add(-5*day), history.StatusFailed, "X", now.Add(-5*day))

	cov, err := s.CoverageList(ctx, "", "", false)
	require.NoError(t, err)
	byKey := map[string]history.Coverage{}
	for _, c := range cov {
		byKey[c.Policy+"/"+c.InstanceID] = c
	}
	require.Len(t, cov, 5, "%v", cov)
	a := byKey["web/ins-aaaaaaaa"]
	require.True(t, a.Overdue)
	require.Equal(t, history.StatusFailed, a.LastStatus)
	require.Equal(t, "CREATEFAILED", a.LastErrorCode)
	require.Equal(t, now.Add(-day), a.LastSlot)
	require.Equal(t, avail.ImageID, a.LastAvailableImageID)
	require.Equal(t, avail.ImageName, a.LastAvailableImageName)
	require.Equal(t, now.Add(-3*day), *a.LastAvailableSlot)
	require.WithinDuration(t, now.Add(-3*day+20*time.Minute), *a.LastAvailableAt, time.Second)
	require.False(t, byKey["web/ins-bbbbbbbb"].Overdue)
	require.Equal(t, history.StatusAvailable, byKey["web/ins-bbbbbbbb"].LastStatus)
	require.True(t, byKey["web/ins-cccccccc"].Overdue)
	require.Empty(t, byKey["web/ins-cccccccc"].LastAvailableImageID)
	require.Equal(t, history.StatusPending, byKey["web/ins-cccccccc"].LastStatus)
	require.False(t, byKey["web/ins-dddddddd"].Overdue)
	require.False(t, byKey["off/ins-aaaaaaaa"].Overdue)

	breaches, err := s.CoverageList(ctx, "", "", true)
	require.NoError(t, err)
	require.Len(t, breaches, 2)
	require.Equal(t, "ins-aaaaaaaa", breaches[0].InstanceID)
	require.Equal(t, "ins-cccccccc", breaches[1].InstanceID)
	counts, err := s.RPOBreachCounts(ctx)
	require.NoError(t, err)
	require.Equal(t, []history.PolicyCount{{Policy: "off", Count: 0}, {Policy: "web", Count: 2}}, counts)

	one, err := s.CoverageList(ctx, "web", "ins-bbbbbbbb", false)
	require.NoError(t, err)
	require.Len(t, one, 1)

	// ins-a gets an image: covered again, and the write keeps the view current.
	finishRun(t, s, "web", "ins-aaaaaaaa", now.Add(-time.Hour), history.StatusAvailable, "", now.Add(-30*time.Minute))
	one, err = s.CoverageList(ctx, "web", "ins-aaaaaaaa", false)
	require.NoError(t, err)
	require.False(t, one[0].Overdue)
	require.Equal(t, history.StatusAvailable, one[0].LastStatus)
}

func TestDailyCoverageBestStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	d := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	// Day 1: failed, then available, then missed: available wins.
	finishRun(t, s, "web", "ins-aaaaaaaa", d.Add(1*time.Hour), history.StatusFailed, "Timeout", d.Add(2*time.Hour))
	ok := finishRun(t, s, "web", "ins-aaaaaaaa", d.Add(3*time.Hour), history.StatusAvailable, "", d.Add(4*time.Hour))
	finishRun(t, s, "web", "ins-aaaaaaaa", d.Add(5*time.Hour), history.StatusMissed, "", d.Add(5*time.Hour))
	// Day 2: skipped and missed and failed: failed wins.
	finishRun(t, s, "web", "ins-aaaaaaaa", d.Add(25*time.Hour), history.StatusSkipped, "", d.Add(25*time.Hour))
	finishRun(t, s, "web", "ins-aaaaaaaa", d.Add(26*time.Hour), history.StatusMissed, "", d.Add(26*time.Hour))
	failed := finishRun(t, s, "web", "ins-aaaaaaaa", d.Add(27*time.Hour), history.StatusFailed, "CREATEFAILED", d.Add(28*time.Hour))
	// Day 3: requested beats pending.
	req := finishRun(t, s, "web", "ins-aaaaaaaa", d.Add(49*time.Hour), history.StatusRequested, "", time.Time{})
	finishRun(t, s, "web", "ins-aaaaaaaa", d.Add(50*time.Hour), history.StatusPending, "", time.Time{})

	days, err := s.DailyCoverageList(ctx, "web", d, d.AddDate(0, 0, 2))
	require.NoError(t, err)
	require.Len(t, days, 3)
	require.Equal(t, history.StatusAvailable, days[0].Status)
	require.Equal(t, ok.ImageID, days[0].ImageID)
	require.Equal(t, 3, days[0].Runs)
	require.Equal(t, history.StatusFailed, days[1].Status)
	require.Equal(t, "CREATEFAILED", days[1].ErrorCode)
	require.Equal(t, failed.ID, days[1].RunID)
	require.Equal(t, history.StatusRequested, days[2].Status)
	require.Equal(t, req.ID, days[2].RunID)

	// The requested run of day 3 fails: the day is recomputed, pending is now its best.
	require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: req.ID, Status: history.StatusFailed, ErrorCode: "Timeout", FinishedAt: d.Add(52 * time.Hour)}))
	days, err = s.DailyCoverageList(ctx, "web", d.AddDate(0, 0, 2), d.AddDate(0, 0, 2))
	require.NoError(t, err)
	require.Len(t, days, 1)
	require.Equal(t, history.StatusPending, days[0].Status)

	// The rebuild agrees with the incremental writes.
	var before, after string
	q := `SELECT string_agg(format('%s %s %s %s %s %s', policy, instance_id, day, status, run_id, runs), ';' ORDER BY policy, instance_id, day) FROM daily_coverage`
	require.NoError(t, s.Pool().QueryRow(ctx, q).Scan(&before))
	require.NoError(t, s.RebuildDerived(ctx))
	require.NoError(t, s.Pool().QueryRow(ctx, q).Scan(&after))
	require.Equal(t, before, after)
}

func TestImageLatest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	d := time.Date(2026, 3, 10, 3, 0, 0, 0, time.UTC)
	first := finishRun(t, s, "web", "ins-aaaaaaaa", d, history.StatusAvailable, "", d.Add(time.Hour))
	second := finishRun(t, s, "db", "ins-aaaaaaaa", d.Add(24*time.Hour), history.StatusAvailable, "", d.Add(25*time.Hour))
	finishRun(t, s, "web", "ins-aaaaaaaa", d.Add(48*time.Hour), history.StatusFailed, "Timeout", d.Add(49*time.Hour))
	third := finishRun(t, s, "web", "ins-aaaaaaaa", d.Add(72*time.Hour), history.StatusAvailable, "", d.Add(73*time.Hour))

	r, err := s.ImageLatest(ctx, "ins-aaaaaaaa", d.Add(100*time.Hour))
	require.NoError(t, err)
	require.Equal(t, third.ID, r.ID)
	r, err = s.ImageLatest(ctx, "ins-aaaaaaaa", d.Add(71*time.Hour))
	require.NoError(t, err)
	require.Equal(t, second.ID, r.ID, "across policies; the failed run does not count")
	r, err = s.ImageLatest(ctx, "ins-aaaaaaaa", d)
	require.NoError(t, err)
	require.Equal(t, first.ID, r.ID, "at or before")

	// A deleted image is not one to restore from.
	id, _, err := s.DeletionInsert(ctx, history.Deletion{ImageID: third.ImageID, ImageName: third.ImageName, Policy: "web",
		InstanceID: "ins-aaaaaaaa", Region: "ap-guangzhou", RunID: third.ID, Reason: "keep_last", RequestedAt: d.Add(90 * time.Hour)})
	require.NoError(t, err)
	require.NoError(t, s.DeletionFinish(ctx, id, history.DeletionDeleted, "req", "", "", d.Add(91*time.Hour)))
	r, err = s.ImageLatest(ctx, "ins-aaaaaaaa", d.Add(100*time.Hour))
	require.NoError(t, err)
	require.Equal(t, second.ID, r.ID)

	_, err = s.ImageLatest(ctx, "ins-aaaaaaaa", d.Add(-time.Second))
	require.ErrorIs(t, err, history.ErrNotFound)
	_, err = s.ImageLatest(ctx, "ins-zzzzzzzz", d.Add(100*time.Hour))
	require.ErrorIs(t, err, history.ErrNotFound)
}

// TestIncrementalAnswersAgreeWithRebuild writes runs through the store in random order and with
// every status (claims of many slots at once, single claims, requested, available and failed
// writes), and checks after each round that latest_images, coverage_state and coverage_days hold
// what RebuildDerived computes from image_runs alone.
func TestIncrementalAnswersAgreeWithRebuild(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	_, err := s.PoliciesSync(ctx, []history.PolicyRow{
		{Name: "web", Schedule: "0 */6 * * *", Timezone: "Asia/Shanghai", Interval: 6 * time.Hour, Enabled: true, SourceFile: "a.yaml", SourceLine: 3, LoadedAt: slot},
	}, slot)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(7, 11))
	claimStatuses := []history.Status{history.StatusPending, history.StatusPending, history.StatusPending,
		history.StatusFailed, history.StatusMissed, history.StatusSkipped}
	pols := []string{"web", "db"} // db has no policies row: its days are UTC
	insts := []string{"ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc"}
	snapshot := func() string {
		var latest, state, days string
		require.NoError(t, s.Pool().QueryRow(ctx, `SELECT COALESCE(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s',
			instance_id, run_id, policy, scheduled_at, status, image_name, image_id, request_id), E'\n'
			ORDER BY instance_id), '') FROM latest_images`).Scan(&latest))
		require.NoError(t, s.Pool().QueryRow(ctx, `SELECT COALESCE(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s',
			policy, instance_id, first_slot, last_slot, last_run_id, last_status, last_error_code, last_available_run_id,
			last_available_image_id, last_available_image_name, last_available_slot, last_available_at), E'\n'
			ORDER BY policy, instance_id), '') FROM coverage_state`).Scan(&state))
		require.NoError(t, s.Pool().QueryRow(ctx, `SELECT COALESCE(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s',
			policy, instance_id, day, status, run_id, image_id, error_code, runs), E'\n'
			ORDER BY policy, instance_id, day), '') FROM coverage_days`).Scan(&days))
		return latest + "\n--\n" + state + "\n--\n" + days
	}
	var open []history.Run
	for round := range 30 {
		// A batch of new runs at random slots (out of order, several per pair and day), claimed in
		// one transaction or one by one.
		var ps []history.RunClaimParams
		seen := map[string]bool{}
		for range 1 + rng.IntN(8) {
			p := history.RunClaimParams{Policy: pols[rng.IntN(len(pols))], InstanceID: insts[rng.IntN(len(insts))],
				Region: "ap-guangzhou", ScheduledAt: slot.Add(time.Duration(rng.IntN(20*24)) * time.Hour / 4),
				DaemonID: "daemon-a", Status: claimStatuses[rng.IntN(len(claimStatuses))], Manual: rng.IntN(2) == 0}
			p.StartedAt = p.ScheduledAt
			p.ImageName = p.Policy + "-" + p.InstanceID + "-" + p.ScheduledAt.Format("0102150405")
			if p.Status != history.StatusPending {
				p.ErrorCode = "Code" + string(p.Status)
			}
			if k := p.ImageName; !seen[k] {
				seen[k] = true
				ps = append(ps, p)
			}
		}
		var runs []history.Run
		if round%2 == 0 {
			runs, _, err = s.RunsClaimFire(ctx, ps)
			require.NoError(t, err)
		} else {
			for _, p := range ps {
				r, _, err := s.RunClaim(ctx, p)
				require.NoError(t, err)
				runs = append(runs, r)
			}
		}
		for _, r := range runs {
			if r.Status == history.StatusPending {
				open = append(open, r)
			}
		}
		// Some open runs move on: accepted, available, failed (some after being accepted).
		var still []history.Run
		for _, r := range open {
			done := r.ScheduledAt.Add(time.Duration(1+rng.IntN(3)) * time.Hour)
			switch rng.IntN(5) {
			case 0:
				require.NoError(t, s.RunRequested(ctx, r.ID, "img-"+strconv.FormatInt(r.ID, 10), "req-"+strconv.FormatInt(r.ID, 10)))
				r.Status = history.StatusRequested
				still = append(still, r)
			case 1:
				require.NoError(t, s.RunAvailable(ctx, r.ID, nil, "img-late-"+strconv.FormatInt(r.ID, 10), done))
			case 2:
				require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: r.ID, Status: history.StatusFailed,
					ErrorCode: "Timeout", FinishedAt: done}))
			default:
				still = append(still, r)
			}
		}
		open = still
		before := snapshot()
		require.NoError(t, s.RebuildDerived(ctx))
		require.Equal(t, snapshot(), before, "round %d: the incremental answers disagree with the rebuild", round)
	}
	var n int
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT count(*) FROM coverage_days WHERE runs > 1`).Scan(&n))
	require.Positive(t, n, "no day held two runs: the test did not exercise the tie-break")
	require.NoError(t, s.Pool().QueryRow(ctx, `SELECT count(*) FROM image_runs r JOIN image_runs a
		ON a.instance_id = r.instance_id AND a.status = 'available' AND r.status = 'failed' AND r.image_id IS NOT NULL`).Scan(&n))
	require.Positive(t, n, "no accepted image failed beside an available one: latest_images' fallback was not exercised")
}
