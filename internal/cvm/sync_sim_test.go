package cvm_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/cvm/cvmsim/simtest"
)

// The client against the simulator: what the copier will see.
func TestSyncImagesAgainstTheSimulator(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim, client := simtest.Start(t, cvmsim.Options{CopyReadyAfter: -1})
	sim.AddImage(cvmsim.Image{ID: "img-source01", Name: "web-1", Region: "ap-guangzhou"})

	out, err := client.SyncImages(ctx, "ap-guangzhou", cvm.SyncImagesInput{ImageID: "img-source01",
		DestinationRegions: []string{"ap-shanghai", "eu-frankfurt"}, ImageName: "web-1"})
	require.NoError(t, err)
	require.NotEmpty(t, out.RequestID)
	require.Len(t, out.Copies, 2)
	for i, region := range []string{"ap-shanghai", "eu-frankfurt"} {
		cp := out.Copies[i]
		require.Equal(t, region, cp.Region)
		page, err := client.DescribeImages(ctx, region, cvm.DescribeImagesInput{ImageIDs: []string{cp.ImageID}})
		require.NoError(t, err)
		require.Len(t, page.Images, 1)
		require.Equal(t, cvm.ImageStateSyncing, page.Images[0].State)
		require.Equal(t, "web-1", page.Images[0].Name)
	}
	sim.CompleteAll()
	page, err := client.DescribeImages(ctx, "ap-shanghai", cvm.DescribeImagesInput{ImageIDs: []string{out.Copies[0].ImageID}})
	require.NoError(t, err)
	require.Equal(t, cvm.ImageStateNormal, page.Images[0].State)
	call := sim.Calls()[0]
	require.Equal(t, cvm.ActionSyncImages, call.Action)
	require.Equal(t, true, call.Params["ImageSetRequired"])
	require.Equal(t, cvmsim.DefaultSecretID, call.SecretID)
}

func TestSyncImagesErrorsFromTheSimulator(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name          string
		setup         func(*cvmsim.Server)
		image         string
		dests         []string
		dryRun        bool
		code          string
		class         cvm.Class
		regionRefused bool
	}{
		{name: "source still creating", image: "img-creating",
			setup: func(s *cvmsim.Server) {
				s.AddImage(cvmsim.Image{ID: "img-creating", Name: "c", Region: "ap-guangzhou", State: cvmsim.ImageStateCreating})
			},
			dests: []string{"ap-shanghai"}, code: "InvalidImageId.IncorrectState", class: cvm.ClassBusy},
		{name: "region refused", setup: func(s *cvmsim.Server) { s.RefuseSyncTo("ap-singapore", "InvalidRegion.Unavailable") },
			dests: []string{"ap-singapore"}, code: "InvalidRegion.Unavailable", class: cvm.ClassPermanent, regionRefused: true},
		{name: "region unknown", dests: []string{"xx-nowhere"}, code: "InvalidRegion.NotFound", class: cvm.ClassPermanent, regionRefused: true},
		{name: "region down", setup: func(s *cvmsim.Server) { s.SetRegionDown("ap-beijing", true) },
			dests: []string{"ap-beijing"}, code: "InternalError", class: cvm.ClassTransient},
		{name: "quota", setup: func(s *cvmsim.Server) {
			s.SetImageQuota(1)
			s.AddImage(cvmsim.Image{Name: "other", Region: "ap-shanghai"})
		}, dests: []string{"ap-shanghai"}, code: "ImageQuotaLimitExceeded", class: cvm.ClassQuota},
		{name: "dry run", dests: []string{"ap-shanghai"}, dryRun: true, code: "DryRunOperation", class: cvm.ClassPermanent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sim, client := simtest.Start(t, cvmsim.Options{ImageReadyAfter: -1})
			sim.AddImage(cvmsim.Image{ID: "img-source01", Name: "web-1", Region: "ap-guangzhou"})
			if tt.setup != nil {
				tt.setup(sim)
			}
			image := tt.image
			if image == "" {
				image = "img-source01"
			}
			_, err := client.SyncImages(ctx, "ap-guangzhou", cvm.SyncImagesInput{ImageID: image, DestinationRegions: tt.dests, DryRun: tt.dryRun})
			ae, ok := cvm.AsAPIError(err)
			require.True(t, ok, "%v", err)
			require.Equal(t, tt.code, ae.Code)
			require.Equal(t, tt.class, ae.Class)
			require.Equal(t, tt.regionRefused, cvm.RegionRefused(ae.Code))
			require.NotEmpty(t, ae.RequestID)
			require.Len(t, sim.Calls(), 1)
		})
	}
}
