# The README's commands. `make bench` rewrites BENCHMARKS.md (under 10 minutes; see that file).
.PHONY: test bench demo

test:
	go vet ./... && go test -race ./...

bench:
	go run ./cmd/imager bench --out BENCHMARKS.md

demo:
	go run ./cmd/imager demo
