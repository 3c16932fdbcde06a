// Package daemon is the loop behind `synguard run`: it reads the data
// plane's counters every poll interval and its early-warning events as they
// arrive, feeds the detector, applies and lifts bans, hands incidents to
// the alert pipeline and answers the control API.
//
// Data flows one way: Plane counters -> detector.Snapshot -> Engine ->
// detector.Decisions -> (Plane blocklist, Alerter, API). Every side effect
// sits behind a small interface or function (Plane, Engine, Alerter, the
// clock, kernel counters) or a directory (Store), so the loop is tested
// with a fake data plane and explicit timestamps.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
)

// Suspect is an early-warning event: the data plane saw a run of SYNs SYNs
// from Addr with no ACK in between.
type Suspect struct {
	Addr netip.Addr
	SYNs uint32
	Time time.Time
	// FirstSeen is when the kernel first counted the source (zero when
	// unknown): the detector rates the run from then if that is later than
	// its own last reading.
	FirstSeen time.Time
	// SYN is the source's cumulative SYN counter when the event was read
	// (0: unknown): the kernel's run of SYNs survives a daemon restart,
	// and the detector counts only the SYNs since it last read the source.
	SYN uint64
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
	Warn(detector.Warning) detector.Decisions
	SetProtected(t time.Time, p []netip.Prefix) detector.Decisions
	Open() []detector.Incident
	Explain(addr netip.Addr) detector.Explanation
	// Lift forgets a ban an operator lifted, so a renewed flood is
	// banned again.
	Lift(p netip.Prefix) bool
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
	Config    *config.Config
	Plane     Plane
	NewEngine EngineFactory
	Alerts    Alerter
	// Kernel reads the server's TCP counters for the snapshot.
	Kernel func() (detector.KernelCounters, error)
	// Protected returns the host's default gateways and SSH peers as the
	// running configuration's protect section asks (ProtectedPeers); it is
	// called at start, on reload and every protectRefresh, so a reload that
	// changes protect.ssh_ports takes effect and new SSH sessions are
	// protected within seconds.
	Protected func(config.Protect) ([]netip.Prefix, error)
	Store     *Store
	Clock     func() time.Time
	Log       *slog.Logger
	Metrics   *Metrics
	Version   string
	Host      string

	// Protection enables service protection (protection.go); nil: none.
	Protection *ProtectionDeps
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
	banSeq    uint64 // counts writes to st.Bans (BanMeta.seq)
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
	topK      int // how many rows the cached scan asked for
	fullNext  bool
	scanCost  time.Duration // the last full scan: kernel read + detector
	// stretchWarned: the "expensive scans" warning was logged.
	stretchWarned bool

	prot protState // service protection (protection.go)

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
	// Bans restored from the state may cover addresses protected since
	// (an SSH session opened while the daemon was down): lift them now.
	d.applyLocked(now, eng.SetProtected(now, d.protected))
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
	d.startProtectionLocked(now)
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
	d.applyLocked(now, d.engine.Observe(snapshotOf(now, r)))
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

// protectRefresh is how often the default gateways and SSH peers are
// re-read: an admin who logs in during a flood is protected within this
// time (and unbanned, if the detector had banned the address).
const protectRefresh = 10 * time.Second

// refreshProtectedLocked recomputes what the detector must never ban:
// allowlist, protect.prefixes, default gateways and SSH peers. When the set
// changes, the detector lifts its bans on newly protected prefixes
// (SetProtected returns them) and they are applied at once.
func (d *Daemon) refreshProtectedLocked(now time.Time, force bool) {
	if !force && now.Sub(d.lastProt) < protectRefresh {
		return
	}
	d.lastProt = now
	if d.deps.Protected != nil {
		if ps, err := d.deps.Protected(d.cfg.Protect); err != nil {
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
		return errors.New("config keys datapath.*, attach and bpffs need a restart (map sizes are migrated at the next start, bans and allowlist kept)")
	}
	if cfg.Socket != old.Socket || cfg.StateDir != old.StateDir || cfg.MetricsAddr != old.MetricsAddr || cfg.SocketGroup != old.SocketGroup {
		return errors.New("config keys socket, socket_group, state_dir and metrics_addr need a restart")
	}
	if cfg.Log.Format != old.Log.Format {
		d.log.Warn("log.format changes at the next restart; log.level applies now", "old", old.Log.Format, "new", cfg.Log.Format)
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
		if cfg.Mode != old.Mode {
			// The refused reload must not leave the kernel in the new mode.
			if merr := d.deps.Plane.SetMode(old.Mode == "enforce"); merr != nil {
				d.log.Error("mode not restored after a refused reload", "mode", old.Mode, "err", merr)
			}
		}
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
		d.applyLocked(now, eng.SetProtected(now, d.protected))
	}
	if cfg.PollInterval != old.PollInterval {
		select {
		case d.reloadCh <- cfg.PollInterval:
		default:
		}
	}
	d.reloadProtectionLocked(now, old)
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
	d.stopProtectionLocked(d.clock())
	d.dirty = true
	d.saveLocked(d.clock(), true)
}

// Config returns the running configuration.
func (d *Daemon) Config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}
