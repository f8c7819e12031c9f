package web_test

import (
	"bytes"
	"context"
	"fmt"
	stdpng "image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// TestScreenshot writes a PNG of the page over a demo-like history to the path in
// IMAGER_WEB_SCREENSHOT (docs/status-page.png in the README is made this way:
// IMAGER_WEB_SCREENSHOT=$PWD/docs/status-page.png go test ./internal/web -run TestScreenshot).
// Without it the PNG goes to a temporary directory; either way the test checks that the browser
// rendered a full page (a PNG at the viewport's width). TestPageInBrowser tests the page's contents.
func TestScreenshot(t *testing.T) {
	out := os.Getenv("IMAGER_WEB_SCREENSHOT")
	if out == "" {
		out = filepath.Join(t.TempDir(), "status-page.png")
	}
	ctx := context.Background()
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Second)
	cfg := loadPolicies(t, s, `version: 1
accounts:
  - name: prod
    role: {role_arn: "qcs::cam::uin/100000000001:roleName/imager"}
  - name: data
    role: {role_arn: "qcs::cam::uin/100000000002:roleName/imager"}
defaults:
  region: ap-guangzhou
policies:
  - name: web-nightly
    account: prod
    schedule: "0 3 * * *"
    timezone: Asia/Shanghai
    instances: [ins-0a1b2c3d]
    copy_to:
      - region: ap-singapore
      - region: eu-frankfurt
  - name: db-every-6h
    account: data
    schedule: "@every 6h"
    instances: [ins-9f8e7d6c]
`, now)

	type run struct {
		policy, instance string
		slot             time.Time
		status           string
		imageID, code    string
		msg              string
	}
	var runs []run
	add := func(pol, inst string, slot time.Time, i, d int) {
		r := run{policy: pol, instance: inst, slot: slot, status: "available", imageID: fmt.Sprintf("img-%08x", uint32(i*7919+d*104729+len(pol)))}
		switch {
		case pol == "web-nightly" && d >= 12 && d <= 13: // the daemon was down two nights
			r.status, r.imageID, r.msg = "missed", "", "daemon shut down before the slot was sent"
		case pol == "web-nightly" && i == 3 && d <= 2: // deleted instance: fails every night since
			r.status, r.imageID, r.code, r.msg = "failed", "", "InvalidInstanceId.NotFound", "The instance "+inst+" does not exist."
		case pol == "web-nightly" && i == 8 && d == 6:
			r.status, r.imageID, r.code, r.msg = "failed", "", "LimitExceeded.ImageQuotaExceeded", "Image quota of the region is exhausted (500 of 500)."
		case pol == "web-nightly" && i >= 14 && d > 9: // added to the policy ten days ago
			return
		case pol == "db-every-6h" && i == 2 && d == 4:
			r.status, r.imageID, r.code, r.msg = "failed", "", "ResourceInUse", "The instance is being operated on by another request."
		case d == 0 && i%5 == 1:
			r.status = "requested"
		case (i*7+d)%53 == 0:
			r.status, r.imageID, r.code, r.msg = "failed", "", "InternalError", "An internal error occurred. Retried 5 times."
		}
		runs = append(runs, r)
	}
	shanghai, err := time.LoadLocation("Asia/Shanghai")
	require.NoError(t, err)
	today := now.In(shanghai)
	for i := 0; i < 16; i++ {
		inst := fmt.Sprintf("ins-%08x", uint32(0x3a7c1e00+i*0x1011f))
		for d := 0; d < 30; d++ {
			slot := time.Date(today.Year(), today.Month(), today.Day()-d, 3, 0, 0, 0, shanghai)
			if slot.Before(now) {
				add("web-nightly", inst, slot.UTC(), i, d)
			}
		}
	}
	for i := 0; i < 5; i++ {
		inst := fmt.Sprintf("ins-%08x", uint32(0x5d20b700+i*0x2f03))
		for h := 0; h < 30*4; h++ {
			slot := now.Truncate(6 * time.Hour).Add(-time.Duration(h) * 6 * time.Hour)
			add("db-every-6h", inst, slot, i, h/4)
		}
	}
	_, err = s.Pool().CopyFrom(ctx, pgx.Identifier{"image_runs"},
		[]string{"policy", "instance_id", "region", "scheduled_at", "started_at", "finished_at", "status", "image_name",
			"image_id", "error_code", "error_message", "attempts", "daemon_id"},
		pgx.CopyFromSlice(len(runs), func(i int) ([]any, error) {
			r := runs[i]
			var finished *time.Time
			if r.status != "requested" {
				f := r.slot.Add(25 * time.Minute)
				finished = &f
			}
			null := func(s string) *string {
				if s == "" {
					return nil
				}
				return &s
			}
			return []any{r.policy, r.instance, "ap-guangzhou", r.slot, r.slot.Add(time.Second), finished, r.status,
				r.policy + "-" + r.instance + "-" + r.slot.Format("20060102-1504"), null(r.imageID), null(r.code),
				null(r.msg), 1, "demo"}, nil
		}))
	require.NoError(t, err)
	require.NoError(t, s.RebuildDerived(ctx)) // written in bulk: the kept answers are computed once
	// web-nightly's images are copied 35 minutes after they are made, to ap-singapore and
	// eu-frankfurt, except that one instance's copies to eu-frankfurt stopped three days ago.
	_, err = s.Pool().Exec(ctx, `INSERT INTO image_copies (run_id, account, policy, instance_id, slot, source_region,
	source_image_id, region, image_name, image_id, status, requested_at, available_at, finished_at, attempts)
SELECT r.id, 'prod', r.policy, r.instance_id, r.scheduled_at, r.region, r.image_id, g.region, r.image_name,
	'img-' || substr(md5(r.id::text || g.region), 1, 8), 'available', r.finished_at,
	r.finished_at + interval '35 minutes', r.finished_at + interval '35 minutes', 1
FROM image_runs r CROSS JOIN (VALUES ('ap-singapore'), ('eu-frankfurt')) g(region)
WHERE r.policy = 'web-nightly' AND r.status = 'available'
	AND NOT (g.region = 'eu-frankfurt' AND r.instance_id = $1 AND r.scheduled_at > $2)`,
		fmt.Sprintf("ins-%08x", uint32(0x3a7c1e00+5*0x1011f)), now.Add(-72*time.Hour))
	require.NoError(t, err)

	srv := serve(t, options(s, cfg, now.Add(-26*time.Hour), now))
	b := newBrowser(t)
	require.NoError(t, chromedp.Do(b, chromedp.EmulateViewport(1280, 900), chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitReady(chromedp.CSS("#failures"))))
	png, err := chromedp.Run(b, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	img, err := stdpng.Decode(bytes.NewReader(png))
	require.NoError(t, err, "the screenshot is a PNG")
	require.Equal(t, 1280, img.Bounds().Dx(), "rendered at the viewport's width")
	require.Greater(t, img.Bounds().Dy(), 900, "the full page, taller than the viewport")
	require.NoError(t, os.WriteFile(out, png, 0o644))
	t.Logf("wrote %s (%d bytes, %d runs)", out, len(png), len(runs))
}
