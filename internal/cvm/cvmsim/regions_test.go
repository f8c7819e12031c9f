package cvmsim

import (
	"slices"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
)

func TestUnsupportedRegion(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClockAt(time.Now())
	s := startSim(t, Options{Clock: clock, Limits: map[string]int{ActionDescribeImageQuota: 1}})
	for _, region := range DefaultRegions() {
		_, err := callIn(t, s, region, ActionDescribeImages, nil)
		require.NoError(t, err, region)
	}
	for range 3 {
		_, err := callIn(t, s, "xx-nowhere", ActionDescribeImageQuota, nil)
		require.Equal(t, "UnsupportedRegion", code(t, err))
	}
	c := lastCall(t, s)
	require.Equal(t, "xx-nowhere", c.Region)
	require.Equal(t, "UnsupportedRegion", c.Code)
	_, err := call(t, s, ActionDescribeImageQuota, nil)
	require.NoError(t, err, "calls to a region that does not exist never count against the limit")
	require.Equal(t, slices.Sorted(slices.Values(DefaultRegions())), s.Regions())
}

func TestConfiguredRegions(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{Regions: []string{"ap-shanghai"}})
	s.AddInstance(Instance{ID: "ins-tokyo001", Region: "ap-tokyo"})
	s.AddImage(Image{ID: "img-seoul001", Region: "ap-seoul"})
	s.AddInstance(Instance{ID: "ins-default1"}) // DefaultRegion
	require.Equal(t, []string{"ap-guangzhou", "ap-seoul", "ap-shanghai", "ap-tokyo"}, s.Regions())
	for _, region := range s.Regions() {
		_, err := callIn(t, s, region, ActionDescribeInstances, nil)
		require.NoError(t, err, region)
	}
	_, err := callIn(t, s, "ap-beijing", ActionDescribeInstances, nil)
	require.Equal(t, "UnsupportedRegion", code(t, err), "not among the configured regions")

	// Copies go to the regions that exist, and only there.
	_, err = callIn(t, s, "ap-seoul", ActionSyncImages, syncParams("img-seoul001", "ap-tokyo"))
	require.NoError(t, err)
	_, err = callIn(t, s, "ap-seoul", ActionSyncImages, syncParams("img-seoul001", "ap-beijing"))
	require.Equal(t, "InvalidRegion.NotFound", code(t, err))
}

func TestRegionDown(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	seedInstances(s) // ins-good0001 in testRegion, ins-shanghai in ap-shanghai
	sourceImage(s)
	s.QueueErrors(ActionCreateImage, "ResourceInUse")
	s.SetRegionDown("ap-shanghai", true)

	for _, action := range []string{ActionDescribeImages, ActionDescribeInstances, ActionDescribeImageQuota} {
		_, err := callIn(t, s, "ap-shanghai", action, nil)
		require.Equal(t, "InternalError", code(t, err), action)
	}
	_, err := callIn(t, s, "ap-shanghai", ActionCreateImage, createParams("ins-shanghai", "down"))
	require.Equal(t, "InternalError", code(t, err), "the queued error waits for a call elsewhere")
	require.NotContains(t, imageNames(s), "down", "nothing is executed in a region that is down")

	// As a destination, the region fails the whole copy; other regions work.
	_, err = call(t, s, ActionSyncImages, syncParams("img-source01", "ap-beijing", "ap-shanghai"))
	require.Equal(t, "InternalError", code(t, err))
	require.Empty(t, describeIn(t, s, "ap-beijing", byName("web-nightly-1")))
	_, err = call(t, s, ActionCreateImage, createParams("ins-good0001", "up"))
	require.Equal(t, "ResourceInUse", code(t, err), "the queued error went to the first call of a region that is up")
	_, err = call(t, s, ActionCreateImage, createParams("ins-good0001", "up"))
	require.NoError(t, err)

	// SetFaults leaves the region down; bringing it back makes it answer again.
	s.SetFaults(Faults{})
	_, err = callIn(t, s, "ap-shanghai", ActionDescribeImages, nil)
	require.Equal(t, "InternalError", code(t, err))
	s.SetRegionDown("ap-shanghai", false)
	_, err = callIn(t, s, "ap-shanghai", ActionCreateImage, createParams("ins-shanghai", "back"))
	require.NoError(t, err)
	_, err = call(t, s, ActionSyncImages, syncParams("img-source01", "ap-beijing", "ap-shanghai"))
	require.NoError(t, err)
}

func TestRegionDownAfterTheLimiter(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClockAt(time.Now())
	s := startSim(t, Options{Clock: clock, Limits: map[string]int{ActionDescribeImages: 2}})
	s.SetRegionDown("ap-beijing", true)
	var codes []string
	for range 3 {
		_, err := callIn(t, s, "ap-beijing", ActionDescribeImages, nil)
		codes = append(codes, code(t, err))
	}
	require.Equal(t, []string{"InternalError", "InternalError", "RequestLimitExceeded"}, codes)
}
