package history

// Internals the external tests (package history_test) reach through these names.

// SpoolFileName is the spool file inside a Recorder's spool directory.
const SpoolFileName = spoolFileName

// SetAfterReplay makes the replay loop of r call f after each replay. Call it before Start.
func SetAfterReplay(r *Recorder, f func(n int, err error)) {
	r.afterReplay = f
}

// SetHistoryPruneBatch sets how many rows one transaction of HistoryPrune deletes, and puts the
// default back when the test ends. Tests that call it must not run in parallel with other
// HistoryPrune tests.
func SetHistoryPruneBatch(t interface{ Cleanup(func()) }, n int) {
	old := historyPruneBatch
	historyPruneBatch = n
	t.Cleanup(func() { historyPruneBatch = old })
}
