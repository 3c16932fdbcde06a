package detector

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// State is what must survive a daemon restart or kill -9, so that ban
// timers are not reset, repeat offenders stay repeat offenders and open
// incidents keep their ids (no second "opened" alert). It is plain JSON.
type State struct {
	Version   int             `json:"version"`
	Saved     time.Time       `json:"saved"`
	Bans      []BanState      `json:"bans"`
	Offences  []OffenceState  `json:"offences"`
	Incidents []IncidentState `json:"incidents"`
	Services  []ServiceState  `json:"services"`
}

// BanState is an active ban with its renewal bookkeeping.
type BanState struct {
	Ban
	Length     time.Duration `json:"length_ns"`
	LastActive time.Time     `json:"last_active"`
	Dropped    uint64        `json:"dropped"`
}

// OffenceState is one prefix's escalation history.
type OffenceState struct {
	Prefix netip.Prefix `json:"prefix"`
	Count  int          `json:"count"`
	Last   time.Time    `json:"last"`
}

// IncidentState is an open incident with what resolving it needs.
type IncidentState struct {
	Incident
	KernelAtOpen KernelCounters `json:"kernel_at_open"`
	// LastFlagged is the last time the flag condition held.
	LastFlagged time.Time `json:"last_flagged"`
}

// ServiceState is a service's learned baseline, which takes minutes to
// learn and should not be lost on restart.
type ServiceState struct {
	Addr     netip.AddrPort `json:"addr"`
	Weight   float64        `json:"weight"`
	Mean     float64        `json:"mean_weighted"`
	Square   float64        `json:"square_weighted"`
	ACKMean  float64        `json:"ack_mean_weighted"`
	LastSeen time.Time      `json:"last_seen"`
}

const stateVersion = 1

// State returns the persistent part of the detector.
func (d *Detector) State() State {
	st := State{Version: stateVersion}
	if d.started {
		st.Saved = time.Unix(0, d.last).UTC()
	}
	for _, b := range d.bans {
		st.Bans = append(st.Bans, BanState{Ban: b.Ban, Length: b.length, LastActive: time.Unix(0, b.lastActive).UTC(), Dropped: b.dropped})
	}
	slices.SortFunc(st.Bans, func(a, b BanState) int { return comparePrefix(a.Prefix, b.Prefix) })
	for p, o := range d.offences {
		st.Offences = append(st.Offences, OffenceState{Prefix: p, Count: o.Count, Last: o.Last})
	}
	slices.SortFunc(st.Offences, func(a, b OffenceState) int { return comparePrefix(a.Prefix, b.Prefix) })
	for _, inc := range d.incs {
		if inc == nil {
			continue
		}
		is := IncidentState{Incident: inc.copy(), KernelAtOpen: inc.kernAtOpen}
		switch inc.Kind {
		case KindSource:
			is.LastFlagged = time.Unix(0, d.sources.s.at(inc.src).lastFlag).UTC()
		case KindService:
			if sv := d.svcs[inc.Service]; sv != nil {
				is.LastFlagged = time.Unix(0, sv.lastAlarm).UTC()
			}
		case KindOverload:
			if sv := d.svcs[inc.Service]; sv != nil {
				is.LastFlagged = time.Unix(0, sv.lastOverload).UTC()
			}
		}
		st.Incidents = append(st.Incidents, is)
	}
	slices.SortFunc(st.Incidents, func(a, b IncidentState) int { return strings.Compare(a.ID, b.ID) })
	for a, sv := range d.svcs {
		if sv.w > 0 {
			st.Services = append(st.Services, ServiceState{Addr: a, Weight: sv.w, Mean: sv.m1, Square: sv.m2, ACKMean: sv.mack, LastSeen: time.Unix(0, sv.seen).UTC()})
		}
	}
	slices.SortFunc(st.Services, func(a, b ServiceState) int { return a.Addr.Compare(b.Addr) })
	return st
}

// Restore loads a saved State into a detector fresh from New. The next
// snapshot is a baseline (see the package doc): counters of unknown age are
// not judged, but bans keep their expiry and incidents their ids.
func (d *Detector) Restore(st State) error {
	if st.Version != stateVersion {
		return fmt.Errorf("restore detector state: version %d: only version %d is known", st.Version, stateVersion)
	}
	for _, o := range st.Offences {
		if !o.Prefix.IsValid() {
			return fmt.Errorf("restore detector state: offence prefix %q: invalid prefix", o.Prefix)
		}
		d.offences[o.Prefix.Masked()] = offence{Count: o.Count, Last: o.Last}
	}
	for _, b := range st.Bans {
		if !b.Prefix.IsValid() || b.Length <= 0 {
			return fmt.Errorf("restore detector state: ban %q: invalid prefix or length", b.Prefix)
		}
		nb := &ban{Ban: b.Ban, length: b.Length, lastActive: b.LastActive.UnixNano(), dropped: b.Dropped}
		nb.Prefix = b.Prefix.Masked()
		d.storeBan(nb)
	}
	for _, a := range st.Services {
		sv := d.service(a.Addr, a.LastSeen.UnixNano())
		if sv == nil {
			break
		}
		sv.w, sv.m1, sv.m2, sv.mack = a.Weight, a.Mean, a.Square, a.ACKMean
	}
	for _, is := range st.Incidents {
		inc := &incident{Incident: is.Incident, kernAtOpen: is.KernelAtOpen, lastUpdate: is.UpdatedAt.UnixNano(), src: -1}
		if inc.Verdict == "" { // saved before verdicts existed
			inc.Verdict = map[Kind]Verdict{KindSource: VerdictSingleSource, KindService: VerdictDistributed, KindOverload: VerdictOverload}[is.Kind]
		}
		last := is.LastFlagged.UnixNano()
		switch is.Kind {
		case KindSource:
			a, err := netip.ParseAddr(is.Addr)
			if err != nil {
				return fmt.Errorf("restore detector state: incident %s: source %q: %w", is.ID, is.Addr, err)
			}
			a = a.Unmap()
			inc.Source = a
			d.storeIncident(inc)
			i := d.sources.get(a, last)
			s := d.sources.s.at(i)
			s.flags |= flagFlagged
			if d.cfg.AggregateSources > 0 {
				d.aggCount[d.aggPrefix(a)]++
				s.flags |= flagAggCounted
			}
			s.lastFlag, s.inc = last, inc.handle
			inc.src = i
		case KindService, KindOverload:
			ap, err := netip.ParseAddrPort(is.Addr)
			if err != nil {
				return fmt.Errorf("restore detector state: incident %s: service %q: %w", is.ID, is.Addr, err)
			}
			sv := d.service(ap, last)
			if sv == nil {
				continue
			}
			inc.Service = ap
			d.storeIncident(inc)
			if is.Kind == KindOverload {
				sv.ovl, sv.lastOverload = inc, last
				continue
			}
			sv.inc, sv.lastAlarm = inc, last
			// A new epoch: every source counts as new in it (start
			// leaves epoch 0, every source's, behind).
			d.flood.start(d.last)
		default:
			return fmt.Errorf("restore detector state: incident %s: kind %q: want source, service or overload", is.ID, is.Kind)
		}
	}
	return nil
}

// Explain says why a is or is not banned, with its figures.
func (d *Detector) Explain(a netip.Addr) Explanation {
	a = a.Unmap()
	e := Explanation{Addr: a, SYNThreshold: d.cfg.SourceSYNRate, HalfOpenThreshold: d.cfg.SourceHalfOpen}
	var parts []string
	var flood *incident // the service flood the source takes part in
	if i, ok := d.sources.lookup(a); ok {
		s := d.sources.s.at(i)
		if d.flood.inc != nil && s.epoch == d.flood.epoch && s.flags&flagEpochACK == 0 {
			flood = d.flood.inc
		}
		e.Tracked = s.seen != 0
		if s.seen != 0 {
			e.SeenAt = time.Unix(0, s.seen).UTC()
		}
		e.SYN, e.ACK = s.syn, s.ack
		e.SYNPerSecond = float64(s.synRate)
		e.HalfOpenShare = halfOpen(float64(s.synRate), float64(s.ackRate))
		e.Flagged = s.flags&flagFlagged != 0
		if s.inc > 0 {
			inc := d.incs[s.inc-1]
			e.IncidentID, e.Verdict = inc.ID, inc.Verdict
		}
	}
	if e.Tracked {
		parts = append(parts, fmt.Sprintf("%s: %s SYN/s, %s half-open as of %s (thresholds %s SYN/s and %s)",
			a, num(e.SYNPerSecond), pct(e.HalfOpenShare), e.SeenAt.Format(time.RFC3339), num(e.SYNThreshold), pct(e.HalfOpenThreshold)))
	} else {
		parts = append(parts, fmt.Sprintf("%s: no figures (not seen recently)", a))
	}
	switch {
	case e.Flagged:
		parts = append(parts, "flagged as a flooding source")
		if e.IncidentID != "" {
			parts[len(parts)-1] += " (incident " + e.IncidentID + ", verdict " + d.byID[e.IncidentID].VerdictText() + ")"
		}
	case flood != nil:
		// Not flagged on its own, but one of the half-open senders of a
		// service flood (a slow bot, or a real client the flood holds up).
		e.IncidentID, e.Verdict = flood.ID, flood.Verdict
		parts = append(parts, fmt.Sprintf("not flagged on its own, but it sent half-open SYNs during the flood on %s (incident %s, verdict %s)",
			flood.Addr, flood.ID, flood.VerdictText()))
	default:
		parts = append(parts, "not flagged")
	}
	if p, ok := d.protectedBy(a); ok {
		e.ProtectedBy = &p
		parts = append(parts, "never banned: protected by "+p.String())
	}
	if b := d.covering(a); b != nil {
		bb := b.Ban
		e.Ban = &bb
		parts = append(parts, fmt.Sprintf("banned as %s until %s (offence %d)", b.Prefix, b.Until.Format(time.RFC3339), b.Offence))
	} else if !d.opt.Enforce {
		parts = append(parts, "not banned: observe mode")
	} else {
		parts = append(parts, "not banned")
	}
	if o, ok := d.offences[hostPrefix(a)]; ok {
		e.Offences = o.Count
	}
	if d.cfg.AggregateSources > 0 {
		if o, ok := d.offences[d.aggPrefix(a)]; ok {
			e.Offences += o.Count
		}
	}
	e.Text = strings.Join(parts, "; ")
	return e
}
