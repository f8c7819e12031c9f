package main

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
)

// TestReadmeCarriesAuditQueries keeps the README's audit cookbook and the queries the demo runs
// identical, so the documented SQL is always SQL that runs against the shipped schema.
func TestReadmeCarriesAuditQueries(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	for _, q := range history.Cookbook {
		require.Truef(t, strings.Contains(string(readme), q.SQL), "README.md lacks the audit query %q:\n%s", q.Title, q.SQL)
	}
}
