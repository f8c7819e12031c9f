package bench

import "testing"

// The hot pieces as Go benchmarks: go test -run '^$' -bench . -count 10 ./internal/bench | benchstat -

func BenchmarkImageName(b *testing.B)         { hotPiece(b, "ImageName").Bench(b) }
func BenchmarkPaceWait(b *testing.B)          { hotPiece(b, "PaceWait").Bench(b) }
func BenchmarkPolicyLoad1000x10(b *testing.B) { hotPiece(b, "PolicyLoad1000x10").Bench(b) }

func hotPiece(b *testing.B, name string) HotPiece {
	for _, p := range HotPieces() {
		if p.Name == name {
			return p
		}
	}
	b.Fatalf("no hot piece %s", name)
	return HotPiece{}
}
