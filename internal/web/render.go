package web

import (
	"bufio"
	"embed"
	"html/template"
	"io"
	"strings"
)

//go:embed assets/page.html assets/style.css
var assets embed.FS

// pageTmpl is the page; the stylesheet is inlined so the page is one request.
var pageTmpl = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"css": func() template.CSS { return styleCSS },
}).ParseFS(assets, "assets/page.html"))

var styleCSS = func() template.CSS {
	b, err := assets.ReadFile("assets/style.css")
	if err != nil {
		panic(err)
	}
	return template.CSS(strings.TrimSpace(string(b)))
}()

func render(w io.Writer, p *page) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	if err := pageTmpl.Execute(bw, p); err != nil {
		return err
	}
	return bw.Flush()
}
