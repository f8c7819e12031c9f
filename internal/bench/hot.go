package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
)

// HotPiece is one Go benchmark of a piece on imager's hot path.
type HotPiece struct {
	Name string
	What string
	// Setup prepares the piece and returns one operation of it.
	Setup func() (op func() error, err error)
}

// Bench is the piece as a Go benchmark body (hot_test.go runs it under `go test -bench`).
func (h HotPiece) Bench(b *testing.B) {
	op, err := h.Setup()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
}

// HotRun is one measurement of a hot piece.
type HotRun struct {
	NsPerOp     float64
	AllocsPerOp int64
	BytesPerOp  int64
}

// HotPieces are the Go benchmarks of the hot pieces: image name generation, the pace limiter's
// grant, and loading a 1,000-policy file.
func HotPieces() []HotPiece {
	return []HotPiece{
		{"ImageName", "policy.ImageName: one image name (template, sanitising, sha256 suffix)", setupImageName},
		{"PaceWait", "pace.Limiter.Wait when the grant is due at once: the limiter's own cost", setupPaceWait},
		{"PolicyLoad1000x10", "policy.LoadBytes of 1,000 policies × 10 instances (strict decode, validation, templates)", setupPolicyLoad},
	}
}

// RunHot measures each hot piece once with testing.Benchmark (about a second each). With quick
// set, each operation runs once instead, which only proves it works.
func RunHot(quick bool) ([]HotRun, error) {
	pieces := HotPieces()
	out := make([]HotRun, len(pieces))
	for i, p := range pieces {
		if quick {
			op, err := p.Setup()
			if err != nil {
				return nil, fmt.Errorf("hot piece %s: %w", p.Name, err)
			}
			start := time.Now()
			if err := op(); err != nil {
				return nil, fmt.Errorf("hot piece %s: %w", p.Name, err)
			}
			out[i] = HotRun{NsPerOp: float64(time.Since(start).Nanoseconds())}
			continue
		}
		r := testing.Benchmark(p.Bench)
		if r.N == 0 {
			return nil, fmt.Errorf("hot piece %s failed", p.Name)
		}
		out[i] = HotRun{NsPerOp: float64(r.T.Nanoseconds()) / float64(r.N), AllocsPerOp: r.AllocsPerOp(), BytesPerOp: r.AllocedBytesPerOp()}
	}
	return out, nil
}

func setupImageName() (func() error, error) {
	cfg, err := policy.LoadBytes("hot.yaml", policyFile(apiBlock{Rate: 10, Workers: 4}, []genPolicy{{
		Name: "web-nightly", Schedule: "0 3 * * *", Timezone: "Asia/Shanghai", Instances: instanceIDs(0, 1),
	}}))
	if err != nil {
		return nil, err
	}
	p := cfg.Policies[0]
	slot := time.Date(2026, 3, 29, 19, 0, 0, 0, time.UTC)
	i := 0
	return func() error {
		i++
		if name := policy.ImageName(p, p.Instances[0], slot.Add(time.Duration(i)*time.Minute), 0); name == "" {
			return fmt.Errorf("empty image name")
		}
		return nil
	}, nil
}

func setupPaceWait() (func() error, error) {
	// At a billion calls per second every grant is due by the time it is asked for, so Wait never
	// sleeps and the figure is the limiter's bookkeeping alone.
	lim := pace.New(clockwork.NewRealClock(), 1_000_000_000, pace.Options{})
	ctx := context.Background()
	return func() error { return lim.Wait(ctx) }, nil
}

func setupPolicyLoad() (func() error, error) {
	data, _ := scalePolicies(ScaleParams{Policies: 1000, Instances: 10}, time.Date(2026, 3, 29, 12, 0, 0, 0, time.UTC))
	return func() error {
		_, err := policy.LoadBytes("policies.yaml", data)
		return err
	}, nil
}
