package notify

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/imager-dev/imager/internal/policy"
)

// redactError describes a failed request without its URL: net/http puts the whole URL in its
// errors ("Post \"https://host/secret\": ..."), and a URL is a secret. What remains names the host
// at most.
func redactError(err error, rawURL string) string {
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		msg = ue.Err.Error()
	}
	host := policy.RedactURL(rawURL)
	msg = strings.ReplaceAll(msg, rawURL, host)
	if u, perr := url.Parse(rawURL); perr == nil {
		if p := u.EscapedPath(); len(p) > 1 {
			msg = strings.ReplaceAll(msg, p, "/…")
		}
		if u.RawQuery != "" {
			msg = strings.ReplaceAll(msg, u.RawQuery, "…")
		}
		if u.User != nil {
			msg = strings.ReplaceAll(msg, u.User.String(), "…")
		}
	}
	return msg
}

// drain reads a little of the body so the connection can be reused; the answer's content is
// not used.
func drain(resp *http.Response) (int64, error) {
	return io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
}
