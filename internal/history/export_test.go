package history

// Internals the external tests (package history_test) reach through these names.

// SpoolFileName is the spool file inside a Recorder's spool directory.
const SpoolFileName = spoolFileName

// SetAfterReplay makes the replay loop of r call f after each replay. Call it before Start.
func SetAfterReplay(r *Recorder, f func(n int, err error)) {
	r.afterReplay = f
}
