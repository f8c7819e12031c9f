package history

import (
	"context"
	"fmt"
	"time"
)

// Queries of retention passes (package retention) and of docs/audit.md's audit cookbook.

// RunsRetainable lists the runs a retention pass weighs for one policy: available, with an image
// id, and whose image imager has not deleted (no image_deletions row in status deleted). Images
// with an open deletion (pending or failed) are listed: the pass retries those. instanceID ""
// lists every instance of the policy. Order: instance id, then newest slot first. It lists the
// runs of every account; a pruner of one account reads RunsRetainableOf.
func (s *Store) RunsRetainable(ctx context.Context, policy, instanceID string) ([]Run, error) {
	return s.RunsRetainableOf(ctx, "", policy, instanceID)
}

// RunsRetainableOf is RunsRetainable for the runs made with one account (image_runs.account):
// only that account's credentials see and delete their images. An empty account lists every
// account's runs.
func (s *Store) RunsRetainableOf(ctx context.Context, account, policy, instanceID string) ([]Run, error) {
	runs, err := s.queryRuns(ctx, `SELECT `+runColumns+` FROM image_runs
WHERE policy = $1 AND ($2 = '' OR instance_id = $2) AND ($3 = '' OR account = $3)
	AND status = 'available' AND image_id IS NOT NULL
	AND NOT EXISTS (SELECT 1 FROM image_deletions d WHERE d.image_id = image_runs.image_id AND d.status = 'deleted')
ORDER BY instance_id, scheduled_at DESC, id DESC`, policy, instanceID, account)
	if err != nil {
		return nil, fmt.Errorf("list retainable runs of %s: %w", accountPolicyInstance(account, policy, instanceID), err)
	}
	return runs, nil
}

// DeletionsOpen lists the deletions of one policy's source images that are not done (pending, or
// failed and due for a retry), oldest decision first. instanceID "" lists every instance of the
// policy. Deletions of copies are the copier's (CopyDeletionsOpen). It lists every account's
// deletions; a pruner of one account reads DeletionsOpenOf.
func (s *Store) DeletionsOpen(ctx context.Context, policy, instanceID string) ([]Deletion, error) {
	return s.DeletionsOpenOf(ctx, "", policy, instanceID)
}

// DeletionsOpenOf is DeletionsOpen for the deletions of one account (image_deletions.account). An
// empty account lists every account's deletions.
func (s *Store) DeletionsOpenOf(ctx context.Context, account, policy, instanceID string) ([]Deletion, error) {
	out, err := s.queryDeletions(ctx, `SELECT `+deletionColumns+` FROM image_deletions
WHERE status <> 'deleted' AND copy_id IS NULL AND policy = $1 AND ($2 = '' OR instance_id = $2)
	AND ($3 = '' OR account = $3)
ORDER BY requested_at, id`, policy, instanceID, account)
	if err != nil {
		return nil, fmt.Errorf("list open deletions of %s: %w", accountPolicyInstance(account, policy, instanceID), err)
	}
	return out, nil
}

// DeletionsRecent lists the deletions decided at or after since, in any status, newest decision
// first ("images pruned in the last 7 days").
func (s *Store) DeletionsRecent(ctx context.Context, since time.Time) ([]Deletion, error) {
	out, err := s.queryDeletions(ctx, `SELECT `+deletionColumns+` FROM image_deletions
WHERE requested_at >= $1 ORDER BY requested_at DESC, id DESC`, since)
	if err != nil {
		return nil, fmt.Errorf("list deletions since %s: %w", since.UTC().Format(time.RFC3339), err)
	}
	return out, nil
}

// LastFailedPerInstance returns, for every (policy, instance) whose latest image run with a slot
// at or after since failed, that run, ordered by policy and instance (docs/audit.md's "instances whose
// last image failed"; bounding the slots keeps it from reading the whole history). Runs that made
// no image attempt (skipped, missed) and runs still pending are passed over: the latest of
// requested, available and failed decides.
func (s *Store) LastFailedPerInstance(ctx context.Context, since time.Time) ([]Run, error) {
	runs, err := s.queryRuns(ctx, `SELECT `+runColumns+` FROM (
	SELECT DISTINCT ON (policy, instance_id) id AS last_id, status AS last_status FROM image_runs
	WHERE status IN ('requested', 'available', 'failed') AND scheduled_at >= $1
	ORDER BY policy, instance_id, scheduled_at DESC, id DESC
) last JOIN image_runs ON image_runs.id = last.last_id
WHERE last.last_status = 'failed'
ORDER BY policy, instance_id`, since)
	if err != nil {
		return nil, fmt.Errorf("instances whose last image failed: %w", err)
	}
	return runs, nil
}

// queryDeletions runs a query selecting deletionColumns and collects the rows.
func (s *Store) queryDeletions(ctx context.Context, sql string, args ...any) ([]Deletion, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, s.translate(err)
	}
	defer rows.Close()
	var out []Deletion
	for rows.Next() {
		d, err := scanDeletion(rows)
		if err != nil {
			return nil, s.translate(err)
		}
		out = append(out, d)
	}
	return out, s.translate(rows.Err())
}

// accountPolicyInstance is policyInstance, with the account when one is given.
func accountPolicyInstance(account, policy, instanceID string) string {
	if account == "" {
		return policyInstance(policy, instanceID)
	}
	return policyInstance(policy, instanceID) + " (account " + account + ")"
}

// policyInstance names a policy, or one instance of it, in messages.
func policyInstance(policy, instanceID string) string {
	if instanceID == "" {
		return policy
	}
	return policy + "/" + instanceID
}
