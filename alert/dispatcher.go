package alert

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/synguard/synguard/detector"
)

// Clock is the time source, injected so tests control it.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Options are the Dispatcher's environment; zero values mean defaults.
type Options struct {
	// StateDir holds the spool, in StateDir/alert-spool/<sink name>.
	// Required: without it undelivered alerts would not survive a restart.
	StateDir string
	// Client makes the HTTP requests; default: one that does not follow
	// redirects (a redirected POST would silently become a GET).
	Client *http.Client
	Clock  Clock
	Logger *slog.Logger
	Retry  RetryPolicy
	// QueueSize bounds distinct incidents held in memory per sink between
	// two spool writes (default 65536); beyond it events are dropped and
	// counted, so Send never blocks or grows without bound.
	QueueSize int
	// SpoolMaxEvents bounds undelivered incidents per sink (default 50000);
	// SpoolMaxBytes bounds the spool directory per sink (default 64 MiB).
	// The oldest are dropped first, with an slog.Error.
	SpoolMaxEvents int
	SpoolMaxBytes  int64
}

func (o Options) withDefaults() Options {
	if o.Client == nil {
		o.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Retry = o.Retry.withDefaults()
	if o.QueueSize <= 0 {
		o.QueueSize = 65536
	}
	if o.SpoolMaxEvents <= 0 {
		o.SpoolMaxEvents = 50000
	}
	if o.SpoolMaxBytes <= 0 {
		o.SpoolMaxBytes = 64 << 20
	}
	return o
}

// compactSegments is how many spool files accumulate before they are
// rewritten as one, keeping the file count bounded during a long outage.
const compactSegments = 64

// SinkStats are one sink's delivery counters, for the daemon's metrics.
// Messages are HTTP requests; events are incident stage changes.
type SinkStats struct {
	Name string
	Type string
	// Delivered counts messages the sink accepted (2xx).
	Delivered uint64
	// Failed counts messages the sink rejected with a 4xx other than 429;
	// they are not retried.
	Failed uint64
	// Retried counts attempts that failed with a retryable error and were
	// scheduled again.
	Retried uint64
	// Dropped counts events lost to a full queue or a full spool.
	Dropped uint64
	// Spooled counts events written to the spool.
	Spooled uint64
	// Pending is the number of incidents waiting to be delivered now.
	Pending int
	// SpoolBytes is the spool's current size on disk.
	SpoolBytes int64
}

// Dispatcher fans events out to the configured sinks. Send never blocks;
// delivery, retries and spooling happen in one goroutine per sink.
type Dispatcher struct {
	workers []*worker
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

// sink is a configured sink with its secrets and wire format.
type sink struct {
	key string // "alerts[i]"
	cfg SinkConfig
	sec secrets
	f   format
}

func newSink(key string, c SinkConfig) (*sink, error) {
	if errs := c.validate(key); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c = c.withDefaults()
	sec, err := loadSecrets(key, c)
	if err != nil {
		return nil, err
	}
	s := &sink{key: key, cfg: c, sec: sec}
	switch c.Type {
	case TypeWebhook:
		s.f = &webhookFormat{url: sec.url, key: sec.hmacKey}
	case TypeSlack:
		s.f = &slackFormat{url: sec.url}
	case TypePagerDuty:
		s.f = newPagerDutyFormat(sec.url, sec.routingKey)
	case TypeAlertmanager:
		s.f = newAlertmanagerFormat(sec.url, c.ResendInterval)
	}
	return s, nil
}

// NewDispatcher validates the sinks, reads their secrets, reloads what the
// previous run left in the spool, and starts delivering.
func NewDispatcher(cfgs []SinkConfig, opts Options) (*Dispatcher, error) {
	if err := Validate(cfgs); err != nil {
		return nil, &ConfigError{Err: err}
	}
	if opts.StateDir == "" {
		return nil, errors.New("alert dispatcher: state directory is required for the spool")
	}
	opts = opts.withDefaults()
	d := &Dispatcher{}
	for i, c := range cfgs {
		s, err := newSink(fmt.Sprintf("alerts[%d]", i), c)
		if err != nil {
			return nil, &ConfigError{Err: err}
		}
		w, err := newWorker(s, opts)
		if err != nil {
			return nil, fmt.Errorf("alerts[%d] (%s): %w", i, c.Name, err)
		}
		d.workers = append(d.workers, w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	for _, w := range d.workers {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			w.run(ctx)
		}()
	}
	return d, nil
}

// Send hands an event to every sink whose filter it passes. It never blocks
// and never does I/O: the event is recorded in memory and the sink's
// goroutine spools and delivers it.
func (d *Dispatcher) Send(e Event) {
	for _, w := range d.workers {
		w.offer(e)
	}
}

// Stats returns each sink's counters, in config order.
func (d *Dispatcher) Stats() []SinkStats {
	out := make([]SinkStats, 0, len(d.workers))
	for _, w := range d.workers {
		out = append(out, SinkStats{
			Name: w.s.cfg.Name, Type: w.s.cfg.Type,
			Delivered: w.delivered.Load(), Failed: w.failed.Load(), Retried: w.retried.Load(),
			Dropped: w.dropped.Load(), Spooled: w.spooled.Load(),
			Pending: int(w.pendingN.Load()), SpoolBytes: w.spoolBytes.Load(),
		})
	}
	return out
}

// Close stops delivery, writes events still in memory to the spool and
// waits for the sink goroutines; undelivered events are sent by the next
// Dispatcher on the same state directory.
func (d *Dispatcher) Close() error {
	d.once.Do(func() {
		d.cancel()
		d.wg.Wait()
	})
	return nil
}

// worker is one sink's delivery loop and its state.
type worker struct {
	s         *sink
	log       *slog.Logger
	clock     Clock
	client    *http.Client
	retry     RetryPolicy
	queueSize int
	maxEvents int
	maxBytes  int64

	mu       sync.Mutex
	inbox    map[string]Event // incident ID -> latest event not yet spooled
	notified map[string]bool  // open incidents this sink was told about
	wake     chan struct{}

	// Owned by the run goroutine.
	spool        *spool
	pending      map[string]spoolEntry // incident ID -> latest undelivered event
	seq          uint64
	pendingSince time.Time
	inflight     *inflight
	retryAt      time.Time
	tokens       float64
	tokensAt     time.Time
	lastSent     time.Time

	delivered, failed, retried, dropped, spooled atomic.Uint64
	pendingN, spoolBytes                         atomic.Int64
}

// inflight is the message being delivered: its requests, how far it got,
// and which spooled events it covers.
type inflight struct {
	reqs      []request
	next      int
	attempts  int
	cover     uint64
	commit    func()
	incidents int
	resend    bool
}

func newWorker(s *sink, o Options) (*worker, error) {
	w := &worker{
		s: s, log: o.Logger, clock: o.Clock, client: o.Client, retry: o.Retry,
		queueSize: o.QueueSize, maxEvents: o.SpoolMaxEvents, maxBytes: o.SpoolMaxBytes,
		inbox: map[string]Event{}, notified: map[string]bool{}, wake: make(chan struct{}, 1),
		pending: map[string]spoolEntry{},
	}
	sp, entries, bad, err := openSpool(filepath.Join(o.StateDir, "alert-spool", s.cfg.Name))
	if err != nil {
		return nil, err
	}
	for _, b := range bad {
		w.log.Error("alert spool: unreadable segment set aside", "sink", s.cfg.Name, "segment", b)
	}
	w.spool = sp
	for _, e := range entries {
		w.pending[e.Event.Incident.ID] = e
		w.seq = max(w.seq, e.Seq)
	}
	for _, g := range sp.segs {
		w.seq = max(w.seq, g.seq)
	}
	if len(w.pending) > 0 {
		w.pendingSince = w.clock.Now()
		w.log.Info("alert spool: delivering incidents left by the previous run", "sink", s.cfg.Name, "incidents", len(w.pending))
	}
	w.gauges()
	return w, nil
}

func (w *worker) offer(e Event) {
	id := e.Incident.ID
	w.mu.Lock()
	if !w.s.cfg.matches(e.Incident) && !w.notified[id] && !e.Test {
		w.mu.Unlock()
		return
	}
	if _, ok := w.inbox[id]; !ok && len(w.inbox) >= w.queueSize {
		w.mu.Unlock()
		if n := w.dropped.Add(1); n&(n-1) == 0 { // 1, 2, 4, 8, …: loud but bounded
			w.log.Error("alert queue full: dropping event", "sink", w.s.cfg.Name, "incident", id, "dropped_total", n, "queue_size", w.queueSize)
		}
		return
	}
	if e.Incident.Stage == detector.StageResolved {
		delete(w.notified, id)
	} else {
		if len(w.notified) >= 2*w.maxEvents {
			// Incidents that never resolved (a detector restart): forget
			// them rather than grow without bound; the cost is that their
			// resolve may be filtered by min_severity.
			clear(w.notified)
		}
		w.notified[id] = true
	}
	w.inbox[id] = e
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) run(ctx context.Context) {
	for {
		w.persist()
		wait := w.step(ctx)
		if ctx.Err() != nil {
			w.persist()
			return
		}
		var timer <-chan time.Time
		if wait >= 0 {
			timer = w.clock.After(wait)
		}
		select {
		case <-ctx.Done():
			w.persist()
			return
		case <-w.wake:
		case <-timer:
		}
	}
}

// persist moves the inbox into the spool and the pending set.
func (w *worker) persist() {
	w.mu.Lock()
	if len(w.inbox) == 0 {
		w.mu.Unlock()
		return
	}
	in := w.inbox
	w.inbox = make(map[string]Event, len(in))
	w.mu.Unlock()
	w.seq++
	entries := make([]spoolEntry, 0, len(in))
	for _, e := range in {
		entries = append(entries, spoolEntry{Seq: w.seq, Event: e, Source: e.Incident.Source, Service: e.Incident.Service})
	}
	if len(w.pending) == 0 {
		w.pendingSince = w.clock.Now()
	}
	for _, en := range entries {
		w.pending[en.Event.Incident.ID] = en
	}
	err := w.spool.write(w.seq, encodeEntries(entries))
	w.bound()
	w.gauges()
	if err != nil {
		w.log.Error("alert spool write failed: events kept in memory only", "sink", w.s.cfg.Name, "events", len(entries), "err", err)
	} else {
		w.spooled.Add(uint64(len(entries)))
	}
}

// bound keeps the spool within its limits: compaction rewrites the pending
// set (one line per incident) as one segment; if that is still too big, or
// there are too many incidents, the oldest are dropped, loudly.
func (w *worker) bound() {
	over := len(w.pending) - w.maxEvents
	if over <= 0 && len(w.spool.segs) <= compactSegments && w.spool.bytes <= w.maxBytes/2 {
		return
	}
	entries := make([]spoolEntry, 0, len(w.pending))
	for _, e := range w.pending {
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b spoolEntry) int {
		if c := cmp.Compare(a.Seq, b.Seq); c != 0 {
			return c
		}
		return strings.Compare(a.Event.Incident.ID, b.Event.Incident.ID)
	})
	if over > 0 {
		w.dropOldest(entries[:over], "too many undelivered incidents")
		entries = entries[over:]
	}
	data := encodeEntries(entries)
	if int64(len(data)) > w.maxBytes {
		var size int64 = int64(len(data))
		n := 0
		for n < len(entries) && size > w.maxBytes {
			size -= int64(len(encodeEntries(entries[n : n+1])))
			n++
		}
		w.dropOldest(entries[:n], "spool over its byte limit")
		entries = entries[n:]
		data = encodeEntries(entries)
	}
	w.seq++
	if err := w.spool.write(w.seq, data); err != nil {
		w.log.Error("alert spool compaction failed", "sink", w.s.cfg.Name, "err", err)
		return
	}
	if err := w.spool.removeThrough(w.seq - 1); err != nil {
		w.log.Error("alert spool compaction: removing old segments failed", "sink", w.s.cfg.Name, "err", err)
	}
}

func (w *worker) dropOldest(entries []spoolEntry, why string) {
	if len(entries) == 0 {
		return
	}
	for _, e := range entries {
		delete(w.pending, e.Event.Incident.ID)
	}
	w.dropped.Add(uint64(len(entries)))
	w.log.Error("ALERTS LOST: alert spool full, dropping oldest undelivered incidents",
		"sink", w.s.cfg.Name, "reason", why, "dropped", len(entries),
		"oldest_incident", entries[0].Event.Incident.ID, "kept", len(w.pending),
		"max_incidents", w.maxEvents, "max_bytes", w.maxBytes)
}

func (w *worker) gauges() {
	w.pendingN.Store(int64(len(w.pending)))
	w.spoolBytes.Store(w.spool.bytes)
}

// step does at most one delivery attempt and returns how long until the
// next step can do something (-1: nothing until an event arrives).
func (w *worker) step(ctx context.Context) time.Duration {
	now := w.clock.Now()
	if w.inflight != nil && w.inflight.resend && len(w.pending) > 0 {
		w.inflight = nil // a real message re-sends every firing alert anyway
	}
	if w.inflight == nil {
		switch {
		case len(w.pending) > 0:
			if ready := w.pendingSince.Add(w.s.cfg.GroupWait); now.Before(ready) {
				return ready.Sub(now)
			}
			if wait := w.take(now); wait > 0 {
				return wait
			}
			w.inflight = w.build(now)
		case w.s.cfg.Type == TypeAlertmanager:
			due := w.lastSent.Add(w.s.cfg.ResendInterval)
			if now.Before(due) {
				return due.Sub(now)
			}
			reqs := w.s.f.resend(now)
			if reqs == nil {
				return -1
			}
			w.inflight = &inflight{reqs: reqs, resend: true}
		default:
			return -1
		}
	}
	if now.Before(w.retryAt) {
		return w.retryAt.Sub(now)
	}
	if f := w.inflight; f.attempts > 0 && f.next == 0 && !f.resend && (w.seq > f.cover || w.s.cfg.Type == TypeAlertmanager) {
		// A retry carries the latest state, not the state of when the sink
		// went down: after an outage on-call gets one current message.
		// (Alertmanager alerts also need a fresh endsAt.) An unchanged
		// message keeps its webhook-id so receivers can deduplicate.
		w.inflight = w.build(now)
		w.inflight.attempts = f.attempts
	}
	w.attempt(ctx)
	if w.inflight != nil {
		return max(w.retryAt.Sub(w.clock.Now()), 0)
	}
	return 0
}

// take consumes a rate-limit token, or says how long until one is free.
func (w *worker) take(now time.Time) time.Duration {
	rl := w.s.cfg.RateLimit
	every := rl.Per / time.Duration(rl.Messages)
	burst := float64(rl.Messages)
	if w.tokensAt.IsZero() {
		w.tokens = burst
	} else {
		w.tokens = min(burst, w.tokens+float64(now.Sub(w.tokensAt))/float64(every))
	}
	w.tokensAt = now
	if w.tokens >= 1 {
		w.tokens--
		return 0
	}
	return time.Duration((1-w.tokens)*float64(every)) + time.Millisecond
}

// build turns the whole pending set into one message.
func (w *worker) build(now time.Time) *inflight {
	evs := make([]Event, 0, len(w.pending))
	for _, e := range w.pending {
		evs = append(evs, e.event())
	}
	sortEvents(evs)
	reqs, commit := w.s.f.build(batch{events: evs, now: now})
	return &inflight{reqs: reqs, cover: w.seq, commit: commit, incidents: len(evs)}
}

// attempt sends the in-flight message's remaining requests until one fails.
func (w *worker) attempt(ctx context.Context) {
	f := w.inflight
	name := w.s.cfg.Name
	for f.next < len(f.reqs) {
		o := post(ctx, w.client, w.clock.Now(), w.s.cfg.Timeout, w.s.sec, f.reqs[f.next])
		if ctx.Err() != nil {
			return // shutting down: the events stay in the spool
		}
		if o.err == nil {
			w.delivered.Add(1)
			f.next++
			continue
		}
		if o.permanent {
			w.failed.Add(1)
			w.log.Error("alert sink rejected message, not retrying", "sink", name, "type", w.s.cfg.Type,
				"status", o.status, "err", o.err, "incidents", f.incidents)
			f.next++
			continue
		}
		f.attempts++
		w.retried.Add(1)
		d := w.retry.delay(f.attempts, o)
		w.retryAt = w.clock.Now().Add(d)
		level := slog.LevelWarn
		if f.attempts >= w.retry.Attempts {
			level = slog.LevelError
		}
		if f.attempts <= w.retry.Attempts || f.attempts%10 == 0 {
			w.log.Log(ctx, level, "alert delivery failed, will retry", "sink", name, "type", w.s.cfg.Type,
				"attempt", f.attempts, "retry_in", d.Round(time.Millisecond), "status", o.status, "err", o.err,
				"incidents", f.incidents)
		}
		return
	}
	if f.commit != nil {
		f.commit()
	}
	now := w.clock.Now()
	w.lastSent = now
	w.inflight, w.retryAt = nil, time.Time{}
	if f.resend {
		return
	}
	if f.attempts > 0 {
		w.log.Info("alert delivered after retries", "sink", name, "attempts", f.attempts+1, "incidents", f.incidents)
	}
	for id, e := range w.pending {
		if e.Seq <= f.cover {
			delete(w.pending, id)
		}
	}
	through := f.cover
	if len(w.pending) == 0 {
		through = w.seq
	} else {
		w.pendingSince = now
	}
	if err := w.spool.removeThrough(through); err != nil {
		w.log.Error("alert spool: removing delivered segments failed (they may be sent again)", "sink", name, "err", err)
	}
	w.gauges()
}
