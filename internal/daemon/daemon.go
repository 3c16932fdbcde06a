// Package daemon is the loop behind `synguard run`: it reads the data
// plane's counters every poll interval and its early-warning events as they
// arrive, feeds the detector, applies and lifts bans, hands incidents to
// the alert pipeline and answers the control API.
//
// Data flows one way: Plane counters -> detector.Snapshot -> Engine ->
// detector.Decisions -> (Plane blocklist, Alerter, API). Every side effect
// sits behind a small interface (Plane, Engine, Alerter, Store, the clock),
// so the loop is tested with a fake data plane and explicit timestamps.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
)

// Suspect is an early-warning event: the data plane saw SYNs run of
// SYNs from Addr with no ACK in between.
type Suspect struct {
	Addr netip.Addr
	SYNs uint32
	Time time.Time
}

// Plane is the data plane as the loop sees it: one or more interfaces whose
// counters are summed and whose blocklists and allowlists are kept equal.
type Plane interface {
	Interfaces() []api.Interface
	Counters() (api.Counters, error)
	Services() ([]api.Service, error)
	// Sources reads every per-source entry (expensive: ~30 ms per 65k).
	Sources() ([]api.Source, error)
	// Source reads one entry; ok is false when the kernel has none.
	Source(a netip.Addr) (s api.Source, ok bool, err error)
	// Bans returns the kernel blocklist with Prefix, Until and Dropped set.
	Bans() ([]api.Ban, error)
	Block(p netip.Prefix, ttl time.Duration) error
	Unblock(p netip.Prefix) error
	Allows() ([]netip.Prefix, error)
	Allow(p netip.Prefix) error
	Disallow(p netip.Prefix) error
	SetMode(enforce bool) error
	// Suspects delivers early-warning events until the plane is closed.
	Suspects() <-chan Suspect
}

// Engine is the detector as the loop uses it; *detector.Detector
// implements it.
type Engine interface {
	Observe(detector.Snapshot) detector.Decisions
	Suspect(t time.Time, addr netip.Addr, syns uint32) detector.Decisions
	SetProtected(t time.Time, p []netip.Prefix) detector.Decisions
	Open() []detector.Incident
	Explain(addr netip.Addr) detector.Explanation
	// State is the escalation history, bans and open incidents.
	State() detector.State
	Restore(detector.State) error
}

// NewDetector is the EngineFactory of the real detector.
func NewDetector(cfg detector.Config, opts detector.Options) (Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return detector.New(cfg, opts), nil
}

// EngineFactory builds an Engine; the daemon calls it at start and when a
// reload changes the detector's configuration or mode.
type EngineFactory func(cfg detector.Config, opts detector.Options) (Engine, error)

// Alerter takes incidents for the alert pipeline; it must not block.
type Alerter interface {
	Send(detector.Incident)
}

// Deps are the daemon's collaborators. Plane, NewEngine and Config are
// required; the rest may be nil.
type Deps struct {
	Config     *config.Config
	ConfigPath string
	Plane      Plane
	NewEngine  EngineFactory
	Alerts     Alerter
	// Kernel reads the server's TCP counters for the snapshot.
	Kernel func() (detector.KernelCounters, error)
	// Protected returns the host's default gateways and SSH peers.
	Protected func() ([]netip.Prefix, error)
	Store     *Store
	Clock     func() time.Time
	Log       *slog.Logger
	Metrics   *Metrics
	Version   string
	Host      string
}

// watchIdle is how long a watched source may stay unchanged before it is
// read only by full scans again.
const watchIdle = 30 * time.Second

// recentResolved bounds the resolved incidents kept for `list incidents`.
const recentResolved = 100

type watched struct {
	syn, ack, rst uint64
	at            time.Time // when the counters were read
	rate          float64   // SYN/s between the last two reads
	active        time.Time // last time SYN moved
	lastSeen      time.Time
	suspect       bool // named by an early-warning event
}

// Daemon is one running synguard. Its methods are safe for concurrent use:
// the loop and the API serialise on mu.
type Daemon struct {
	deps    Deps
	log     *slog.Logger
	clock   func() time.Time
	started time.Time

	reloadCh chan time.Duration

	mu        sync.Mutex
	cfg       *config.Config
	engine    Engine
	st        State
	dirty     bool
	lastSave  time.Time
	open      map[string]detector.Incident
	resolved  []detector.Incident
	watch     map[netip.Addr]*watched
	counters  api.Counters
	lastPoll  time.Time
	lastFull  time.Time
	protected []netip.Prefix
	hostProt  []netip.Prefix
	lastProt  time.Time
	topCache  []api.SourceRow
	topAt     time.Time
	fullNext  bool
	scanCost  time.Duration // the last full scan: kernel read + detector
	// stretchWarned: the "expensive scans" warning was logged.
	stretchWarned bool

	pollMu sync.Mutex // one Poll at a time; reads run without mu
	topMu  sync.Mutex // one on-demand scan at a time
}

// New builds a daemon; Start must be called before Run.
func New(deps Deps) (*Daemon, error) {
	if deps.Config == nil || deps.Plane == nil || deps.NewEngine == nil {
		return nil, errors.New("daemon: Config, Plane and NewEngine are required")
	}
	if deps.Clock == nil {
		deps.Clock = time.Now
	}
	if deps.Log == nil {
		deps.Log = slog.Default()
	}
	return &Daemon{
		deps:     deps,
		log:      deps.Log,
		clock:    deps.Clock,
		cfg:      deps.Config,
		reloadCh: make(chan time.Duration, 1),
		st:       newState(),
		open:     map[string]detector.Incident{},
		watch:    map[netip.Addr]*watched{},
	}, nil
}

func (d *Daemon) engineOptions(cfg *config.Config) detector.Options {
	return detector.Options{Enforce: cfg.Mode == "enforce", Protected: d.protected, Host: d.deps.Host}
}

// Start restores the saved state, reconciles it with the kernel (the
// kernel is the truth for which bans exist and when they expire), applies
// the configured mode and allowlist, and builds the detector.
func (d *Daemon) Start() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	d.started = now
	if d.deps.Store != nil {
		st, err := d.deps.Store.Load()
		if err != nil {
			// A corrupt state file must not keep the host unprotected:
			// start without history, loudly.
			d.log.Error("state file unreadable, starting without ban reasons and escalation history", "err", err)
		}
		d.st = st
	}
	if err := d.deps.Plane.SetMode(d.cfg.Mode == "enforce"); err != nil {
		return fmt.Errorf("set mode %s: %w", d.cfg.Mode, err)
	}
	if err := d.reconcileLocked(now); err != nil {
		return err
	}
	if err := d.applyConfigAllowsLocked(now); err != nil {
		return err
	}
	d.refreshProtectedLocked(now, true)
	eng, err := d.deps.NewEngine(d.cfg.Detector, d.engineOptions(d.cfg))
	if err != nil {
		return fmt.Errorf("detector: %w", err)
	}
	if d.st.Detector != nil {
		if err := eng.Restore(*d.st.Detector); err != nil {
			d.log.Error("detector state not restored: escalation history starts afresh", "err", err)
		}
	}
	d.engine = eng
	for _, in := range d.st.Incidents {
		if in.Stage == detector.StageResolved {
			d.resolved = append(d.resolved, in)
		} else {
			d.open[in.ID] = in
		}
	}
	for _, in := range eng.Open() {
		d.open[in.ID] = in
	}
	// A first snapshot without sources gives the detector its time base at
	// once, so early warnings count from the first second; the sources
	// follow in the first poll's full scan (rated by their FirstSeen).
	if err := d.baselineLocked(now); err != nil {
		return err
	}
	d.fullNext = true
	d.dirty = true
	d.saveLocked(now, true)
	d.log.Info("daemon started", "mode", d.cfg.Mode, "bans", len(d.st.Bans), "allows", len(d.st.Allows), "open_incidents", len(d.open))
	return nil
}

func (d *Daemon) baselineLocked(now time.Time) error {
	r, what, err := d.read(false, nil)
	if err != nil {
		return fmt.Errorf("first read of the data plane (%s): %w", what, err)
	}
	d.counters = r.counters
	snap := detector.Snapshot{Time: now, Kernel: r.kernel}
	for _, s := range r.services {
		snap.Services = append(snap.Services, detector.ServiceCounters{Addr: s.Addr, SYN: s.SYN, ACK: s.ACK})
	}
	for _, b := range r.bans {
		snap.Bans = append(snap.Bans, detector.BanCounters{Prefix: b.Prefix, Dropped: b.Dropped})
	}
	d.applyLocked(now, d.engine.Observe(snap))
	return nil
}

// reconcileLocked drops ban records whose kernel entry expired or vanished
// while the daemon was down and records kernel entries it knew nothing of.
func (d *Daemon) reconcileLocked(now time.Time) error {
	bans, err := d.deps.Plane.Bans()
	if err != nil {
		return fmt.Errorf("read kernel blocklist: %w", err)
	}
	inKernel := map[netip.Prefix]api.Ban{}
	for _, b := range bans {
		inKernel[b.Prefix] = b
	}
	for p := range d.st.Bans {
		if _, ok := inKernel[p]; !ok {
			delete(d.st.Bans, p)
		}
	}
	for p, b := range inKernel {
		m, ok := d.st.Bans[p]
		if !ok {
			m = BanMeta{Origin: api.OriginUnknown, Reason: "found in the kernel blocklist with no record in the state dir"}
		}
		m.Until = b.Until
		d.st.Bans[p] = m
	}
	allows, err := d.deps.Plane.Allows()
	if err != nil {
		return fmt.Errorf("read kernel allowlist: %w", err)
	}
	have := map[netip.Prefix]bool{}
	for _, p := range allows {
		have[p] = true
		if _, ok := d.st.Allows[p]; !ok {
			d.st.Allows[p] = AllowMeta{Origin: api.OriginUnknown}
		}
	}
	for p := range d.st.Allows {
		if !have[p] {
			delete(d.st.Allows, p)
		}
	}
	return nil
}

// applyConfigAllowsLocked makes the kernel allowlist hold the config's
// allow entries, and removes entries an earlier config added.
func (d *Daemon) applyConfigAllowsLocked(now time.Time) error {
	want := map[netip.Prefix]bool{}
	for _, s := range d.cfg.Allow {
		p, err := config.ParseAllowPrefix(s)
		if err != nil {
			return fmt.Errorf("allow %s: %w", s, err)
		}
		want[p] = true
		if m, ok := d.st.Allows[p]; ok && m.Origin != api.OriginUnknown {
			continue
		}
		if err := d.deps.Plane.Allow(p); err != nil {
			return fmt.Errorf("allow %s: %w", p, err)
		}
		d.st.Allows[p] = AllowMeta{Origin: api.OriginConfig, Added: now}
		d.dirty = true
	}
	for p, m := range d.st.Allows {
		if m.Origin == api.OriginConfig && !want[p] {
			if err := d.deps.Plane.Disallow(p); err != nil {
				return fmt.Errorf("disallow %s (removed from config key allow): %w", p, err)
			}
			delete(d.st.Allows, p)
			d.dirty = true
		}
	}
	return nil
}

// refreshProtectedLocked recomputes what the detector must never ban:
// allowlist, protect.prefixes, default gateways and SSH peers.
func (d *Daemon) refreshProtectedLocked(now time.Time, force bool) {
	if !force && now.Sub(d.lastProt) < 10*time.Second {
		return
	}
	d.lastProt = now
	if d.deps.Protected != nil {
		if ps, err := d.deps.Protected(); err != nil {
			d.log.Warn("protected peers not refreshed", "err", err)
		} else {
			d.hostProt = ps
		}
	}
	set := map[netip.Prefix]bool{}
	for p := range d.st.Allows {
		set[p] = true
	}
	for _, s := range d.cfg.Protect.Prefixes {
		if p, err := config.ParsePrefix(s); err == nil {
			set[p] = true
		}
	}
	for _, p := range d.hostProt {
		set[p] = true
	}
	prot := make([]netip.Prefix, 0, len(set))
	for p := range set {
		prot = append(prot, p)
	}
	slices.SortFunc(prot, comparePrefix)
	changed := !slices.Equal(prot, d.protected)
	d.protected = prot
	if changed && d.engine != nil {
		d.applyLocked(now, d.engine.SetProtected(now, prot))
	}
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Run polls until ctx ends. Start must have succeeded.
func (d *Daemon) Run(ctx context.Context) error {
	d.mu.Lock()
	interval := d.cfg.PollInterval
	d.mu.Unlock()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	// Early warnings have their own goroutine: a slow poll (a full scan of
	// a big table) must not delay a ban.
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		sus := d.deps.Plane.Suspects()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-sus:
				if !ok {
					return
				}
				d.HandleSuspect(ev)
			}
		}
	}()
	d.Poll(d.clock())
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			d.Poll(d.clock())
		case iv := <-d.reloadCh:
			ticker.Reset(iv)
		}
	}
}

// HandleSuspect feeds one early-warning event to the detector and applies
// what it decides at once: this is how a flood is banned well under a
// second after it starts.
func (d *Daemon) HandleSuspect(ev Suspect) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	if m := d.deps.Metrics; m != nil {
		m.suspects.Inc()
	}
	addr := ev.Addr.Unmap()
	w, ok := d.watch[addr]
	if !ok {
		d.makeRoomLocked()
		w = &watched{active: now}
		d.watch[addr] = w
	}
	w.suspect = true
	w.active = now
	start := time.Now()
	dec := d.engine.Suspect(ev.Time, addr, ev.SYNs)
	d.observeDetection(time.Since(start))
	d.applyLocked(now, dec)
	d.saveLocked(now, false)
}

// makeRoomLocked evicts the slowest watched source when the watch set is
// full; the evicted source is still seen by full scans.
func (d *Daemon) makeRoomLocked() {
	if len(d.watch) < d.cfg.WatchMax {
		return
	}
	var victim netip.Addr
	lowest := -1.0
	for a, w := range d.watch {
		if lowest < 0 || w.rate < lowest {
			victim, lowest = a, w.rate
		}
	}
	delete(d.watch, victim)
}

// reading is one poll's data-plane reads, done without holding the
// daemon's lock so that the API and early-warning events are served while a
// big table is scanned.
type reading struct {
	counters api.Counters
	services []api.Service
	sources  []api.Source
	bans     []api.Ban
	kernel   detector.KernelCounters
	haveKern bool
	scan     time.Duration // time spent in the full scan, if any
}

func (d *Daemon) read(full bool, watched []netip.Addr) (reading, string, error) {
	var r reading
	var err error
	p := d.deps.Plane
	if r.counters, err = p.Counters(); err != nil {
		return r, "counters", err
	}
	if r.services, err = p.Services(); err != nil {
		return r, "services", err
	}
	if full {
		t0 := time.Now()
		if r.sources, err = p.Sources(); err != nil {
			return r, "sources", err
		}
		r.scan = time.Since(t0)
	} else {
		r.sources = make([]api.Source, 0, len(watched))
		for _, a := range watched {
			s, ok, err := p.Source(a)
			if err != nil {
				return r, "source " + a.String(), err
			}
			if ok {
				r.sources = append(r.sources, s)
			}
		}
	}
	if r.bans, err = p.Bans(); err != nil {
		return r, "blocklist", err
	}
	if d.deps.Kernel != nil {
		if k, err := d.deps.Kernel(); err != nil {
			d.log.Debug("kernel TCP counters unavailable", "err", err)
		} else {
			r.kernel, r.haveKern = k, true
		}
	}
	return r, "", nil
}

// Poll reads the data plane once and feeds the detector. Per poll it reads
// the global and per-service counters and only the sources it watches;
// every full_scan_interval (stretched when scans are expensive, see
// fullScanEveryLocked) it reads every source. The reads run without the
// lock: early-warning events and the API are served meanwhile.
func (d *Daemon) Poll(now time.Time) {
	d.pollMu.Lock()
	defer d.pollMu.Unlock()
	start := time.Now()
	m := d.deps.Metrics

	d.mu.Lock()
	full := d.fullNext || now.Sub(d.lastFull) >= d.fullScanEveryLocked()
	var watched []netip.Addr
	if !full {
		watched = make([]netip.Addr, 0, len(d.watch))
		for a := range d.watch {
			watched = append(watched, a)
		}
	}
	d.mu.Unlock()

	r, what, err := d.read(full, watched)
	if err != nil {
		d.log.Error("poll failed", "read", what, "err", err)
		if m != nil {
			m.pollErrors.Inc()
		}
		return
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if t := d.clock(); t.After(now) {
		now = t // the counters are as of the end of the reads
	}
	d.counters = r.counters
	sources := r.sources
	if full {
		sources = d.changedSinceLocked(sources)
		d.lastFull, d.fullNext = now, false
		if m != nil {
			m.fullScans.Inc()
		}
	}
	d.updateWatchLocked(now, sources, full)
	d.refreshProtectedLocked(now, false)

	// A full scan lists every source that moved since the previous
	// snapshot (changedSinceLocked keeps those), so it is Complete; the
	// sources below minScanSYN it leaves out cannot be flagged anyway.
	snap := detector.Snapshot{Time: now, Complete: full, Kernel: r.kernel}
	snap.Sources = make([]detector.SourceCounters, len(sources))
	for i, s := range sources {
		snap.Sources[i] = detector.SourceCounters{Addr: s.Addr, SYN: s.SYN, ACK: s.ACK, RST: s.RST, FirstSeen: s.FirstSeen}
	}
	snap.Services = make([]detector.ServiceCounters, len(r.services))
	for i, s := range r.services {
		snap.Services[i] = detector.ServiceCounters{Addr: s.Addr, SYN: s.SYN, ACK: s.ACK}
	}
	snap.Bans = make([]detector.BanCounters, len(r.bans))
	for i, b := range r.bans {
		snap.Bans[i] = detector.BanCounters{Prefix: b.Prefix, Dropped: b.Dropped}
	}
	// Kernel expiry is the truth: forget records of bans that expired.
	live := map[netip.Prefix]bool{}
	for _, b := range r.bans {
		live[b.Prefix] = true
	}
	for p := range d.st.Bans {
		if !live[p] {
			delete(d.st.Bans, p)
			d.dirty = true
		}
	}

	t0 := time.Now()
	read := t0.Sub(start)
	dec := d.engine.Observe(snap)
	detect := time.Since(t0)
	d.observeDetection(detect)
	if full {
		d.scanCost = r.scan + detect
	}
	d.applyLocked(now, dec)
	d.lastPoll = now
	d.saveLocked(now, false)
	took := time.Since(start)
	if m != nil {
		m.pollSeconds.Observe(took.Seconds())
		m.setState(r.counters, d.st.Bans, len(d.st.Allows), d.open, len(d.watch), now)
	}
	if took > d.cfg.PollInterval/2 {
		d.log.Warn("slow poll", "took", took, "read", read, "detect", detect, "sources", len(snap.Sources), "full_scan", full, "scan", r.scan)
	}
}

// scanBudget is the share of one core that periodic full scans may use:
// a 1M-entry table costs ~0.5 s to read, so under a random-source flood the
// scans are spread out instead of eating the CPU target.
const scanBudget = 0.03

// fullScanEveryLocked is full_scan_interval, stretched so that full scans
// (kernel read plus detector) stay within scanBudget of one core. Beyond two
// thirds of the detector's resolve_after or ban_grace the detector sees slow
// senders less often than its contract asks (a slow flooder's ban may lapse
// and be re-imposed); that is logged, and the CPU target wins: early
// warnings and service counters do not depend on full scans.
func (d *Daemon) fullScanEveryLocked() time.Duration {
	every := d.cfg.FullScanInterval
	if need := time.Duration(float64(d.scanCost) / scanBudget); need > every {
		every = need
	}
	every = min(every, maxFullScanEvery)
	limit := min(d.cfg.Detector.ResolveAfter, d.cfg.Detector.BanGrace) * 2 / 3
	if every > limit && every > d.cfg.FullScanInterval && !d.stretchWarned {
		d.stretchWarned = true
		d.log.Warn("full scans are expensive: spreading them beyond the detector's resolve_after/ban_grace",
			"scan_cost", d.scanCost, "every", every, "detector_limit", limit)
	}
	return every
}

// maxFullScanEvery bounds the stretching: sources are seen at least this
// often whatever a scan costs.
const maxFullScanEvery = 5 * time.Minute

// minScanSYN: a source with fewer SYNs in its whole life is left out of
// full scans unless watched. Such a source cannot be a flooding source
// (the detector's per-source bar is tens of SYN/s), and leaving it out is
// what keeps a random-source flood (one SYN per spoofed address, a million
// entries) from costing the detector seconds per scan.
const minScanSYN = 5

// changedSinceLocked keeps the sources counted since the previous full scan
// (with a poll's margin) and the watched ones: an entry that did not move
// carries no new data, and the detector's contract lets it be left out.
// Sources below minScanSYN are left out too.
func (d *Daemon) changedSinceLocked(all []api.Source) []api.Source {
	since := d.lastFull.Add(-2 * d.cfg.PollInterval)
	out := all[:0]
	for _, s := range all {
		_, watched := d.watch[s.Addr]
		if watched || (s.SYN >= minScanSYN && (d.lastFull.IsZero() || s.LastSeen.After(since))) {
			out = append(out, s)
		}
	}
	return out
}

func (d *Daemon) observeDetection(dt time.Duration) {
	if m := d.deps.Metrics; m != nil {
		m.detectSeconds.Observe(dt.Seconds())
	}
}

// updateWatchLocked keeps per-source rates for the sources it read and
// decides which sources are read one by one until the next full scan.
func (d *Daemon) updateWatchLocked(now time.Time, sources []api.Source, full bool) {
	for _, s := range sources {
		w, ok := d.watch[s.Addr]
		if !ok {
			// A full scan adds sources that were active since the last
			// scan with mostly unanswered SYNs.
			if !full || s.SYN < 5 || s.SYN < 2*s.ACK || now.Sub(s.LastSeen) > d.cfg.FullScanInterval || len(d.watch) >= d.cfg.WatchMax {
				continue
			}
			w = &watched{active: now}
			if life := s.LastSeen.Sub(s.FirstSeen).Seconds(); life > 1 {
				w.rate = float64(s.SYN) / life
			} else {
				w.rate = float64(s.SYN)
			}
			d.watch[s.Addr] = w
		} else if !w.at.IsZero() {
			dt := now.Sub(w.at).Seconds()
			if s.SYN >= w.syn && dt > 0 {
				w.rate = float64(s.SYN-w.syn) / dt
			}
			if s.SYN != w.syn {
				w.active = now
			}
		}
		w.syn, w.ack, w.rst, w.at, w.lastSeen = s.SYN, s.ACK, s.RST, now, s.LastSeen
	}
	for a, w := range d.watch {
		if now.Sub(w.active) > watchIdle {
			delete(d.watch, a)
		}
	}
}

// applyLocked turns decisions into kernel bans, alerts and API state.
func (d *Daemon) applyLocked(now time.Time, dec detector.Decisions) {
	m := d.deps.Metrics
	for _, b := range dec.Bans {
		if old, ok := d.st.Bans[b.Prefix]; ok && old.Origin == api.OriginManual && !b.Until.After(old.Until) {
			continue // a longer manual ban stands
		}
		ttl := b.Until.Sub(now)
		if ttl <= 0 {
			continue
		}
		if err := d.deps.Plane.Block(b.Prefix, ttl); err != nil {
			d.log.Error("ban not applied", "prefix", b.Prefix, "err", err)
			continue
		}
		meta := BanMeta{Origin: api.OriginDetector, Reason: b.Reason, From: b.From, Until: b.Until, Offence: b.Offence, IncidentID: b.IncidentID}
		if old, ok := d.st.Bans[b.Prefix]; ok && old.Origin == api.OriginManual {
			meta.Origin, meta.Reason = api.OriginManual, old.Reason+" (extended by the detector: "+b.Reason+")"
		}
		_, renewed := d.st.Bans[b.Prefix]
		d.st.Bans[b.Prefix] = meta
		d.dirty = true
		if !renewed {
			d.log.Warn("banned", "prefix", b.Prefix, "until", b.Until.Format(time.RFC3339), "offence", b.Offence, "incident", b.IncidentID, "reason", b.Reason)
			if m != nil {
				m.bansApplied.WithLabelValues(api.OriginDetector).Inc()
			}
		}
	}
	for _, p := range dec.Unbans {
		old, ok := d.st.Bans[p]
		if !ok {
			continue // already gone from the kernel (expired while down)
		}
		if old.Origin == api.OriginManual || old.Origin == api.OriginUnknown {
			continue // the detector never lifts bans it did not make
		}
		if err := d.deps.Plane.Unblock(p); err != nil {
			d.log.Error("ban not lifted", "prefix", p, "err", err)
			continue
		}
		delete(d.st.Bans, p)
		d.dirty = true
		d.log.Info("ban lifted by detector", "prefix", p)
		if m != nil {
			m.bansLifted.Inc()
		}
	}
	for _, in := range dec.Incidents {
		d.trackIncidentLocked(in)
	}
}

// trackIncidentLocked records an incident stage change and alerts it once:
// a restart that restores the detector never repeats opened or resolved.
func (d *Daemon) trackIncidentLocked(in detector.Incident) {
	d.dirty = true
	prev, seen := d.st.Alerted[in.ID]
	if in.Stage == detector.StageResolved {
		delete(d.open, in.ID)
		d.resolved = append(d.resolved, in)
		if len(d.resolved) > recentResolved {
			d.resolved = d.resolved[len(d.resolved)-recentResolved:]
		}
	} else {
		d.open[in.ID] = in
	}
	dup := seen && (prev == in.Stage && in.Stage != detector.StageUpdated || prev == detector.StageResolved ||
		in.Stage == detector.StageOpened)
	if dup {
		d.log.Debug("incident stage already alerted", "id", in.ID, "stage", in.Stage)
		return
	}
	d.st.Alerted[in.ID] = in.Stage
	lvl := slog.LevelWarn
	if in.Stage == detector.StageResolved {
		lvl = slog.LevelInfo
	}
	d.log.Log(context.Background(), lvl, "incident "+string(in.Stage), "id", in.ID, "kind", in.Kind, "addr", in.Addr,
		"severity", in.Severity, "syn_per_second", in.SYNPerSecond, "half_open_share", in.HalfOpenShare, "reason", in.Reason)
	if m := d.deps.Metrics; m != nil && in.Stage == detector.StageOpened {
		m.incidents.WithLabelValues(string(in.Kind)).Inc()
	}
	if d.deps.Alerts != nil {
		d.deps.Alerts.Send(in)
	}
}

// saveLocked persists the state when something changed, at most once a
// second unless forced (shutdown, API changes).
func (d *Daemon) saveLocked(now time.Time, force bool) {
	if d.deps.Store == nil || !d.dirty {
		return
	}
	if !force && now.Sub(d.lastSave) < time.Second {
		return
	}
	if d.engine != nil {
		ds := d.engine.State()
		d.st.Detector = &ds
	}
	d.st.SavedAt = now
	d.st.Incidents = d.st.Incidents[:0]
	for _, in := range d.open {
		d.st.Incidents = append(d.st.Incidents, in)
	}
	d.st.Incidents = append(d.st.Incidents, d.resolved...)
	// Forget alert records of incidents that are neither open nor recent.
	keep := map[string]bool{}
	for _, in := range d.st.Incidents {
		keep[in.ID] = true
	}
	for id := range d.st.Alerted {
		if !keep[id] {
			delete(d.st.Alerted, id)
		}
	}
	if err := d.deps.Store.Save(d.st); err != nil {
		d.log.Error("state not saved", "err", err)
		return
	}
	d.dirty = false
	d.lastSave = now
}

// Reload applies a new validated configuration without losing bans or
// detaching: mode, intervals, allowlist, protection and detector settings.
// Interfaces and data-plane sizes need a restart; a change to them is
// refused so that the running config stays coherent.
func (d *Daemon) Reload(cfg *config.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	old := d.cfg
	if !slices.Equal(cfg.Interfaces, old.Interfaces) {
		return fmt.Errorf("config key interfaces changed (%v -> %v): needs a restart", old.Interfaces, cfg.Interfaces)
	}
	if cfg.Datapath != old.Datapath || cfg.Attach != old.Attach || cfg.BPFFS != old.BPFFS {
		return errors.New("config keys datapath.*, attach and bpffs need a restart (and datapath sizes a `synguard cleanup`)")
	}
	if cfg.Socket != old.Socket || cfg.StateDir != old.StateDir || cfg.MetricsAddr != old.MetricsAddr || cfg.SocketGroup != old.SocketGroup {
		return errors.New("config keys socket, socket_group, state_dir and metrics_addr need a restart")
	}
	if cfg.Detector.SuspectSYNs != old.Detector.SuspectSYNs {
		d.log.Warn("detector.suspect_syns reaches the data plane's early warnings only at the next restart; the detector uses it now",
			"old", old.Detector.SuspectSYNs, "new", cfg.Detector.SuspectSYNs)
	}
	if cfg.Mode != old.Mode {
		if err := d.deps.Plane.SetMode(cfg.Mode == "enforce"); err != nil {
			return fmt.Errorf("set mode %s: %w", cfg.Mode, err)
		}
	}
	d.cfg = cfg
	if err := d.applyConfigAllowsLocked(now); err != nil {
		d.cfg = old
		return err
	}
	d.refreshProtectedLocked(now, true)
	if !configEqual(cfg.Detector, old.Detector) || cfg.Mode != old.Mode {
		ds := d.engine.State()
		eng, err := d.deps.NewEngine(cfg.Detector, d.engineOptions(cfg))
		if err != nil {
			return fmt.Errorf("detector: %w", err)
		}
		if err := eng.Restore(ds); err != nil {
			return fmt.Errorf("detector state into new detector: %w", err)
		}
		d.engine = eng
	}
	if cfg.PollInterval != old.PollInterval {
		select {
		case d.reloadCh <- cfg.PollInterval:
		default:
		}
	}
	d.dirty = true
	d.saveLocked(now, true)
	d.log.Info("configuration reloaded", "mode", cfg.Mode)
	return nil
}

func configEqual(a, b detector.Config) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// Shutdown saves the state one last time.
func (d *Daemon) Shutdown() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dirty = true
	d.saveLocked(d.clock(), true)
}

// Config returns the running configuration.
func (d *Daemon) Config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// ---- API backend ----

var _ api.Backend = (*Daemon)(nil)

// Status implements api.Backend.
func (d *Daemon) Status(ctx context.Context) (api.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := api.Status{
		Running:    true,
		Version:    d.deps.Version,
		PID:        os.Getpid(),
		Started:    d.started,
		Mode:       d.cfg.Mode,
		Interfaces: d.deps.Plane.Interfaces(),
		Counters:   d.counters,
		Bans:       len(d.st.Bans),
		Allows:     len(d.st.Allows),
		LastPoll:   d.lastPoll,
		Incidents:  d.openIncidentsLocked(),
	}
	s.TopSuspects = d.watchRowsLocked(10)
	if s.Mode == "observe" {
		s.Notes = append(s.Notes, "observe mode: nothing is dropped; bans only count would-drops (set mode: enforce to drop)")
	}
	return s, nil
}

func (d *Daemon) openIncidentsLocked() []detector.Incident {
	out := make([]detector.Incident, 0, len(d.open))
	for _, in := range d.open {
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].OpenedAt.Before(out[j].OpenedAt) })
	return out
}

func (d *Daemon) stateOfLocked(a netip.Addr) string {
	for p := range d.st.Bans {
		if p.Contains(a) {
			return api.StateBanned
		}
	}
	for p := range d.st.Allows {
		if p.Contains(a) {
			return api.StateAllowed
		}
	}
	for _, p := range d.protected {
		if p.Contains(a) {
			return api.StateProtected
		}
	}
	if w, ok := d.watch[a]; ok && w.suspect {
		return api.StateSuspect
	}
	return api.StateOK
}

func (d *Daemon) watchRowsLocked(n int) []api.SourceRow {
	rows := make([]api.SourceRow, 0, len(d.watch))
	for a, w := range d.watch {
		rows = append(rows, api.SourceRow{Addr: a, SYN: w.syn, ACK: w.ack, RST: w.rst, SYNPerSecond: w.rate,
			HalfOpenShare: halfOpen(w.syn, w.ack), State: d.stateOfLocked(a), LastSeen: w.lastSeen})
	}
	sortRows(rows)
	if len(rows) > n {
		rows = rows[:n]
	}
	return rows
}

func sortRows(rows []api.SourceRow) {
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].SYNPerSecond != rows[j].SYNPerSecond {
			return rows[i].SYNPerSecond > rows[j].SYNPerSecond
		}
		if rows[i].SYN != rows[j].SYN {
			return rows[i].SYN > rows[j].SYN
		}
		return rows[i].Addr.Less(rows[j].Addr)
	})
}

func halfOpen(syn, ack uint64) float64 {
	if syn == 0 || ack >= syn {
		return 0
	}
	return 1 - float64(ack)/float64(syn)
}

// Top implements api.Backend: a full scan on demand (at most once a
// second, whoever asks), ranked by SYN rate.
func (d *Daemon) Top(ctx context.Context, n int) ([]api.SourceRow, error) {
	d.topMu.Lock()
	defer d.topMu.Unlock()
	d.mu.Lock()
	now := d.clock()
	// Several `top` users share one scan; a big table is scanned less often.
	fresh := max(time.Second, 10*d.scanCost)
	if d.topCache != nil && now.Sub(d.topAt) < fresh && len(d.topCache) >= n {
		rows := d.topCache[:min(n, len(d.topCache))]
		d.mu.Unlock()
		return rows, nil
	}
	d.mu.Unlock()
	sources, err := d.deps.Plane.Sources()
	if err != nil {
		return nil, fmt.Errorf("read sources: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	rows := make([]api.SourceRow, 0, min(len(sources), 65536))
	for _, s := range sources {
		if len(sources) > 65536 && s.SYN < minScanSYN && s.ACK < minScanSYN {
			continue // a random-source flood: ranking a million one-SYN rows helps nobody
		}
		r := api.SourceRow{Addr: s.Addr, SYN: s.SYN, ACK: s.ACK, RST: s.RST, HalfOpenShare: halfOpen(s.SYN, s.ACK), LastSeen: s.LastSeen}
		if w, ok := d.watch[s.Addr]; ok && !w.at.IsZero() {
			r.SYNPerSecond = w.rate
		} else if life := s.LastSeen.Sub(s.FirstSeen).Seconds(); life > 1 {
			r.SYNPerSecond = float64(s.SYN) / life
		} else {
			r.SYNPerSecond = float64(s.SYN)
		}
		rows = append(rows, r)
	}
	sortRows(rows)
	rows = rows[:min(max(n, 100), len(rows))]
	for i := range rows {
		rows[i].State = d.stateOfLocked(rows[i].Addr)
	}
	d.topCache, d.topAt = rows, now
	return rows[:min(n, len(rows))], nil
}

// Bans implements api.Backend: the kernel blocklist joined with reasons.
func (d *Daemon) Bans(ctx context.Context) ([]api.Ban, error) {
	bans, err := d.deps.Plane.Bans()
	if err != nil {
		return nil, fmt.Errorf("read kernel blocklist: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return JoinBans(bans, d.st.Bans), nil
}

// JoinBans adds the state dir's reasons to kernel blocklist entries; the
// CLI uses it too when the daemon is down.
func JoinBans(kernel []api.Ban, meta map[netip.Prefix]BanMeta) []api.Ban {
	out := make([]api.Ban, 0, len(kernel))
	for _, b := range kernel {
		if m, ok := meta[b.Prefix]; ok {
			b.Reason, b.Origin, b.From, b.Offence, b.IncidentID = m.Reason, m.Origin, m.From, m.Offence, m.IncidentID
		} else {
			b.Origin, b.Reason = api.OriginUnknown, "no record in the state dir"
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return comparePrefix(out[i].Prefix, out[j].Prefix) < 0 })
	return out
}

// JoinAllows adds origins to kernel allowlist entries.
func JoinAllows(kernel []netip.Prefix, meta map[netip.Prefix]AllowMeta) []api.Allow {
	out := make([]api.Allow, 0, len(kernel))
	for _, p := range kernel {
		a := api.Allow{Prefix: p, Origin: api.OriginUnknown}
		if m, ok := meta[p]; ok {
			a.Origin, a.Added = m.Origin, m.Added
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return comparePrefix(out[i].Prefix, out[j].Prefix) < 0 })
	return out
}

// Allows implements api.Backend.
func (d *Daemon) Allows(ctx context.Context) ([]api.Allow, error) {
	ps, err := d.deps.Plane.Allows()
	if err != nil {
		return nil, fmt.Errorf("read kernel allowlist: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return JoinAllows(ps, d.st.Allows), nil
}

// Incidents implements api.Backend: open incidents, then recently
// resolved ones, oldest first.
func (d *Daemon) Incidents(ctx context.Context) ([]detector.Incident, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.openIncidentsLocked()
	return append(out, d.resolved...), nil
}

// Explain implements api.Backend.
func (d *Daemon) Explain(ctx context.Context, a netip.Addr) (api.Explanation, error) {
	a = a.Unmap()
	bans, err := d.deps.Plane.Bans()
	if err != nil {
		return api.Explanation{}, fmt.Errorf("read kernel blocklist: %w", err)
	}
	src, found, err := d.deps.Plane.Source(a)
	if err != nil {
		return api.Explanation{}, fmt.Errorf("read source %s: %w", a, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e := api.Explanation{Addr: a, Verdict: api.StateOK}
	if found {
		e.Kernel = &src
	}
	for _, b := range JoinBans(bans, d.st.Bans) {
		if b.Prefix.Contains(a) && (e.Ban == nil || b.Prefix.Bits() > e.Ban.Prefix.Bits()) {
			b := b
			e.Ban = &b
		}
	}
	for p, m := range d.st.Allows {
		if p.Contains(a) {
			e.Allow = &api.Allow{Prefix: p, Origin: m.Origin, Added: m.Added}
		}
	}
	for _, p := range d.protected {
		if p.Contains(a) {
			e.Protected = p.String()
		}
	}
	if w, ok := d.watch[a]; ok {
		e.Rate = &api.SourceRow{Addr: a, SYN: w.syn, ACK: w.ack, RST: w.rst, SYNPerSecond: w.rate, HalfOpenShare: halfOpen(w.syn, w.ack), LastSeen: w.lastSeen}
	}
	ex := d.engine.Explain(a)
	e.Detector, e.Details = ex.Text, ex
	switch {
	case e.Allow != nil:
		e.Verdict = api.StateAllowed
	case e.Ban != nil:
		e.Verdict = api.StateBanned
	case e.Protected != "":
		e.Verdict = api.StateProtected
	case ex.Flagged:
		e.Verdict = api.StateSuspect
	case !found && !ex.Tracked:
		e.Verdict = "unknown"
	}
	return e, nil
}

// Block implements api.Backend: a manual ban, never lifted by the detector.
func (d *Daemon) Block(ctx context.Context, p netip.Prefix, ttl time.Duration, reason string) (api.Ban, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	for a := range d.st.Allows {
		if a.Overlaps(p) {
			return api.Ban{}, api.Conflict(fmt.Errorf("block %s: overlaps allowlisted %s, which the kernel never drops; run `synguard disallow %s` first", p, a, a))
		}
	}
	if err := d.deps.Plane.Block(p, ttl); err != nil {
		return api.Ban{}, fmt.Errorf("block %s: %w", p, err)
	}
	if reason == "" {
		reason = "manual block"
	}
	until := now.Add(ttl)
	d.st.Bans[p] = BanMeta{Origin: api.OriginManual, Reason: reason, From: now, Until: until}
	d.dirty = true
	d.saveLocked(now, true)
	if m := d.deps.Metrics; m != nil {
		m.bansApplied.WithLabelValues(api.OriginManual).Inc()
	}
	d.log.Warn("banned manually", "prefix", p, "until", until.Format(time.RFC3339), "reason", reason)
	return api.Ban{Prefix: p, Until: until, Reason: reason, Origin: api.OriginManual, From: now}, nil
}

// Unblock implements api.Backend.
func (d *Daemon) Unblock(ctx context.Context, p netip.Prefix) error {
	bans, err := d.deps.Plane.Bans()
	if err != nil {
		return fmt.Errorf("read kernel blocklist: %w", err)
	}
	if !slices.ContainsFunc(bans, func(b api.Ban) bool { return b.Prefix == p }) {
		return api.NotFound(fmt.Errorf("unblock %s: not banned (see `synguard list bans`)", p))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.deps.Plane.Unblock(p); err != nil {
		return fmt.Errorf("unblock %s: %w", p, err)
	}
	delete(d.st.Bans, p)
	d.dirty = true
	d.saveLocked(d.clock(), true)
	d.log.Warn("ban lifted manually", "prefix", p)
	return nil
}

// Allow implements api.Backend.
func (d *Daemon) Allow(ctx context.Context, p netip.Prefix) (api.Allow, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	if m, ok := d.st.Allows[p]; ok {
		return api.Allow{Prefix: p, Origin: m.Origin, Added: m.Added}, nil
	}
	if err := d.deps.Plane.Allow(p); err != nil {
		return api.Allow{}, fmt.Errorf("allow %s: %w", p, err)
	}
	d.st.Allows[p] = AllowMeta{Origin: api.OriginManual, Added: now}
	d.dirty = true
	d.refreshProtectedLocked(now, true)
	d.saveLocked(now, true)
	d.log.Warn("allowlisted", "prefix", p)
	return api.Allow{Prefix: p, Origin: api.OriginManual, Added: now}, nil
}

// Disallow implements api.Backend.
func (d *Daemon) Disallow(ctx context.Context, p netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	m, ok := d.st.Allows[p]
	if !ok {
		return api.NotFound(fmt.Errorf("disallow %s: not allowlisted (see `synguard list allows`)", p))
	}
	if m.Origin == api.OriginConfig {
		return api.Conflict(fmt.Errorf("disallow %s: comes from config key allow; remove it there and reload (SIGHUP)", p))
	}
	if err := d.deps.Plane.Disallow(p); err != nil {
		return fmt.Errorf("disallow %s: %w", p, err)
	}
	delete(d.st.Allows, p)
	d.dirty = true
	d.refreshProtectedLocked(now, true)
	d.saveLocked(now, true)
	d.log.Warn("removed from allowlist", "prefix", p)
	return nil
}
