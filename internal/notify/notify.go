// Package notify delivers imager's notifications (docs/notifications.md): webhooks for failed,
// missed, recovered and rpo_breach events, and a healthchecks-style ping per policy.
//
// Events are written to the notifications outbox by the database itself, in the transaction of
// the outcome they report (migrations/0006_notifications.sql). The Notifier runs on the leader
// only: it evaluates rpo_breaches periodically, fans each new event out to the targets configured
// at that moment (one notification_deliveries row per target), and delivers the due rows with
// retries, recording every attempt. All of its state is in PostgreSQL, so delivery survives
// restarts, a change of leader and database outages: at least once, never lost.
package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/rs/zerolog"

	"github.com/imager-dev/imager/internal/backoff"
	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
	"github.com/imager-dev/imager/internal/startstop"
)

// Store is what the Notifier needs from history.
type Store interface {
	NotificationsUndispatched(ctx context.Context, limit int) ([]history.Notification, error)
	NotificationDispatch(ctx context.Context, id int64, targets []history.DeliveryTarget, at time.Time) error
	DeliveriesDue(ctx context.Context, now time.Time, limit int) ([]history.Delivery, error)
	DeliveryRecord(ctx context.Context, r history.DeliveryResult) error
	BreachesEvaluate(ctx context.Context, at time.Time) (int, error)
	NotificationsPending(ctx context.Context) (int64, error)
	NotificationsPrune(ctx context.Context, keep time.Duration) (history.NotificationsPruned, error)
}

var _ Store = (*history.Store)(nil)

// Defaults of Options.
const (
	DefaultPoll        = 5 * time.Second
	DefaultRPOEvery    = time.Minute
	DefaultPruneEvery  = time.Hour
	DefaultWorkers     = 4
	DefaultPingTimeout = 10 * time.Second
	batch              = 500 // events fanned out, and deliveries sent, per pass at most
	passTimeout        = 2 * time.Minute
)

// DefaultRetry is how failed deliveries are retried: from 10 seconds, doubling up to 10 minutes,
// for a day after the event was fanned out.
var DefaultRetry = backoff.Policy{Initial: 10 * time.Second, Max: 10 * time.Minute, MaxElapsed: 24 * time.Hour}

// Options configure a Notifier. Store is required; the rest have defaults.
type Options struct {
	Store Store
	// LookupEnv resolves url_env and ping_env (os.LookupEnv in the daemon); nil resolves nothing.
	LookupEnv func(string) (string, bool)
	// Client sends the requests; nil means a client of its own. Each request is bounded by its
	// webhook's timeout (pings: DefaultPingTimeout).
	Client *http.Client
	// Clock decides when passes run, when retries are due and the times recorded; nil: real.
	Clock clockwork.Clock
	// Log is used as given: the caller tags it with the component.
	Log zerolog.Logger
	// Poll is the time between passes (DefaultPoll).
	Poll time.Duration
	// RPOEvery is the time between evaluations of rpo_breaches (DefaultRPOEvery).
	RPOEvery time.Duration
	// PruneEvery is the time between prunes of ended notifications older than `notify.keep`
	// (DefaultPruneEvery).
	PruneEvery time.Duration
	// Retry is the backoff of failed deliveries (DefaultRetry).
	Retry *backoff.Policy
	// Jitter draws the retry delays; nil: randomly seeded.
	Jitter *backoff.Jitter
	// Workers bounds the targets delivered to at once (DefaultWorkers).
	Workers int
	// UserAgent is sent with every request ("imager").
	UserAgent string
}

// endpoint is one resolved target. Its URL is held here and nowhere else: logs and the database
// get target and host only.
type endpoint struct {
	target  string
	kind    string
	index   *int
	host    string // scheme://host
	url     string
	timeout time.Duration
	events  []string // webhooks: subscribed events
}

// targets is the resolved notify configuration, swapped whole on reload.
type targets struct {
	webhooks []*endpoint
	pings    map[string]*endpoint // by policy
	byTarget map[string]*endpoint
}

// Notifier fans out and delivers notifications. It runs on the leader only: Start when
// leadership is gained, Stop when it is lost; Start may follow Stop again.
type Notifier struct {
	opts    Options
	store   Store
	clock   clockwork.Clock
	log     zerolog.Logger
	client  *http.Client
	retry   backoff.Policy
	targets atomic.Pointer[targets]

	keep atomic.Int64 // notify.keep, as a time.Duration

	passMu    sync.Mutex // one pass at a time
	lastRPO   time.Time  // guarded by passMu
	lastPrune time.Time  // guarded by passMu

	life startstop.Life // restartable: a leader's notifier starts again at its next term
}

// New resolves the notify settings of cfg (environment variables through opts.LookupEnv) and
// returns a Notifier, not yet started. An unset variable or a bad URL is an error naming the file,
// line and field, never the URL.
func New(cfg *policy.Config, opts Options) (*Notifier, error) {
	if opts.Store == nil {
		return nil, errors.New("notify: no store")
	}
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Poll <= 0 {
		opts.Poll = DefaultPoll
	}
	if opts.RPOEvery <= 0 {
		opts.RPOEvery = DefaultRPOEvery
	}
	if opts.PruneEvery <= 0 {
		opts.PruneEvery = DefaultPruneEvery
	}
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "imager"
	}
	if opts.LookupEnv == nil {
		opts.LookupEnv = func(string) (string, bool) { return "", false }
	}
	if opts.Jitter == nil {
		opts.Jitter = backoff.NewJitter(nil)
	}
	n := &Notifier{opts: opts, store: opts.Store, clock: opts.Clock, log: opts.Log, client: opts.Client, retry: DefaultRetry}
	n.life.Restartable = true
	if opts.Retry != nil {
		n.retry = *opts.Retry
	}
	if n.client == nil {
		n.client = &http.Client{
			// A redirect would send the payload somewhere the configuration does not name.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if err := n.Reload(cfg); err != nil {
		return nil, err
	}
	return n, nil
}

// Settings are a config's notify settings resolved (webhook URLs read from the environment,
// duplicates refused): what Apply swaps in.
type Settings struct {
	targets *targets
	keep    time.Duration
}

// Resolve resolves the notify settings of cfg without changing anything: a reload resolves
// first and applies only when every part of it succeeded.
func (n *Notifier) Resolve(cfg *policy.Config) (*Settings, error) {
	t, err := resolve(cfg, n.opts.LookupEnv)
	if err != nil {
		return nil, err
	}
	keep := cfg.Notify.Keep
	if keep <= 0 {
		keep = policy.DefaultNotifyKeep
	}
	return &Settings{targets: t, keep: keep}, nil
}

// Apply swaps in settings from Resolve. Deliveries already fanned out to a target that is no
// longer configured fail at their next attempt with "target no longer configured".
func (n *Notifier) Apply(st *Settings) {
	n.targets.Store(st.targets)
	n.keep.Store(int64(st.keep))
}

// Keep is the notify.keep in effect: how long ended notifications are kept.
func (n *Notifier) Keep() time.Duration { return time.Duration(n.keep.Load()) }

// Reload resolves the notify settings of cfg and applies them; on error the old ones stay.
func (n *Notifier) Reload(cfg *policy.Config) error {
	st, err := n.Resolve(cfg)
	if err != nil {
		return err
	}
	n.Apply(st)
	return nil
}

func resolve(cfg *policy.Config, lookup func(string) (string, bool)) (*targets, error) {
	t := &targets{pings: map[string]*endpoint{}, byTarget: map[string]*endpoint{}}
	var errs []error
	for i, w := range cfg.Notify.Webhooks {
		u, err := w.ResolveURL(lookup)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		idx := i
		e := &endpoint{target: "webhook/" + urlHash(u), kind: history.TargetWebhook, index: &idx,
			host: policy.RedactURL(u), url: u, timeout: w.Timeout, events: w.Events}
		if _, dup := t.byTarget[e.target]; dup {
			errs = append(errs, policy.FieldError{File: w.At.File, Line: w.At.Line, Field: w.At.Field,
				Message: "the same URL as an earlier webhook: merge their events"})
			continue
		}
		t.webhooks = append(t.webhooks, e)
		t.byTarget[e.target] = e
	}
	for _, p := range cfg.Policies {
		u, err := p.Notify.ResolvePing(lookup)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if u == "" {
			continue
		}
		e := &endpoint{target: "ping/" + p.Name + "/" + urlHash(u), kind: history.TargetPing,
			host: policy.RedactURL(u), url: strings.TrimRight(u, "/"), timeout: DefaultPingTimeout}
		t.pings[p.Name] = e
		t.byTarget[e.target] = e
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return t, nil
}

// urlHash names a URL without revealing it: the first 16 hex digits of its SHA-256.
func urlHash(u string) string {
	sum := sha256.Sum256([]byte(u))
	return hex.EncodeToString(sum[:8])
}

// Pending counts notifications waiting for delivery (imager_notifications_pending).
func (n *Notifier) Pending(ctx context.Context) (int64, error) {
	return n.store.NotificationsPending(ctx)
}

// Start begins passes every Poll until ctx ends or Stop is called. The first pass runs at once.
func (n *Notifier) Start(ctx context.Context) error {
	ctx, err := n.life.Start(ctx)
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	n.life.Go(func() { n.loop(ctx) })
	return nil
}

// Stop ends the passes and waits for the current one (its requests are cancelled). It is safe to
// call more than once, and Start may be called again afterwards.
func (n *Notifier) Stop() {
	n.life.Stop()
}

func (n *Notifier) loop(ctx context.Context) {
	for {
		pctx, cancel := context.WithTimeout(ctx, passTimeout)
		err := n.Pass(pctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			// The database may be down: the state is in it, so the next pass picks up where this
			// one stopped.
			n.log.Warn().Err(err).Msg("notification pass failed; will retry")
		}
		select {
		case <-ctx.Done():
			return
		case <-n.clock.After(n.opts.Poll):
		}
	}
}

// Pass does one round of work: evaluates rpo_breaches when RPOEvery has passed since the last
// evaluation, prunes ended notifications older than notify.keep when PruneEvery has passed since
// the last prune, fans new events out, and delivers the due deliveries. The loop calls it every Poll;
// tests call it directly.
func (n *Notifier) Pass(ctx context.Context) error {
	n.passMu.Lock()
	defer n.passMu.Unlock()
	var errs []error
	now := n.clock.Now()
	if n.lastRPO.IsZero() || now.Sub(n.lastRPO) >= n.opts.RPOEvery {
		opened, err := n.store.BreachesEvaluate(ctx, now)
		if err != nil {
			errs = append(errs, err)
		} else {
			n.lastRPO = now
			if opened > 0 {
				n.log.Info().Int("breaches", opened).Msg("RPO breaches opened")
			}
		}
	}
	if n.lastPrune.IsZero() || now.Sub(n.lastPrune) >= n.opts.PruneEvery {
		keep := time.Duration(n.keep.Load())
		pruned, err := n.store.NotificationsPrune(ctx, keep)
		if err != nil {
			errs = append(errs, err)
		} else {
			n.lastPrune = now
			if pruned != (history.NotificationsPruned{}) {
				n.log.Info().Int64("events", pruned.Events).Int64("breaches", pruned.Breaches).
					Int64("fires", pruned.Fires).Int64("keep_s", int64(keep.Seconds())).
					Msg("pruned ended notifications older than notify.keep")
			}
		}
	}
	if err := n.fanOut(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := n.deliverDue(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// fanOut creates the deliveries of new events, one per configured target that wants them.
func (n *Notifier) fanOut(ctx context.Context) error {
	evs, err := n.store.NotificationsUndispatched(ctx, batch)
	if err != nil {
		return err
	}
	t := n.targets.Load()
	for _, ev := range evs {
		var to []history.DeliveryTarget
		for _, e := range t.forEvent(ev) {
			to = append(to, history.DeliveryTarget{Target: e.target, Kind: e.kind, Index: e.index, Host: e.host})
		}
		if err := n.store.NotificationDispatch(ctx, ev.ID, to, n.clock.Now()); err != nil {
			if errors.Is(err, history.ErrConflict) {
				continue // dispatched meanwhile (a former leader still finishing its pass)
			}
			return err
		}
	}
	return nil
}

// forEvent lists the targets of an event: the subscribed webhooks, or the policy's ping.
func (t *targets) forEvent(ev history.Notification) []*endpoint {
	switch ev.Event {
	case history.EventFireStarted, history.EventFireSucceeded, history.EventFireFailed:
		if e := t.pings[ev.Policy]; e != nil {
			return []*endpoint{e}
		}
		return nil
	}
	var out []*endpoint
	for _, e := range t.webhooks {
		for _, want := range e.events {
			if want == ev.Event {
				out = append(out, e)
				break
			}
		}
	}
	return out
}

// deliverDue sends the due deliveries: one target's deliveries in order, several targets at once.
func (n *Notifier) deliverDue(ctx context.Context) error {
	due, err := n.store.DeliveriesDue(ctx, n.clock.Now(), batch)
	if err != nil {
		return err
	}
	var order []string
	byTarget := map[string][]history.Delivery{}
	for _, d := range due {
		if _, ok := byTarget[d.Target]; !ok {
			order = append(order, d.Target)
		}
		byTarget[d.Target] = append(byTarget[d.Target], d)
	}
	t := n.targets.Load()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	sem := make(chan struct{}, n.opts.Workers)
	for _, target := range order {
		wg.Add(1)
		sem <- struct{}{}
		go func(list []history.Delivery) {
			defer wg.Done()
			defer func() { <-sem }()
			for _, d := range list {
				ok, err := n.deliver(ctx, t.byTarget[d.Target], d)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
				if !ok || err != nil {
					// Keep the target's order: its later events wait for the next pass.
					return
				}
			}
		}(byTarget[target])
	}
	wg.Wait()
	return errors.Join(errs...)
}

// deliver makes one request for d and records its outcome; ok reports a 2xx answer.
func (n *Notifier) deliver(ctx context.Context, e *endpoint, d history.Delivery) (ok bool, err error) {
	log := n.log.With().Int64("notification_id", d.NotificationID).Str("event", d.Event).
		Str("policy", d.Policy).Str("target", d.Target).Logger()
	now := n.clock.Now()
	if e == nil {
		log.Warn().Msg("notification target no longer configured; delivery abandoned")
		return false, n.store.DeliveryRecord(ctx, history.DeliveryResult{ID: d.ID, Status: history.DeliveryFailed,
			At: now, Error: "target no longer configured"})
	}
	log = log.With().Str("target_host", e.host).Logger()
	code, reqErr := n.send(ctx, e, d)
	if ctx.Err() != nil {
		return false, nil // stopping: the attempt is not counted; it is sent again later
	}
	took := n.clock.Since(now)
	res := history.DeliveryResult{ID: d.ID, Attempted: true, At: now, ResponseCode: code}
	attempts := d.Attempts + 1
	if reqErr == nil {
		res.Status = history.DeliveryDelivered
		log.Debug().Int("status_code", code).Int("attempts", attempts).Int64("took_ms", took.Milliseconds()).Msg("notification delivered")
		return true, n.store.DeliveryRecord(ctx, res)
	}
	res.Error = reqErr.Error()
	wait, retry := n.retry.Next(attempts, now.Sub(d.CreatedAt), n.opts.Jitter)
	ev := log.Warn().Int("attempts", attempts).Str("error", res.Error)
	if code != 0 {
		ev = ev.Int("status_code", code)
	}
	if retry {
		res.Status, res.NextAttemptAt = history.DeliveryPending, now.Add(wait)
		ev.Int64("retry_in_ms", wait.Milliseconds()).Msg("notification not delivered; will retry")
	} else {
		res.Status = history.DeliveryFailed
		ev.Msg("notification not delivered; giving up")
	}
	return false, n.store.DeliveryRecord(ctx, res)
}

// send POSTs the payload to the endpoint. It returns the HTTP status (0 when no answer came) and
// an error for anything but a 2xx; the error never holds the URL.
func (n *Notifier) send(ctx context.Context, e *endpoint, d history.Delivery) (int, error) {
	u := e.url
	if e.kind == history.TargetPing {
		switch d.Event {
		case history.EventFireStarted:
			u += "/start"
		case history.EventFireFailed:
			u += "/fail"
		}
	}
	rctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, u, strings.NewReader(string(d.Payload)))
	if err != nil {
		return 0, errors.New("cannot build the request")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", n.opts.UserAgent)
	req.Header.Set("X-Imager-Event", d.Event)
	req.Header.Set("X-Imager-Event-Id", fmt.Sprint(d.NotificationID))
	resp, err := n.client.Do(req)
	if err != nil {
		if rctx.Err() != nil && ctx.Err() == nil {
			return 0, fmt.Errorf("no answer within %s", e.timeout)
		}
		return 0, errors.New(redactError(err, u))
	}
	defer resp.Body.Close()
	_, _ = drain(resp)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return resp.StatusCode, nil
}
