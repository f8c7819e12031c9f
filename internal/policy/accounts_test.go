package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// envOf is an environment for WithEnv: the variables in m, every other one unset.
func envOf(m map[string]string) Option {
	return WithEnv(func(name string) string { return m[name] })
}

// requireErrors loads path and checks it reports exactly want (file, line, field), each message
// containing its piece, each printed as file:line: field: message.
func requireErrors(t *testing.T, path string, want []wantErr, opts ...Option) *Config {
	t.Helper()
	cfg, err := Load(path, opts...)
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
		idx := slices.IndexFunc(verr.Errors, func(fe FieldError) bool {
			return fe.Line == w.line && fe.Field == w.field && (w.file == "" || filepath.Base(fe.File) == w.file)
		})
		fe := verr.Errors[idx]
		require.Contains(t, fe.Message, w.msg)
		require.Equal(t, fmt.Sprintf("%s:%d: %s: %s", fe.File, fe.Line, fe.Field, fe.Message), fe.Error())
	}
	return cfg
}

func TestAccounts(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/accounts/good.yaml", envOf(map[string]string{"PROD_SECRET_ID": "AKIDprod", "PROD_SECRET_KEY": "prodkey"}))
	require.NoError(t, err)

	top := DefaultAPI()
	top.CreateImageRate, top.Workers = 8, 6
	top.Retry.Throttled = Backoff{Initial: 2 * time.Second, Max: 20 * time.Second, Attempts: 5}
	require.Equal(t, top, cfg.API)

	// The account's api: is written key by key over the top-level block.
	prodAPI := top
	prodAPI.CreateImageRate = 10
	prodAPI.Retry.Throttled.Attempts = 3
	prodAPI.Retry.Duplicate = 5
	file := "testdata/accounts/good.yaml"
	require.Equal(t, []*Account{
		{Name: "prod", File: file, Line: 8, Field: "accounts[0]", SecretIDEnv: "PROD_SECRET_ID", SecretKeyEnv: "PROD_SECRET_KEY", API: prodAPI},
		{Name: "staging", File: file, Line: 16, Field: "accounts[1]", Profile: "staging", API: top},
		{Name: "audit", File: file, Line: 18, Field: "accounts[2]", API: top,
			Role: &Role{ARN: "qcs::cam::uin/100000000001:roleName/imager-audit", SessionName: "imager", Duration: time.Hour}},
		{Name: "partner", File: file, Line: 20, Field: "accounts[3]", API: top,
			Role: &Role{ARN: "qcs::cam::uin/100000000002:role/4611686018427397919", SessionName: "imager.partner@example", Duration: 12 * time.Hour}},
	}, cfg.Accounts)

	require.Same(t, cfg.Accounts[2], cfg.Account("audit"))
	require.Nil(t, cfg.Account("nope"))
	require.Nil(t, cfg.Account(DefaultAccount), "with an accounts block there is no default account")
	require.Nil(t, cfg.Account(""))
	require.Equal(t, "prod", cfg.Policy("web").Account)
	require.Equal(t, "partner", cfg.Policy("db").Account)
	for _, a := range cfg.Accounts {
		require.False(t, a.DefaultChain(), a.Name)
	}
}

// TestAccountsDefault: without an accounts block there is one account, the SDK's default chain
// with the top-level api: block, and every policy uses it.
func TestAccountsDefault(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/good/full.yaml")
	require.NoError(t, err)
	require.Equal(t, []*Account{{Name: DefaultAccount, API: cfg.API}}, cfg.Accounts)
	require.True(t, cfg.Accounts[0].DefaultChain())
	require.Same(t, cfg.Accounts[0], cfg.Account(DefaultAccount))
	require.Nil(t, cfg.Account("prod"))
	for _, p := range cfg.Policies {
		require.Equal(t, DefaultAccount, p.Account, p.Name)
	}

	// A Config built by hand has the default account too.
	hand := &Config{API: API{Workers: 3}}
	require.Equal(t, &Account{Name: DefaultAccount, API: API{Workers: 3}}, hand.Account(DefaultAccount))
	require.Equal(t, hand.Account(DefaultAccount), hand.Account(""), "a hand-built policy's empty Account")
	require.Nil(t, hand.Account("prod"))

	// One account in the block: policies need not name it.
	cfg, err = LoadBytes("one.yaml", []byte("version: 1\naccounts: [{name: prod, profile: prod}]\npolicies:\n  - {name: web, schedule: \"@daily\", region: ap-guangzhou, instances: [ins-6pb6lrmy]}\n"))
	require.NoError(t, err)
	require.Equal(t, "prod", cfg.Policy("web").Account)
	require.Equal(t, DefaultAPI(), cfg.Account("prod").API, "no api blocks: the built-in defaults")
	require.Same(t, cfg.Account("prod"), cfg.Account(""), "a component serving every policy uses the only account")
}

func TestAccountsBad(t *testing.T) {
	t.Parallel()
	// Every variable the files name is set, so only the problem under test is reported.
	env := envOf(map[string]string{"HALF_ID": "x", "HALF_KEY": "x", "PAIR_ID": "x", "PAIR_KEY": "x", "SET_ID": "AKIDsecretvalue", "SET_KEY": "keysecretvalue", "BLANK_KEY": " \t"})
	cases := map[string][]wantErr{
		"sources.yaml": {
			{line: 3, field: "accounts[0]", msg: "no credentials: set secret_id_env and secret_key_env, profile, or role"},
			{line: 6, field: "accounts[1].role", msg: "an account takes one credential source, but this one sets profile and role"},
			{line: 8, field: "accounts[2].secret_key_env", msg: "required with secret_id_env"},
			{line: 10, field: "accounts[3].secret_id_env", msg: "required with secret_key_env"},
			{line: 14, field: "accounts[4].profile", msg: "but this one sets secret_id_env/secret_key_env and profile"},
			{line: 15, field: "accounts[5].name", msg: "required"},
			{line: 16, field: "accounts[6].name", msg: `"Bad_Name" is not an account name: 1 to 32 characters of a-z, 0-9 and -`},
			{line: 20, field: "accounts[8].name", msg: `duplicate account name "dup" (already defined at line 18)`},
			{line: 23, field: "accounts[9].secret_id_env", msg: `"1ID" is not an environment variable name`},
			{line: 24, field: "accounts[9].secret_key_env", msg: `"KEY-X" is not an environment variable name`},
			{line: 26, field: "accounts[10].profile", msg: `"../etc/passwd" is not a tccli profile name`},
			{line: 27, field: "accounts[11]", msg: "no credentials"},
			{line: 28, field: "accounts[11].profil", msg: `unknown key "profil" (did you mean "profile"?)`},
			{line: 29, field: "accounts[12]", msg: `expected an account (a mapping with name and secret_id_env/secret_key_env, profile or role), got the string "just-a-string"`},
		},
		"role.yaml": {
			{line: 4, field: "accounts[0].role.role_arn", msg: "required: the ARN of the role to assume"},
			{line: 6, field: "accounts[1].role.role_arn", msg: `"arn:aws:iam::123456789012:role/imager" is not a role ARN such as qcs::cam::uin/100000000001:roleName/imager`},
			{line: 8, field: "accounts[2].role.session_name", msg: `"a b" is not a session name: 2 to 128 characters`},
			{line: 10, field: "accounts[3].role.duration", msg: "must be at least 15m, got 5m"},
			{line: 12, field: "accounts[4].role.duration", msg: "must be at most 12h (STS's limit), got 13h"},
			{line: 14, field: "accounts[5].role.duration", msg: "must be whole seconds, got 15m0.5s"},
			{line: 16, field: "accounts[6].role", msg: "expected a mapping with role_arn, got nothing (null)"},
			{line: 18, field: "accounts[7].role", msg: "expected a mapping, got a list"},
			{line: 20, field: "accounts[8].role.durations", msg: `did you mean "duration"?`},
		},
		"api.yaml": {
			{line: 9, field: "accounts[0].api.create_image_rate", msg: "1001 is out of range 1..1000"},
			{line: 10, field: "accounts[0].api.describe_images_rate", msg: "0 is out of range 1..40"},
			{line: 11, field: "accounts[0].api.workers", msg: "257 is out of range 1..256"},
			{line: 13, field: "accounts[0].api.retry.duplicate", msg: "11 is out of range 0..10"},
			{line: 14, field: "accounts[0].api.retry.busy.initial", msg: `invalid duration "1x"`},
			// Checked over the top-level block: its max, 20s, is below the account's initial.
			{line: 19, field: "accounts[1].api.retry.throttled.max", msg: "max 20s is less than initial 30s (the other settings from the api block at testdata/accounts/api.yaml:2)"},
			// Neither the account nor the defaults bound busy retries once max_elapsed is 0.
			{line: 24, field: "accounts[2].api.retry.busy", msg: "retries would never stop: set attempts or max_elapsed (the other settings from the api block at testdata/accounts/api.yaml:2)"},
			{line: 29, field: "accounts[3].api.retry.busy.max", msg: "max 1m is less than initial 5m"},
			{line: 32, field: "accounts[4].api.worker", msg: `did you mean "workers"?`},
		},
		// The top-level block's problem is reported once, not again for the account over it.
		"api-top-bad.yaml": {{line: 4, field: "api.retry.throttled.max", msg: "max 1s is less than initial 2s"}},
		"env.yaml": {
			{line: 4, field: "accounts[0].secret_id_env", msg: "environment variable UNSET_ID is not set or empty"},
			{line: 8, field: "accounts[1].secret_key_env", msg: "environment variable BLANK_KEY is not set or empty"},
		},
		"policy-account.yaml": {
			{line: 8, field: "policies[0].account", msg: "required: the accounts block defines 2 accounts (prod, staging); name the one whose credentials make this policy's calls"},
			{line: 12, field: "policies[1].account", msg: `unknown account "prd": the accounts block defines prod, staging`},
			{line: 16, field: "policies[2].account", msg: "expected a string, got a list"},
		},
		"no-block.yaml": {
			{line: 10, field: "policies[1].account", msg: `unknown account "prod": without an accounts block the only account is "default" (the SDK's default credentials)`},
		},
		"empty.yaml":      {{line: 2, field: "accounts", msg: "lists no account: list at least one, or leave accounts out for the SDK's default credentials"}},
		"null.yaml":       {{line: 2, field: "accounts", msg: "lists no account"}},
		"not-a-list.yaml": {{line: 2, field: "accounts", msg: "expected a list of accounts, got a mapping"}},
		"twice":           {{file: "b.yaml", line: 2, field: "accounts", msg: "the accounts block may appear in one file only; it is already in testdata/accounts/twice/a.yaml:2"}},
	}
	entries, err := os.ReadDir(filepath.Join("testdata", "accounts"))
	require.NoError(t, err)
	for _, e := range entries {
		if e.Name() != "good.yaml" {
			require.Contains(t, cases, e.Name(), "testdata/accounts/%s has no expectation", e.Name())
		}
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			requireErrors(t, filepath.Join("testdata", "accounts", name), want, env)
		})
	}
}

// TestAccountsEnvNeverShowsValues: the variables are named, their values never appear.
func TestAccountsEnvNeverShowsValues(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-AKIDvalue"
	_, err := Load("testdata/accounts/env.yaml", envOf(map[string]string{"SET_ID": secret, "SET_KEY": secret, "BLANK_KEY": "   "}))
	require.Error(t, err)
	require.Contains(t, err.Error(), "UNSET_ID")
	require.Contains(t, err.Error(), "BLANK_KEY")
	require.NotContains(t, err.Error(), secret)

	// Without WithEnv the process environment is read.
	const unset = "IMAGER_TEST_VARIABLE_NOBODY_SETS_7F3A"
	require.Empty(t, os.Getenv(unset))
	_, err = LoadBytes("env.yaml", []byte("version: 1\naccounts: [{name: prod, secret_id_env: "+unset+", secret_key_env: PATH}]\n"+
		"policies:\n  - {name: web, schedule: \"@daily\", region: ap-guangzhou, instances: [ins-6pb6lrmy]}\n"))
	require.EqualError(t, err, "env.yaml:2: accounts[0].secret_id_env: environment variable "+unset+" is not set or empty")
}

// TestPolicyUsingBadAccount: a policy whose account is invalid is not among the good policies.
func TestPolicyUsingBadAccount(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/accounts/policy-account.yaml")
	require.Error(t, err)
	require.Equal(t, []string{"good"}, policyNames(cfg))

	cfg, err = Load("testdata/accounts/env.yaml", envOf(map[string]string{"SET_ID": "x", "SET_KEY": "x", "BLANK_KEY": "x"}))
	require.ErrorContains(t, err, "UNSET_ID")
	require.Empty(t, cfg.Policies, "web uses the account whose variable is unset")
	require.Equal(t, []string{"empty"}, accountNames(cfg))

	// An account that may be defined in a file that cannot be read: no cascade of unknown accounts.
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("version: 1\naccounts: [{name: prod, profile: prod}\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "b.yaml"), []byte("version: 1\npolicies:\n  - {name: web, account: prod, schedule: \"@daily\", region: ap-guangzhou, instances: [ins-6pb6lrmy]}\n"), 0o600))
	_, err = Load(dir)
	var verr *ValidationError
	require.ErrorAs(t, err, &verr)
	require.Len(t, verr.Errors, 1, "%s", verr)
	require.Contains(t, verr.Errors[0].Message, "invalid YAML")
}

func policyNames(cfg *Config) []string {
	var out []string
	for _, p := range cfg.Policies {
		out = append(out, p.Name)
	}
	return out
}

func accountNames(cfg *Config) []string {
	var out []string
	for _, a := range cfg.Accounts {
		out = append(out, a.Name)
	}
	return out
}

func TestRoleARNAndProfileNames(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"qcs::cam::uin/100000000001:roleName/imager", "qcs::cam::uin/1:role/4611686018427397919", "qcs::cam::uin/12:roleName/a.b-c_d@e"} {
		require.True(t, roleARNRe.MatchString(s), s)
	}
	for _, s := range []string{"", "qcs::cam::uin/:roleName/x", "qcs::cam::uin/1:roleName/", "qcs::cam::uin/1:user/x", "qcs::cam::uin/1:roleName/a b", "arn:aws:iam::1:role/x"} {
		require.False(t, roleARNRe.MatchString(s), s)
	}
	for _, s := range []string{"default", "prod", "Prod_2", "a.b", "-x"} {
		require.True(t, profileRe.MatchString(s), s)
	}
	for _, s := range []string{"", ".hidden", "a/b", "../x", "a b", strings.Repeat("p", 65)} {
		require.False(t, profileRe.MatchString(s), s)
	}
	for _, s := range []string{"imager", "ab", "a_b+c=d,e.f@g-h", strings.Repeat("s", 128)} {
		require.True(t, sessionNameRe.MatchString(s), s)
	}
	for _, s := range []string{"a", "a b", "a/b", strings.Repeat("s", 129)} {
		require.False(t, sessionNameRe.MatchString(s), s)
	}
}
