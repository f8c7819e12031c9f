package copies

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// pairRegion is the copies of one (policy, instance) in one region: what a retention pass weighs.
type pairRegion struct{ policy, instance, region string }

func sortedPairs(m map[pairRegion]bool) []pairRegion {
	out := slices.Collect(maps.Keys(m))
	slices.SortFunc(out, func(a, b pairRegion) int {
		return strings.Compare(a.policy+"\x00"+a.instance+"\x00"+a.region, b.policy+"\x00"+b.instance+"\x00"+b.region)
	})
	return out
}

// accountRegion groups copies for DescribeImages: one account's calls in one region.
type accountRegion struct{ account, region string }

// track follows the syncing copies: DescribeImages per (account, destination region), by ids, at
// most 100 per call (copies without an id are looked up by exact name one at a time).
func (c *Copier) track(ctx context.Context, cfg *policy.Config, syncing []history.Copy, touched map[pairRegion]bool, res *passResult) {
	groups := map[accountRegion][]history.Copy{}
	for _, cp := range syncing {
		k := accountRegion{cp.Account, cp.Region}
		groups[k] = append(groups[k], cp)
	}
	keys := slices.SortedFunc(maps.Keys(groups), func(a, b accountRegion) int {
		return strings.Compare(a.account+"\x00"+a.region, b.account+"\x00"+b.region)
	})
	for _, k := range keys {
		client := c.clients(k.account)
		if client == nil {
			c.log.Warn().Str("account", k.account).Str("region", k.region).Msg("no CVM client for the account; copies not followed")
			continue
		}
		var byID []history.Copy
		for _, cp := range groups[k] {
			if ctx.Err() != nil {
				return
			}
			if cp.ImageID != "" {
				byID = append(byID, cp)
				continue
			}
			img, found, err := c.lookupByName(ctx, client, k.account, k.region, cp.ImageName)
			if err != nil {
				c.copyLog(cp).Warn().Err(err).Msg("cannot look the copy up by name; retried at the next pass")
				continue
			}
			if found {
				c.answered(ctx, cp, img.ID, "", sourceOfCopy(cp).logger(c.log).Info().Str("region", cp.Region).
					Str("image_id", img.ID), "copy found by exact name")
				cp.ImageID = img.ID
				c.observeCopy(ctx, cfg, cp, &img, touched, res)
				continue
			}
			c.observeCopy(ctx, cfg, cp, nil, touched, res)
		}
		for batch := range slices.Chunk(byID, cvm.MaxLimit) {
			if ctx.Err() != nil {
				return
			}
			images, err := c.describeIDs(ctx, client, k.account, k.region, copyImageIDs(batch))
			if err != nil {
				c.log.Warn().Err(err).Str("account", k.account).Str("region", k.region).Int("copies", len(batch)).
					Msg("cannot follow copies; asked again at the next pass")
				continue
			}
			for _, cp := range batch {
				if img, ok := images[cp.ImageID]; ok {
					c.observeCopy(ctx, cfg, cp, &img, touched, res)
				} else {
					c.observeCopy(ctx, cfg, cp, nil, touched, res)
				}
			}
		}
	}
}

func copyImageIDs(cs []history.Copy) []string {
	out := make([]string, len(cs))
	for i, cp := range cs {
		out[i] = cp.ImageID
	}
	return out
}

// describeIDs asks DescribeImages about ids (at most 100) in region and returns the images it
// reports, by id. When the API refuses the batch for one of its ids (InvalidImageId.*), each id is
// asked on its own, and one it refuses is absent.
func (c *Copier) describeIDs(ctx context.Context, client CVM, account, region string, ids []string) (map[string]cvm.Image, error) {
	out := map[string]cvm.Image{}
	page, err := c.describe(ctx, client, account, region, cvm.DescribeImagesInput{ImageIDs: ids, Limit: cvm.MaxLimit})
	if err != nil {
		ae := cvm.ClassifyError(cvm.ActionDescribeImages, err)
		if !strings.HasPrefix(ae.Code, "InvalidImageId.") {
			return nil, err
		}
		if len(ids) == 1 {
			return out, nil
		}
		for _, id := range ids {
			one, err := c.describeIDs(ctx, client, account, region, []string{id})
			if err != nil {
				return nil, err
			}
			maps.Copy(out, one)
		}
		return out, nil
	}
	for _, img := range page.Images {
		if slices.Contains(ids, img.ID) {
			out[img.ID] = img
		}
	}
	return out, nil
}

// failedState reports whether an image state is one a copy never leaves (CREATEFAILED,
// IMPORTFAILED, ...).
func failedState(state string) bool {
	return strings.HasSuffix(state, "FAILED")
}

// observeCopy acts on what DescribeImages says of a syncing copy (img nil: not reported).
func (c *Copier) observeCopy(ctx context.Context, cfg *policy.Config, cp history.Copy, img *cvm.Image, touched map[pairRegion]bool, res *passResult) {
	now := c.clock.Now()
	log := c.copyLog(cp)
	switch {
	case img != nil && img.State == cvm.ImageStateNormal:
		hctx, cancel := writeContext(ctx)
		defer cancel()
		if err := c.hist.CopyAvailable(hctx, cp.ID, img.ID, now); err != nil {
			log.Error().Err(err).Str("image_id", img.ID).Msg("cannot record the available copy")
			return
		}
		delete(c.missing, cp.ID)
		res.available++
		touched[pairRegion{cp.Policy, cp.InstanceID, cp.Region}] = true
		log.Info().Str("image_id", img.ID).Int64("copy_elapsed_ms", now.Sub(cp.RequestedAt).Milliseconds()).Msg("copy available")
		return
	case img != nil && failedState(img.State):
		c.fail(ctx, cp, img.State, fmt.Sprintf("copy %s ended %s in %s", img.ID, img.State, cp.Region), res)
		return
	case img == nil:
		c.missing[cp.ID]++
		if n := c.missing[cp.ID]; n >= MissingPolls {
			c.fail(ctx, cp, CodeImageNotFound, fmt.Sprintf("copy %s not reported by DescribeImages in %s in %d passes in a row",
				cp.ImageID, cp.Region, n), res)
			return
		}
	default:
		delete(c.missing, cp.ID)
	}
	if timeout := imageTimeout(cfg, cp.Policy); now.Sub(cp.RequestedAt) > timeout {
		state := "not reported"
		if img != nil {
			state = img.State
		}
		c.fail(ctx, cp, CodeTimeout, fmt.Sprintf("copy still %s after image.timeout %s", state, timeout), res)
	}
}
