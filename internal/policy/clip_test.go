package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A huge value is quoted by its first characters and its size, never echoed whole.
func TestValidationErrorsClipLongValues(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("x", 10<<20)
	for name, doc := range map[string]string{
		"name":     "version: 1\npolicies:\n  - {name: " + huge + ", schedule: '@daily', region: ap-guangzhou, instances: [ins-00000000]}\n",
		"schedule": "version: 1\npolicies:\n  - {name: a, schedule: '" + huge + "', region: ap-guangzhou, instances: [ins-00000000]}\n",
		"timezone": "version: 1\npolicies:\n  - {name: a, schedule: '@daily', timezone: " + huge + ", region: ap-guangzhou, instances: [ins-00000000]}\n",
		"region":   "version: 1\npolicies:\n  - {name: a, schedule: '@daily', region: " + huge + ", instances: [ins-00000000]}\n",
		"key":      "version: 1\npolicies:\n  - name: a\n    schedule: '@daily'\n    region: ap-guangzhou\n    instances: [ins-00000000]\n    ? " + huge + "\n    : 1\n", // an explicit key: implicit ones stop at 1024
	} {
		_, err := LoadBytes("p.yaml", []byte(doc))
		var verr *ValidationError
		require.True(t, errors.As(err, &verr), "%s: %v", name, err)
		for _, fe := range verr.Errors {
			require.Less(t, len(fe.Error()), 400, "%s: %.400s", name, fe.Error())
		}
		require.Contains(t, err.Error(), "[10485760 bytes]", name)
	}
}

func TestClip(t *testing.T) {
	t.Parallel()
	require.Equal(t, "short", clip("short"))
	exact := strings.Repeat("a", maxQuoted)
	require.Equal(t, exact, clip(exact))
	long := strings.Repeat("é", 100) // two bytes each: the cut stays on a rune boundary
	c := clip(long)
	require.True(t, strings.HasSuffix(c, "…[200 bytes]"), c)
	require.LessOrEqual(t, len([]rune(c)), maxQuoted)
	require.NotContains(t, c, "\uFFFD")
}
