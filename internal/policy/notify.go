package policy

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Notify is the top-level `notify:` block: where events are sent (docs/notifications.md).
type Notify struct {
	Webhooks []Webhook
	// Keep is how long an event and its deliveries stay in the notifications tables once every
	// delivery has ended; default DefaultNotifyKeep.
	Keep time.Duration
}

// Webhook is one `notify.webhooks` entry. Its URL is a secret: it is given either in the file
// (URL) or by the name of an environment variable that holds it (URLEnv), and it never appears
// in an error or a log line.
type Webhook struct {
	URL     string        // empty when URLEnv is set
	URLEnv  string        // environment variable holding the URL
	Events  []string      // subset of WebhookEvents; default all of them
	Timeout time.Duration // per request; default DefaultWebhookTimeout
	At      Location      // where the entry was written, for errors found later (ResolveURL)
}

// PolicyNotify is a policy's `notify:` block.
type PolicyNotify struct {
	Ping    string   // healthchecks-style ping URL (a secret), or empty
	PingEnv string   // environment variable holding the ping URL, or empty
	At      Location // where `ping`/`ping_env` was written
}

// Location is where a setting was written, for errors reported after loading.
type Location struct {
	File  string
	Line  int
	Field string
}

// DefaultNotifyKeep is how long ended notifications are kept when `notify.keep` is not set, and
// MinNotifyKeep the least it may be.
const (
	DefaultNotifyKeep = 90 * 24 * time.Hour
	MinNotifyKeep     = 24 * time.Hour
)

// DefaultWebhookTimeout bounds each webhook request when `timeout` is not set.
const DefaultWebhookTimeout = 10 * time.Second

// WebhookEvents are the events a webhook may subscribe to, in the order docs/notifications.md lists them.
var WebhookEvents = []string{"failed", "missed", "rpo_breach", "recovered", "copy_failed", "copy_recovered", "hook_failed", "restore_failed", "restore_recovered"}

var envNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Subscribes reports whether the webhook wants event.
func (w Webhook) Subscribes(event string) bool {
	return slices.Contains(w.Events, event)
}

// ResolveURL returns the webhook's URL: URL itself, or the value of URLEnv looked up with
// lookup (os.LookupEnv in the daemon). An unset variable or a value that is not an http(s) URL is
// an error naming the file, line and field, never the value.
func (w Webhook) ResolveURL(lookup func(string) (string, bool)) (string, error) {
	return resolveURL(w.URL, w.URLEnv, "url_env", w.At, lookup)
}

// ResolvePing returns the policy's ping URL ("" when it has none), as ResolveURL does.
func (n PolicyNotify) ResolvePing(lookup func(string) (string, bool)) (string, error) {
	return resolveURL(n.Ping, n.PingEnv, "ping_env", n.At, lookup)
}

func resolveURL(literal, env, envKey string, at Location, lookup func(string) (string, bool)) (string, error) {
	if env == "" {
		return literal, nil
	}
	fe := FieldError{File: at.File, Line: at.Line, Field: join(at.Field, envKey)}
	v, ok := lookup(env)
	if !ok || strings.TrimSpace(v) == "" {
		fe.Message = fmt.Sprintf("environment variable %s is not set", env)
		return "", fe
	}
	if msg := checkURL(strings.TrimSpace(v)); msg != "" {
		fe.Message = fmt.Sprintf("environment variable %s %s", env, msg)
		return "", fe
	}
	return strings.TrimSpace(v), nil
}

// checkURL returns why s is not a usable http(s) URL, without quoting it (it may hold a token),
// or "" when it is one.
func checkURL(s string) string {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "is not a URL (value not shown: URLs are secrets)"
	case u.Scheme != "http" && u.Scheme != "https":
		return "must be an http:// or https:// URL (value not shown: URLs are secrets)"
	case u.Host == "" || u.Hostname() == "":
		return "has no host (value not shown: URLs are secrets)"
	case u.Fragment != "":
		return "must not have a #fragment (value not shown: URLs are secrets)"
	}
	return ""
}

// RedactURL returns scheme://host of a URL, the only part of it imager logs or stores.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "(invalid URL)"
	}
	return u.Scheme + "://" + u.Host
}

// urlOrEnv decodes the `<key>` / `<key>_env` pair of a mapping: exactly one of them may be set.
type urlOrEnv struct {
	url, env val[string]
}

func (d *decoder) urlValue(p pair, field string) val[string] {
	v := d.str(p.v, field)
	if !v.set {
		return v
	}
	if msg := checkURL(v.v); msg != "" {
		d.errorf(v.at.line, field, "%s", msg)
		v.set, v.bad = false, true
	}
	return v
}

func (d *decoder) envValue(p pair, field string) val[string] {
	v := d.str(p.v, field)
	if v.set && !envNameRe.MatchString(v.v) {
		d.errorf(v.at.line, field, "%s is not an environment variable name (letters, digits and _, not starting with a digit)", quoteShort(v.v))
		v.set, v.bad = false, true
	}
	return v
}

// check reports both or neither being set; required says whether neither is an error.
func (d *decoder) check(u urlOrEnv, field string, line int, key string, required bool) bool {
	switch {
	case u.url.present() && u.env.present():
		d.errorf(u.env.at.line, join(field, key+"_env"), "set either %s or %s_env, not both", key, key)
		return false
	case required && !u.url.present() && !u.env.present():
		d.errorf(line, join(field, key), "required: set %s or %s_env", key, key)
		return false
	}
	return !u.url.bad && !u.env.bad
}

// notify decodes the top-level `notify:` block.
func (d *decoder) notify(n *yaml.Node) *Notify {
	out := &Notify{Keep: DefaultNotifyKeep}
	d.mapping(n, "notify", 1, map[string]func(pair){
		"webhooks": func(p pair) {
			l := d.resolve(p.v)
			if l == nil || isNull(l) {
				return
			}
			if l.Kind != yaml.SequenceNode {
				d.errorf(l.Line, "notify.webhooks", "expected a list of webhooks, got %s", kindName(l))
				return
			}
			for i, e := range l.Content {
				if w, ok := d.webhook(e, index("notify.webhooks", i)); ok {
					out.Webhooks = append(out.Webhooks, w)
				}
			}
		},
		"keep": func(p pair) {
			if v := d.duration(p.v, "notify.keep", MinNotifyKeep); v.set {
				out.Keep = v.v
			}
		},
	})
	return out
}

func (d *decoder) webhook(n *yaml.Node, field string) (Webhook, bool) {
	w := Webhook{Timeout: DefaultWebhookTimeout, Events: slices.Clone(WebhookEvents)}
	start := len(*d.errs)
	var u urlOrEnv
	node := d.mapping(n, field, 2, map[string]func(pair){
		"url":     func(p pair) { u.url = d.urlValue(p, join(field, "url")) },
		"url_env": func(p pair) { u.env = d.envValue(p, join(field, "url_env")) },
		"events": func(p pair) {
			f := join(field, "events")
			items, ok := d.list(p.v, f)
			if !ok {
				return
			}
			if len(items) == 0 {
				// The list is ours, not the file's: written into the format so it is never clipped.
				d.errorf(p.k.Line, f, "must list at least one of "+strings.Join(WebhookEvents, ", ")+" (leave events out for all)")
				return
			}
			var evs []string
			for i, it := range items {
				switch {
				case it.line < 0:
				case !slices.Contains(WebhookEvents, it.v):
					d.errorf(it.line, index(f, i), "unknown event %s: one of "+strings.Join(WebhookEvents, ", "), quoteShort(it.v))
				case slices.Contains(evs, it.v):
					d.errorf(it.line, index(f, i), "duplicate event %q", it.v)
				default:
					evs = append(evs, it.v)
				}
			}
			w.Events = evs
		},
		"timeout": func(p pair) {
			if v := d.duration(p.v, join(field, "timeout"), 100*time.Millisecond); v.set {
				if v.v > 5*time.Minute {
					d.errorf(v.at.line, join(field, "timeout"), "must be at most 5m, got %s", formatDuration(v.v))
					return
				}
				w.Timeout = v.v
			}
		},
	})
	if node == nil {
		return w, false
	}
	if isNull(node) {
		d.errorf(node.Line, field, "expected a webhook (a mapping with url or url_env), got nothing (null)")
		return w, false
	}
	d.check(u, field, node.Line, "url", true)
	w.URL, w.URLEnv = u.url.v, u.env.v
	w.At = Location{File: d.file, Line: node.Line, Field: field}
	if u.env.set {
		w.At.Line = u.env.at.line
	}
	return w, len(*d.errs) == start
}

// policyNotify decodes a policy's `notify:` block.
func (d *decoder) policyNotify(n *yaml.Node, field string) val[PolicyNotify] {
	var u urlOrEnv
	start := len(*d.errs)
	node := d.mapping(n, field, 2, map[string]func(pair){
		"ping":     func(p pair) { u.url = d.urlValue(p, join(field, "ping")) },
		"ping_env": func(p pair) { u.env = d.envValue(p, join(field, "ping_env")) },
	})
	if node == nil {
		return val[PolicyNotify]{bad: true, at: d.at(n)}
	}
	d.check(u, field, node.Line, "ping", false)
	out := PolicyNotify{Ping: u.url.v, PingEnv: u.env.v, At: Location{File: d.file, Line: node.Line, Field: field}}
	if u.env.set {
		out.At.Line = u.env.at.line
	}
	ok := len(*d.errs) == start
	return val[PolicyNotify]{v: out, set: ok, bad: !ok, at: d.at(node)}
}

// quoteShort quotes s for an error message, cut to about 80 characters so a huge value does not
// flood the message.
func quoteShort(s string) string {
	const most = 80
	if len(s) <= most {
		return fmt.Sprintf("%q", s)
	}
	cut := most
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:cut], len(s))
}
