package policy

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNotifyGood(t *testing.T) {
	t.Parallel()
	path := filepath.Join("testdata", "notify", "good.yaml")
	cfg, err := Load(path)
	require.NoError(t, err)
	require.Equal(t, []Webhook{
		{URLEnv: "IMAGER_WEBHOOK_URL", Events: []string{"failed", "missed", "rpo_breach", "recovered", "copy_failed", "copy_recovered", "hook_failed", "restore_failed", "restore_recovered"},
			Timeout: 10 * time.Second, At: Location{File: path, Line: 4, Field: "notify.webhooks[0]"}},
		{URL: "https://hooks.example.com/services/T000/B000/XXXXSECRET", Events: []string{"failed", "recovered"},
			Timeout: 3 * time.Second, At: Location{File: path, Line: 5, Field: "notify.webhooks[1]"}},
	}, cfg.Notify.Webhooks)
	require.True(t, cfg.Notify.Webhooks[1].Subscribes("failed"))
	require.False(t, cfg.Notify.Webhooks[1].Subscribes("missed"))
	require.Equal(t, 30*24*time.Hour, cfg.Notify.Keep)

	web := cfg.Policy("web-nightly")
	require.Equal(t, "https://hc-ping.com/0f6a1c7e-5b7d-4a4e-9f60-6b1f3c1d2e3f", web.Notify.Ping)
	db := cfg.Policy("db-nightly")
	require.Equal(t, PolicyNotify{PingEnv: "DB_PING_URL", At: Location{File: path, Line: 21, Field: "policies[1].notify"}}, db.Notify)
	require.Equal(t, PolicyNotify{}, cfg.Policy("quiet").Notify)

	// Environment variables are looked up by the caller, and their values checked like url:.
	env := map[string]string{"IMAGER_WEBHOOK_URL": "https://hooks.example.com/T/SECRET", "DB_PING_URL": "hc-ping.com/SECRET"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	u, err := cfg.Notify.Webhooks[0].ResolveURL(lookup)
	require.NoError(t, err)
	require.Equal(t, "https://hooks.example.com/T/SECRET", u)
	u, err = cfg.Notify.Webhooks[1].ResolveURL(lookup)
	require.NoError(t, err)
	require.Equal(t, cfg.Notify.Webhooks[1].URL, u)
	_, err = db.Notify.ResolvePing(lookup)
	require.EqualError(t, err, path+":21: policies[1].notify.ping_env: environment variable DB_PING_URL must be an http:// or https:// URL (value not shown: URLs are secrets)")
	delete(env, "IMAGER_WEBHOOK_URL")
	_, err = cfg.Notify.Webhooks[0].ResolveURL(lookup)
	require.EqualError(t, err, path+":4: notify.webhooks[0].url_env: environment variable IMAGER_WEBHOOK_URL is not set")
	u, err = cfg.Policy("quiet").Notify.ResolvePing(lookup)
	require.NoError(t, err)
	require.Empty(t, u)

	require.Equal(t, "https://hooks.example.com", RedactURL(cfg.Notify.Webhooks[1].URL))
	require.Equal(t, "(invalid URL)", RedactURL("hooks.example.com/secret"))
}

func TestNotifyBad(t *testing.T) {
	t.Parallel()
	cases := map[string][]wantErr{
		"bad-url.yaml": {
			{line: 4, field: "notify.webhooks[0].url", msg: "must be an http:// or https:// URL"},
			{line: 5, field: "notify.webhooks[1].url", msg: "has no host"},
			{line: 6, field: "notify.webhooks[2].url", msg: "is not a URL"},
			{line: 13, field: "policies[0].notify.ping", msg: "must be an http:// or https:// URL"},
		},
		"unknown-event.yaml": {
			{line: 5, field: "notify.webhooks[0].events[1]", msg: `unknown event "exploded": one of failed, missed, rpo_breach, recovered, copy_failed, copy_recovered, hook_failed, restore_failed, restore_recovered`},
			{line: 5, field: "notify.webhooks[0].events[2]", msg: `duplicate event "failed"`},
			{line: 7, field: "notify.webhooks[1].events", msg: "must list at least one"},
			{line: 8, field: "notify.webhooks[2].url_env", msg: `"2HOOK" is not an environment variable name`},
			{line: 9, field: "notify.webhooks[2].timeout", msg: "must be at least 100ms"},
			{line: 11, field: "notify.webhooks[3].timeout", msg: "must be at most 5m"},
			{line: 13, field: "notify.webhooks[4].retries", msg: `unknown key "retries"`},
			{line: 14, field: "notify.keep", msg: "must be at least 1d"},
		},
		"both.yaml": {
			{line: 5, field: "notify.webhooks[0].url_env", msg: "set either url or url_env, not both"},
			{line: 6, field: "notify.webhooks[1].url", msg: "required: set url or url_env"},
			{line: 7, field: "notify.webhooks[2]", msg: "expected a webhook"},
			{line: 15, field: "policies[0].notify.ping_env", msg: "set either ping or ping_env, not both"},
			{line: 20, field: "policies[1].notify", msg: "expected a mapping, got a list"},
		},
		"twice": {
			{file: "b.yaml", line: 2, field: "notify", msg: "the notify block may appear in one file only; it is already in testdata/notify/twice/a.yaml:2"},
		},
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join("testdata", "notify", name)
			_, err := Load(path)
			var verr *ValidationError
			require.ErrorAs(t, err, &verr)
			type key struct {
				file  string
				line  int
				field string
			}
			var got, exp []key
			for _, fe := range verr.Errors {
				got = append(got, key{fe.File, fe.Line, fe.Field})
				require.NotContains(t, fe.Error(), "SECRETTOKEN", "a URL is a secret: never in an error")
			}
			for _, w := range want {
				file := path
				if w.file != "" {
					file = filepath.Join(path, w.file)
				}
				exp = append(exp, key{file, w.line, w.field})
			}
			require.ElementsMatch(t, exp, got, "reported:\n%s", verr)
			for _, w := range want {
				found := false
				for _, fe := range verr.Errors {
					if fe.Line == w.line && fe.Field == w.field && strings.Contains(fe.Message, w.msg) {
						found = true
					}
				}
				require.True(t, found, "no %d %s %q in:\n%s", w.line, w.field, w.msg, verr)
			}
		})
	}
}

func TestQuoteShort(t *testing.T) {
	t.Parallel()
	require.Equal(t, `"abc"`, quoteShort("abc"))
	long := strings.Repeat("é", 100)
	q := quoteShort(long)
	require.Less(t, len(q), 120)
	require.Contains(t, q, "(200 bytes)")
}
