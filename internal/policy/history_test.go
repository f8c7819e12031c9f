package policy

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHistoryKeep(t *testing.T) {
	t.Parallel()
	const day = 24 * time.Hour

	cfg, err := Load(filepath.Join("testdata", "good", "minimal.yaml"))
	require.NoError(t, err)
	require.Equal(t, 400*day, cfg.History.Keep, "no history block: the default")
	require.Equal(t, DefaultHistoryKeep, cfg.History.Keep)

	cfg, err = Load(filepath.Join("testdata", "history", "good.yaml"))
	require.NoError(t, err)
	require.Equal(t, 90*day, cfg.History.Keep)

	cfg, err = LoadBytes("inline.yaml", []byte("version: 1\nhistory:\npolicies:\n  - {name: web, schedule: \"@daily\", region: ap-guangzhou, instances: [ins-6pb6lrmy]}\n"))
	require.NoError(t, err)
	require.Equal(t, DefaultHistoryKeep, cfg.History.Keep, "an empty history block: the default")

	cfg, err = LoadBytes("floor.yaml", []byte("version: 1\nhistory: {keep: 720h}\npolicies:\n  - {name: web, schedule: \"@daily\", region: ap-guangzhou, instances: [ins-6pb6lrmy]}\n"))
	require.NoError(t, err)
	require.Equal(t, MinHistoryKeep, cfg.History.Keep, "the floor itself is accepted, in any unit")
}

func TestHistoryKeepBad(t *testing.T) {
	t.Parallel()
	cases := map[string]wantErr{
		"short.yaml":          {line: 3, field: "history.keep", msg: "must be at least 30d, got 7d"},
		"zero.yaml":           {line: 3, field: "history.keep", msg: "must be at least 30d, got 0"},
		"negative.yaml":       {line: 3, field: "history.keep", msg: "must be at least 30d, got -400d"},
		"not-a-duration.yaml": {line: 3, field: "history.keep", msg: `invalid duration "a year"`},
		"unknown-key.yaml":    {line: 3, field: "history.keeps", msg: `unknown key "keeps" (did you mean "keep"?)`},
		"not-a-mapping.yaml":  {line: 2, field: "history", msg: `expected a mapping, got the string "400d"`},
		"twice":               {file: "b.yaml", line: 2, field: "history", msg: "the history block may appear in one file only; it is already in testdata/history/twice/a.yaml:2"},
	}
	// Every case under testdata/history is checked here, so a new file cannot go unchecked.
	entries, err := os.ReadDir(filepath.Join("testdata", "history"))
	require.NoError(t, err)
	for _, e := range entries {
		if e.Name() != "good.yaml" {
			require.Contains(t, cases, e.Name(), "testdata/history/%s has no expectation", e.Name())
		}
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join("testdata", "history", name)
			_, err := Load(path)
			var verr *ValidationError
			require.ErrorAs(t, err, &verr)
			require.Len(t, verr.Errors, 1, "reported:\n%s", verr)
			file := path
			if want.file != "" {
				file = filepath.Join(path, want.file)
			}
			fe := verr.Errors[0]
			require.Equal(t, file, fe.File)
			require.Equal(t, want.line, fe.Line)
			require.Equal(t, want.field, fe.Field)
			require.Contains(t, fe.Message, want.msg)
			require.Contains(t, fe.Error(), file+":"+strconv.Itoa(want.line)+": "+want.field+": ", "the message names file, line and field")
		})
	}
}
