package detector

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// incident is an open incident with the bookkeeping its value type hides.
type incident struct {
	Incident
	handle     int32 // slab index+1
	src        int32 // source index (KindSource)
	kernAtOpen KernelCounters
	lastUpdate int64
	// halfOpenSYN counts a service incident's SYNs not matched by ACKs
	// (per interval); verdictSYN and verdictFlood are it and the flood
	// epoch's attributed SYNs when UntrackedSYNShare was last measured:
	// the share compares the two over the same span.
	halfOpenSYN, verdictSYN, verdictFlood uint64
	droppedNow                            uint64 // drops under its bans in the current snapshot
}

// copy returns the incident as a value that shares nothing mutable.
func (inc *incident) copy() Incident {
	c := inc.Incident
	c.Bans = slices.Clone(c.Bans)
	c.TopSources = slices.Clone(c.TopSources)
	return c
}

func (d *Detector) openIncident(k Kind, addr string, now int64, syn, ack uint64) *incident {
	t := time.Unix(0, now).UTC()
	inc := &incident{Incident: Incident{
		ID: d.newID(k, addr, t), Kind: k, Stage: StageOpened, Severity: SeverityWarning,
		Addr: addr, OpenedAt: t, UpdatedAt: t, SYN: syn, ACK: ack,
	}, lastUpdate: now, src: -1}
	inc.kernAtOpen = d.kernBase
	d.storeIncident(inc)
	return inc
}

func (d *Detector) storeIncident(inc *incident) {
	if n := len(d.incFree); n > 0 {
		inc.handle = d.incFree[n-1] + 1
		d.incFree = d.incFree[:n-1]
		d.incs[inc.handle-1] = inc
	} else {
		d.incs = append(d.incs, inc)
		inc.handle = int32(len(d.incs))
	}
	d.byID[inc.ID] = inc
	d.open++
}

// fillIncident refreshes an incident's figures, kernel evidence and
// severity.
func (d *Detector) fillIncident(inc *incident, rate, share float64, reason string, now int64) {
	inc.SYNPerSecond, inc.HalfOpenShare = rate, share
	inc.PeakSYNPerSecond = math.Max(inc.PeakSYNPerSecond, rate)
	if inc.Reason == "" {
		// The reason is why it fired; later figures go to the fields.
		inc.Reason = reason
	}
	port := uint16(0)
	var svc netip.AddrPort
	switch inc.Kind {
	case KindOverload:
		svc = inc.Service
		port = svc.Port()
		inc.Verdict = VerdictOverload
		inc.CompletionShare = 1 - share
		// A partial snapshot lists only watched sources, never a crowd's
		// clients: the figures come from complete ones (and the first).
		if d.snapComplete || inc.DistinctSources == 0 {
			inc.DistinctSources, inc.NewSources = d.snapSources, d.snapNew
		}
	case KindService:
		svc = inc.Service
		port = svc.Port()
		inc.DistinctSources = d.flood.distinct
		inc.SingleSYNSources = d.flood.single
		inc.TopSources = d.topSources()
	default:
		inc.Verdict = VerdictSingleSource
	}
	inc.Kernel = d.kern.impact(inc.kernAtOpen, svc, port, d.cfg.KernelWindow)
	if inc.Kernel.ListenDrops+inc.Kernel.ReqQFullDrop > 0 {
		inc.Severity = SeverityCritical
	}
}

// updateIncident refreshes figures and emits an "updated" stage at most
// every UpdateEvery, or at once when the severity rises.
func (d *Detector) updateIncident(inc *incident, rate, share float64, reason string, now int64, out *Decisions) {
	sev := inc.Severity
	d.fillIncident(inc, rate, share, reason, now)
	if now-inc.lastUpdate >= int64(d.cfg.UpdateEvery) || inc.Severity != sev {
		d.emitUpdate(inc, now, out)
	}
}

// measureUntracked sets a service incident's UntrackedSYNShare over the
// span since it was last measured: its SYNs against the SYNs the flood
// epoch attributed to sources read in that span. Both counts cover the same
// span, also after a restore (which starts both from the restored values).
// Fewer half-open SYNs than service_syn_rate are too few to measure: the
// share is kept, and so are the marks, until enough have come.
func (d *Detector) measureUntracked(inc *incident) {
	if inc.halfOpenSYN < inc.verdictSYN || d.flood.syn < inc.verdictFlood { // an epoch restarted
		inc.verdictSYN, inc.verdictFlood = inc.halfOpenSYN, d.flood.syn
		return
	}
	n := inc.halfOpenSYN - inc.verdictSYN
	if float64(n) < d.cfg.ServiceSYNRate {
		return
	}
	inc.UntrackedSYNShare = 1 - math.Min(1, float64(d.flood.syn-inc.verdictFlood)/float64(n))
	inc.verdictSYN, inc.verdictFlood = inc.halfOpenSYN, d.flood.syn
}

// judgeVerdict decides a service flood's verdict from the epoch's sources
// and the untracked share (see spoofedShare).
func (d *Detector) judgeVerdict(inc *incident) {
	inc.Verdict = VerdictDistributed
	if (d.flood.distinct > 0 && float64(d.flood.single) >= spoofedShare*float64(d.flood.distinct)) ||
		inc.UntrackedSYNShare >= untrackedShare {
		inc.Verdict = VerdictSpoofed
	}
}

// judgeVerdicts re-judges the open service incidents at a complete
// snapshot, when every source that moved has been read, so that the
// untracked share is measured between two such snapshots and does not
// swing with the partial ones in between. A new verdict is news at once:
// a flood first seen in the service's counters only may turn out to come
// from real sources once a scan reads them.
func (d *Detector) judgeVerdicts(now int64, out *Decisions) {
	for _, inc := range d.incs {
		if inc == nil || inc.Kind != KindService {
			continue
		}
		old := inc.Verdict
		d.measureUntracked(inc)
		d.judgeVerdict(inc)
		if inc.Verdict != old && inc.OpenedAt.UnixNano() != now {
			d.fillIncident(inc, inc.SYNPerSecond, inc.HalfOpenShare, inc.Reason, now)
			d.emitUpdate(inc, now, out)
		}
	}
}

func (d *Detector) emitUpdate(inc *incident, now int64, out *Decisions) {
	inc.Stage = StageUpdated
	inc.UpdatedAt = time.Unix(0, now).UTC()
	inc.lastUpdate = now
	out.Incidents = append(out.Incidents, inc.copy())
}

func (d *Detector) topSources() []SourceFigure {
	top := slices.Clone(d.flood.top)
	slices.SortFunc(top, func(a, b topEntry) int {
		if c := cmp.Compare(b.syn, a.syn); c != 0 {
			return c
		}
		return slices.Compare(a.key[:], b.key[:])
	})
	r := make([]SourceFigure, 0, len(top))
	for _, e := range top {
		f := SourceFigure{Addr: netip.AddrFrom16(e.key).Unmap(), SYN: uint64(e.syn)}
		if int(e.idx) < d.sources.s.len() && d.sources.is(d.sources.s.at(e.idx), e.key) {
			s := d.sources.s.at(e.idx)
			f.ACK = s.ack
			f.SYNPPS = float64(s.synRate)
		}
		r = append(r, f)
	}
	return r
}

// flag records that source i meets the flag condition now: it opens an
// incident (or updates it) and, in enforce mode, bans. reason is only
// needed (and only computed by callers) when the source was not flagged.
func (d *Detector) flag(i int32, now int64, rate, share float64, dsyn, dack uint64, reason string, out *Decisions) {
	st := d.sources.s.at(i)
	st.lastFlag = now
	a := d.sources.addr(st)
	if st.flags&flagFlagged == 0 {
		st.flags |= flagFlagged
		if d.cfg.AggregateSources > 0 {
			d.aggCount[d.aggPrefix(a)]++
			st.flags |= flagAggCounted
		}
		if d.open < d.cfg.MaxIncidents {
			inc := d.openIncident(KindSource, a.String(), now, dsyn, dack)
			inc.Source, inc.src = a, i
			inc.SYNThreshold, inc.HalfOpenThreshold = d.cfg.SourceSYNRate, d.cfg.SourceHalfOpen
			st.inc = inc.handle
			d.fillIncident(inc, rate, share, reason, now)
			d.banFor(a, now, inc, "", out)
			out.Incidents = append(out.Incidents, inc.copy())
			return
		}
		d.banFor(a, now, nil, "", out)
		return
	}
	var inc *incident
	if st.inc > 0 {
		inc = d.incs[st.inc-1]
		d.updateIncident(inc, rate, share, reason, now, out)
	}
	d.banFor(a, now, inc, "", out)
}

// unflag ends source i's flagged period.
func (d *Detector) unflag(s *source) {
	if s.flags&flagAggCounted != 0 {
		p := d.aggPrefix(d.sources.addr(s))
		if d.aggCount[p]--; d.aggCount[p] <= 0 {
			delete(d.aggCount, p)
		}
	}
	s.flags &^= flagFlagged | flagAggCounted
	s.inc = 0
}

func (d *Detector) resolve(inc *incident, now int64, out *Decisions) {
	t := time.Unix(0, now).UTC()
	inc.Stage = StageResolved
	inc.UpdatedAt = t
	inc.ResolvedAt = &t
	inc.Kernel = d.kern.impact(inc.kernAtOpen, inc.Service, inc.Service.Port(), d.cfg.KernelWindow)
	out.Incidents = append(out.Incidents, inc.copy())
	d.incs[inc.handle-1] = nil
	delete(d.byID, inc.ID)
	d.incFree = append(d.incFree, inc.handle-1)
	d.open--
}

// maintain resolves quiet incidents, emits periodic updates, and renews or
// lifts bans. complete says whether the current snapshot was complete.
func (d *Detector) maintain(now int64, complete bool, out *Decisions) {
	quiet := int64(d.cfg.ResolveAfter)
	// Whether a service incident stays open decides, at the next
	// snapshot, whether the flood epoch goes on (beginSources).
	anyService := false
	d.flood.inc = nil
	for _, inc := range d.incs {
		if inc == nil {
			continue
		}
		switch inc.Kind {
		case KindSource:
			st := d.sources.s.at(inc.src)
			last := max(st.lastFlag, d.banActivity(inc.Source))
			// Quiet is what a reading showed, not the absence of one: the
			// source was read since it was last flagged and no longer
			// flagged, or a complete snapshot since then did not list it.
			// With a million sources a daemon's full scans come every 40 s
			// or so, beyond resolve_after; without this the incident of a
			// source still sending resolved between two scans and reopened.
			heard := st.seen > st.lastFlag || d.lastComplete > st.lastFlag || (complete && st.lastFlag < now)
			if now-last >= quiet && heard {
				d.unflag(st)
				d.resolve(inc, now, out)
				continue
			}
		case KindService:
			sv := d.svcs[inc.Service]
			if sv == nil || now-sv.lastAlarm >= quiet {
				if sv != nil {
					sv.inc = nil
					sv.cusum = 0
				}
				d.resolve(inc, now, out)
				continue
			}
			anyService = true
			if d.flood.inc == nil {
				d.flood.inc = inc
			}
		case KindOverload:
			sv := d.svcs[inc.Service]
			if sv == nil || now-sv.lastOverload >= quiet {
				if sv != nil {
					sv.ovl = nil
				}
				d.resolve(inc, now, out)
				continue
			}
		}
		if now-inc.lastUpdate >= int64(d.cfg.UpdateEvery) {
			d.fillIncident(inc, inc.SYNPerSecond, inc.HalfOpenShare, inc.Reason, now)
			d.emitUpdate(inc, now, out)
		}
	}
	d.flood.active = anyService
	d.maintainBans(now, out)
}

// Open returns the open incidents, oldest first.
func (d *Detector) Open() []Incident {
	var r []Incident
	for _, inc := range d.incs {
		if inc != nil {
			r = append(r, inc.copy())
		}
	}
	slices.SortFunc(r, func(a, b Incident) int {
		if c := a.OpenedAt.Compare(b.OpenedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return r
}

// kernelHistory keeps the kernel counters of the last KernelWindow, so an
// incident can say what the kernel dropped "in the last minute".
type kernelHistory struct {
	t []int64
	c []KernelCounters
}

func (h *kernelHistory) add(now int64, c KernelCounters, window time.Duration) {
	h.t = append(h.t, now)
	h.c = append(h.c, c)
	// Keep one sample at or before the window's start, for the delta.
	cut := 0
	for cut+1 < len(h.t) && now-h.t[cut+1] >= int64(window) {
		cut++
	}
	if cut > 0 || len(h.t) > 4096 {
		cut = max(cut, len(h.t)-4096)
		h.t = slices.Delete(h.t, 0, cut)
		h.c = slices.Delete(h.c, 0, cut)
	}
}

// latest returns the latest counters without the listeners.
func (h *kernelHistory) latest() KernelCounters {
	if len(h.c) == 0 {
		return KernelCounters{}
	}
	c := h.c[len(h.c)-1]
	c.Listeners = nil
	return c
}

func sub(a, b uint64) uint64 {
	if a >= b {
		return a - b
	}
	return 0
}

// impact computes the kernel's evidence: counts since the incident opened,
// and a summary over the window.
func (h *kernelHistory) impact(atOpen KernelCounters, svc netip.AddrPort, port uint16, window time.Duration) KernelImpact {
	if len(h.c) == 0 {
		return KernelImpact{Summary: "no kernel counters read"}
	}
	cur := h.c[len(h.c)-1]
	k := KernelImpact{
		ListenOverflows: sub(cur.ListenOverflows, atOpen.ListenOverflows),
		ListenDrops:     sub(cur.ListenDrops, atOpen.ListenDrops),
		ReqQFullDrop:    sub(cur.ReqQFullDrop, atOpen.ReqQFullDrop),
		SyncookiesSent:  sub(cur.SyncookiesSent, atOpen.SyncookiesSent),
		SyncookiesRecv:  sub(cur.SyncookiesRecv, atOpen.SyncookiesRecv),
		SyncookiesFail:  sub(cur.SyncookiesFailed, atOpen.SyncookiesFailed),
	}
	if cur.empty() {
		k.Summary = "no kernel counters read"
		return k
	}
	old := h.c[0]
	dropped := sub(cur.ListenDrops, old.ListenDrops) + sub(cur.ReqQFullDrop, old.ReqQFullDrop)
	where := "server"
	if port != 0 {
		where = "port " + strconv.Itoa(int(port))
	}
	var b strings.Builder
	if dropped == 0 {
		fmt.Fprintf(&b, "%s: no handshakes dropped by the kernel in %s", where, durationPhrase(window))
	} else {
		fmt.Fprintf(&b, "%s: %s handshakes dropped by the kernel in %s (listen queue overflows %s, request queue full %s)",
			where, group(dropped), durationPhrase(window),
			group(sub(cur.ListenOverflows, old.ListenOverflows)), group(sub(cur.ReqQFullDrop, old.ReqQFullDrop)))
	}
	if sent := sub(cur.SyncookiesSent, old.SyncookiesSent); sent > 0 {
		fmt.Fprintf(&b, "; %s SYN cookies sent, %s returned valid, %s invalid", group(sent),
			group(sub(cur.SyncookiesRecv, old.SyncookiesRecv)), group(sub(cur.SyncookiesFailed, old.SyncookiesFailed)))
	} else {
		b.WriteString("; no SYN cookies sent")
	}
	if port != 0 {
		for _, l := range cur.Listeners {
			if l.Addr.Port() == port && (l.Addr.Addr() == svc.Addr() || l.Addr.Addr().IsUnspecified()) {
				fmt.Fprintf(&b, "; accept queue %d/%d on %s", l.Backlog, l.MaxBacklog, l.Addr)
			}
		}
	}
	k.Summary = b.String()
	return k
}

// group formats n with thousands separators: 1240 -> "1,240".
func group(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// num formats a rate for people: integers grouped, small values with one
// decimal.
func num(f float64) string {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Sprint(f)
	}
	if f < 0 {
		return "-" + num(-f)
	}
	if f < 10 && f != math.Trunc(f) {
		return strconv.FormatFloat(f, 'f', 1, 64)
	}
	return group(uint64(math.Round(f)))
}

func pct(f float64) string { return strconv.Itoa(int(math.Round(f*100))) + "%" }

// empty reports whether nothing was read (replay has no kernel).
func (k KernelCounters) empty() bool {
	return k.ListenOverflows == 0 && k.ListenDrops == 0 && k.ReqQFullDrop == 0 && k.SyncookiesSent == 0 &&
		k.SyncookiesRecv == 0 && k.SyncookiesFailed == 0 && k.PassiveOpens == 0 && len(k.Listeners) == 0
}
