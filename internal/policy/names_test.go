package policy

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var imageNameRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,60}$`)

func TestImageNameRendersTemplate(t *testing.T) {
	t.Parallel()
	shanghai := mustZone(t, "Asia/Shanghai")
	slot := utc("2026-03-28T19:00:00Z") // 2026-03-29 03:00 in Shanghai
	cases := []struct {
		tmpl string
		want string // without the suffix
	}{
		{"", "web-nightly-ins-6pb6lrmy-20260329-0300"}, // default template
		{"{policy}-{instance}-{time}", "web-nightly-ins-6pb6lrmy-20260329-0300"},
		{"{region}.{date}", "ap-shanghai-fsi.20260329"},
		{"{slot}", "20260328T190000Z"},
		{"img_{instance}", "img_ins-6pb6lrmy"},
	}
	for _, tc := range cases {
		p := &Policy{Name: "web-nightly", Region: "ap-shanghai-fsi", Location: shanghai, Image: ImageSpec{NameTemplate: tc.tmpl}}
		name := ImageName(p, "ins-6pb6lrmy", slot, 0)
		require.Regexp(t, `^`+regexp.QuoteMeta(tc.want)+`-[a-z0-9]{8}$`, name, tc.tmpl)
	}
}

func TestImageNameSanitisesAndShortens(t *testing.T) {
	t.Parallel()
	slot := utc("2026-03-29T01:00:00Z")
	// Hand-built policies skip validation: disallowed characters become '-', long renderings are cut.
	p := &Policy{Name: "p", Region: "ap-guangzhou", Image: ImageSpec{NameTemplate: "a b/c{policy}ü" + strings.Repeat("x", 100)}}
	name := ImageName(p, "ins-6pb6lrmy", slot, 0)
	require.Len(t, name, MaxImageNameLen)
	require.True(t, strings.HasPrefix(name, "a-b-cp-xxx"), name)
	require.Regexp(t, imageNameRe, name)
	// The suffix is never cut: it is the same as with a short template.
	short := ImageName(&Policy{Name: "p", Region: "ap-guangzhou", Image: ImageSpec{NameTemplate: "s"}}, "ins-6pb6lrmy", slot, 0)
	require.Equal(t, short[len(short)-8:], name[len(name)-8:])
	require.Equal(t, "-", name[len(name)-9:len(name)-8])
}

func TestImageNameStableAndFresh(t *testing.T) {
	t.Parallel()
	p := &Policy{Name: "db", Region: "ap-guangzhou"}
	slot := utc("2026-03-29T01:00:00Z")
	first := ImageName(p, "ins-2b3c4d5e", slot, 0)
	require.Equal(t, first, ImageName(p, "ins-2b3c4d5e", slot, 0), "the first name of a slot is the same every time")
	require.Equal(t, first, ImageName(p, "ins-2b3c4d5e", slot.In(mustZone(t, "Asia/Tokyo")), 0), "the zone of the slot value does not matter")
	seen := map[string]bool{first: true}
	for attempt := 1; attempt <= 3; attempt++ {
		n := ImageName(p, "ins-2b3c4d5e", slot, attempt)
		require.False(t, seen[n], "attempt %d repeats a name", attempt)
		require.Equal(t, first[:len(first)-8], n[:len(n)-8], "only the suffix changes")
		seen[n] = true
	}
	// A different slot or instance with the same rendered template still differs by suffix.
	p2 := &Policy{Name: "db", Region: "ap-guangzhou", Image: ImageSpec{NameTemplate: "{policy}-{date}"}}
	a := ImageName(p2, "ins-2b3c4d5e", slot, 0)
	b := ImageName(p2, "ins-2b3c4d5e", slot.Add(time.Hour), 0)
	c := ImageName(p2, "ins-99999999", slot, 0)
	require.Equal(t, a[:len(a)-8], b[:len(b)-8])
	require.NotEqual(t, a, b)
	require.NotEqual(t, a, c)
}

func TestImageNameUniqueAcrossTriples(t *testing.T) {
	t.Parallel()
	// A template without time or instance makes the suffix carry all the uniqueness.
	policies := []*Policy{
		{Name: "web", Region: "ap-guangzhou", Image: ImageSpec{NameTemplate: "backup"}},
		{Name: "db", Region: "ap-guangzhou", Image: ImageSpec{NameTemplate: "backup"}},
	}
	seen := make(map[string]string, 10_000)
	base := utc("2026-01-01T00:00:00Z")
	n := 0
	for i := range 5_000 {
		for pi, p := range policies {
			inst := fmt.Sprintf("ins-%08x", i%100)
			slot := base.Add(time.Duration(i/100) * time.Hour)
			name := ImageName(p, inst, slot, 0)
			key := fmt.Sprintf("%d|%s|%s", pi, inst, slot)
			if other, dup := seen[name]; dup {
				t.Fatalf("%s and %s both named %s", key, other, name)
			}
			seen[name] = key
			n++
		}
	}
	require.Equal(t, 10_000, n)
	require.Len(t, seen, 10_000)
}

// TestImageNameProperties renders names for policies that validate with the longest names and
// regions, and checks the bounds hold for every placeholder combination.
func TestImageNameProperties(t *testing.T) {
	t.Parallel()
	templates := []string{DefaultNameTemplate, "{slot}-{instance}-{region}", "{policy}{policy}", "{date}.{time}_{slot}"}
	for _, tmpl := range templates {
		for _, name := range []string{"a", "web-nightly", strings.Repeat("z", 32)} {
			p := &Policy{Name: name, Region: "ap-shanghai-fsi", Image: ImageSpec{NameTemplate: tmpl}}
			for i := range 50 {
				slot := utc("2026-01-01T00:00:00Z").Add(time.Duration(i) * 97 * time.Minute)
				for attempt := range 4 {
					got := ImageName(p, "ins-abcdefgh", slot, attempt)
					require.Regexp(t, imageNameRe, got)
					require.LessOrEqual(t, len(got), MaxImageNameLen)
				}
			}
		}
	}
}

func FuzzImageName(f *testing.F) {
	f.Add("web", "{policy}-{instance}-{time}", "ap-guangzhou", "ins-6pb6lrmy", int64(1774746000), 0)
	f.Add("x", "ü{slot}\x00 ", "", "", int64(-1), 3)
	f.Fuzz(func(t *testing.T, name, tmpl, region, inst string, unix int64, attempt int) {
		p := &Policy{Name: name, Region: region, Image: ImageSpec{NameTemplate: tmpl}}
		got := ImageName(p, inst, time.Unix(unix%(1<<40), 0), attempt)
		if len(got) > MaxImageNameLen || !imageNameRe.MatchString(got) {
			t.Fatalf("bad name %q", got)
		}
		if got != ImageName(p, inst, time.Unix(unix%(1<<40), 0), attempt) {
			t.Fatal("not deterministic")
		}
	})
}

func TestImageDescriptionAndTags(t *testing.T) {
	t.Parallel()
	berlin := mustZone(t, "Europe/Berlin")
	slot := utc("2026-03-29T01:00:00Z") // 03:00 CEST, the jump
	p := &Policy{
		Name: "web", Region: "eu-frankfurt", Location: berlin,
		Image: ImageSpec{
			DescriptionTemplate: "Nightly image of {instance} ({policy}) at {time} {region} {slot}",
			Tags:                map[string]string{"env": "prod", "made": "{date}", "imager-policy": "spoofed"},
		},
	}
	require.Equal(t, "Nightly image of ins-6pb6lrmy (web) at 20260329-0300 eu-frankfurt 20260329T010000Z",
		ImageDescription(p, "ins-6pb6lrmy", slot))
	require.Equal(t, map[string]string{
		"env": "prod", "made": "20260329",
		"imager-policy": "web", "imager-instance": "ins-6pb6lrmy", "imager-slot": "2026-03-29T01:00:00Z",
	}, ImageTags(p, "ins-6pb6lrmy", slot))

	require.Empty(t, ImageDescription(&Policy{Name: "web"}, "ins-6pb6lrmy", slot))
	long := &Policy{Name: "web", Image: ImageSpec{DescriptionTemplate: strings.Repeat("é", 300)}}
	require.Equal(t, 256, len([]rune(ImageDescription(long, "ins-6pb6lrmy", slot))))
	require.Len(t, ImageTags(&Policy{Name: "web"}, "ins-6pb6lrmy", slot), 3)
}

func TestImageNameFromLoadedPolicy(t *testing.T) {
	t.Parallel()
	cfg, err := LoadBytes("p.yaml", []byte(`version: 1
policies:
  - name: web
    schedule: "@daily"
    region: ap-guangzhou
    timezone: Asia/Shanghai
    instances: [ins-6pb6lrmy]
    image:
      name: "{policy}_{date}"
      description: "{policy} on {date}"
      tags: {day: "{date}"}
`))
	require.NoError(t, err)
	p := cfg.Policy("web")
	slot := utc("2026-03-28T16:00:00Z") // 2026-03-29 00:00 in Shanghai
	require.Regexp(t, `^web_20260329-[a-z0-9]{8}$`, ImageName(p, "ins-6pb6lrmy", slot, 0))
	// The parsed template and a hand-built copy of the policy give the same name.
	hand := &Policy{Name: p.Name, Region: p.Region, Location: p.Location, Image: ImageSpec{NameTemplate: p.Image.NameTemplate}}
	require.Equal(t, ImageName(hand, "ins-6pb6lrmy", slot, 0), ImageName(p, "ins-6pb6lrmy", slot, 0))
	require.Equal(t, "web on 20260329", ImageDescription(p, "ins-6pb6lrmy", slot))
	require.Equal(t, "20260329", ImageTags(p, "ins-6pb6lrmy", slot)["day"])
}

func BenchmarkImageName(b *testing.B) {
	p := &Policy{Name: "web-nightly", Region: "ap-guangzhou", Location: time.UTC}
	p.nameTmpl, _ = parseTemplate(DefaultNameTemplate)
	slot := utc("2026-03-29T01:00:00Z")
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = ImageName(p, "ins-6pb6lrmy", slot.Add(time.Duration(i)*time.Minute), 0)
	}
}
