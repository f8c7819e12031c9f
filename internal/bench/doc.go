// Package bench is imager's benchmark suite. It measures, on one machine, against the built-in CVM
// simulator and throwaway PostgreSQL databases:
//
//   - pacing: N CreateImage calls queued at once against a simulator enforcing L calls per sliding
//     second, through imager and through a naive client on the same SDK;
//   - fire latency: many policies due in the same minute, from the slot to each first call;
//   - scale: a daemon with 1,000 policies × 10 instances (validate, start-up, memory, idle CPU);
//   - history: the daemon's write path and docs/audit.md's audit queries over 1,000,000 runs;
//   - hot pieces: name generation, the pace limiter and policy loading as Go benchmarks.
//
// Run executes the chosen benchmarks several times and returns a Report; Report.Markdown renders
// BENCHMARKS.md. The imager-bench command (cmd/imager-bench, `make bench`) drives it; the imager
// binary links neither this package nor the testing package it uses. Benchmarks measure; the
// package's tests run each benchmark once at a tiny size and check only that the results are
// well-formed.
package bench
