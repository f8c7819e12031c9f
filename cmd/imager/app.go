package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	tccommon "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/lifecycle"
	"github.com/imager-dev/imager/internal/metrics"
	"github.com/imager-dev/imager/internal/pace"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/quota"
	"github.com/imager-dev/imager/internal/retention"
	"github.com/imager-dev/imager/internal/scheduler"
	"github.com/imager-dev/imager/internal/targets"
)

// retentionSweepEvery is how often the daemon runs a retention pass over every policy, so that
// max_age also ages out images of instances that no longer get new images (left a selector).
const retentionSweepEvery = 6 * time.Hour

// daemon is the wiring shared by run, once and demo: history (with its spool), the CVM client,
// the scheduler, completion tracking, retention and the quota gate, built from options.
// cmd/imager tests drive the same wiring end to end.
type daemon struct {
	log      zerolog.Logger
	clock    clockwork.Clock
	store    *history.Store
	recorder *history.Recorder
	client   *cvm.Client
	sched    *scheduler.Scheduler
	tracker  *lifecycle.Tracker
	pruner   *retention.Pruner
	metrics  *metrics.Server // nil without --listen

	sweepCancel context.CancelFunc
	sweepWG     sync.WaitGroup
}

// daemonConfig is everything a daemon needs beyond its policies.
type daemonConfig struct {
	opts         options
	cfg          *policy.Config
	credential   tccommon.CredentialIface // nil: the SDK's default chain
	clock        clockwork.Clock
	noCron       bool          // once: fire only what is asked, never the schedules
	pollInterval time.Duration // completion tracking; 0 = lifecycle.DefaultPollInterval
}

// openDaemon opens every dependency in the order that gives the clearest error first: database,
// migrations, credentials, then the components. Nothing is started.
func openDaemon(ctx context.Context, dc daemonConfig, log zerolog.Logger) (*daemon, error) {
	store, err := history.Open(ctx, dc.opts.databaseURL, log.With().Str("component", "history").Logger())
	if err != nil {
		return nil, err
	}
	d := &daemon{log: log, store: store, clock: dc.clock}
	if d.clock == nil {
		d.clock = clockwork.NewRealClock()
	}
	applied, err := store.Migrate(ctx)
	if err != nil {
		d.close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if len(applied) > 0 {
		log.Info().Strs("applied", applied).Msg("database migrated")
	}
	var onCall func(action, code string, elapsed time.Duration)
	if dc.opts.listen != "" {
		m := metrics.New(metrics.Options{
			RunCounts: func(ctx context.Context, since time.Time) ([]metrics.RunCount, error) {
				counts, err := store.RunCountsSince(ctx, since)
				out := make([]metrics.RunCount, len(counts))
				for i, c := range counts {
					out[i] = metrics.RunCount{Policy: c.Policy, Status: string(c.Status), Count: c.Count}
				}
				return out, err
			},
			SpoolPending: func() int {
				if d.recorder == nil {
					return 0
				}
				return d.recorder.Pending()
			},
			Health: func(ctx context.Context) error { return store.Pool().Ping(ctx) },
			Logger: log.With().Str("component", "metrics").Logger(),
		})
		if d.metrics, err = metrics.Listen(dc.opts.listen, m, log); err != nil {
			d.close()
			return nil, fmt.Errorf("--listen: %w", err)
		}
		onCall = m.ObserveCall
	}
	if d.client, err = newCVMClient(dc.opts, dc.credential, log, onCall); err != nil {
		d.close()
		return nil, err
	}
	d.recorder, err = history.NewRecorder(store, dc.opts.spoolDir, log.With().Str("component", "spool").Logger())
	if err != nil {
		d.close()
		return nil, fmt.Errorf("--spool-dir: %w", err)
	}

	// One DescribeImages pace for crash recovery, completion tracking, retention and the quota
	// gate, so together they stay under api.describe_images_rate.
	describePace := pace.New(d.clock, dc.cfg.API.DescribeImagesRate, pace.Options{})
	var sched *scheduler.Scheduler
	liveConfig := func() *policy.Config { return sched.Config() }

	d.pruner = retention.NewPruner(retention.Options{
		CVM: d.client, History: store, DescribePace: describePace, Config: liveConfig,
		DeletePace: pace.New(d.clock, retention.DefaultDeleteRate, pace.Options{}),
		Clock:      d.clock, Logger: log.With().Str("component", "retention").Logger(),
	})
	gate := quota.NewGate(quota.Options{
		CVM: d.client, Pace: describePace, Clock: d.clock, Prune: d.pruner.PruneRegion,
		Logger: log.With().Str("component", "quota").Logger(),
	})
	resolver := targets.NewResolver(targets.Options{
		CVM: d.client, Clock: d.clock, Logger: log.With().Str("component", "targets").Logger(),
	})
	hostname, _ := os.Hostname()
	sched, err = scheduler.New(scheduler.Options{
		Config:           dc.cfg,
		CVM:              d.client,
		History:          d.recorder,
		Clock:            d.clock,
		Logger:           log.With().Str("component", "scheduler").Logger(),
		DaemonID:         fmt.Sprintf("%s/%d/%d", hostname, os.Getpid(), time.Now().Unix()),
		APIDryRun:        dc.opts.apiDryRun,
		ShutdownGrace:    dc.opts.shutdownGrace,
		DisableCron:      dc.noCron,
		DescribePace:     describePace,
		ResolveTargets:   resolver.Resolve,
		ResolveDataDisks: resolver.DataDisks,
		BeforeFire:       gate.Check,
		OnQuotaExceeded:  gate.OnQuotaExceeded,
	})
	if err != nil {
		d.close()
		return nil, err
	}
	d.sched = sched
	d.tracker = lifecycle.NewTracker(lifecycle.TrackerOptions{
		History:      lifecycle.RecorderHistory(d.recorder),
		CVM:          d.client,
		Pace:         describePace,
		Config:       liveConfig,
		Clock:        d.clock,
		Logger:       log.With().Str("component", "tracker").Logger(),
		PollInterval: dc.pollInterval,
		OnAvailable: func(ctx context.Context, r history.Run) {
			if _, err := d.pruner.PruneInstance(ctx, r.Policy, r.InstanceID); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Str("policy", r.Policy).Str("instance", r.InstanceID).
					Msg("retention pass failed; its deletions are retried at the next pass")
			}
		},
	})
	return d, nil
}

// start starts the spool replayer, the scheduler, completion tracking and the periodic retention
// sweep.
func (d *daemon) start(ctx context.Context) error {
	if err := d.recorder.Start(ctx); err != nil {
		return err
	}
	if err := d.sched.Start(ctx); err != nil {
		return err
	}
	if err := d.tracker.Start(ctx); err != nil {
		return err
	}
	if d.metrics != nil {
		d.metrics.Start()
		d.log.Info().Str("listen", d.metrics.Addr()).Msg("serving /metrics and /healthz")
	}
	sweepCtx, cancel := context.WithCancel(ctx)
	d.sweepCancel = cancel
	d.sweepWG.Go(func() { d.sweepRetention(sweepCtx) })
	return nil
}

// sweepRetention runs a retention pass over every policy every retentionSweepEvery.
func (d *daemon) sweepRetention(ctx context.Context) {
	for {
		t := d.clock.NewTimer(retentionSweepEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.Chan():
		}
		if n, err := d.pruner.PruneAll(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn().Err(err).Int("deleted", n).Msg("periodic retention pass failed; retried at the next pass")
		} else if n > 0 {
			d.log.Info().Int("deleted", n).Msg("periodic retention pass")
		}
	}
}

// close stops what was started, in reverse order; safe on a partly opened daemon.
func (d *daemon) close() {
	if d.sweepCancel != nil {
		d.sweepCancel()
		d.sweepWG.Wait()
	}
	if d.sched != nil {
		d.sched.Stop()
	}
	if d.tracker != nil {
		d.tracker.Stop()
	}
	if d.recorder != nil {
		if err := d.recorder.Close(); err != nil {
			d.log.Error().Err(err).Msg("closing the history spool")
		}
	}
	if d.client != nil {
		d.client.Close()
	}
	if d.metrics != nil {
		d.metrics.Stop()
	}
	if d.store != nil {
		d.store.Close()
	}
}
