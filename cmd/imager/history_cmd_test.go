package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

// auditFixture is a migrated database with a few runs, their API calls and a deletion, laid out
// backwards from now.
type auditFixture struct {
	dbURL string
	now   time.Time
	ok    history.Run // web/ins-aaaaaaaa, available 2 days 3 hours ago after one CreateImage call
	older history.Run // web/ins-aaaaaaaa, available, image deleted since
	fail  history.Run // web/ins-bbbbbbbb, failed after two CreateImage calls
	db    history.Run // db/ins-cccccccc, available half an hour ago, made with account "prod"
	// okCopy is ok's copy in ap-singapore, available; ok's copy in ap-shanghai failed (InvalidRegion).
	okCopy history.Copy
}

func newAuditFixture(t *testing.T) *auditFixture {
	t.Helper()
	ctx := context.Background()
	f := &auditFixture{dbURL: pgtest.NewDatabase(t), now: time.Now().UTC().Truncate(time.Second)}
	s, err := history.Open(ctx, f.dbURL, zerolog.Nop())
	require.NoError(t, err)
	defer s.Close()
	_, err = s.Migrate(ctx)
	require.NoError(t, err)
	_, err = s.PoliciesSync(ctx, []history.PolicyRow{{Name: "loaded-only", Schedule: "@daily", Timezone: "UTC",
		Interval: 24 * time.Hour, Enabled: true, SourceFile: "p.yaml", SourceLine: 3, LoadedAt: f.now}}, f.now)
	require.NoError(t, err)

	run := func(pol, inst string, slot time.Time, calls []string, final history.Status, code string, done time.Time) history.Run {
		r, _, err := s.RunClaim(ctx, history.RunClaimParams{Policy: pol, InstanceID: inst, Region: "ap-guangzhou",
			ScheduledAt: slot, ImageName: pol + "-" + inst + "-" + slot.Format("20060102-1504"), DaemonID: "d1",
			StartedAt: slot, Status: history.StatusPending})
		require.NoError(t, err)
		for i, action := range calls {
			a := history.Attempt{RunID: r.ID, Attempt: i + 1, Action: action, StartedAt: slot, RequestID: "req"}
			if action == "CreateImage" && final == history.StatusFailed {
				a.ErrorCode, a.RequestID = "InternalError", ""
			}
			require.NoError(t, s.AttemptInsert(ctx, a))
		}
		if final == history.StatusAvailable {
			require.NoError(t, s.RunRequested(ctx, r.ID, "img-"+inst[4:8]+slot.Format("0215"), "req-1"))
			require.NoError(t, s.RunAvailable(ctx, r.ID, nil, "", done))
		} else {
			require.NoError(t, s.RunFinish(ctx, history.RunFinishParams{RunID: r.ID, Status: final, ErrorCode: code,
				ErrorMessage: "the API said no", FinishedAt: done}))
		}
		got, err := s.RunGet(ctx, r.ID)
		require.NoError(t, err)
		return got
	}
	f.older = run("web", "ins-aaaaaaaa", f.now.Add(-80*time.Hour), []string{"CreateImage", "DescribeImages"},
		history.StatusAvailable, "", f.now.Add(-79*time.Hour))
	f.ok = run("web", "ins-aaaaaaaa", f.now.Add(-52*time.Hour), []string{"CreateImage", "DescribeImages", "DescribeImages"},
		history.StatusAvailable, "", f.now.Add(-51*time.Hour))
	f.fail = run("web", "ins-bbbbbbbb", f.now.Add(-5*time.Hour), []string{"CreateImage", "CreateImage"},
		history.StatusFailed, "InternalError", f.now.Add(-4*time.Hour))
	f.db = run("db", "ins-cccccccc", f.now.Add(-time.Hour), []string{"CreateImage", "DescribeImages"}, history.StatusAvailable, "", f.now.Add(-30*time.Minute))
	_, err = s.Pool().Exec(ctx, `UPDATE image_runs SET account = 'prod' WHERE id = $1`, f.db.ID)
	require.NoError(t, err)

	copies, _, err := s.CopyRequested(ctx, f.ok.ID, []string{"ap-shanghai", "ap-singapore"}, f.now.Add(-50*time.Hour))
	require.NoError(t, err)
	require.NoError(t, s.CopyFailed(ctx, copies[0].ID, "InvalidRegion", "not for this account", f.now.Add(-50*time.Hour)))
	require.NoError(t, s.CopyAnswered(ctx, copies[1].ID, "img-sgcopy01", "req-sync"))
	require.NoError(t, s.CopyAvailable(ctx, copies[1].ID, "", f.now.Add(-49*time.Hour)))
	f.okCopy, err = s.CopyGet(ctx, copies[1].ID)
	require.NoError(t, err)

	id, _, err := s.DeletionInsert(ctx, history.Deletion{ImageID: f.older.ImageID, ImageName: f.older.ImageName, Policy: "web",
		InstanceID: "ins-aaaaaaaa", Region: "ap-guangzhou", RunID: f.older.ID, Reason: "keep_last 1 exceeded", RequestedAt: f.now.Add(-2 * time.Hour)})
	require.NoError(t, err)
	require.NoError(t, s.DeletionFinish(ctx, id, history.DeletionDeleted, "req-del", "", "", f.now.Add(-2*time.Hour)))
	return f
}

func TestHistoryFiltersFormatsAndDeletions(t *testing.T) {
	f := newAuditFixture(t)
	e := &e2e{}
	db := []string{"--database-url", f.dbURL, "--since", "7d"}

	code, stdout, stderr := e.imager(t, append([]string{"history"}, db...)...)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "Runs with a slot in the last 7d: 4, 3 available, 1 failed")
	require.Regexp(t, `SLOT \(UTC\) +POLICY +ACCOUNT +INSTANCE +STATUS +IMAGE +NAME +ATTEMPTS +COPIES +ERROR\n`, stdout)
	require.Regexp(t, `web +default +ins-aaaaaaaa +available +`+f.ok.ImageID+` +`+f.ok.ImageName+` +1 +`+
		`ap-shanghai:failed\(InvalidRegion\) ap-singapore:available +\n`, stdout,
		"one image column and the name beside it; a clean success made one CreateImage call; its copies by region")
	require.Regexp(t, `web +default +ins-bbbbbbbb +failed +- +\S+ +2 +- +InternalError: the API said no`, stdout)
	require.Regexp(t, `db +prod +ins-cccccccc +available +`, stdout)
	require.Regexp(t, `ins-aaaaaaaa +web +`+f.ok.ImageID+` +\S+ +2d 3h\n`, stdout, "ages in days and hours")
	require.Regexp(t, `ins-cccccccc +db +img-\S+ +\S+ +30m\n`, stdout)
	require.Contains(t, stdout, "Images imager decided to delete in the last 7d: 1\n")
	require.Regexp(t, `web +default +ins-aaaaaaaa +`+f.older.ImageID+` +\S+ +deleted +keep_last 1 exceeded`, stdout)

	// --account: the runs, failures, last images and deletions made with that account only.
	code, stdout, stderr = e.imager(t, append([]string{"history", "--account", "prod"}, db...)...)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "Runs with a slot in the last 7d: 1, 1 available\n")
	require.Contains(t, stdout, "Failures in the last 7d: 0\n")
	require.Contains(t, stdout, "Last good image per instance: 1 instances\n")
	require.Contains(t, stdout, "Images imager decided to delete in the last 7d: 0\n")
	require.NotContains(t, stdout, "ins-aaaaaaaa")
	code, stdout, stderr = e.imager(t, append([]string{"history", "--account", "default", "--format", "csv"}, db...)...)
	require.Equal(t, 0, code, stderr)
	require.NotContains(t, stdout, "ins-cccccccc")
	require.Equal(t, 4, strings.Count(stdout, "\n"), "a header and the three runs of the default account")
	code, stdout, stderr = e.imager(t, append([]string{"history", "--account", "nobody"}, db...)...)
	require.Equal(t, 1, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, `unknown account "nobody"`)
	code, _, stderr = e.imager(t, append([]string{"history", "--account", "Prod Account"}, db...)...)
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--account")

	code, stdout, stderr = e.imager(t, append([]string{"history", "--instance", "ins-bbbbbbbb"}, db...)...)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "Runs with a slot in the last 7d: 1, 1 failed")
	require.NotContains(t, stdout, "ins-aaaaaaaa")
	require.Contains(t, stdout, "Images imager decided to delete in the last 7d: 0\n")

	code, stdout, stderr = e.imager(t, append([]string{"history", "--status", "available", "--policy", "web", "--format", "json"}, db...)...)
	require.Equal(t, 0, code, stderr)
	var doc struct {
		Runs      []map[string]any `json:"runs"`
		Deletions []map[string]any `json:"deletions"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &doc), stdout)
	require.Len(t, doc.Runs, 2)
	first := doc.Runs[0]
	require.Equal(t, float64(f.ok.ID), first["id"])
	require.Equal(t, "ins-aaaaaaaa", first["instance_id"])
	require.Equal(t, f.ok.ImageID, first["image_id"])
	require.Equal(t, f.ok.ImageName, first["image_name"])
	require.Equal(t, "available", first["status"])
	require.Equal(t, float64(3), first["attempts"], "image_runs.attempts: every API call")
	require.Equal(t, float64(1), first["create_image_attempts"])
	require.Equal(t, f.ok.ScheduledAt.Format(time.RFC3339), first["scheduled_at"])
	require.Nil(t, first["error_code"])
	require.Equal(t, "default", first["account"])
	require.Equal(t, []any{
		map[string]any{"region": "ap-shanghai", "image_id": nil, "image_name": f.ok.ImageName, "status": "failed",
			"error_code": "InvalidRegion", "requested_at": f.now.Add(-50 * time.Hour).Format(time.RFC3339),
			"available_at": nil, "deleted_at": nil},
		map[string]any{"region": "ap-singapore", "image_id": "img-sgcopy01", "image_name": f.ok.ImageName,
			"status": "available", "error_code": nil, "requested_at": f.now.Add(-50 * time.Hour).Format(time.RFC3339),
			"available_at": f.okCopy.AvailableAt.Format(time.RFC3339), "deleted_at": nil},
	}, first["copies"])
	require.Equal(t, []any{}, doc.Runs[1]["copies"], "a run without copies has an empty list")
	for _, col := range []string{"policy", "region", "started_at", "finished_at", "image_size_gib", "request_id", "error_message", "daemon_id", "updated_at", "term"} {
		require.Contains(t, first, col)
	}
	require.Len(t, doc.Deletions, 1)
	require.Equal(t, f.older.ImageID, doc.Deletions[0]["image_id"])
	require.Equal(t, "deleted", doc.Deletions[0]["status"])
	require.Equal(t, float64(f.older.ID), doc.Deletions[0]["run_id"])
	require.Equal(t, "default", doc.Deletions[0]["account"])

	code, stdout, stderr = e.imager(t, append([]string{"history", "--status", "failed", "--format", "csv"}, db...)...)
	require.Equal(t, 0, code, stderr)
	recs, err := csv.NewReader(strings.NewReader(stdout)).ReadAll()
	require.NoError(t, err)
	require.Len(t, recs, 2)
	require.Equal(t, runCSVColumns, recs[0])
	row := map[string]string{}
	for i, col := range recs[0] {
		row[col] = recs[1][i]
	}
	require.Equal(t, "ins-bbbbbbbb", row["instance_id"])
	require.Equal(t, "InternalError", row["error_code"])
	require.Equal(t, "2", row["create_image_attempts"])
	require.Equal(t, "", row["image_id"], "NULL is an empty field")
	require.Equal(t, "default", row["account"])
	require.Equal(t, "", row["copies"])

	code, stdout, stderr = e.imager(t, append([]string{"history", "--instance", "ins-aaaaaaaa", "--format", "csv"}, db...)...)
	require.Equal(t, 0, code, stderr)
	recs, err = csv.NewReader(strings.NewReader(stdout)).ReadAll()
	require.NoError(t, err)
	require.Len(t, recs, 3)
	require.Equal(t, "ap-shanghai:failed::InvalidRegion;ap-singapore:available:img-sgcopy01:", recs[1][len(recs[1])-1])

	// A policy only loaded (no runs yet) is known; one never heard of is an error.
	code, _, stderr = e.imager(t, append([]string{"history", "--policy", "loaded-only"}, db...)...)
	require.Equal(t, 0, code, stderr)
	code, stdout, stderr = e.imager(t, append([]string{"history", "--policy", "no-such-policy"}, db...)...)
	require.Equal(t, 1, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, `unknown policy "no-such-policy"`)

	code, _, stderr = e.imager(t, append([]string{"history", "--status", "done"}, db...)...)
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--status")
	code, _, stderr = e.imager(t, append([]string{"history", "--format", "xml"}, db...)...)
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--format")
}

func TestLatestPrintsTheImageToRestoreFrom(t *testing.T) {
	f := newAuditFixture(t)
	e := &e2e{}
	db := []string{"--database-url", f.dbURL}

	code, stdout, stderr := e.imager(t, append([]string{"latest", "--instance", "ins-aaaaaaaa"}, db...)...)
	require.Equal(t, 0, code, stderr)
	require.Regexp(t, `Image: +`+f.ok.ImageID+`\n`, stdout)
	require.Regexp(t, `Slot \(UTC\): +`+f.ok.ScheduledAt.Format("2006-01-02 15:04:05")+`\n`, stdout)
	require.Regexp(t, `Policy: +web\n`, stdout)
	require.Regexp(t, `Tags: +imager-instance=ins-aaaaaaaa\n +imager-policy=web\n +imager-slot=`+f.ok.ScheduledAt.Format(time.RFC3339), stdout)
	require.Contains(t, stdout, "tccli cvm ResetInstance --region ap-guangzhou --InstanceId ins-aaaaaaaa --ImageId "+f.ok.ImageID+"\n")
	require.Contains(t, stdout, "tccli cvm RunInstances --region ap-guangzhou --ImageId "+f.ok.ImageID+" ")

	// Before the newest image: the older one has been deleted, so there is none.
	before := f.ok.ScheduledAt.Add(-time.Second).Format(time.RFC3339)
	code, stdout, stderr = e.imager(t, append([]string{"latest", "--instance", "ins-aaaaaaaa", "--before", before}, db...)...)
	require.Equal(t, 1, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, "ins-aaaaaaaa has no available image with a slot at or before")

	code, stdout, stderr = e.imager(t, append([]string{"latest", "--instance", "ins-cccccccc", "--before", "10m", "--format", "json"}, db...)...)
	require.Equal(t, 0, code, stderr)
	var doc map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &doc))
	require.Equal(t, "db", doc["policy"])
	require.Equal(t, "ins-cccccccc", doc["instance_id"])
	require.Contains(t, doc["reset_instance"], "tccli cvm ResetInstance")
	require.Contains(t, doc["run_instances"], "tccli cvm RunInstances")
	require.Equal(t, "db", doc["tags"].(map[string]any)["imager-policy"])

	// --region: the newest copy there, and command lines that name that region.
	code, stdout, stderr = e.imager(t, append([]string{"latest", "--instance", "ins-aaaaaaaa", "--region", "ap-singapore"}, db...)...)
	require.Equal(t, 0, code, stderr)
	require.Regexp(t, `Image: +img-sgcopy01\n`, stdout)
	require.Regexp(t, `Slot \(UTC\): +`+f.ok.ScheduledAt.Format("2006-01-02 15:04:05")+`\n`, stdout)
	require.Regexp(t, `Region: +ap-singapore\n`, stdout)
	require.Regexp(t, `Copy of: +`+f.ok.ImageID+` in ap-guangzhou\n`, stdout)
	require.Contains(t, stdout, "tccli cvm ResetInstance --region ap-singapore --InstanceId <instance in ap-singapore> --ImageId img-sgcopy01\n")
	require.Contains(t, stdout, "tccli cvm RunInstances --region ap-singapore --ImageId img-sgcopy01 ")
	code, stdout, stderr = e.imager(t, append([]string{"latest", "--instance", "ins-aaaaaaaa", "--region", "ap-singapore", "--format", "json"}, db...)...)
	require.Equal(t, 0, code, stderr)
	doc = nil
	require.NoError(t, json.Unmarshal([]byte(stdout), &doc))
	require.Equal(t, "img-sgcopy01", doc["image_id"])
	require.Equal(t, "ap-singapore", doc["region"])
	require.Equal(t, "ap-guangzhou", doc["source_region"])
	require.Equal(t, f.ok.ImageID, doc["source_image_id"])
	require.Equal(t, float64(f.okCopy.ID), doc["copy_id"])
	require.Equal(t, float64(f.ok.ID), doc["run_id"])
	require.Equal(t, "default", doc["account"])
	require.Contains(t, doc["run_instances"], "--region ap-singapore --ImageId img-sgcopy01")
	// The source region answers with the image itself.
	code, stdout, stderr = e.imager(t, append([]string{"latest", "--instance", "ins-aaaaaaaa", "--region", "ap-guangzhou"}, db...)...)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "tccli cvm ResetInstance --region ap-guangzhou --InstanceId ins-aaaaaaaa --ImageId "+f.ok.ImageID+"\n")
	require.NotContains(t, stdout, "Copy of:")
	// The failed copy in ap-shanghai is not one to restore from.
	code, stdout, stderr = e.imager(t, append([]string{"latest", "--instance", "ins-aaaaaaaa", "--region", "ap-shanghai"}, db...)...)
	require.Equal(t, 1, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, "ins-aaaaaaaa has no available image or copy in ap-shanghai with a slot at or before")

	code, _, stderr = e.imager(t, append([]string{"latest"}, db...)...)
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--instance")
	code, _, stderr = e.imager(t, append([]string{"latest", "--instance", "ins-aaaaaaaa", "--before", "someday"}, db...)...)
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--before")
}

func TestFormatAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		51 * time.Hour:                  "2d 3h",
		24 * time.Hour:                  "1d 0h",
		5*time.Hour + 12*time.Minute:    "5h 12m",
		42*time.Minute + 10*time.Second: "42m",
		-time.Minute:                    "0m",
	} {
		require.Equal(t, want, formatAge(d), d.String())
	}
}
