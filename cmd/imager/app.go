package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"
	tccommon "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/scheduler"
)

// daemon is the wiring shared by run, once and demo: history (with its spool), the CVM client and
// the scheduler, built from options. cmd/imager tests drive the same wiring end to end.
type daemon struct {
	log      zerolog.Logger
	store    *history.Store
	recorder *history.Recorder
	sched    *scheduler.Scheduler
}

// daemonConfig is everything a daemon needs beyond its policies.
type daemonConfig struct {
	opts       options
	cfg        *policy.Config
	credential tccommon.CredentialIface // nil: the SDK's default chain
	clock      clockwork.Clock
	noCron     bool // once: fire only what is asked, never the schedules
}

// openDaemon opens every dependency in the order that gives the clearest error first: database,
// migrations, credentials, then the scheduler. The scheduler is built but not started.
func openDaemon(ctx context.Context, dc daemonConfig, log zerolog.Logger) (*daemon, error) {
	store, err := history.Open(ctx, dc.opts.databaseURL, log.With().Str("component", "history").Logger())
	if err != nil {
		return nil, err
	}
	d := &daemon{log: log, store: store}
	applied, err := store.Migrate(ctx)
	if err != nil {
		d.close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if len(applied) > 0 {
		log.Info().Strs("applied", applied).Msg("database migrated")
	}

	cred := dc.credential
	if cred == nil {
		if cred, err = cvm.LoadCredential(); err != nil {
			d.close()
			return nil, err
		}
	}
	client, err := cvm.New(cvm.Config{
		Endpoint:   dc.opts.cvmEndpoint,
		Credential: cred,
		Logger:     log.With().Str("component", "cvm").Logger(),
	})
	if err != nil {
		d.close()
		return nil, err
	}

	d.recorder, err = history.NewRecorder(store, dc.opts.spoolDir, log.With().Str("component", "spool").Logger())
	if err != nil {
		d.close()
		return nil, fmt.Errorf("--spool-dir: %w", err)
	}

	clock := dc.clock
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	hostname, _ := os.Hostname()
	d.sched, err = scheduler.New(scheduler.Options{
		Config:        dc.cfg,
		CVM:           client,
		History:       d.recorder,
		Clock:         clock,
		Logger:        log.With().Str("component", "scheduler").Logger(),
		DaemonID:      fmt.Sprintf("%s/%d/%d", hostname, os.Getpid(), time.Now().Unix()),
		APIDryRun:     dc.opts.apiDryRun,
		ShutdownGrace: dc.opts.shutdownGrace,
		DisableCron:   dc.noCron,
	})
	if err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

// start starts the spool replayer and the scheduler.
func (d *daemon) start(ctx context.Context) error {
	if err := d.recorder.Start(ctx); err != nil {
		return err
	}
	return d.sched.Start(ctx)
}

// close stops what was started, in reverse order; safe on a partly opened daemon.
func (d *daemon) close() {
	if d.sched != nil {
		d.sched.Stop()
	}
	if d.recorder != nil {
		if err := d.recorder.Close(); err != nil {
			d.log.Error().Err(err).Msg("closing the history spool")
		}
	}
	if d.store != nil {
		d.store.Close()
	}
}
