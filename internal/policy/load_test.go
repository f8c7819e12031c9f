package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// wantErr is one expected problem: where, which field, and a piece of the message.
type wantErr struct {
	file  string // relative to the case's path; empty: the path itself
	line  int
	field string
	msg   string
}

func TestLoadBad(t *testing.T) {
	t.Parallel()
	cases := map[string][]wantErr{
		"unknown-key.yaml": {
			{line: 2, field: "polices", msg: `unknown key "polices" (did you mean "policies"?)`},
			{line: 4, field: "api.worker", msg: `did you mean "workers"?`},
			{line: 8, field: "defaults.image.sysprepp", msg: `did you mean "sysprep"?`},
			{line: 14, field: "policies[0].start_windw", msg: `did you mean "start_window"?`},
			{line: 16, field: "policies[0].image.names", msg: `did you mean "name"?`},
			{line: 17, field: "policies[0].retention.keep", msg: `unknown key "keep"`},
			{line: 18, field: "policies[0].select.zone", msg: `did you mean "zones"?`},
		},
		"bad-cron.yaml": {
			{line: 6, field: "policies[0].schedule", msg: "expected exactly 5 fields, found 4"},
			{line: 9, field: "policies[1].schedule", msg: "end of range (25) above maximum (23)"},
			{line: 12, field: "policies[2].schedule", msg: "@every 30s is shorter than the minimum 1m"},
			{line: 15, field: "policies[3].schedule", msg: `CRON_TZ: unknown time zone "Moon/Base"`},
			{line: 18, field: "policies[4].schedule", msg: "never fires"},
			{line: 20, field: "policies[5].schedule", msg: "required"},
			{line: 23, field: "policies[6].schedule", msg: "unrecognized descriptor: @fortnightly"},
			{line: 26, field: "policies[7].schedule", msg: "expected a string, got a list"},
		},
		"bad-timezone.yaml": {
			{line: 4, field: "defaults.timezone", msg: `unknown time zone "Asia/Shangai"`},
			{line: 11, field: "policies[1].timezone", msg: `unknown time zone "EST5EDT6"`},
			{line: 15, field: "policies[2].timezone", msg: `"Local": use an IANA name`},
		},
		"bad-instance.yaml": {
			{line: 9, field: "policies[0].instances[1]", msg: `"ins-6PB6LRMY" is not an instance id`},
			{line: 10, field: "policies[0].instances[2]", msg: `"ins-123" is not an instance id`},
			{line: 11, field: "policies[0].instances[3]", msg: `"i-6pb6lrmy" is not an instance id`},
			{line: 12, field: "policies[0].instances[4]", msg: `duplicate "ins-6pb6lrmy" (also at line 8)`},
			{line: 13, field: "policies[0].instances[5]", msg: "expected a string, got a mapping"},
			{line: 17, field: "policies[1].instances", msg: "expected a list"},
			{line: 18, field: "policies[2]", msg: "no targets: set instances, select, or both"},
			{line: 22, field: "policies[3].instances", msg: "ins-2b3c4d5e is listed here and excluded"},
		},
		"name-too-long.yaml": {
			{line: 9, field: "policies[0].image.name", msg: "renders up to 63 characters for this policy, but at most 51 fit"},
			{line: 10, field: "policies[1].image.name", msg: `the default template "{policy}-{instance}-{time}" renders up to 57 characters`},
			{line: 17, field: "policies[2].image.name", msg: "renders up to 53 characters"},
			{line: 22, field: "policies[3].image.name", msg: "renders up to 52 characters"},
			{line: 27, field: "policies[4].image.name", msg: `character ' ' is not allowed`},
			{line: 32, field: "policies[5].image.name", msg: "unknown placeholder {hostname}"},
			{line: 33, field: "policies[5].image.description", msg: `unclosed "{unclosed"`},
			{line: 38, field: "policies[6].image.name", msg: "must not be empty"},
			{line: 39, field: "policies[6].image.description", msg: "renders up to 257 characters for this policy; at most 256"},
		},
		"inherited-template": {
			{file: "b.yaml", line: 6, field: "policies[1].image.name", msg: "(set in defaults at testdata/bad/inherited-template/a.yaml:5)"},
		},
		"unreadable-defaults": {
			// The policy has no region, but the file that may hold the defaults is unreadable:
			// only the syntax error is reported, not a cascade of "region: required".
			{file: "00-defaults.yaml", line: 4, field: "", msg: "invalid YAML: mapping values are not allowed in this context"},
		},
		"duplicate-name": {
			{file: "b.yaml", line: 2, field: "api", msg: "already in testdata/bad/duplicate-name/a.yaml:2"},
			{file: "b.yaml", line: 4, field: "defaults", msg: "already in testdata/bad/duplicate-name/a.yaml:4"},
			{file: "b.yaml", line: 10, field: "policies[1].name", msg: `duplicate policy name "web" (already defined at testdata/bad/duplicate-name/a.yaml:7)`},
			{file: "b.yaml", line: 13, field: "policies[2].name", msg: "already defined at testdata/bad/duplicate-name/b.yaml:7"},
		},
		"retention-keeps-nothing.yaml": {
			{line: 8, field: "policies[0].retention", msg: "retention keeps everything: set keep_last or max_age"},
			{line: 12, field: "policies[1].retention", msg: "retention keeps everything"},
			{line: 19, field: "policies[2].retention.keep_last", msg: "keep_last 1 is less than min_keep 2"},
			{line: 25, field: "policies[3].retention.keep_last", msg: "out of range"},
			{line: 26, field: "policies[3].retention.max_age", msg: "must not be negative"},
			{line: 27, field: "policies[3].retention.min_keep", msg: "out of range 1.."},
		},
		"max-age-short.yaml": {
			{line: 9, field: "policies[0].retention.max_age", msg: "max_age 12h is shorter than the 1d between slots"},
			{line: 13, field: "policies[1].retention.max_age", msg: "max_age 5h59m is shorter than the 6h between slots"},
			{line: 25, field: "policies[4].retention.max_age", msg: "max_age 27d is shorter than the 28d"},
		},
		"select-no-keys.yaml": {
			{line: 8, field: "policies[0].select.tags", msg: "at least one key"},
			{line: 11, field: "policies[1].select.tags", msg: "required"},
			{line: 12, field: "policies[1].select.zones[1]", msg: "must not be empty"},
			{line: 15, field: "policies[2].select.tags", msg: "required"},
			{line: 20, field: "policies[3].select.exclude[1]", msg: `"web-1" is not an instance id`},
			{line: 24, field: "policies[4].select.tags", msg: "expected a mapping"},
		},
		"bad-disk.yaml": {
			{line: 5, field: "defaults.image.data_disks[0]", msg: `"disk-1234" is not a disk id`},
			{line: 16, field: "policies[1].image.data_disks[1]", msg: `"DISK-AAAA1111" is not a disk id`},
			{line: 17, field: "policies[1].image.data_disks[2]", msg: "duplicate"},
			{line: 18, field: "policies[1].image.data_disks[3]", msg: `"vol-aaaa1111"`},
			{line: 23, field: "policies[2].image.data_disks", msg: "expected `all` or a list of disk ids"},
		},
		"many-errors.yaml": {
			{line: 5, field: "api.create_image_rate", msg: "11000 is out of range 1..1000"},
			{line: 6, field: "api.workers", msg: "0 is out of range 1..256"},
			{line: 8, field: "api.retry.transient.initial", msg: `invalid duration "1x"`},
			{line: 12, field: "defaults.timezone", msg: "Europe/Berln"},
			{line: 14, field: "defaults.image.timeout", msg: "must be at least 1s"},
			{line: 17, field: "policies[0].name", msg: `"Web_Nightly" is not a policy name`},
			{line: 18, field: "policies[0].schedule", msg: "expected exactly 5 fields, found 6"},
			{line: 19, field: "policies[0].instances[1]", msg: `"ins-6pb6lrm"`},
			{line: 21, field: "policies[0].image.name", msg: `character '/'`},
			{line: 22, field: "policies[0].image.force_poweroff", msg: "expected true or false"},
			{line: 25, field: "policies[1].schedule", msg: "shorter than the minimum 1m"},
			{line: 26, field: "policies[1].region", msg: `"AP-SHANGHAI" is not a region`},
			{line: 28, field: "policies[1].retention.keep_last", msg: "less than min_keep 3"},
			{line: 32, field: "policies[2].select.tags", msg: "at least one key"},
			{line: 34, field: "policies[2].image.data_disks[0]", msg: "disk-xyz"},
			{line: 35, field: "policies[2].image.tags.imager-owner", msg: "reserved"},
			{line: 36, field: "policies[2].retention.max_age", msg: "max_age 1h is shorter than the 1d"},
			{line: 37, field: "policies[2].enabeld", msg: `did you mean "enabled"?`},
			{line: 39, field: "policies[3].name", msg: `duplicate policy name "db" (already defined at testdata/bad/many-errors.yaml:24)`},
			{line: 42, field: "policies[3].retention", msg: "retention keeps everything"},
		},
		"api.yaml": {
			{line: 3, field: "api.create_image_rate", msg: "out of range 1..1000"},
			{line: 4, field: "api.describe_images_rate", msg: "41 is out of range 1..40"},
			{line: 5, field: "api.workers", msg: "257 is out of range 1..256"},
			{line: 7, field: "api.retry.transient.initial", msg: "must be at least 1ms"},
			{line: 8, field: "api.retry.throttled.max", msg: "max 1s is less than initial 5s"},
			{line: 9, field: "api.retry.busy", msg: "retries would never stop"},
			{line: 10, field: "api.retry.duplicate", msg: "out of range 0..10"},
		},
		"start-window.yaml": {
			{line: 8, field: "policies[0].start_window", msg: `start_window 2h is longer than the 1h between slots of "0 * * * *": a slot would still be due when the next one starts; use at most 1h`},
			{line: 16, field: "policies[2].start_window", msg: "must be at least 1s, got 0s"},
			{line: 20, field: "policies[3].concurrency", msg: `"sometimes" is not a concurrency: use forbid`},
			{line: 24, field: "policies[4].concurrency", msg: "expected a string, got a list"},
			{line: 33, field: "policies[6].start_window", msg: "start_window 2d is longer than the 1d between slots"},
		},
		"start-window-defaults.yaml": {
			{line: 5, field: "defaults.concurrency", msg: `"maybe" is not a concurrency`},
			{line: 10, field: "policies[1].start_window", msg: `longer than the 1h between slots of "@hourly" (set in defaults at testdata/bad/start-window-defaults.yaml:4)`},
		},
		"version-missing.yaml": {{line: 1, field: "version", msg: "required: add `version: 1`"}},
		"version-2.yaml":       {{line: 1, field: "version", msg: "unsupported version 2"}},
		"empty.yaml":           {{line: 1, field: "version", msg: "the file is empty"}},
		"syntax.yaml":          {{line: 2, field: "", msg: "invalid YAML: did not find expected '-' indicator"}},
		"two-docs.yaml":        {{line: 7, field: "", msg: "only one YAML document per file"}},
		"alias-bomb.yaml":      {{line: 2, field: "", msg: "too many nodes"}},
		"alias-cycle.yaml":     {{line: 3, field: "policies[0]", msg: "nested too deeply"}},
		"wrong-types.yaml": {
			{line: 1, field: "version", msg: `expected an integer, got the string "1"`},
			{line: 3, field: "api.workers", msg: `expected an integer, got the string "4"`},
			{line: 4, field: "defaults", msg: "expected a mapping, got a list"},
			{line: 10, field: "policies[0].enabled", msg: `expected true or false, got the string "yes"`},
			{line: 12, field: "policies[0].image.reboot", msg: `expected true or false, got "1"`},
			{line: 13, field: "policies[0].image.timeout", msg: "3600 needs a unit"},
			{line: 14, field: "policies[0].image.tags", msg: "expected a mapping"},
			{line: 15, field: "policies[0].retention", msg: `expected a mapping, got "7"`},
			{line: 16, field: "policies[1]", msg: "expected a policy"},
			{line: 17, field: "policies[2].name", msg: "got nothing (null)"},
			{line: 19, field: "policies[2].region", msg: "expected a string, got a list"},
		},
		"missing-region.yaml": {
			{line: 3, field: "policies[0].region", msg: "required: set region in the policy or in defaults"},
			{line: 6, field: "policies[1].name", msg: "required"},
			{line: 7, field: "policies[1].region", msg: `"Ap_Guangzhou" is not a region`},
		},
		"tags.yaml": {
			{line: 6, field: "defaults.image.tags.imager-policy", msg: "reserved for imager's own tags"},
			{line: 13, field: "policies[0].image.tags", msg: "tag keys must not be empty"},
			{line: 14, field: "policies[0].image.tags.owner", msg: "unknown placeholder {owner}"},
			{line: 16, field: "policies[0].image.tags." + strings.Repeat("KEY", 43) + "K", msg: "tag key is 130 characters long; at most 127"},
			{line: 18, field: "policies[0].image.tags.dup", msg: "duplicate key (first at line 17)"},
		},
	}

	// Every file under testdata/bad has a case, so a new file cannot go unchecked.
	entries, err := os.ReadDir("testdata/bad")
	require.NoError(t, err)
	for _, e := range entries {
		require.Contains(t, cases, e.Name(), "testdata/bad/%s has no expectations", e.Name())
	}

	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join("testdata", "bad", name)
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
				require.Contains(t, verr.Errors[idx].Message, w.msg)
			}

			// Error() prints each problem on its own line as file:line: field: message.
			lines := strings.Split(verr.Error(), "\n")
			require.Len(t, lines, len(verr.Errors))
			for i, fe := range verr.Errors {
				prefix := fmt.Sprintf("%s:%d: ", fe.File, fe.Line)
				if fe.Field != "" {
					prefix += fe.Field + ": "
				}
				require.Equal(t, prefix+fe.Message, lines[i])
			}
		})
	}
}

func TestLoadMinimal(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/good/minimal.yaml")
	require.NoError(t, err)
	require.Equal(t, DefaultAPI(), cfg.API)
	require.Equal(t, []string{"testdata/good/minimal.yaml"}, cfg.Sources)
	require.Len(t, cfg.Policies, 1)
	p := cfg.Policies[0]
	require.Equal(t, "web", p.Name)
	require.Equal(t, "testdata/good/minimal.yaml", p.File)
	require.Equal(t, 3, p.Line)
	require.Equal(t, "@daily", p.ScheduleSpec)
	require.NotNil(t, p.Schedule)
	require.Equal(t, "ap-guangzhou", p.Region)
	require.Equal(t, time.UTC, p.Location)
	require.Equal(t, []string{"ins-6pb6lrmy"}, p.Instances)
	require.Nil(t, p.Select)
	require.Nil(t, p.Retention)
	require.True(t, p.Enabled)
	require.Equal(t, ImageSpec{NameTemplate: DefaultNameTemplate, Timeout: 4 * time.Hour}, p.Image)
	require.Equal(t, time.Hour, p.StartWindow, "default start window: 1h for a daily schedule")
	require.Equal(t, ConcurrencyForbid, p.Concurrency)
	require.Same(t, p, cfg.Policy("web"))
	require.Nil(t, cfg.Policy("nope"))
}

func TestLoadFull(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/good/full.yaml")
	require.NoError(t, err)
	require.Equal(t, API{
		CreateImageRate:    8,
		DescribeImagesRate: 30,
		Workers:            16,
		Retry: Retry{
			Transient: Backoff{Initial: 100 * time.Millisecond, Max: 2 * time.Second, Attempts: 3, MaxElapsed: time.Minute},
			Throttled: Backoff{Initial: 200 * time.Millisecond, Max: 5 * time.Second, Attempts: 20},
			Busy:      Backoff{Initial: 10 * time.Second, Max: time.Minute, MaxElapsed: 24 * time.Hour},
			Duplicate: 5,
		},
	}, cfg.API)
	require.Len(t, cfg.Policies, 3)
	yes, no := true, false

	web := cfg.Policy("web-nightly")
	require.Equal(t, "ap-shanghai-fsi", web.Region)
	require.Equal(t, "Europe/Berlin", web.Location.String())
	require.False(t, web.Enabled)
	require.Equal(t, ImageSpec{
		NameTemplate:        "{policy}-{instance}-{time}",
		DescriptionTemplate: "", // "" overrides the default description
		ForcePoweroff:       &yes,
		Sysprep:             &yes,
		Reboot:              &no,
		DataDisks:           DataDisks{IDs: []string{"disk-aaaa1111", "disk-bbbb2222"}},
		Tags:                map[string]string{"team": "web", "tier": "frontend", "made": "{date}"},
		Timeout:             30 * time.Minute,
	}, web.Image)
	// Retention merges key by key with defaults.
	require.Equal(t, &Retention{KeepLast: 7, MaxAge: 30 * 24 * time.Hour, MinKeep: 2, DeleteSnapshots: true}, web.Retention)
	// 03:00 in Berlin.
	require.True(t, web.Schedule.Next(utc("2026-07-01T00:00:00Z")).Equal(utc("2026-07-01T01:00:00Z")))

	tagged := cfg.Policy("tagged")
	require.Equal(t, "ap-guangzhou", tagged.Region)
	require.Equal(t, "Asia/Shanghai", tagged.Location.String())
	require.True(t, tagged.Enabled)
	require.Equal(t, []string{"ins-11111111"}, tagged.Instances)
	require.Equal(t, &Selector{
		Tags:    map[string]string{"env": "prod", "tier": "db"},
		Zones:   []string{"ap-guangzhou-3", "ap-guangzhou-4"},
		Exclude: []string{"ins-00000000"},
	}, tagged.Select)
	require.Equal(t, ImageSpec{
		NameTemplate:        "{policy}-{instance}-{date}",
		DescriptionTemplate: "{policy} image of {instance}",
		ForcePoweroff:       &no,
		Sysprep:             &no,
		Reboot:              &yes,
		DataDisks:           DataDisks{All: true},
		Tags:                map[string]string{"team": "ops", "made": "{date}"},
		Timeout:             2 * time.Hour,
	}, tagged.Image)
	require.Equal(t, &Retention{KeepLast: 7, MinKeep: 2, DeleteSnapshots: true}, tagged.Retention)
	// CRON_TZ=UTC @every 6h: epoch-aligned.
	require.True(t, tagged.Schedule.Next(utc("2026-07-01T05:00:00Z")).Equal(utc("2026-07-01T06:00:00Z")))

	// `retention:` with no value opts out of the defaults' retention.
	require.Nil(t, cfg.Policy("inherits").Retention)

	// start_window and concurrency: the policy's own, else the defaults'.
	require.Equal(t, 2*time.Hour, web.StartWindow)
	require.Equal(t, ConcurrencyForbid, web.Concurrency)
	require.Equal(t, 30*time.Minute, tagged.StartWindow)
	require.Equal(t, ConcurrencyAllow, tagged.Concurrency)
}

func TestLoadDirectory(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/good/dir")
	require.NoError(t, err)
	require.Equal(t, []string{"testdata/good/dir/00-defaults.yaml", "testdata/good/dir/10-web.yml", "testdata/good/dir/20-db.yaml"}, cfg.Sources)
	require.Equal(t, 2, cfg.API.Workers)
	require.Equal(t, DefaultCreateImageRate, cfg.API.CreateImageRate)
	require.Len(t, cfg.Policies, 2)
	require.Equal(t, "web", cfg.Policies[0].Name, "policies keep file order")
	require.Equal(t, "testdata/good/dir/10-web.yml", cfg.Policies[0].File)
	// Defaults from another file apply.
	require.Equal(t, "ap-guangzhou", cfg.Policy("web").Region)
	require.Equal(t, "ap-shanghai-fsi", cfg.Policy("db").Region)
	require.Equal(t, "Asia/Shanghai", cfg.Policy("db").Location.String())
	require.Equal(t, &Retention{KeepLast: 3, MinKeep: 1}, cfg.Policy("db").Retention)
}

func TestLoadAnchors(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/good/anchors.yaml")
	require.NoError(t, err)
	require.Len(t, cfg.Policies, 3)
	require.Equal(t, "30 1 * * *", cfg.Policy("one").ScheduleSpec)
	require.Equal(t, "ap-guangzhou", cfg.Policy("one").Region)
	require.Equal(t, "ap-beijing", cfg.Policy("two").Region, "keys written in the policy win over merged ones")
	require.Equal(t, []string{"ins-22222222", "ins-33333333"}, cfg.Policy("three").Select.Exclude)
}

// TestLoadReturnsGoodPolicies: next to the errors, the policies that validated are returned so
// `imager validate` can show their fire times; one that inherits a broken default is not.
func TestLoadReturnsGoodPolicies(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/bad/bad-timezone.yaml")
	var verr *ValidationError
	require.ErrorAs(t, err, &verr)
	require.NotNil(t, cfg)
	var names []string
	for _, p := range cfg.Policies {
		names = append(names, p.Name)
	}
	require.Equal(t, []string{"good-override"}, names)
}

func TestLoadPathErrors(t *testing.T) {
	t.Parallel()
	_, err := Load("testdata/does-not-exist.yaml")
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Contains(t, err.Error(), "read policies")

	empty := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(empty, "notes.txt"), []byte("x"), 0o600))
	_, err = Load(empty)
	require.ErrorContains(t, err, "no *.yaml or *.yml files")
	var verr *ValidationError
	require.False(t, errors.As(err, &verr))

	_, err = LoadBytes("only-api.yaml", []byte("version: 1\napi: {workers: 2}\n"))
	require.ErrorAs(t, err, &verr)
	require.Equal(t, []FieldError{{File: "only-api.yaml", Field: "policies", Message: "no policies defined"}}, verr.Errors)
	require.Equal(t, "only-api.yaml: policies: no policies defined", verr.Error())
}

func TestExampleFile(t *testing.T) {
	t.Parallel()
	cfg, err := Load("../../policies.example.yaml")
	require.NoError(t, err)
	require.Len(t, cfg.Policies, 4)
	var disabled, fsi, selected int
	for _, p := range cfg.Policies {
		if !p.Enabled {
			disabled++
		}
		if strings.HasSuffix(p.Region, "-fsi") {
			fsi++
			require.NotNil(t, p.Image.ForcePoweroff)
			require.True(t, *p.Image.ForcePoweroff)
		}
		if p.Select != nil {
			selected++
			require.NotNil(t, p.Retention)
			require.NotEmpty(t, p.Image.Tags)
			require.True(t, p.Image.DataDisks.All)
		}
		require.Len(t, NextN(p.Schedule, time.Now(), 3), 3, p.Name)
	}
	require.Equal(t, 1, disabled)
	require.Equal(t, 1, fsi)
	require.Equal(t, 1, selected)
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	good := map[string]time.Duration{
		"0":        0,
		"90s":      90 * time.Second,
		"1h30m":    90 * time.Minute,
		"30d":      30 * 24 * time.Hour,
		"1d12h":    36 * time.Hour,
		"1.5d":     36 * time.Hour,
		"2d3h4m5s": 2*24*time.Hour + 3*time.Hour + 4*time.Minute + 5*time.Second,
		"-3d":      -3 * 24 * time.Hour,
		"250ms":    250 * time.Millisecond,
	}
	for in, want := range good {
		got, err := ParseDuration(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "d", "5", "1x", "1dd", "..5d", "1d 2h", "99999999999d", "-", "1.2.3s"} {
		_, err := ParseDuration(in)
		require.Error(t, err, in)
	}
	require.Equal(t, "30d", formatDuration(30*24*time.Hour))
	require.Equal(t, "12h", formatDuration(12*time.Hour))
	require.Equal(t, "5h59m", formatDuration(5*time.Hour+59*time.Minute))
	require.Equal(t, "1m30s", formatDuration(90*time.Second))
}

// FuzzLoad feeds arbitrary bytes to the loader: it must never panic, and whatever it accepts must
// be usable (a schedule that fires, names within the API's limits).
func FuzzLoad(f *testing.F) {
	for _, dir := range []string{"testdata/good", "testdata/bad", "testdata/accounts", "testdata/copies", "testdata/restore"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add([]byte("version: 1\npolicies: [{name: a, schedule: '@every 1m', region: ap-guangzhou, instances: [ins-00000000]}]"))
	f.Add([]byte("&a [*a]"))
	f.Add([]byte("version: 1\npolicies:\n  - {<<: {<<: {name: x}}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := LoadBytes("fuzz.yaml", data)
		if err != nil {
			var verr *ValidationError
			if !errors.As(err, &verr) || len(verr.Errors) == 0 {
				t.Fatalf("error is not a non-empty *ValidationError: %v", err)
			}
			_ = verr.Error()
		}
		if cfg == nil {
			t.Fatal("nil config")
		}
		if err != nil {
			return
		}
		now := time.Date(2026, 3, 29, 0, 0, 0, 0, time.UTC)
		for _, p := range cfg.Policies {
			next := p.Schedule.Next(now)
			if !next.After(now) {
				t.Fatalf("policy %s: Next(%s) = %s", p.Name, now, next)
			}
			for _, inst := range append(p.Instances, "ins-00000000") {
				name := ImageName(p, inst, next, 0)
				if len(name) > MaxImageNameLen || !imageNameRe.MatchString(name) {
					t.Fatalf("policy %s: bad image name %q", p.Name, name)
				}
				if !strings.HasPrefix(name, strings.Map(func(r rune) rune {
					if nameChar(r) {
						return r
					}
					return '-'
				}, p.nameTmpl.render(newTemplateVars(p, inst, next)))) {
					t.Fatalf("policy %s: template part of %q was cut although validation passed", p.Name, name)
				}
				_ = ImageDescription(p, inst, next)
				_ = ImageTags(p, inst, next)
			}
		}
	})
}

// genPolicies writes a policy file of n policies with k instances each.
func genPolicies(n, k int) []byte {
	var b strings.Builder
	b.WriteString("version: 1\napi:\n  workers: 8\ndefaults:\n  region: ap-guangzhou\n  timezone: Asia/Shanghai\n  image:\n    force_poweroff: true\n    tags: {team: ops}\n")
	b.WriteString("  retention: {keep_last: 7, max_age: 30d}\npolicies:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - name: policy-%04d\n    schedule: \"%d %d * * *\"\n    instances: [", i, i%60, i%24)
		for j := range k {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "ins-%08d", i*k+j)
		}
		b.WriteString("]\n    image:\n      name: \"{policy}-{instance}-{time}\"\n      description: \"Nightly image of {instance}\"\n")
	}
	return []byte(b.String())
}

func TestGeneratedPolicies(t *testing.T) {
	t.Parallel()
	cfg, err := LoadBytes("gen.yaml", genPolicies(50, 10))
	require.NoError(t, err)
	require.Len(t, cfg.Policies, 50)
	require.Len(t, cfg.Policy("policy-0049").Instances, 10)
}

func BenchmarkLoad(b *testing.B) {
	data := genPolicies(1000, 10)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		cfg, err := LoadBytes("bench.yaml", data)
		if err != nil || len(cfg.Policies) != 1000 {
			b.Fatalf("load: %v", err)
		}
	}
}
