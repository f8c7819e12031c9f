package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// docFiles are the README and every page of docs/, relative to this package.
func docFiles(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob("../../docs/*.md")
	require.NoError(t, err)
	require.NotEmpty(t, pages)
	return append([]string{"../../README.md"}, pages...)
}

func readDoc(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

// TestDocsCarryCookbookQueries keeps docs/audit.md's audit cookbook and the queries the demo prints
// identical, so the documented SQL is the SQL imager runs (TestDocsSQLRuns runs every block).
func TestDocsCarryCookbookQueries(t *testing.T) {
	t.Parallel()
	audit := readDoc(t, "../../docs/audit.md")
	cookbook := section(audit, "### Audit cookbook")
	require.NotEmpty(t, cookbook, "docs/audit.md has an \"### Audit cookbook\" section")
	for _, q := range history.Cookbook {
		require.Truef(t, strings.Contains(cookbook, "```sql\n"+q.SQL+"\n```"),
			"docs/audit.md's audit cookbook lacks the query %q:\n%s", q.Title, q.SQL)
	}
}

// section returns the lines of md from the heading line equal to heading up to the next heading
// of any level, outside fenced code.
func section(md, heading string) string {
	var b strings.Builder
	in, fenced := false, false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
		}
		if !fenced && strings.HasPrefix(line, "#") {
			in = strings.TrimSpace(line) == heading
			continue
		}
		if in {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// TestReadmeQuickStartIsTheMakefile: the README's two quick-start commands are the Makefile's demo
// and test recipes (.ci/run runs the same test command), so a newcomer runs what CI runs.
func TestReadmeQuickStartIsTheMakefile(t *testing.T) {
	t.Parallel()
	readme := readDoc(t, "../../README.md")
	recipes := map[string]string{}
	target := ""
	for _, line := range strings.Split(readDoc(t, "../../Makefile"), "\n") {
		switch {
		case strings.HasPrefix(line, "\t") && target != "":
			recipes[target] = strings.TrimSpace(line)
		case strings.HasSuffix(line, ":") && !strings.HasPrefix(line, "#"):
			target = strings.TrimSuffix(line, ":")
		default:
			target = ""
		}
	}
	quick := section(readme, "## Quick start")
	for _, name := range []string{"demo", "test"} {
		require.NotEmptyf(t, recipes[name], "Makefile has a %s target", name)
		require.Regexpf(t, "(?m)^"+regexp.QuoteMeta(recipes[name])+" +#", quick,
			"README's quick start runs `make %s`'s command %q", name, recipes[name])
	}
}

// TestDocLinksResolve: every relative link of README.md and docs/*.md points to a file that exists
// and, with a #fragment, to a heading of that file (GitHub's anchors).
func TestDocLinksResolve(t *testing.T) {
	t.Parallel()
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	checked := 0
	for _, file := range docFiles(t) {
		for _, ln := range proseLines(readDoc(t, file)) {
			for _, m := range link.FindAllStringSubmatch(ln.text, -1) {
				target := m[1]
				if regexp.MustCompile(`^[a-z]+:`).MatchString(target) {
					continue // https:, mailto:
				}
				where := fmt.Sprintf("%s:%d: link %q", strings.TrimPrefix(file, "../../"), ln.n, target)
				path, frag, _ := strings.Cut(target, "#")
				dest := file
				if path != "" {
					dest = filepath.Join(filepath.Dir(file), path)
					_, err := os.Stat(dest)
					require.NoErrorf(t, err, "%s: no such file", where)
				}
				if frag != "" {
					require.Truef(t, strings.HasSuffix(dest, ".md"), "%s: an anchor into a file that is not markdown", where)
					require.Containsf(t, anchors(readDoc(t, dest)), frag, "%s: no such heading in %s", where, dest)
				}
				checked++
			}
		}
	}
	require.Greater(t, checked, 20, "the docs' links were found")
}

type numberedLine struct {
	n    int
	text string
}

// outsideFences returns md's lines outside fenced code blocks, numbered from 1.
func outsideFences(md string) []numberedLine {
	var out []numberedLine
	fenced := false
	sc := bufio.NewScanner(bytes.NewReader([]byte(md)))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			out = append(out, numberedLine{n, line})
		}
	}
	return out
}

// proseLines returns md's lines outside fenced code, with inline code spans removed.
func proseLines(md string) []numberedLine {
	code := regexp.MustCompile("`[^`]*`")
	out := outsideFences(md)
	for i := range out {
		out[i].text = code.ReplaceAllString(out[i].text, "")
	}
	return out
}

// anchors returns the GitHub anchors of md's headings: lower case, punctuation (backticks too)
// dropped, spaces as hyphens, a repeated anchor numbered -1, -2, ...
func anchors(md string) []string {
	punct := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	seen := map[string]int{}
	var out []string
	for _, ln := range outsideFences(md) {
		heading := strings.TrimLeft(ln.text, "#")
		if !strings.HasPrefix(ln.text, "#") || !strings.HasPrefix(heading, " ") {
			continue
		}
		a := strings.ReplaceAll(punct.ReplaceAllString(strings.ToLower(strings.TrimSpace(heading)), ""), " ", "-")
		if k := seen[a]; k > 0 {
			out = append(out, fmt.Sprintf("%s-%d", a, k))
		} else {
			out = append(out, a)
		}
		seen[a]++
	}
	return out
}

// TestAnchorsAreGitHubs pins the anchor rules the link test relies on.
func TestAnchorsAreGitHubs(t *testing.T) {
	t.Parallel()
	md := "# imager\n## Scheduling, pacing and retries\n```\n# not a heading\n```\n### `imager once` beside a daemon\n## Notes\n## Notes\n#nospace\n"
	require.Equal(t, []string{"imager", "scheduling-pacing-and-retries", "imager-once-beside-a-daemon", "notes", "notes-1"}, anchors(md))
}

// TestDocCLINamesEveryFlag: docs/cli.md has a section "### imager <command>" for every command of
// the binary, and that section names each of the command's flags as `--flag`.
func TestDocCLINamesEveryFlag(t *testing.T) {
	t.Parallel()
	cli := readDoc(t, "../../docs/cli.md")
	flagLine := regexp.MustCompile(`^  -([a-z][a-z-]*)`)
	for _, c := range commands() {
		doc := section(cli, "### imager "+c.name)
		require.NotEmptyf(t, doc, "docs/cli.md has no section \"### imager %s\"", c.name)
		var stdout, stderr bytes.Buffer
		require.Equal(t, exitOK, dispatch(context.Background(), []string{c.name, "--help"}, &stdout, &stderr), stderr.String())
		for _, line := range strings.Split(stdout.String(), "\n") {
			if m := flagLine.FindStringSubmatch(line); m != nil {
				require.Containsf(t, doc, "`--"+m[1], "docs/cli.md, \"### imager %s\", does not name --%s", c.name, m[1])
			}
		}
	}
}

// TestDocPolicyFilesValidate: every complete policy file shown in the docs (a ```yaml block that
// starts with "version: 1" after its comments) loads and validates as imager loads it.
func TestDocPolicyFilesValidate(t *testing.T) {
	t.Parallel()
	block := regexp.MustCompile("(?s)```yaml\n(.*?)```")
	found := 0
	for _, file := range docFiles(t) {
		for _, b := range block.FindAllStringSubmatch(readDoc(t, file), -1) {
			body := strings.TrimLeft(regexp.MustCompile(`(?m)^#.*\n`).ReplaceAllString(b[1], ""), "\n")
			if !strings.HasPrefix(body, "version: 1\n") {
				continue // a fragment (notify:, a web config)
			}
			_, err := policy.LoadBytes(file, []byte(b[1]))
			require.NoErrorf(t, err, "%s: a policy file of the docs does not validate:\n%s", file, b[1])
			found++
		}
	}
	require.GreaterOrEqual(t, found, 2, "the README's minimal policy and docs/policies.md's file are checked")
}
