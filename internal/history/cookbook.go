package history

// CookbookQuery is one query of the SQL audit cookbook (docs/audit.md).
type CookbookQuery struct {
	Title string
	SQL   string
}

// Cookbook holds the audit queries `imager demo` prints and `make bench` (cmd/imager-bench) times. A test in
// cmd/imager checks that each appears verbatim in docs/audit.md, and another runs every SQL block of
// the docs against the migrated schema, so the cookbook cannot drift from the schema.
var Cookbook = []CookbookQuery{
	{"Runs per policy and status in the last 24 hours", `SELECT policy, status, count(*) AS runs, sum(attempts) AS api_calls
FROM image_runs
WHERE scheduled_at > now() - interval '24 hours'
GROUP BY policy, status
ORDER BY policy, status;`},
	{"Last image per instance (newest accepted or available)", `SELECT instance_id, policy, scheduled_at, status, image_name, image_id, request_id
FROM latest_images
ORDER BY instance_id;`},
	{"Failures in the last 24 hours, with codes", `SELECT finished_at, policy, instance_id, error_code, error_message, attempts
FROM image_runs
WHERE status = 'failed' AND finished_at > now() - interval '24 hours'
ORDER BY finished_at DESC;`},
	{"Images pruned in the last 24 hours", `SELECT d.finished_at, d.policy, d.instance_id, d.image_id, d.image_name, d.reason, d.request_id
FROM image_deletions d
WHERE d.status = 'deleted' AND d.finished_at > now() - interval '24 hours'
ORDER BY d.finished_at DESC;`},
	{"Attempts of one run (here: the run with the most attempts)", `SELECT a.attempt, a.action, a.started_at, a.duration_ms, a.request_id, a.error_code
FROM image_attempts a
WHERE a.run_id = (SELECT run_id FROM image_attempts WHERE run_id IS NOT NULL ORDER BY attempt DESC, run_id LIMIT 1)
ORDER BY a.attempt;`},
}
