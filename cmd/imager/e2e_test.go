package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
)

// e2e is one end-to-end environment: a fresh database, a simulator, and the credentials the
// binary reads from its environment.
type e2e struct {
	dbURL string
	sim   *cvmsim.Server
	url   string
	dir   string
}

func newE2E(t *testing.T) *e2e {
	t.Helper()
	sim := cvmsim.New(cvmsim.Options{Seed: 1})
	url, err := sim.Start()
	require.NoError(t, err)
	t.Cleanup(sim.Close)
	t.Setenv("TENCENTCLOUD_SECRET_ID", cvmsim.DefaultSecretID)
	t.Setenv("TENCENTCLOUD_SECRET_KEY", cvmsim.DefaultSecretKey)
	t.Setenv("IMAGER_CVM_ENDPOINT", "")
	t.Setenv("DATABASE_URL", "")
	return &e2e{dbURL: pgtest.NewDatabase(t), sim: sim, url: url, dir: t.TempDir()}
}

// imager runs the binary's command line in-process and returns exit code, stdout and stderr.
func (e *e2e) imager(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := dispatch(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func (e *e2e) writePolicies(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(e.dir, "policies.yaml")
	require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
	return path
}

func (e *e2e) daemonArgs(cmd, policies string) []string {
	return []string{cmd, "--policies", policies, "--database-url", e.dbURL, "--cvm-endpoint", e.url,
		"--spool-dir", filepath.Join(e.dir, "spool"), "--log-level", "debug", "--poll-interval", "200ms"}
}

func instanceIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("ins-%s%0*d", prefix, 8-len(prefix), i+1)
	}
	return ids
}

// TestOnceImagesFortyInstancesAtTheLimit is the README's promise of one pace checked end to end: imager once over 40
// instances at limit 10 images all 40, each exactly once, with unique names of at most 60
// characters, and records every call (a throttled one included) in image_attempts and every
// accepted RequestId on its run. It runs on the real clock, so it asserts only what holds
// whatever the timing: a busy machine can wake a worker late and send two calls closer together
// than the pace granted them, which the simulator rejects and imager retries. The spacing itself
// is asserted on the fake clock (internal/scheduler TestFortyInstancesAtTheLimitAreSpacedOnTheClock).
func TestOnceImagesFortyInstancesAtTheLimit(t *testing.T) {
	e := newE2E(t)
	ids := instanceIDs("fleet", 40)
	for _, id := range ids {
		e.sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou"})
	}
	policies := e.writePolicies(t, fmt.Sprintf(`version: 1
api: {create_image_rate: 10, workers: 4}
defaults: {region: ap-guangzhou, timezone: Asia/Shanghai}
policies:
  - name: fleet-nightly-long-name-policy
    schedule: "0 3 * * *"
    instances: [%s]
    image:
      name: "{policy}-{instance}"
      description: "Nightly image of {instance}"
      force_poweroff: true
      sysprep: false
`, strings.Join(ids, ", ")))

	code, stdout, stderr := e.imager(t, append(e.daemonArgs("once", policies), "--policy", "fleet-nightly-long-name-policy")...)
	require.Equalf(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	require.Contains(t, stdout, "40 slots, 0 not available")
	require.NotContains(t, stderr, cvmsim.DefaultSecretKey, "the secret key leaked into the logs")

	var creates []cvmsim.Call       // accepted
	answered := map[string]string{} // RequestId → error code of every CreateImage
	var admitted []time.Time
	perInstance := map[string]int{}
	for _, c := range e.sim.Calls() {
		if c.Action != cvmsim.ActionCreateImage {
			continue
		}
		// Booleans on the wire exactly when set, as the strings "true"/"false".
		require.Equal(t, "true", c.Params["ForcePoweroff"])
		require.Equal(t, "false", c.Params["Sysprep"])
		require.NotContains(t, c.Params, "Reboot")
		require.False(t, c.Dropped)
		answered[c.RequestID] = c.Code
		if strings.HasPrefix(c.Code, "RequestLimitExceeded") {
			continue // retried
		}
		require.Empty(t, c.Code, "only throttles may be refused: %+v", c)
		creates = append(creates, c)
		admitted = append(admitted, c.At)
		perInstance[c.Params["InstanceId"].(string)]++
	}
	require.Len(t, creates, 40)
	require.Len(t, perInstance, 40, "every instance imaged exactly once")
	require.LessOrEqual(t, cvmsim.MaxInWindow(admitted, time.Second), 10, "the simulator admits at most its limit")
	t.Logf("%d CreateImage calls, %d throttled", len(answered), len(answered)-len(creates))

	names := map[string]bool{}
	for _, img := range e.sim.Images() {
		require.LessOrEqual(t, len(img.Name), 60)
		require.Regexp(t, regexp.MustCompile(`^[A-Za-z0-9._-]+$`), img.Name)
		require.False(t, names[img.Name], "duplicate name %s", img.Name)
		names[img.Name] = true
	}
	require.Len(t, names, 40)

	conn := connect(t, e.dbURL)
	var runs, withAttempt int
	require.NoError(t, conn.QueryRow(context.Background(), `
		SELECT count(*),
		       count(*) FILTER (WHERE EXISTS (
		           SELECT 1 FROM image_attempts a
		           WHERE a.run_id = r.id AND a.request_id = r.request_id AND a.error_code IS NULL))
		FROM image_runs r WHERE r.status = 'available' AND r.image_id IS NOT NULL`).Scan(&runs, &withAttempt))
	require.Equal(t, 40, runs)
	require.Equal(t, 40, withAttempt)
	for _, c := range creates {
		var n int
		require.NoError(t, conn.QueryRow(context.Background(),
			`SELECT count(*) FROM image_runs WHERE request_id = $1`, c.RequestID).Scan(&n))
		require.Equalf(t, 1, n, "accepted request %s is not on its run", c.RequestID)
	}
	// Every call, a throttled one included, is an attempt with its RequestId and answer.
	rows, err := conn.Query(context.Background(),
		`SELECT request_id, COALESCE(error_code, '') FROM image_attempts WHERE action = 'CreateImage'`)
	require.NoError(t, err)
	recorded := map[string]string{}
	for rows.Next() {
		var req, code string
		require.NoError(t, rows.Scan(&req, &code))
		recorded[req] = code
	}
	require.NoError(t, rows.Err())
	require.Equal(t, answered, recorded)
}

// TestOnceRecordsPermanentErrorsWithoutRetry: an unknown and an unsupported instance fail at once
// with their codes, one attempt each, and once exits 1.
func TestOnceRecordsPermanentErrorsWithoutRetry(t *testing.T) {
	e := newE2E(t)
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-good0001", Region: "ap-guangzhou"})
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-old00001", Region: "ap-guangzhou", Unsupported: true})
	policies := e.writePolicies(t, `version: 1
defaults: {region: ap-guangzhou}
policies:
  - name: mixed
    schedule: "@daily"
    instances: [ins-good0001, ins-old00001, ins-gone0001]
    image: {reboot: true}
`)
	code, stdout, stderr := e.imager(t, append(e.daemonArgs("once", policies), "--policy", "mixed")...)
	require.Equalf(t, 1, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	require.Contains(t, stdout, "3 slots, 2 not available")

	rows := runRows(t, e.dbURL)
	require.Equal(t, "available/2/", rows["ins-good0001"])
	require.Equal(t, "failed/1/InvalidInstance.NotSupported", rows["ins-old00001"])
	require.Equal(t, "skipped/0/InvalidInstanceId.NotFound", rows["ins-gone0001"])
	creates := 0
	for _, c := range e.sim.Calls() {
		if c.Action == cvmsim.ActionCreateImage {
			creates++
			require.Equal(t, "true", c.Params["Reboot"], "reboot: true must reach the wire as \"true\"")
		}
	}
	require.Equal(t, 2, creates, "permanent errors are not retried; the gone instance is skipped before any CreateImage")
}

// TestOnceRetriesTransientErrorsAsAttempts: InternalError answers are retried, each call an
// attempt row with its RequestId.
func TestOnceRetriesTransientErrorsAsAttempts(t *testing.T) {
	e := newE2E(t)
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-flaky001", Region: "ap-guangzhou"})
	e.sim.QueueErrors(cvmsim.ActionCreateImage, "InternalError", "InternalError")
	policies := e.writePolicies(t, `version: 1
api: {retry: {transient: {initial: 10ms, max: 20ms, attempts: 5}}}
defaults: {region: ap-guangzhou}
policies:
  - name: flaky
    schedule: "@daily"
    instances: [ins-flaky001]
`)
	code, stdout, stderr := e.imager(t, append(e.daemonArgs("once", policies), "--policy", "flaky")...)
	require.Equalf(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	require.Equal(t, "available/4/", runRows(t, e.dbURL)["ins-flaky001"])

	conn := connect(t, e.dbURL)
	rows, err := conn.Query(context.Background(),
		`SELECT attempt, coalesce(error_code, ''), request_id FROM image_attempts WHERE action = 'CreateImage' ORDER BY attempt`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var n int
		var code, rid string
		err := r.Scan(&n, &code, &rid)
		require.NotEmpty(t, rid)
		return fmt.Sprintf("%d:%s", n, code), err
	})
	require.NoError(t, err)
	require.Equal(t, []string{"1:InternalError", "2:InternalError", "3:"}, got)
}

// TestValidateReportsEveryErrorWithItsLine: all errors at once, file:line: field: message, exit 1.
func TestValidateReportsEveryErrorWithItsLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "broken.yaml")
	require.NoError(t, os.WriteFile(path, []byte(`version: 1
defaults: {region: ap-guangzhou}
policies:
  - name: good
    schedule: "0 3 * * *"
    instances: [ins-6pb6lrmy]
  - name: Bad_Name
    schedule: "0 25 * * *"
    timezone: Mars/Olympus
    instances: [ins-XYZ]
    colour: blue
`), 0o600))
	var stdout, stderr bytes.Buffer
	code := dispatch(context.Background(), []string{"validate", "--policies", path}, &stdout, &stderr)
	require.Equal(t, 1, code)
	for _, want := range []string{
		path + ":7: policies[1].name:",
		path + ":8: policies[1].schedule:",
		path + ":9: policies[1].timezone:",
		path + ":10: policies[1].instances[0]:",
		path + ":11: policies[1].colour:",
	} {
		require.Contains(t, stderr.String(), want)
	}
	// The good policy still gets its next fire times.
	require.Contains(t, stdout.String(), "good")
}

func TestValidateExamplePrintsNextFires(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := dispatch(context.Background(), []string{"validate", "--policies", "../../policies.example.yaml"}, &stdout, &stderr)
	require.Equalf(t, 0, code, "stderr: %s", stderr.String())
	require.Contains(t, stdout.String(), "policies OK")
	require.Regexp(t, `\(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)`, stdout.String())
}

// TestBadInputIsOneClearLine: flags, database and credentials problems are one line naming what
// and where, with a non-zero exit and no secret in it.
func TestBadInputIsOneClearLine(t *testing.T) {
	example := "../../policies.example.yaml"
	t.Setenv("TENCENTCLOUD_SECRET_ID", "")
	t.Setenv("TENCENTCLOUD_SECRET_KEY", "")
	t.Setenv("DATABASE_URL", "")
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"unknown flag", []string{"run", "--colour", "blue"}, 2, "imager run: flag provided but not defined: -colour"},
		{"bad log level", []string{"migrate", "--log-level", "loud"}, 2, "--log-level"},
		{"once without policy", []string{"once", "--policies", example}, 2, "--policy is required"},
		{"no database url", []string{"migrate"}, 1, "DATABASE_URL"},
		{"unreachable database", []string{"migrate", "--database-url", "postgres://imager:s3cretpw@127.0.0.1:1/imager?connect_timeout=2"}, 1, "127.0.0.1:1"},
		{"missing policies", []string{"validate", "--policies", "/nonexistent/policies.yaml"}, 1, "/nonexistent/policies.yaml"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := dispatch(context.Background(), tc.args, &stdout, &stderr)
			require.Equal(t, tc.code, code, stderr.String())
			msg := strings.TrimRight(stderr.String(), "\n")
			require.NotContains(t, msg, "\n", "want one line, got:\n%s", msg)
			require.Contains(t, msg, tc.want)
			require.NotContains(t, msg, "s3cretpw")
			require.NotContains(t, msg, "goroutine ")
		})
	}
}

// TestMissingCredentialsIsOneLine: no credential anywhere → one line naming the ways to give one.
func TestMissingCredentialsIsOneLine(t *testing.T) {
	e := newE2E(t)
	t.Setenv("TENCENTCLOUD_SECRET_ID", "")
	t.Setenv("TENCENTCLOUD_SECRET_KEY", "")
	t.Setenv("TENCENTCLOUD_CREDENTIALS_FILE", filepath.Join(e.dir, "none"))
	t.Setenv("HOME", e.dir)
	policies := e.writePolicies(t, "version: 1\npolicies:\n  - {name: p, schedule: '@daily', region: ap-guangzhou, instances: [ins-aaaaaaaa]}\n")
	code, _, stderr := e.imager(t, "once", "--policy", "p", "--policies", policies, "--database-url", e.dbURL,
		"--spool-dir", filepath.Join(e.dir, "spool"), "--log-level", "error")
	require.Equal(t, 1, code)
	msg := strings.TrimRight(stderr, "\n")
	require.NotContains(t, msg, "\n")
	require.Contains(t, msg, "TENCENTCLOUD_SECRET_ID")
	require.Empty(t, e.sim.Calls())
}

// TestDocsSQLRuns executes every SQL block of README.md and docs/*.md against a migrated
// database, so the documented queries always match the shipped schema; docs/audit.md's audit
// cookbook must be among them.
func TestDocsSQLRuns(t *testing.T) {
	e := newE2E(t)
	code, _, stderr := e.imager(t, "migrate", "--database-url", e.dbURL)
	require.Equal(t, 0, code, stderr)
	conn := connect(t, e.dbURL)
	run := func(sql string) error {
		rows, err := conn.Query(context.Background(), strings.ReplaceAll(sql, "$1", "1"))
		if err != nil {
			return err
		}
		rows.Close()
		return rows.Err()
	}
	// The check can fail: a query the schema does not answer is an error.
	require.Error(t, run("SELECT no_such_column FROM image_runs;"))

	block := regexp.MustCompile("(?s)```sql\n(.*?)```")
	pages, err := filepath.Glob("../../docs/*.md")
	require.NoError(t, err)
	perFile := map[string]int{}
	for _, file := range append([]string{"../../README.md"}, pages...) {
		doc, err := os.ReadFile(file)
		require.NoError(t, err)
		for _, b := range block.FindAllStringSubmatch(string(doc), -1) {
			require.NoErrorf(t, run(b[1]), "%s: query fails:\n%s", file, b[1])
			perFile[filepath.Base(file)]++
		}
	}
	require.GreaterOrEqual(t, perFile["audit.md"], 13, "docs/audit.md's audit cookbook is run")
	require.GreaterOrEqual(t, perFile["notifications.md"], 4, "docs/notifications.md's delivery queries are run")
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// runRows maps instance → "status/attempts/error_code" for every run.
func runRows(t *testing.T, url string) map[string]string {
	t.Helper()
	rows, err := connect(t, url).Query(context.Background(),
		`SELECT instance_id, status, attempts, coalesce(error_code, '') FROM image_runs`)
	require.NoError(t, err)
	out := map[string]string{}
	for rows.Next() {
		var id, status, code string
		var attempts int
		require.NoError(t, rows.Scan(&id, &status, &attempts, &code))
		out[id] = fmt.Sprintf("%s/%d/%s", status, attempts, code)
	}
	require.NoError(t, rows.Err())
	return out
}

// TestHistoryShowsRunsFailuresAndLastGoodImage: `imager history` answers the operator's question
// from the runs once recorded.
func TestHistoryShowsRunsFailuresAndLastGoodImage(t *testing.T) {
	e := newE2E(t)
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-good0001", Region: "ap-guangzhou"})
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-old00001", Region: "ap-guangzhou", Unsupported: true})
	policies := e.writePolicies(t, "version: 1\npolicies:\n  - {name: p, schedule: '@daily', region: ap-guangzhou, instances: [ins-good0001, ins-old00001]}\n")
	code, _, _ := e.imager(t, append(e.daemonArgs("once", policies), "--policy", "p")...)
	require.Equal(t, 1, code)

	code, stdout, stderr := e.imager(t, "history", "--database-url", e.dbURL, "--since", "1d")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "Runs with a slot in the last 1d: 2, 1 available, 1 failed")
	require.Regexp(t, `Failures in the last 1d: 1\n.*ins-old00001 +InvalidInstance.NotSupported`, stdout)
	require.Regexp(t, `Instances whose last image in the last 1d failed: 1\nins-old00001 +p +`, stdout)
	require.Regexp(t, `Last good image per instance: 1 instances\n.*\nins-good0001 +p +img-`, stdout)

	code, _, stderr = e.imager(t, "history", "--database-url", e.dbURL, "--since", "yesterday")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--since")
}

// TestOnceReportsAcceptedSlotsWhenImagesCannotBeFollowed: against an endpoint that refuses
// DescribeImages, once does not wait until image.timeout: it reports the accepted slots and
// leaves them requested for the daemon to follow.
func TestOnceReportsAcceptedSlotsWhenImagesCannotBeFollowed(t *testing.T) {
	e := newE2E(t)
	e.sim.AddInstance(cvmsim.Instance{ID: "ins-good0001", Region: "ap-guangzhou"})
	codes := make([]string, 20)
	for i := range codes {
		codes[i] = "InvalidAction"
	}
	e.sim.QueueErrors(cvmsim.ActionDescribeImages, codes...)
	policies := e.writePolicies(t, "version: 1\npolicies:\n  - {name: p, schedule: '@daily', region: ap-guangzhou, instances: [ins-good0001]}\n")
	code, stdout, stderr := e.imager(t, append(e.daemonArgs("once", policies), "--policy", "p")...)
	require.Equalf(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	require.Contains(t, stdout, "1 slots, 0 not accepted (images not followed)")
	require.Contains(t, stderr, "cannot follow the images")
	require.Equal(t, "requested/1/", runRows(t, e.dbURL)["ins-good0001"])
}
