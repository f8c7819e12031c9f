package policy

import (
	"encoding/base64"
	"time"

	"gopkg.in/yaml.v3"
)

// `hooks:` (docs/policies.md "Hooks") runs a command on each instance of a fire through TAT, the
// instance's automation agent, before its CreateImage (pre: e.g. freeze a filesystem) and after it
// is answered (post: e.g. thaw it). It is set in a policy only.

// Hooks is a policy's `hooks:` block.
type Hooks struct {
	// Pre runs before the instance's CreateImage; required.
	Pre HookCommand
	// Post runs once the CreateImage is answered (or the slot abandoned) on every instance whose
	// pre hook ran; nil when not set.
	Post *HookCommand
	// OnPreFailure says what a pre hook that did not succeed does to the instance's image.
	OnPreFailure HookFailure
	// User runs the commands (TAT Username); empty: the agent's default (root, or System).
	User string
	// WorkingDirectory is where the commands run; empty: the agent's default (/root for SHELL).
	WorkingDirectory string
}

// HookCommand is one command of a hooks: block (pre: or post:).
type HookCommand struct {
	Command     string
	CommandType string        // HookShell (the default) or HookPowerShell
	Timeout     time.Duration // whole seconds, 1s to MaxHookTimeout (default DefaultHookTimeout)
}

// HookFailure is the `on_pre_failure:` setting.
type HookFailure string

// The values of `on_pre_failure:`.
const (
	// HookFail records the run failed (PreHookFailed, PreHookTimeout or AgentOffline) and sends no
	// CreateImage for the instance.
	HookFail HookFailure = "fail"
	// HookContinue images the instance anyway; the hook's failure is recorded and notified.
	HookContinue HookFailure = "continue"
)

// Command types of a hook (TAT's CommandType).
const (
	HookShell      = "SHELL"
	HookPowerShell = "POWERSHELL"
)

// Hook limits (TAT's RunCommand limits).
const (
	DefaultHookTimeout = 60 * time.Second
	MaxHookTimeout     = 24 * time.Hour
	// MaxHookCommandBytes is the most bytes a command may have once base64-encoded.
	MaxHookCommandBytes = 64 * 1024
)

// hooks decodes a policy's `hooks:` block; nil when it is null or invalid (reported).
func (d *decoder) hooks(n *yaml.Node, field string) *Hooks {
	n = d.resolve(n)
	if n == nil || isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, field, "expected a mapping such as {pre: {command: \"fsfreeze --freeze /data\"}, post: {command: \"fsfreeze --unfreeze /data\"}}, got %s", kindName(n))
		return nil
	}
	start := len(*d.errs)
	h := &Hooks{OnPreFailure: HookFail}
	var pre *HookCommand
	d.mapping(n, field, 2, map[string]func(pair){
		"pre":  func(p pair) { pre = d.hookCommand(p.v, join(field, "pre")) },
		"post": func(p pair) { h.Post = d.hookCommand(p.v, join(field, "post")) },
		"on_pre_failure": func(p pair) {
			f := join(field, "on_pre_failure")
			v := d.str(p.v, f)
			switch {
			case !v.set:
			case HookFailure(v.v) == HookFail || HookFailure(v.v) == HookContinue:
				h.OnPreFailure = HookFailure(v.v)
			default:
				d.errorf(v.at.line, f, "%q is not an on_pre_failure: use fail (the default: no image for that instance) or continue (image it anyway)", v.v)
			}
		},
		"user":              func(p pair) { h.User = d.hookText(p.v, join(field, "user")) },
		"working_directory": func(p pair) { h.WorkingDirectory = d.hookText(p.v, join(field, "working_directory")) },
	})
	if pre == nil && len(*d.errs) == start {
		d.errorf(n.Line, join(field, "pre"), "required: the command run before each CreateImage (a post hook runs only where a pre hook ran)")
	}
	if len(*d.errs) > start {
		return nil
	}
	h.Pre = *pre
	return h
}

// hookCommand decodes `pre:` or `post:`: {command, command_type, timeout}.
func (d *decoder) hookCommand(n *yaml.Node, field string) *HookCommand {
	start := len(*d.errs)
	c := &HookCommand{CommandType: HookShell, Timeout: DefaultHookTimeout}
	m := d.mapping(n, field, 3, map[string]func(pair){
		"command": func(p pair) {
			f := join(field, "command")
			v := d.str(p.v, f)
			switch {
			case !v.set:
			case v.v == "":
				d.errorf(v.at.line, f, "must not be empty")
			case base64.StdEncoding.EncodedLen(len(v.v)) > MaxHookCommandBytes:
				d.errorf(v.at.line, f, "is %d bytes once base64-encoded; TAT takes at most %d", base64.StdEncoding.EncodedLen(len(v.v)), MaxHookCommandBytes)
			default:
				c.Command = v.v
			}
		},
		"command_type": func(p pair) {
			f := join(field, "command_type")
			v := d.str(p.v, f)
			switch {
			case !v.set:
			case v.v == HookShell || v.v == HookPowerShell:
				c.CommandType = v.v
			default:
				d.errorf(v.at.line, f, "%q is not a command type: use SHELL (the default) or POWERSHELL", v.v)
			}
		},
		"timeout": func(p pair) {
			f := join(field, "timeout")
			v := d.duration(p.v, f, time.Second)
			switch {
			case !v.set:
			case v.v > MaxHookTimeout || v.v%time.Second != 0:
				d.errorf(v.at.line, f, "must be a whole number of seconds from 1s to 24h, got %s", formatDuration(v.v))
			default:
				c.Timeout = v.v
			}
		},
	})
	switch {
	case m == nil:
		return nil
	case isNull(m):
		d.errorf(m.Line, field, "expected a mapping such as {command: \"fsfreeze --freeze /data\", timeout: 30s}, got null")
		return nil
	case c.Command == "" && len(*d.errs) == start:
		d.errorf(m.Line, join(field, "command"), "required: the command to run on each instance")
	}
	if len(*d.errs) > start {
		return nil
	}
	return c
}

// hookText decodes user: or working_directory:, a non-empty string.
func (d *decoder) hookText(n *yaml.Node, field string) string {
	v := d.str(n, field)
	if v.set && v.v == "" {
		d.errorf(v.at.line, field, "must not be empty (leave it out for the agent's default)")
		return ""
	}
	return v.v
}
