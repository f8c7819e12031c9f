package migrate

// RewordedChecksums is rewordedChecksums (TestRewordedMigrationsDifferInCommentsOnly).
var RewordedChecksums = rewordedChecksums
