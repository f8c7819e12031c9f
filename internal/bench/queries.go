package bench

import (
	"bufio"
	"bytes"
	"strings"
)

// CookbookQueries returns the queries of a document's "### Audit cookbook" section (docs/audit.md): every ```sql
// block, titled by the line before it (its trailing colon removed). The section ends at the next
// heading.
func CookbookQueries(doc []byte) []Query {
	var out []Query
	sc := bufio.NewScanner(bytes.NewReader(doc))
	in, inSQL := false, false
	var title string
	var sql []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case inSQL && strings.HasPrefix(line, "```"):
			out = append(out, Query{Title: title, SQL: strings.Join(sql, "\n"), Source: "docs"})
			inSQL, sql = false, nil
		case inSQL:
			sql = append(sql, line)
		case strings.HasPrefix(line, "#"):
			in = strings.TrimSpace(line) == "### Audit cookbook"
		case in && strings.HasPrefix(line, "```sql"):
			inSQL = true
		case in && strings.TrimSpace(line) != "":
			title = strings.TrimSuffix(strings.TrimSpace(line), ":")
		}
	}
	return out
}

// mergeQueries returns the audit queries followed by the cookbook queries whose text is not one
// of them.
func mergeQueries(audit, cookbook []Query) []Query {
	out := append([]Query(nil), audit...)
	for _, q := range cookbook {
		dup := false
		for _, a := range audit {
			if strings.TrimSpace(a.SQL) == strings.TrimSpace(q.SQL) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, q)
		}
	}
	return out
}
