package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// cmdLatest prints the image to restore an instance from: the newest available image at or
// before --before, with its slot, policy and tags, and the tccli command lines that use it. With
// --region, the newest image usable in that region: a copy there (copy_to) or an image made there.
func cmdLatest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("latest", flag.ContinueOnError)
	o.databaseFlags(fs)
	o.logFlags(fs)
	instance := fs.String("instance", "", "instance to restore (ins-xxxxxxxx); required")
	beforeFlag := fs.String("before", "", "newest image whose slot is at or before this time: RFC 3339 (2026-03-29T03:00:00Z), "+
		"2006-01-02 15:04 (UTC), a date, or a duration back from now (36h, 7d); default now")
	format := fs.String("format", "table", "table or json")
	region := fs.String("region", "", "the region to restore in (e.g. ap-singapore): the newest image usable there, "+
		"a copy made by copy_to or an image made there; default the image's own region")
	policies := fs.String("policies", os.Getenv("IMAGER_POLICIES"),
		"policy file or directory, to list the policy's own image tags as well as imager's (optional; env IMAGER_POLICIES)")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if *instance == "" {
		fmt.Fprintln(stderr, "imager latest: --instance is required (e.g. --instance ins-xxxxxxxx)")
		return exitUsage
	}
	now := time.Now()
	before, err := parseBefore(*beforeFlag, now)
	if err != nil {
		fmt.Fprintf(stderr, "imager latest: --before: %v\n", err)
		return exitUsage
	}
	if *format != "table" && *format != "json" {
		fmt.Fprintf(stderr, "imager latest: --format: %q is not one of table, json\n", quoteShort(*format))
		return exitUsage
	}
	log, err := o.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imager latest: %v\n", err)
		return exitUsage
	}
	store, err := history.Open(ctx, o.databaseURL, log)
	if err != nil {
		fmt.Fprintf(stderr, "imager latest: %v\n", err)
		return exitFail
	}
	defer store.Close()
	if *region != "" {
		return latestIn(ctx, store, *instance, *region, before, now, *format, stdout, stderr)
	}
	r, err := store.ImageLatest(ctx, *instance, before)
	if errors.Is(err, history.ErrNotFound) {
		fmt.Fprintf(stderr, "imager latest: %s has no available image with a slot at or before %s (deleted images do not count)\n",
			quoteShort(*instance), before.UTC().Format(time.RFC3339))
		return exitFail
	}
	if err != nil {
		fmt.Fprintf(stderr, "imager latest: %v\n", err)
		return exitFail
	}
	tags := map[string]string{policy.TagPolicy: r.Policy, policy.TagInstance: r.InstanceID, policy.TagSlot: policy.SlotTag(r.ScheduledAt)}
	if *policies != "" {
		cfg, err := policy.Load(*policies)
		switch {
		case err != nil:
			fmt.Fprintf(stderr, "imager latest: warning: policies not read, listing imager's own tags only: %v\n", err)
		case cfg.Policy(r.Policy) != nil:
			tags = policy.ImageTags(cfg.Policy(r.Policy), r.InstanceID, r.ScheduledAt)
		}
	}
	reset := fmt.Sprintf("tccli cvm ResetInstance --region %s --InstanceId %s --ImageId %s", r.Region, r.InstanceID, r.ImageID)
	runNew := fmt.Sprintf(`tccli cvm RunInstances --region %s --ImageId %s --Placement '{"Zone":"<zone>"}' --InstanceType <type>`,
		r.Region, r.ImageID)
	if *format == "json" {
		out := map[string]any{
			"instance_id": r.InstanceID, "policy": r.Policy, "slot": r.ScheduledAt, "region": r.Region,
			"image_id": r.ImageID, "image_name": r.ImageName, "run_id": r.ID, "available_at": r.FinishedAt,
			"tags": tags, "reset_instance": reset, "run_instances": runNew,
		}
		return printJSON(stdout, stderr, "latest", out)
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "Instance:\t%s\n", r.InstanceID)
	fmt.Fprintf(w, "Image:\t%s\n", r.ImageID)
	fmt.Fprintf(w, "Name:\t%s\n", r.ImageName)
	fmt.Fprintf(w, "Slot (UTC):\t%s\n", r.ScheduledAt.Format("2006-01-02 15:04:05"))
	if r.FinishedAt != nil {
		fmt.Fprintf(w, "Available:\t%s (%s ago)\n", r.FinishedAt.Format("2006-01-02 15:04:05"), formatAge(now.Sub(*r.FinishedAt)))
	}
	fmt.Fprintf(w, "Policy:\t%s\n", r.Policy)
	fmt.Fprintf(w, "Region:\t%s\n", r.Region)
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		label := ""
		if i == 0 {
			label = "Tags:"
		}
		fmt.Fprintf(w, "%s\t%s=%s\n", label, k, tags[k])
	}
	w.Flush()
	fmt.Fprintf(stdout, "\nRestore the instance in place (replaces its system disk):\n  %s\n", reset)
	fmt.Fprintf(stdout, "\nOr start a new instance from the image (fill in the zone and type of the original):\n  %s\n", runNew)
	return exitOK
}

// latestIn is imager latest --region: the newest image of instance usable in region (a copy there,
// or an image made there) and the command lines that use it in that region. The instance itself
// lives in its own region, so for a copy ResetInstance names an instance of region to fill in.
func latestIn(ctx context.Context, store *history.Store, instance, region string, before, now time.Time, format string,
	stdout, stderr io.Writer) int {
	m, err := store.ImageLatestIn(ctx, instance, region, before)
	if errors.Is(err, history.ErrNotFound) {
		fmt.Fprintf(stderr, "imager latest: %s has no available image or copy in %s with a slot at or before %s "+
			"(copies are made by a policy's copy_to; deleted images and copies do not count)\n",
			quoteShort(instance), quoteShort(region), before.UTC().Format(time.RFC3339))
		return exitFail
	}
	if err != nil {
		fmt.Fprintf(stderr, "imager latest: %v\n", err)
		return exitFail
	}
	target := m.InstanceID
	if m.CopyID != 0 {
		target = "<instance in " + m.Region + ">"
	}
	reset := fmt.Sprintf("tccli cvm ResetInstance --region %s --InstanceId %s --ImageId %s", m.Region, target, m.ImageID)
	runNew := fmt.Sprintf(`tccli cvm RunInstances --region %s --ImageId %s --Placement '{"Zone":"<zone>"}' --InstanceType <type>`,
		m.Region, m.ImageID)
	if format == "json" {
		out := map[string]any{
			"instance_id": m.InstanceID, "policy": m.Policy, "account": m.Account, "slot": m.Slot, "region": m.Region,
			"image_id": m.ImageID, "image_name": m.ImageName, "run_id": m.RunID, "available_at": m.AvailableAt,
			"copy_id": nil, "source_region": nil, "source_image_id": nil,
			"reset_instance": reset, "run_instances": runNew,
		}
		if m.CopyID != 0 {
			out["copy_id"], out["source_region"], out["source_image_id"] = m.CopyID, m.SourceRegion, m.SourceImageID
		}
		return printJSON(stdout, stderr, "latest", out)
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "Instance:\t%s\n", m.InstanceID)
	fmt.Fprintf(w, "Image:\t%s\n", m.ImageID)
	fmt.Fprintf(w, "Name:\t%s\n", m.ImageName)
	fmt.Fprintf(w, "Slot (UTC):\t%s\n", m.Slot.Format("2006-01-02 15:04:05"))
	if m.AvailableAt != nil {
		fmt.Fprintf(w, "Available:\t%s (%s ago)\n", m.AvailableAt.Format("2006-01-02 15:04:05"), formatAge(now.Sub(*m.AvailableAt)))
	}
	fmt.Fprintf(w, "Policy:\t%s\n", m.Policy)
	fmt.Fprintf(w, "Account:\t%s\n", m.Account)
	fmt.Fprintf(w, "Region:\t%s\n", m.Region)
	if m.CopyID != 0 {
		fmt.Fprintf(w, "Copy of:\t%s in %s\n", m.SourceImageID, m.SourceRegion)
	}
	w.Flush()
	if m.CopyID == 0 {
		fmt.Fprintf(stdout, "\nRestore the instance in place (replaces its system disk):\n  %s\n", reset)
	} else {
		fmt.Fprintf(stdout, "\nRestore an instance of %s in place (replaces its system disk; %s itself is in %s):\n  %s\n",
			m.Region, m.InstanceID, m.SourceRegion, reset)
	}
	fmt.Fprintf(stdout, "\nOr start a new instance from the image (fill in the zone and type of the original):\n  %s\n", runNew)
	return exitOK
}

// parseBefore reads --before: empty is now; RFC 3339; "2006-01-02 15:04[:05]" or a date in UTC;
// or a duration back from now.
func parseBefore(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return now, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04:05", "2006-01-02T15:04"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t.Add(24*time.Hour - time.Second), nil // the whole day
	}
	if d, err := policy.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time (2026-03-29T03:00:00Z, 2026-03-29 03:00, 2026-03-29) nor a duration back (36h, 7d)", quoteShort(s))
}
