package cvmsim

import (
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	cvmapi "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/cvm/v20170312"
)

// stateOf asks DescribeImages for one image's state, as a client would see it.
func stateOf(t *testing.T, c *cvmapi.Client, id string) string {
	t.Helper()
	req := cvmapi.NewDescribeImagesRequest()
	req.ImageIds = common.StringPtrs([]string{id})
	resp, err := c.DescribeImagesWithContext(t.Context(), req)
	require.NoError(t, err)
	require.Len(t, resp.Response.ImageSet, 1)
	return *resp.Response.ImageSet[0].ImageState
}

func createImage(t *testing.T, s *Server, instanceID, name string) string {
	t.Helper()
	resp, err := call(t, s, ActionCreateImage, createParams(instanceID, name))
	require.NoError(t, err)
	return resp["ImageId"].(string)
}

func TestImageBecomesNormalAfterReadyTime(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClockAt(time.Now())
	// The SDK signs with the real time; a fake clock that moves needs the skew check off.
	s := startSim(t, Options{Clock: clock, ImageReadyAfter: 10 * time.Minute, MaxClockSkew: -1})
	seedInstances(s)
	c := typedClient(t, s, testRegion)
	start := clock.Now()

	id := createImage(t, s, "ins-good0001", "slow")
	require.Equal(t, ImageStateCreating, stateOf(t, c, id))
	require.True(t, start.Equal(s.Images()[0].CreatedTime))

	clock.Advance(10*time.Minute - time.Second)
	require.Equal(t, ImageStateCreating, stateOf(t, c, id))
	_, err := call(t, s, ActionCreateImage, createParams("ins-good0001", "too-early"))
	require.Equal(t, "MutexOperation.TaskRunning", code(t, err))

	clock.Advance(time.Second)
	require.Equal(t, ImageStateNormal, stateOf(t, c, id))
	_, err = call(t, s, ActionCreateImage, createParams("ins-good0001", "next"))
	require.NoError(t, err)
}

func TestImageReadyAtOnceByDefault(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{})
	seedInstances(s)
	id := createImage(t, s, "ins-good0001", "fast")
	require.Equal(t, ImageStateNormal, stateOf(t, typedClient(t, s, testRegion), id))
	createImage(t, s, "ins-good0001", "fast-again") // no MutexOperation.TaskRunning
}

func TestFailNextImages(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClockAt(time.Now())
	s := startSim(t, Options{Clock: clock, ImageReadyAfter: time.Minute, MaxClockSkew: -1})
	seedInstances(s)
	c := typedClient(t, s, testRegion)
	s.FailNextImages(1)
	failing := createImage(t, s, "ins-good0001", "doomed")
	fine := createImage(t, s, "ins-good0002", "fine")
	require.Equal(t, ImageStateCreating, stateOf(t, c, failing), "it fails when it would have finished")

	clock.Advance(time.Minute)
	require.Equal(t, ImageStateCreateFailed, stateOf(t, c, failing))
	require.Equal(t, ImageStateNormal, stateOf(t, c, fine))
}

func TestCompleteAllAndFailImage(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{ImageReadyAfter: -1})
	seedInstances(s)
	c := typedClient(t, s, testRegion)
	s.FailNextImages(1)
	doomed := createImage(t, s, "ins-good0001", "doomed")
	held := createImage(t, s, "ins-good0002", "held")
	require.Equal(t, ImageStateCreating, stateOf(t, c, held))

	s.CompleteAll()
	require.Equal(t, ImageStateCreateFailed, stateOf(t, c, doomed))
	require.Equal(t, ImageStateNormal, stateOf(t, c, held))

	s.FailImage(held)
	s.FailImage("img-nothere1")
	require.Equal(t, ImageStateCreateFailed, stateOf(t, c, held))

	// A CREATEFAILED image no longer blocks its instance and can be deleted.
	createImage(t, s, "ins-good0002", "retry")
	_, err := call(t, s, ActionDeleteImages, map[string]any{"ImageIds": []any{held, doomed}})
	require.NoError(t, err)
	require.Equal(t, []string{"retry"}, imageNames(s))
}

func TestFailImageWhileCreating(t *testing.T) {
	t.Parallel()
	s := startSim(t, Options{ImageReadyAfter: time.Hour})
	seedInstances(s)
	id := createImage(t, s, "ins-good0001", "x")
	s.FailImage(id)
	require.Equal(t, ImageStateCreateFailed, stateOf(t, typedClient(t, s, testRegion), id))
	s.CompleteAll()
	require.Equal(t, ImageStateCreateFailed, s.Images()[0].State, "a failed image stays failed")
}
