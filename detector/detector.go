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
	// startedAt is the first snapshot's time, unix ns.
	startedAt int64
	last      int64 // time of the last snapshot, unix ns

	sources sourceTable
	svcs    map[netip.AddrPort]*service

	incs    []*incident // slab; index+1 is the handle kept in a source
	incFree []int32
	byID    map[string]*incident
	open    int // open incidents

	bans     map[netip.Prefix]*ban
	offences map[netip.Prefix]offence
	aggCount map[netip.Prefix]int // flagged sources per aggregation prefix
	hostBans map[netip.Prefix]int // host bans per aggregation prefix
	kern     kernelHistory
	flood    floodEpoch // distinct/top sources while a service is flooded
	// flaggedSYN counts this snapshot's SYNs from flagged sources: a
	// service flood they explain is not a distributed one.
	flaggedSYN uint64
	// snapSources and snapNew count the sources that sent SYNs in the
	// current snapshot and those among them new to the detector (the
	// figures of an overload incident).
	snapSources, snapNew int
	snapComplete         bool
	// overloaded collects a snapshot's overload candidates (reused).
	overloaded []overloadCandidate
	// kernBase is the kernel sample before the current snapshot: an
	// incident's kernel evidence counts from there.
	kernBase KernelCounters
	// completeSince: every snapshot after this time was complete, so a
	// source last seen at or after it was quiet since.
	completeSince int64
	// lastComplete is the last complete snapshot (0: none yet, as after a
	// daemon's first snapshot, which lists no sources): a source it did
	// not list is newer.
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
		hostBans:  make(map[netip.Prefix]int),
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
	out, _ := d.observe(s, nil)
	return out
}

// SourceFeed delivers a snapshot's sources in chunks: it calls observe with
// each chunk, in order, and returns its own error, if any. observe does not
// keep the chunk, so the feed may reuse its buffer for the next one.
type SourceFeed func(observe func(chunk []SourceCounters)) error

// ObserveFeed is Observe for a snapshot whose sources come in chunks from
// feed (after any in s.Sources) instead of in one slice, so that a caller
// scanning a million kernel entries never holds them all: the decisions
// and the state afterwards are those of Observe on s with Sources set to
// the chunks concatenated, however they are cut.
//
// feed is called exactly once, even for a snapshot that is ignored (not
// later than the previous one), so that the caller's own work on the
// chunks is done either way. When feed fails, the sources it delivered are
// observed and the snapshot is finished as an incomplete one
// (Snapshot.Complete false: absence means no new data), and the error is
// returned with the decisions.
//
// While feed is not inside observe (between chunks: the daemon reads the
// next kernel batch then), the detector may be used for Suspect,
// SetProtected, Explain, State and Open; they see the snapshot partly
// applied, as if the event came while the kernel table was being read.
// Observe, ObserveFeed and Restore must wait until ObserveFeed returns.
func (d *Detector) ObserveFeed(s Snapshot, feed SourceFeed) (Decisions, error) {
	return d.observe(s, feed)
}

func (d *Detector) observe(s Snapshot, feed SourceFeed) (Decisions, error) {
	var out Decisions
	now := s.Time.UnixNano()
	if d.started && now <= d.last {
		var err error
		if feed != nil {
			err = feed(func([]SourceCounters) {})
		}
		return out, err
	}
	if !d.started {
		d.baselineSources(s.Sources, now)
		var err error
		if feed != nil {
			err = feed(func(c []SourceCounters) { d.baselineSources(c, now) })
		}
		if err != nil {
			s.Complete = false
		}
		d.baseline(s)
		return out, err
	}
	dtPrev := float64(now-d.last) / 1e9
	if h := time.Duration(now - d.last); h > 0 {
		d.renewHint = h
	}
	d.kern.add(now, s.Kernel, d.cfg.KernelWindow)
	p := d.beginSources(s.Complete, now, dtPrev)
	d.observeSources(&p, s.Sources, &out)
	var err error
	if feed != nil {
		err = feed(func(c []SourceCounters) { d.observeSources(&p, c, &out) })
	}
	if err != nil {
		s.Complete = false
	}
	d.sources.endSnapshot(p.n)
	d.observeServices(s, now, dtPrev, &out)
	d.observeBanCounters(s, now, dtPrev, &out)
	d.maintain(now, s.Complete, &out)
	if s.Complete {
		d.judgeVerdicts(now, &out)
	}
	d.last = now
	d.kernBase = d.kern.latest()
	if !s.Complete {
		d.completeSince = now
	} else {
		d.lastComplete = now
	}
	d.sources.sweep(now, int64(d.cfg.SourceIdle), int64(d.cfg.ResolveAfter))
	sortDecisions(&out)
	return out, err
}

// baselineSources takes the first snapshot's source counters.
func (d *Detector) baselineSources(sources []SourceCounters, now int64) {
	for _, sc := range sources {
		i := d.sources.get(sc.Addr, now)
		st := d.sources.s.at(i)
		st.syn, st.ack, st.seen = sc.SYN, sc.ACK, now
	}
}

// baseline takes the first snapshot's counters without judging them; its
// sources went through baselineSources.
func (d *Detector) baseline(s Snapshot) {
	now := s.Time.UnixNano()
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
	// A complete first snapshot lists every source with history, so an
	// early warning about one it did not list counts from it. An
	// incomplete one (the daemon's, with no sources) says nothing about
	// the sources' history: runs of SYNs in the kernel may predate it.
	if s.Complete {
		d.lastComplete = now
	} else {
		d.completeSince = now
	}
	d.startedAt = now
	d.started = true
	if d.flood.active {
		// Restored incidents started an epoch before any time was known.
		d.flood.startAt = now
	}
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

// sourcePass is one snapshot's walk over its sources, which may come in
// several chunks.
type sourcePass struct {
	now      int64
	dtPrev   float64
	aPrev    float64
	complete bool
	pre      bool  // prefetch: the last snapshot came in a new order
	prev     int32 // index of the previous source in the snapshot, -1 first
	n        int   // sources so far
}

func (d *Detector) beginSources(complete bool, now int64, dtPrev float64) sourcePass {
	if !d.flood.active {
		// No service incident: distinct and top sources count this
		// snapshot only, so that one opening now has its figures.
		d.flood.start(now)
	}
	d.flaggedSYN = 0
	d.snapSources, d.snapNew, d.snapComplete = 0, 0, complete
	return sourcePass{now: now, dtPrev: dtPrev, aPrev: d.alpha(dtPrev), complete: complete,
		pre: d.sources.prefetching(), prev: -1}
}

// observeSources observes the next chunk of a snapshot's sources.
func (d *Detector) observeSources(p *sourcePass, sources []SourceCounters, out *Decisions) {
	now, dtPrev, aPrev, prev := p.now, p.dtPrev, p.aPrev, p.prev
	defer func() { p.prev = prev }()
	p.n += len(sources)
	// In a new order (most sources missed the chain last time), resolve
	// sources in batches whose cache misses overlap.
	const batch = 64
	var known [batch]int32
	pre := p.pre
	for pos := range sources {
		sc := &sources[pos]
		k := int32(-1)
		if pre {
			if pos%batch == 0 {
				d.sources.prefetch(sources[pos:min(pos+batch, len(sources))], known[:])
			}
			k = known[pos%batch]
		}
		i, st := d.sources.at(prev, sc.Addr, now, k)
		prev = i
		var dsyn, dack uint64
		fresh := st.seen == 0
		// Where this reading's counts begin: the previous reading, or for a
		// new source its kernel first-seen time or the previous snapshot.
		from := st.seen
		if fresh {
			from = now - int64(dtPrev*1e9)
			if fs := sc.FirstSeen.UnixNano(); !sc.FirstSeen.IsZero() && fs < from {
				from = fs
			}
		}
		if fresh {
			// New since the previous snapshot: its counts cover at most that
			// interval; start the EWMA at the observed rate (bias-corrected
			// EWMA) so that a new flooder is flagged on its first snapshot.
			// A source quiet since before the previous snapshot (a daemon
			// restarted after the flood ended) sent its counts over its
			// active life: rate them over that, decayed over the quiet
			// time since, not over its whole life up to now.
			dsyn, dack = sc.SYN, sc.ACK
			dt, decay := dtPrev, 1.0
			if fs := sc.FirstSeen.UnixNano(); !sc.FirstSeen.IsZero() {
				end := now
				if ls := sc.LastSeen.UnixNano(); !sc.LastSeen.IsZero() && ls < d.last && ls >= fs {
					end = ls
					decay = math.Exp(-float64(now-ls) / 1e9 / d.tau)
				}
				dt = max(dt, float64(end-fs)/1e9)
			}
			st.synRate = float32(float64(dsyn) / dt * decay)
			st.ackRate = float32(float64(dack) / dt * decay)
		} else {
			dt := float64(now-st.seen) / 1e9
			if dt <= 0 {
				continue
			}
			a := aPrev
			if st.seen != d.last {
				if p.complete && d.completeSince <= st.seen {
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
		if dsyn > 0 {
			d.snapSources++
			if fresh {
				d.snapNew++
			}
		}
		if dsyn > dack {
			d.flood.count(&d.sources, i, uint32(min(dsyn, math.MaxUint32)), d.cfg.TopSources, from)
		}
		if dack > 0 && st.epoch == d.flood.epoch {
			st.flags |= flagEpochACK
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
		// After the flag: a source that crossed the per-source bar in
		// this snapshot is banned as its own incident, not as a slow one.
		if dsyn > 0 && d.flood.inc != nil {
			d.banSlowSender(st, sc.Addr, now, out)
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
	return d.SuspectSince(t, a, synsWithoutACK, time.Time{})
}

// minSuspectSpan floors the span an early warning's run is rated over: the
// kernel stamps first-seen with a clock of tick resolution (4 ms at HZ=250),
// so a burst inside one tick would otherwise rate as infinite. A longer span
// keeps the rate a lower bound.
const minSuspectSpan = 10 * time.Millisecond

// SuspectSince is Suspect for a source the data plane first saw at
// firstSeen (zero: unknown). A source that appeared after the detector's
// last reading sent its whole run since firstSeen, so the run is rated over
// that span: a new flooder's incident then states its real rate rather than
// the run spread over the whole poll interval.
func (d *Detector) SuspectSince(t time.Time, a netip.Addr, synsWithoutACK uint32, firstSeen time.Time) Decisions {
	return d.Warn(Warning{Time: t, Addr: a, Run: synsWithoutACK, FirstSeen: firstSeen})
}

// Warning is an early warning from the data plane with what the data plane
// knows of the source at that moment.
type Warning struct {
	Time time.Time
	Addr netip.Addr
	// Run is the SYNs the source sent since its last ACK. The kernel keeps
	// it across daemon restarts, so it may predate the detector.
	Run uint32
	// SYN is the source's cumulative SYN counter when the warning was
	// read (0: unknown). It bounds the run to the SYNs sent since the
	// detector last read the source.
	SYN uint64
	// FirstSeen is when the kernel created the source's entry (zero:
	// unknown).
	FirstSeen time.Time
}

// Warn is SuspectSince with the source's cumulative SYN count, so that a
// run the kernel counted before the detector's last reading (or before a
// restart) is not taken for a new burst.
func (d *Detector) Warn(w Warning) Decisions {
	var out Decisions
	a, t, synsWithoutACK, firstSeen := w.Addr, w.Time, w.Run, w.FirstSeen
	if !a.IsValid() || synsWithoutACK < d.cfg.SuspectSYNs {
		return out
	}
	a = a.Unmap()
	now := t.UnixNano()
	i := d.sources.get(a, now)
	st := d.sources.s.at(i)
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
	since, sinceWhat := d.lastComplete, "it was last read"
	if st.seen != 0 {
		if float64(now-st.seen) < 2*float64(d.cfg.Window) {
			return out // fresh figures: the next snapshot decides
		}
		since = st.seen
		// Only the SYNs counted since that reading are in the span.
		if w.SYN != 0 && w.SYN >= st.syn {
			synsWithoutACK = uint32(min(uint64(synsWithoutACK), w.SYN-st.syn))
			if synsWithoutACK < d.cfg.SuspectSYNs {
				return out
			}
		}
	}
	if fs := firstSeen.UnixNano(); !firstSeen.IsZero() && fs > since && fs <= now {
		since, sinceWhat = min(fs, now-int64(minSuspectSpan)), "it was first seen"
	}
	if since == 0 || (st.seen == 0 && since < d.startedAt && d.lastComplete == 0) {
		// Never read, and no complete snapshot bounds its history: the run
		// may be older than the detector (a daemon restarted after a
		// flood). The first full scan rates it.
		return out
	}
	span := float64(now-since) / 1e9
	if span <= 0 {
		return out
	}
	rate := float64(synsWithoutACK) / span
	if rate < d.cfg.SourceSYNRate {
		return out
	}
	reason := fmt.Sprintf("%s sent %s SYNs without an ACK in between, all in the %v since %s (at least %s SYN/s, 100%% half-open; early warning from the data plane); thresholds: %s SYN/s and %s half-open",
		a, num(float64(synsWithoutACK)), time.Duration(span*1e9).Round(time.Millisecond), sinceWhat, num(rate), num(d.cfg.SourceSYNRate), pct(d.cfg.SourceHalfOpen))
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
