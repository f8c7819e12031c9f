package policy

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const hooksHead = "version: 1\npolicies:\n  - name: db-nightly\n    schedule: \"0 3 * * *\"\n    region: ap-guangzhou\n    instances: [ins-6pb6lrmy]\n"

func TestHooks(t *testing.T) {
	t.Parallel()
	cfg, err := LoadBytes("hooks.yaml", []byte(hooksHead+`    hooks:
      pre:  {command: "fsfreeze --freeze /data", timeout: 30s}
      post: {command: "Resume-App", command_type: POWERSHELL}
      on_pre_failure: continue
      user: root
      working_directory: /data
  - name: plain
    schedule: "0 4 * * *"
    region: ap-guangzhou
    instances: [ins-6pb6lrmy]
  - name: pre-only
    schedule: "0 5 * * *"
    region: ap-guangzhou
    instances: [ins-6pb6lrmy]
    hooks: {pre: {command: sync}}
`))
	require.NoError(t, err)
	require.Equal(t, &Hooks{
		Pre:          HookCommand{Command: "fsfreeze --freeze /data", CommandType: HookShell, Timeout: 30 * time.Second},
		Post:         &HookCommand{Command: "Resume-App", CommandType: HookPowerShell, Timeout: DefaultHookTimeout},
		OnPreFailure: HookContinue, User: "root", WorkingDirectory: "/data",
	}, cfg.Policy("db-nightly").Hooks)
	require.Nil(t, cfg.Policy("plain").Hooks)
	require.Equal(t, &Hooks{Pre: HookCommand{Command: "sync", CommandType: HookShell, Timeout: DefaultHookTimeout}, OnPreFailure: HookFail},
		cfg.Policy("pre-only").Hooks)
}

func TestHooksErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, hooks string
		line        int
		field, msg  string
	}{
		{"no pre", `{post: {command: x}}`, 7, "policies[0].hooks.pre", "required"},
		{"no command", "\n      pre: {timeout: 30s}", 8, "policies[0].hooks.pre.command", "required"},
		{"empty command", "\n      pre: {command: \"\"}", 8, "policies[0].hooks.pre.command", "must not be empty"},
		{"bad type", "\n      pre: {command: x, command_type: BAT}", 8, "policies[0].hooks.pre.command_type", `"BAT" is not a command type`},
		{"fractional timeout", "\n      pre: {command: x, timeout: 1500ms}", 8, "policies[0].hooks.pre.timeout", "whole number of seconds"},
		{"long timeout", "\n      pre: {command: x}\n      post: {command: y, timeout: 2d}", 9, "policies[0].hooks.post.timeout", "from 1s to 24h"},
		{"short timeout", "\n      pre: {command: x, timeout: 0s}", 8, "policies[0].hooks.pre.timeout", "at least 1s"},
		{"bad mode", "\n      pre: {command: x}\n      on_pre_failure: ignore", 9, "policies[0].hooks.on_pre_failure", `"ignore" is not an on_pre_failure`},
		{"unknown key", "\n      pre: {command: x}\n      retries: 3", 9, "policies[0].hooks.retries", `unknown key "retries"`},
		{"empty user", "\n      pre: {command: x}\n      user: \"\"", 9, "policies[0].hooks.user", "must not be empty"},
		{"not a mapping", `[x]`, 7, "policies[0].hooks", "expected a mapping"},
		{"null pre", "\n      pre:", 8, "policies[0].hooks.pre", "got null"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := LoadBytes("hooks.yaml", []byte(hooksHead+"    hooks: "+tc.hooks+"\n"))
			var ve *ValidationError
			require.True(t, errors.As(err, &ve), "%v", err)
			require.Len(t, ve.Errors, 1, "%v", err)
			fe := ve.Errors[0]
			require.Equal(t, "hooks.yaml", fe.File)
			require.Equal(t, tc.line, fe.Line, "%v", fe)
			require.Equal(t, tc.field, fe.Field)
			require.Contains(t, fe.Message, tc.msg)
		})
	}
}
