# The README's commands. `make bench` rewrites BENCHMARKS.md with every benchmark, the loaded-machine
# and default-retry pacing rows included (about 13 minutes; see that file).
.PHONY: test bench demo

test:
	go vet ./... && go test -race ./...

bench:
	go run ./cmd/imager-bench --only pacing,pacing-loaded,pacing-defaults,fire,one-fire,hooks,scale,history,hot --out BENCHMARKS.md

demo:
	go run ./cmd/imager demo
