package metrics

import (
	"context"
	"time"

	"github.com/imager-dev/imager/internal/history"
)

// HistoryOptions returns Options whose database-backed sources read imager's history store:
// run counts, the coverage view's last available images, the copy_coverage view's last available
// copies, RPO breaches, pending notifications and
// the replicas seen in the last minute. The caller sets the rest (spool, health, leadership).
func HistoryOptions(store *history.Store) Options {
	return Options{
		RunCounts: func(ctx context.Context, since time.Time) ([]RunCount, error) {
			counts, err := store.RunCountsSince(ctx, since)
			out := make([]RunCount, len(counts))
			for i, c := range counts {
				out[i] = RunCount{Policy: c.Policy, Status: string(c.Status), Count: c.Count}
			}
			return out, err
		},
		Sources: Sources{
			LastAvailable: func(ctx context.Context) ([]LastAvailable, error) {
				cov, err := store.CoverageList(ctx, "", "", false)
				var out []LastAvailable
				for _, c := range cov {
					if c.LastAvailableAt != nil {
						out = append(out, LastAvailable{Policy: c.Policy, Instance: c.InstanceID, At: *c.LastAvailableAt})
					}
				}
				return out, err
			},
			LastAvailableCopy: func(ctx context.Context) ([]LastAvailableCopy, error) {
				cov, err := store.CopyCoverageList(ctx, "", nil)
				var out []LastAvailableCopy
				for _, c := range cov {
					if c.LastAvailableAt != nil {
						out = append(out, LastAvailableCopy{Policy: c.Policy, Instance: c.InstanceID, Region: c.Region,
							Account: c.Account, At: *c.LastAvailableAt})
					}
				}
				return out, err
			},
			LastRestoreTests: func(ctx context.Context) ([]LastRestoreTest, error) {
				cov, err := store.RestoreCoverageList(ctx)
				var out []LastRestoreTest
				for _, c := range cov {
					if c.LastPassedAt != nil {
						out = append(out, LastRestoreTest{Test: c.Test, Policy: c.Policy, Instance: c.InstanceID, At: *c.LastPassedAt})
					}
				}
				return out, err
			},
			RPOBreaches: func(ctx context.Context) ([]PolicyCount, error) {
				counts, err := store.RPOBreachCounts(ctx)
				out := make([]PolicyCount, len(counts))
				for i, c := range counts {
					out[i] = PolicyCount{Policy: c.Policy, Count: c.Count}
				}
				return out, err
			},
			NotificationsPending: store.NotificationsPending,
			Replicas: func(ctx context.Context) (map[string]int, error) {
				seen, err := store.ReplicasSeen(ctx, time.Minute)
				roles := map[string]int{}
				for _, r := range seen {
					roles[r.Role]++
				}
				return roles, err
			},
		},
	}
}
