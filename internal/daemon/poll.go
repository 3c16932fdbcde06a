package daemon

import (
	"net/netip"
	"time"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
)

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
	dec := d.engine.Warn(detector.Warning{Time: ev.Time, Addr: addr, Run: ev.SYNs, SYN: ev.SYN, FirstSeen: ev.FirstSeen})
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
	// A full scan's sources are streamed into the detector afterwards
	// (fullScanLocked); here only the watched ones are read.
	if !full {
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
	// Ban records written after this (by an early warning or the API while
	// the reads run) are newer than the blocklist read below.
	readSeq := d.banSeq
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
	pr := d.readProtections(now)
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
	if !full {
		d.updateWatchLocked(now, sources, false)
	}
	d.refreshProtectedLocked(now, false)

	// A full scan lists every source that moved since the previous
	// snapshot (fullScanLocked keeps those, see changedSince), so it
	// is Complete; the sources below minScanSYN it leaves out cannot be
	// flagged anyway.
	snap := snapshotOf(now, r)
	snap.Complete = full
	snap.Sources = make([]detector.SourceCounters, len(sources))
	for i, s := range sources {
		snap.Sources[i] = sourceCounters(s)
	}
	live := make(map[netip.Prefix]bool, len(r.bans))
	for _, b := range r.bans {
		live[b.Prefix] = true
	}
	// Kernel expiry is the truth: forget records of bans that expired
	// (not of bans made after the read).
	for p, m := range d.st.Bans {
		if !live[p] && m.seq <= readSeq {
			delete(d.st.Bans, p)
			d.dirty = true
		}
	}

	t0 := time.Now()
	read := t0.Sub(start)
	var dec detector.Decisions
	var scan, detect time.Duration
	listed := len(snap.Sources)
	if full {
		var err error
		dec, listed, scan, detect, err = d.fullScanLocked(now, snap)
		read += scan
		if err != nil {
			d.log.Error("full scan failed", "read", "sources", "err", err)
			if m != nil {
				m.pollErrors.Inc()
			}
		} else if m != nil {
			m.fullScans.Inc()
		}
		d.scanCost = scan + detect
	} else {
		dec = d.engine.Observe(snap)
		detect = time.Since(t0)
	}
	d.observeDetection(detect)
	d.applyLocked(now, dec)
	d.pollProtectionLocked(now, pr)
	d.lastPoll = now
	d.saveLocked(now, false)
	took := time.Since(start)
	if m != nil {
		m.pollSeconds.Observe(took.Seconds())
		m.setState(r.counters, d.st.Bans, len(d.st.Allows), d.open, len(d.watch), now)
	}
	if took > d.cfg.PollInterval/2 {
		d.log.Warn("slow poll", "took", took, "read", read, "detect", detect, "sources", listed, "full_scan", full, "scan", scan)
	}
}

// snapshotOf is the detector's snapshot of a reading, without sources.
func snapshotOf(now time.Time, r reading) detector.Snapshot {
	snap := detector.Snapshot{Time: now, Kernel: r.kernel,
		Services: make([]detector.ServiceCounters, len(r.services)),
		Bans:     make([]detector.BanCounters, len(r.bans))}
	for i, s := range r.services {
		snap.Services[i] = detector.ServiceCounters{Addr: s.Addr, SYN: s.SYN, ACK: s.ACK}
	}
	for i, b := range r.bans {
		snap.Bans[i] = detector.BanCounters{Prefix: b.Prefix, Dropped: b.Dropped}
	}
	return snap
}

func sourceCounters(s api.Source) detector.SourceCounters {
	return detector.SourceCounters{Addr: s.Addr, SYN: s.SYN, ACK: s.ACK, RST: s.RST, FirstSeen: s.FirstSeen, LastSeen: s.LastSeen}
}

// lifeRate is a source's SYN rate over its entry's life: the best figure
// for a source read for the first time.
func lifeRate(s api.Source) float64 {
	if life := s.LastSeen.Sub(s.FirstSeen).Seconds(); life > 1 {
		return float64(s.SYN) / life
	}
	return float64(s.SYN)
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

// changedSince says whether a full scan passes s to the detector: the
// sources counted since the previous full scan (lastFull, with a poll's
// margin) and the watched ones. An entry that did not move carries no new
// data, and the detector's contract lets it be left out. Sources below
// minScanSYN are left out too.
func (d *Daemon) changedSince(s api.Source, watched bool, lastFull time.Time) bool {
	since := lastFull.Add(-2 * d.cfg.PollInterval)
	return watched || (s.SYN >= minScanSYN && (lastFull.IsZero() || s.LastSeen.After(since)))
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
			if !full || !d.watchWorthy(now, s) || len(d.watch) >= d.cfg.WatchMax {
				continue
			}
			w = &watched{active: now, rate: lifeRate(s)}
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
