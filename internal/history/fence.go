package history

import (
	"errors"
	"fmt"
)

// LeaseName is the row of leader_lease that the leader holds.
const LeaseName = "leader"

// ErrFenced: the write named a leadership term that is no longer current (another replica took
// the lease, or it lapsed for a claim). The writer has lost leadership and must stop sending;
// the new leader reconciles what it left.
var ErrFenced = errors.New("fenced: leadership term is no longer current")

// WithTerm returns a view of s whose fenced writes carry term: a claim is refused unless term is
// the lease's current term and the lease has not expired by the database's clock; an outcome
// write is refused unless term is still the current term. Term 0 means unfenced (tools and tests
// that run without leadership). The view shares s's pool.
func (s *Store) WithTerm(term int64) *Store {
	c := *s
	c.term = term
	return &c
}

// Term is the leadership term s's fenced writes carry (0: unfenced).
func (s *Store) Term() int64 { return s.term }

// fenceClaim is the SQL condition a claim (a new slot row) must meet, with the term as parameter
// $n: the term is 0, or it is the lease's term and the lease is live by the database clock.
func fenceClaim(n int) string {
	return fmt.Sprintf(`($%[1]d::bigint = 0 OR EXISTS (SELECT 1 FROM leader_lease
	WHERE name = '%[2]s' AND term = $%[1]d::bigint AND expires_at > now()))`, n, LeaseName)
}

// fenceOutcome is the SQL condition an outcome write must meet, with the term as parameter $n:
// the term is 0, or it is still the lease's term (a lapsed lease nobody took keeps its holder's
// outcomes; a new holder's term refuses them).
func fenceOutcome(n int) string {
	return fmt.Sprintf(`($%[1]d::bigint = 0 OR EXISTS (SELECT 1 FROM leader_lease
	WHERE name = '%[2]s' AND term = $%[1]d::bigint))`, n, LeaseName)
}
