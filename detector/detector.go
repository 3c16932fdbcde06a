package detector

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"
)

// Detector holds the per-source and per-service state between snapshots.
// It is not safe for concurrent use: the daemon owns it in one goroutine.
type Detector struct {
	cfg       Config
	opt       Options
	protected []netip.Prefix
	tau       float64 // cfg.Window in seconds

	started bool
	last    int64 // time of the last snapshot, unix ns

	sources sourceTable
	svcs    map[netip.AddrPort]*service

	incs    []*incident // slab; index+1 is the handle kept in a source
	incFree []int32
	byID    map[string]*incident
	open    int // open incidents

	bans     map[netip.Prefix]*ban
	offences map[netip.Prefix]offence
	aggCount map[netip.Prefix]int // flagged sources per aggregation prefix
	kern     kernelHistory
	flood    floodEpoch // distinct/top sources while a service is flooded
	// flaggedSYN counts this snapshot's SYNs from flagged sources: a
	// service flood they explain is not a distributed one.
	flaggedSYN uint64
	// kernBase is the kernel sample before the current snapshot: an
	// incident's kernel evidence counts from there.
	kernBase KernelCounters
	// completeSince: every snapshot after this time was complete, so a
	// source last seen at or after it was quiet since.
	completeSince int64
	// lastComplete is the last complete snapshot (or the first one): a
	// source it did not list is newer.
	lastComplete int64
	renewHint    time.Duration
}

// New returns a detector. cfg must be valid (see Config.Validate); New
// panics otherwise, because a daemon must refuse to start on a bad config
// long before it gets here.
func New(cfg Config, opt Options) *Detector {
	if err := cfg.Validate(); err != nil {
		panic("detector.New: " + err.Error())
	}
	if opt.Host == "" {
		opt.Host = "synguard"
	}
	d := &Detector{
		cfg:       cfg,
		opt:       opt,
		protected: slices.Clone(opt.Protected),
		tau:       cfg.Window.Seconds(),
		sources:   newSourceTable(cfg.MaxSources),
		svcs:      make(map[netip.AddrPort]*service),
		bans:      make(map[netip.Prefix]*ban),
		byID:      make(map[string]*incident),
		offences:  make(map[netip.Prefix]offence),
		aggCount:  make(map[netip.Prefix]int),
		renewHint: time.Second,
	}
	d.flood.top = make([]topEntry, 0, cfg.TopSources)
	d.sources.forget = d.unflag
	return d
}

// Config returns the thresholds in use.
func (d *Detector) Config() Config { return d.cfg }

// alpha is the EWMA weight of an observation covering dt seconds.
func (d *Detector) alpha(dt float64) float64 { return 1 - math.Exp(-dt/d.tau) }

// Observe feeds one snapshot and returns what changed. Snapshots must come
// in time order; one that is not later than the previous is ignored.
func (d *Detector) Observe(s Snapshot) Decisions {
	var out Decisions
	now := s.Time.UnixNano()
	if d.started && now <= d.last {
		return out
	}
	if !d.started {
		d.baseline(s)
		return out
	}
	dtPrev := float64(now-d.last) / 1e9
	if h := time.Duration(now - d.last); h > 0 {
		d.renewHint = h
	}
	d.kern.add(now, s.Kernel, d.cfg.KernelWindow)
	d.observeSources(s, now, dtPrev, &out)
	d.sources.endSnapshot(len(s.Sources))
	d.observeServices(s, now, dtPrev, &out)
	d.observeBanCounters(s, now)
	d.maintain(now, &out)
	d.last = now
	d.kernBase = d.kern.latest()
	if !s.Complete {
		d.completeSince = now
	} else {
		d.lastComplete = now
	}
	d.sources.sweep(now, int64(d.cfg.SourceIdle), int64(d.cfg.ResolveAfter))
	sortDecisions(&out)
	return out
}

// baseline takes the first snapshot's counters without judging them.
func (d *Detector) baseline(s Snapshot) {
	now := s.Time.UnixNano()
	for _, sc := range s.Sources {
		i := d.sources.get(sc.Addr, now)
		st := &d.sources.s[i]
		st.syn, st.ack, st.seen = sc.SYN, sc.ACK, now
	}
	for _, sc := range s.Services {
		if sv := d.service(sc.Addr, now); sv != nil {
			sv.syn, sv.ack, sv.seen = sc.SYN, sc.ACK, now
		}
	}
	for _, bc := range s.Bans {
		if b := d.bans[bc.Prefix]; b != nil {
			b.dropped = bc.Dropped
		}
	}
	d.kern.add(now, s.Kernel, d.cfg.KernelWindow)
	d.kernBase = d.kern.latest()
	if !s.Complete {
		d.completeSince = now
	}
	d.lastComplete = now // the first snapshot sets the time base
	d.started = true
	d.last = now
}

// delta is the growth of a cumulative counter; a decrease means the entry
// was re-created and counts from zero again.
func delta(cur, prev uint64) uint64 {
	if cur >= prev {
		return cur - prev
	}
	return cur
}

func (d *Detector) observeSources(s Snapshot, now int64, dtPrev float64, out *Decisions) {
	aPrev := d.alpha(dtPrev)
	if !d.flood.active {
		// No service incident: distinct and top sources count this
		// snapshot only, so that one opening now has its figures.
		d.flood.start()
	}
	d.flaggedSYN = 0
	prev := int32(-1)
	// In a new order (most sources missed the chain last time), resolve
	// sources in batches whose cache misses overlap.
	const batch = 64
	var known [batch]int32
	pre := d.sources.prefetching()
	for pos := range s.Sources {
		sc := &s.Sources[pos]
		k := int32(-1)
		if pre {
			if pos%batch == 0 {
				d.sources.prefetch(s.Sources[pos:min(pos+batch, len(s.Sources))], known[:])
			}
			k = known[pos%batch]
		}
		i := d.sources.at(prev, sc.Addr, now, k)
		prev = i
		st := &d.sources.s[i]
		var dsyn, dack uint64
		if st.seen == 0 {
			// New since the previous snapshot: its counts cover at most that
			// interval; start the EWMA at the observed rate (bias-corrected
			// EWMA) so that a new flooder is flagged on its first snapshot.
			dsyn, dack = sc.SYN, sc.ACK
			dt := dtPrev
			if !sc.FirstSeen.IsZero() {
				dt = max(dt, float64(now-sc.FirstSeen.UnixNano())/1e9)
			}
			st.synRate = float32(float64(dsyn) / dt)
			st.ackRate = float32(float64(dack) / dt)
		} else {
			dt := float64(now-st.seen) / 1e9
			if dt <= 0 {
				continue
			}
			a := aPrev
			if st.seen != d.last {
				if s.Complete && d.completeSince <= st.seen {
					// Known quiet since st.seen: decay, then rate the
					// last interval.
					decay := float32(math.Exp(-float64(d.last-st.seen) / 1e9 / d.tau))
					st.synRate *= decay
					st.ackRate *= decay
					dt = dtPrev
				} else {
					a = d.alpha(dt)
				}
			}
			dsyn, dack = delta(sc.SYN, st.syn), delta(sc.ACK, st.ack)
			st.synRate += float32(a * (float64(dsyn)/dt - float64(st.synRate)))
			st.ackRate += float32(a * (float64(dack)/dt - float64(st.ackRate)))
		}
		st.syn, st.ack, st.seen, st.touched = sc.SYN, sc.ACK, now, now
		if dsyn > dack {
			d.flood.count(&d.sources, i, uint32(min(dsyn, math.MaxUint32)), d.cfg.TopSources)
		}
		if st.flags&flagFlagged != 0 {
			d.flaggedSYN += dsyn
		}
		if st.inc > 0 {
			inc := d.incs[st.inc-1]
			inc.SYN += dsyn
			inc.ACK += dack
		}
		rate := float64(st.synRate)
		share := halfOpen(float64(st.synRate), float64(st.ackRate))
		if rate >= d.cfg.SourceSYNRate && share >= d.cfg.SourceHalfOpen {
			reason := ""
			if st.flags&flagFlagged == 0 {
				d.flaggedSYN += dsyn
				reason = fmt.Sprintf("%s sent %s SYN/s (smoothed over %v), %s of them half-open; thresholds: %s SYN/s and %s half-open",
					sc.Addr, num(rate), d.cfg.Window, pct(share), num(d.cfg.SourceSYNRate), pct(d.cfg.SourceHalfOpen))
			}
			d.flag(i, now, rate, share, dsyn, dack, reason, out)
		} else if st.flags&flagFlagged != 0 && dsyn > 0 && st.inc > 0 {
			// Below the bar but still sending: figures only, resolution
			// waits for ResolveAfter without a flagged observation.
			inc := d.incs[st.inc-1]
			inc.SYNPerSecond, inc.HalfOpenShare = rate, share
		}
	}
}

// halfOpen is the share of SYNs not matched by ACKs, in [0, 1].
func halfOpen(syn, ack float64) float64 {
	if syn <= 0 {
		return 0
	}
	return math.Max(0, math.Min(1, (syn-ack)/syn))
}

// Suspect is an early warning from the data plane: a source sent
// synsWithoutACK SYNs with no ACK in between. When the detector has no
// fresh snapshot figures for the source it flags it at once if that run,
// spread over the time since the source was last read (for a source never
// read: since the last complete snapshot), reaches the per-source SYN rate;
// otherwise the snapshot figures decide, so a slow flood below the bar
// stays unflagged.
func (d *Detector) Suspect(t time.Time, a netip.Addr, synsWithoutACK uint32) Decisions {
	var out Decisions
	if !a.IsValid() || synsWithoutACK < d.cfg.SuspectSYNs {
		return out
	}
	a = a.Unmap()
	now := t.UnixNano()
	i := d.sources.get(a, now)
	st := &d.sources.s[i]
	st.touched = now
	if st.flags&flagFlagged != 0 {
		st.lastFlag = max(st.lastFlag, now)
		d.markActive(a, now)
		return out
	}
	if !d.started {
		return out // no snapshot yet: no time base for a rate
	}
	// The run happened within the time since the source was last read or,
	// for a source no complete snapshot listed, since the last complete
	// snapshot: the run over that span is a lower bound of its rate.
	since := d.lastComplete
	if st.seen != 0 {
		if float64(now-st.seen) < 2*float64(d.cfg.Window) {
			return out // fresh figures: the next snapshot decides
		}
		since = st.seen
	}
	span := float64(now-since) / 1e9
	if span <= 0 {
		return out
	}
	rate := float64(synsWithoutACK) / span
	if rate < d.cfg.SourceSYNRate {
		return out
	}
	reason := fmt.Sprintf("%s sent %s SYNs without an ACK in between, all in the %v since it was last read (%s SYN/s, 100%% half-open; early warning from the data plane); thresholds: %s SYN/s and %s half-open",
		a, num(float64(synsWithoutACK)), time.Duration(span*1e9).Round(time.Millisecond), num(rate), num(d.cfg.SourceSYNRate), pct(d.cfg.SourceHalfOpen))
	// The SYNs themselves are counted when the next snapshot reads them.
	d.flag(i, now, rate, 1, 0, 0, reason, &out)
	sortDecisions(&out)
	return out
}

// SetProtected replaces the protected prefixes and lifts any ban that now
// covers a protected address.
func (d *Detector) SetProtected(t time.Time, p []netip.Prefix) Decisions {
	var out Decisions
	d.protected = slices.Clone(p)
	for pfx := range d.bans {
		if d.overlapsProtected(pfx) {
			d.lift(pfx, &out)
		}
	}
	sortDecisions(&out)
	return out
}

// protectedBy returns the protected prefix covering a, if any.
func (d *Detector) protectedBy(a netip.Addr) (netip.Prefix, bool) {
	for _, p := range d.protected {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func (d *Detector) overlapsProtected(p netip.Prefix) bool {
	for _, q := range d.protected {
		if q.Overlaps(p) {
			return true
		}
	}
	return false
}

// newID derives a stable id from the host, kind, address and opening time.
func (d *Detector) newID(k Kind, addr string, opened time.Time) string {
	if d.opt.NewID != nil {
		return d.opt.NewID(k, addr, opened)
	}
	h := sha256.Sum256([]byte(d.opt.Host + "|" + string(k) + "|" + addr + "|" + opened.UTC().Format(time.RFC3339Nano)))
	return d.opt.Host + "-" + hex.EncodeToString(h[:8])
}

func sortDecisions(out *Decisions) {
	slices.SortStableFunc(out.Bans, func(a, b Ban) int { return comparePrefix(a.Prefix, b.Prefix) })
	slices.SortFunc(out.Unbans, comparePrefix)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
