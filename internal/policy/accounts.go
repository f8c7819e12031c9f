package policy

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// The `accounts:` block (docs/policies.md "Accounts") names the Tencent Cloud accounts whose
// credentials sign the policies' calls. Without it there is one, DefaultAccount: the SDK's default
// credential chain with the top-level api: block. A policy names its account in `account:`.

// Role defaults and bounds (STS AssumeRole's DurationSeconds).
const (
	DefaultRoleSessionName = "imager"
	DefaultRoleDuration    = time.Hour
	MinRoleDuration        = 15 * time.Minute
	MaxRoleDuration        = 12 * time.Hour
)

var (
	// profileRe is a tccli profile name: it names the file ~/.tccli/<profile>.credential, so no
	// path separators and no leading dot.
	profileRe = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$`)
	// roleARNRe is a CAM role ARN: qcs::cam::uin/<owner uin>:roleName/<name> (or role/<role id>).
	roleARNRe = regexp.MustCompile(`^qcs::cam::uin/[0-9]+:role(?:Name)?/[^\s/][^\s]*$`)
	// sessionNameRe is STS's RoleSessionName.
	sessionNameRe = regexp.MustCompile(`^[\w+=,.@-]{2,128}$`)
)

// Account returns the account with that name, or nil. "" (a component that serves every policy,
// or a hand-built Policy's Account) answers the only account when there is one. A Config built by
// hand without Accounts answers DefaultAccount and "" with the default account over c.API, as
// Load would have made it.
func (c *Config) Account(name string) *Account {
	for _, a := range c.Accounts {
		if a.Name == name {
			return a
		}
	}
	if name == "" && len(c.Accounts) == 1 {
		return c.Accounts[0]
	}
	if len(c.Accounts) == 0 && (name == DefaultAccount || name == "") {
		return &Account{Name: DefaultAccount, API: c.API}
	}
	return nil
}

// DefaultChain reports whether the account uses the SDK's default credential chain as it is
// (DefaultAccount): no key pair, profile or role of its own.
func (a *Account) DefaultChain() bool {
	return a.SecretIDEnv == "" && a.SecretKeyEnv == "" && a.Profile == "" && a.Role == nil
}

// Option changes how Load and LoadBytes read policies.
type Option func(*loadOptions)

type loadOptions struct {
	env func(string) string
}

// WithEnv makes the loader read environment variables (those secret_id_env and secret_key_env
// name) with env instead of os.Getenv.
func WithEnv(env func(string) string) Option {
	return func(o *loadOptions) { o.env = env }
}

func newLoadOptions(opts []Option) loadOptions {
	o := loadOptions{env: os.Getenv}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// rawAccounts is the `accounts:` block as written.
type rawAccounts struct {
	at      pos
	bad     bool // not a list, empty, or an entry is not a mapping (reported)
	entries []*rawAccount
}

// rawAccount is one `accounts:` entry as written.
type rawAccount struct {
	field   string // accounts[i]
	at      pos
	errs    int // problems found while decoding it
	name    val[string]
	idEnv   val[string]
	keyEnv  val[string]
	profile val[string]
	role    val[*Role]
	api     *rawAPI // nil when the entry has no api: block
}

// accounts decodes the top-level `accounts:` block.
func (d *decoder) accounts(n *yaml.Node, at pos) *rawAccounts {
	out := &rawAccounts{at: at}
	n = d.resolve(n)
	switch {
	case n == nil:
		out.bad = true
		return out
	case isNull(n) || (n.Kind == yaml.SequenceNode && len(n.Content) == 0):
		d.errorf(n.Line, "accounts", "lists no account: list at least one, or leave accounts out for the SDK's default credentials")
		out.bad = true
		return out
	case n.Kind != yaml.SequenceNode:
		d.errorf(n.Line, "accounts", "expected a list of accounts, got %s", kindName(n))
		out.bad = true
		return out
	}
	first := map[string]int{}
	for i, e := range n.Content {
		a := d.account(e, index("accounts", i))
		if a == nil {
			out.bad = true
			continue
		}
		if a.name.set {
			if line, dup := first[a.name.v]; dup {
				d.errorf(a.name.at.line, join(a.field, "name"), "duplicate account name %q (already defined at line %d)", a.name.v, line)
				a.errs++
			} else {
				first[a.name.v] = a.name.at.line
			}
		}
		out.entries = append(out.entries, a)
	}
	return out
}

// account decodes one `accounts:` entry and checks it has exactly one credential source.
func (d *decoder) account(n *yaml.Node, field string) *rawAccount {
	start := len(*d.errs)
	n = d.resolve(n)
	if n == nil {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, field, "expected an account (a mapping with name and secret_id_env/secret_key_env, profile or role), got %s", kindName(n))
		return nil
	}
	a := &rawAccount{field: field, at: d.at(n)}
	d.mapping(n, field, 1, map[string]func(pair){
		"name": func(p pair) {
			f := join(field, "name")
			a.name = d.str(p.v, f)
			if a.name.set && !policyNameRe.MatchString(a.name.v) {
				d.errorf(a.name.at.line, f, "%q is not an account name: 1 to 32 characters of a-z, 0-9 and -", a.name.v)
				a.name.set, a.name.bad = false, true
			}
		},
		"secret_id_env":  func(p pair) { a.idEnv = d.envValue(p, join(field, "secret_id_env")) },
		"secret_key_env": func(p pair) { a.keyEnv = d.envValue(p, join(field, "secret_key_env")) },
		"profile": func(p pair) {
			f := join(field, "profile")
			a.profile = d.str(p.v, f)
			if a.profile.set && !profileRe.MatchString(a.profile.v) {
				d.errorf(a.profile.at.line, f, "%q is not a tccli profile name (letters, digits, _, - and ., not starting with a dot: it names ~/.tccli/<profile>.credential)", a.profile.v)
				a.profile.set, a.profile.bad = false, true
			}
		},
		"role": func(p pair) { a.role = d.role(p, join(field, "role")) },
		"api":  func(p pair) { a.api = d.api(p.v, join(field, "api"), 2) },
	})
	if !a.name.present() {
		d.errorf(n.Line, join(field, "name"), "required")
	}
	d.credentialSource(a)
	a.errs = len(*d.errs) - start
	return a
}

// credentialSource checks that an account has exactly one source of credentials: the key pair
// (both of its variables), a profile, or a role.
func (d *decoder) credentialSource(a *rawAccount) {
	type source struct {
		key string
		at  pos
	}
	var sources []source
	switch {
	case a.idEnv.present() && a.keyEnv.present():
		sources = append(sources, source{"secret_id_env", a.idEnv.at})
	case a.idEnv.present():
		d.errorf(a.idEnv.at.line, join(a.field, "secret_key_env"), "required with secret_id_env: the environment variable holding the account's SecretKey")
		return
	case a.keyEnv.present():
		d.errorf(a.keyEnv.at.line, join(a.field, "secret_id_env"), "required with secret_key_env: the environment variable holding the account's SecretId")
		return
	}
	if a.profile.present() {
		sources = append(sources, source{"profile", a.profile.at})
	}
	if a.role.present() {
		sources = append(sources, source{"role", a.role.at})
	}
	switch len(sources) {
	case 0:
		at := a.at
		if a.name.present() {
			at = a.name.at
		}
		d.errorf(at.line, a.field, "no credentials: set secret_id_env and secret_key_env, profile, or role")
	case 1:
	default:
		slices.SortStableFunc(sources, func(x, y source) int { return x.at.line - y.at.line })
		names := make([]string, len(sources))
		for i, s := range sources {
			names[i] = strings.Replace(s.key, "secret_id_env", "secret_id_env/secret_key_env", 1)
		}
		d.errorf(sources[1].at.line, join(a.field, sources[1].key), "an account takes one credential source, but this one sets %s", strings.Join(names, " and "))
	}
}

// role decodes an account's `role:` block.
func (d *decoder) role(p pair, field string) val[*Role] {
	start := len(*d.errs)
	r := &Role{SessionName: DefaultRoleSessionName, Duration: DefaultRoleDuration}
	arn := false
	n := d.mapping(p.v, field, 2, map[string]func(pair){
		"role_arn": func(p pair) {
			arn = true
			f := join(field, "role_arn")
			if v := d.str(p.v, f); v.set {
				if !roleARNRe.MatchString(v.v) {
					d.errorf(v.at.line, f, "%q is not a role ARN such as qcs::cam::uin/100000000001:roleName/imager", v.v)
					return
				}
				r.ARN = v.v
			}
		},
		"session_name": func(p pair) {
			f := join(field, "session_name")
			if v := d.str(p.v, f); v.set {
				if !sessionNameRe.MatchString(v.v) {
					d.errorf(v.at.line, f, "%q is not a session name: 2 to 128 characters of letters, digits and _+=,.@-", v.v)
					return
				}
				r.SessionName = v.v
			}
		},
		"duration": func(p pair) {
			f := join(field, "duration")
			v := d.duration(p.v, f, MinRoleDuration)
			switch {
			case !v.set:
			case v.v > MaxRoleDuration:
				d.errorf(v.at.line, f, "must be at most %s (STS's limit), got %s", formatDuration(MaxRoleDuration), formatDuration(v.v))
			case v.v%time.Second != 0:
				d.errorf(v.at.line, f, "must be whole seconds, got %s", v.v)
			default:
				r.Duration = v.v
			}
		},
	})
	switch {
	case n == nil:
	case isNull(n):
		d.errorf(n.Line, field, "expected a mapping with role_arn, got nothing (null)")
	case !arn:
		d.errorf(p.k.Line, join(field, "role_arn"), "required: the ARN of the role to assume, e.g. qcs::cam::uin/100000000001:roleName/imager")
	}
	ok := n != nil && len(*d.errs) == start
	return val[*Role]{v: r, set: ok, bad: !ok, at: d.at(p.k)}
}

// accountSet is what a policy's `account:` may name.
type accountSet struct {
	names    []string        // in file order; [DefaultAccount] without an accounts: block
	explicit bool            // an accounts: block defines them
	bad      map[string]bool // defined, but invalid (reported)
	unknown  bool            // an account may be missing from names (its name or its file was unreadable)
}

// buildAccounts returns the valid accounts, each over the top-level api: block (api, written at
// apiAt; apiBad when it had problems), and what policies may name. A secret_id_env or
// secret_key_env naming an unset or empty variable is an error naming the variable, never a value.
func buildAccounts(raw *rawAccounts, api API, apiAt pos, apiBad, unreadable bool, env func(string) string, errs *[]FieldError) ([]*Account, *accountSet) {
	if raw == nil {
		set := &accountSet{names: []string{DefaultAccount}, unknown: unreadable}
		return []*Account{{Name: DefaultAccount, API: api}}, set
	}
	set := &accountSet{explicit: true, bad: map[string]bool{}, unknown: raw.bad}
	report := func(at pos, field, msg string) {
		*errs = append(*errs, FieldError{File: at.file, Line: at.line, Field: clipField(field), Message: msg})
	}
	if apiBad {
		// The top-level block's problems are reported there; checking retry classes against the
		// defaults that stand in for its bad values would only repeat them.
		report = func(pos, string, string) {}
	}
	inherited := "the other settings from imager's defaults"
	if apiAt.file != "" {
		inherited = "the other settings from the api block at " + apiAt.String()
	}
	var accounts []*Account
	for _, ra := range raw.entries {
		if !ra.name.set {
			set.unknown = true
			continue
		}
		if slices.Contains(set.names, ra.name.v) {
			continue // a duplicate (reported)
		}
		set.names = append(set.names, ra.name.v)
		start := len(*errs)
		a := &Account{Name: ra.name.v, File: ra.at.file, Line: ra.at.line, Field: ra.field,
			SecretIDEnv: ra.idEnv.v, SecretKeyEnv: ra.keyEnv.v, Profile: ra.profile.v, API: api}
		if ra.role.set {
			a.Role = ra.role.v
		}
		if ra.api != nil {
			a.API = ra.api.apply(api, inherited, report)
		}
		for _, v := range []struct {
			key string
			v   val[string]
		}{{"secret_id_env", ra.idEnv}, {"secret_key_env", ra.keyEnv}} {
			if v.v.set && strings.TrimSpace(env(v.v.v)) == "" {
				report(v.v.at, join(ra.field, v.key), fmt.Sprintf("environment variable %s is not set or empty", v.v.v))
			}
		}
		if ra.errs > 0 || len(*errs) > start {
			set.bad[a.Name] = true
			continue
		}
		accounts = append(accounts, a)
	}
	return accounts, set
}

// account resolves the policy's `account:` (default: the only account) into p.Account. It reports
// whether the policy uses an account that is invalid or may be unknown.
func (b *builder) account(rp *rawPolicy, p *Policy) (inheritedBad bool) {
	set := b.accounts
	field := join(rp.field, "account")
	switch acc := rp.account; {
	case acc.bad:
		return false // reported, and counted with the policy
	case acc.set && slices.Contains(set.names, acc.v):
		p.Account = acc.v
		return set.bad[acc.v]
	case set.unknown:
		return true
	case acc.set && set.explicit:
		b.errorf(acc.at, field, "unknown account %q: the accounts block defines %s", acc.v, strings.Join(set.names, ", "))
	case acc.set:
		b.errorf(acc.at, field, "unknown account %q: without an accounts block the only account is %q (the SDK's default credentials)", acc.v, DefaultAccount)
	case len(set.names) == 1:
		p.Account = set.names[0]
		return set.bad[p.Account]
	default:
		b.errorf(rp.nameOrStart(), field, "required: the accounts block defines %d accounts (%s); name the one whose credentials make this policy's calls", len(set.names), strings.Join(set.names, ", "))
	}
	return false
}
