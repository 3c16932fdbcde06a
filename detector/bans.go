package detector

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"
)

// ban is an active ban with its renewal bookkeeping.
type ban struct {
	Ban
	length     time.Duration
	lastActive int64  // last evidence the prefix is still sending
	dropped    uint64 // last kernel drop counter seen
}

// offence is a prefix's escalation history.
type offence struct {
	Count int       `json:"count"`
	Last  time.Time `json:"last"`
}

// maxIncidentBans caps the bans listed in one incident (an aggregated flood
// would otherwise grow it without bound).
const maxIncidentBans = 16

func (d *Detector) aggPrefix(a netip.Addr) netip.Prefix {
	bits := d.cfg.AggregateV4Bits
	if a.Is6() {
		bits = d.cfg.AggregateV6Bits
	}
	p, _ := a.Prefix(bits)
	return p
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// covering returns the active ban covering a, if any.
func (d *Detector) covering(a netip.Addr) *ban {
	if len(d.bans) == 0 {
		return nil
	}
	if b := d.bans[hostPrefix(a)]; b != nil {
		return b
	}
	if d.cfg.AggregateSources > 0 {
		return d.bans[d.aggPrefix(a)]
	}
	return nil
}

// banActivity is the last time the ban covering a saw its prefix send.
func (d *Detector) banActivity(a netip.Addr) int64 {
	if b := d.covering(a); b != nil {
		return b.lastActive
	}
	return 0
}

func (d *Detector) markActive(a netip.Addr, now int64) {
	if b := d.covering(a); b != nil {
		b.lastActive = max(b.lastActive, now)
	}
}

// banFor decides the ban for flagged source a (enforce mode only); reason
// is the ban's reason, or "" for the incident's figures.
func (d *Detector) banFor(a netip.Addr, now int64, inc *incident, reason string, out *Decisions) {
	if !d.opt.Enforce {
		return
	}
	if b := d.covering(a); b != nil {
		b.lastActive = max(b.lastActive, now)
		if b.Prefix.Bits() == a.BitLen() {
			d.maybeAggregate(a, now, inc, out)
		}
		return
	}
	if p, ok := d.protectedBy(a); ok {
		if inc != nil && inc.Stage == StageOpened {
			inc.Reason += fmt.Sprintf("; not banned: %s is protected by %s", a, p)
		}
		return
	}
	if d.maybeAggregate(a, now, inc, out) {
		return
	}
	if len(d.bans) >= d.cfg.MaxBans {
		if inc != nil && inc.Stage == StageOpened {
			inc.Reason += fmt.Sprintf("; not banned: the ban cap (max_bans %d) is reached", d.cfg.MaxBans)
		}
		return
	}
	switch {
	case reason != "":
	case inc != nil:
		reason = fmt.Sprintf("SYN flood from %s: %s SYN/s, %s half-open", a, num(inc.SYNPerSecond), pct(inc.HalfOpenShare))
	default:
		reason = fmt.Sprintf("SYN flood from %s", a)
	}
	d.addBan(hostPrefix(a), now, inc, reason, out)
}

// banSlowSender bans a source of a service flood that stays below the
// per-source bar (a slow botnet: many real hosts at tens of SYN/s each)
// once it has sent half-open SYNs through the flood for ServiceBanAfter,
// at ServiceBanSYNRate or more on average, and completed no handshake in
// it. Spoofed random sources send one SYN each and are never seen again,
// so they never qualify and never fill the ban table; a real user whose
// SYNs protection drops retransmits far slower than the floor.
func (d *Detector) banSlowSender(st *source, a netip.Addr, now int64, out *Decisions) {
	if !d.opt.Enforce || st.epoch != d.flood.epoch || st.epochFrom == 0 || st.flags&(flagEpochACK|flagFlagged) != 0 {
		return
	}
	span := now - (d.flood.startAt + int64(st.epochFrom-1)*1e9)
	if span < int64(d.cfg.ServiceBanAfter) || float64(st.epochSYN) < d.cfg.ServiceBanSYNRate*float64(span)/1e9 {
		return
	}
	if d.covering(a) != nil || len(d.bans) >= d.cfg.MaxBans {
		return
	}
	if _, ok := d.protectedBy(a); ok {
		return
	}
	inc := d.flood.inc
	reason := fmt.Sprintf("%s sent %s half-open SYNs in %v during the flood on service %s and completed no handshake (service_ban_after %v, service_ban_syn_rate %s)",
		a, num(float64(st.epochSYN)), time.Duration(span).Round(100*time.Millisecond), inc.Addr, d.cfg.ServiceBanAfter, num(d.cfg.ServiceBanSYNRate))
	d.banFor(a, now, inc, reason, out)
	if b := d.covering(a); b != nil && b.Prefix.IsSingleIP() {
		d.maybeAggregate(a, now, inc, out) // this ban may complete a prefix
	}
}

// maybeAggregate replaces the host bans inside a's /24 or /64 with one
// prefix ban once enough of its sources are flagged and the prefix covers
// nothing protected.
func (d *Detector) maybeAggregate(a netip.Addr, now int64, inc *incident, out *Decisions) bool {
	if d.cfg.AggregateSources == 0 {
		return false
	}
	agg := d.aggPrefix(a)
	// Flagged sources, or banned hosts (slow senders are banned without
	// being flagged), whichever is more.
	n := max(d.aggCount[agg], d.hostBans[agg])
	if n < d.cfg.AggregateSources || d.overlapsProtected(agg) || d.bans[agg] != nil {
		return false
	}
	inside := 0
	for p := range d.bans {
		if p.Bits() > agg.Bits() && agg.Contains(p.Addr()) {
			inside++
		}
	}
	if len(d.bans)-inside >= d.cfg.MaxBans {
		return false
	}
	for p := range d.bans {
		if p.Bits() > agg.Bits() && agg.Contains(p.Addr()) {
			d.lift(p, out)
		}
	}
	reason := fmt.Sprintf("SYN flood from %d flagged or banned sources in %s (aggregate_sources %d)", n, agg, d.cfg.AggregateSources)
	d.addBan(agg, now, inc, reason, out)
	return true
}

// banLength escalates: base x factor^(offence-1), capped at max.
func (d *Detector) banLength(offence int) time.Duration {
	l := float64(d.cfg.BanBase) * math.Pow(d.cfg.BanFactor, float64(offence-1))
	if l >= float64(d.cfg.BanMax) || math.IsInf(l, 0) {
		return d.cfg.BanMax
	}
	return time.Duration(l).Round(time.Second)
}

func (d *Detector) addBan(p netip.Prefix, now int64, inc *incident, reason string, out *Decisions) {
	t := time.Unix(0, now).UTC()
	n := 1
	if o, ok := d.offences[p]; ok && now-o.Last.UnixNano() <= int64(d.cfg.OffenceMemory) {
		n = o.Count + 1
	}
	length := d.banLength(n)
	b := &ban{Ban: Ban{Prefix: p, From: t, Until: t.Add(length), Offence: n,
		Reason: fmt.Sprintf("%s; offence %d, banned for %v", reason, n, length)}, length: length, lastActive: now}
	if inc != nil {
		b.IncidentID = inc.ID
		if len(inc.Bans) < maxIncidentBans {
			inc.Bans = append(inc.Bans, b.Ban)
		}
	}
	d.storeBan(b)
	d.offences[p] = offence{Count: n, Last: t}
	d.pruneOffences(now)
	out.Bans = append(out.Bans, b.Ban)
}

// Lift forgets the ban on exactly p because an operator lifted it (the
// daemon has already removed it from the kernel). The offence stays on
// record, so a renewed flood from p is banned again, for longer; without
// this the detector would keep the ban as covering p, ban nothing more and
// explain a ban that no longer exists. It reports whether p was banned.
func (d *Detector) Lift(p netip.Prefix) bool {
	p = p.Masked()
	if d.bans[p] == nil {
		return false
	}
	d.dropBan(p)
	// The operator's lift outranks the evidence so far: a host's smoothed
	// rates restart at zero, so that only new SYNs (a renewed flood) ban
	// it again, not the figures behind this ban, which take seconds to
	// decay. (A prefix's sources keep theirs: finding them all would cost
	// a walk of every source.)
	if p.IsSingleIP() {
		if i, ok := d.sources.lookup(p.Addr()); ok {
			st := d.sources.s.at(i)
			st.synRate, st.ackRate = 0, 0
		}
	}
	return true
}

func (d *Detector) lift(p netip.Prefix, out *Decisions) {
	d.dropBan(p)
	out.Unbans = append(out.Unbans, p)
}

// storeBan and dropBan keep d.bans and the count of host bans per
// aggregation prefix together.
func (d *Detector) storeBan(b *ban) {
	d.bans[b.Prefix] = b
	if b.Prefix.IsSingleIP() {
		d.hostBans[d.aggPrefix(b.Prefix.Addr())]++
	}
}

func (d *Detector) dropBan(p netip.Prefix) {
	if d.bans[p] == nil {
		return
	}
	delete(d.bans, p)
	if p.IsSingleIP() {
		agg := d.aggPrefix(p.Addr())
		if d.hostBans[agg]--; d.hostBans[agg] <= 0 {
			delete(d.hostBans, agg)
		}
	}
}

// observeBanCounters reads the kernel's per-ban drop counters: drops mean
// the banned prefix is still sending. dt is the snapshot interval in
// seconds, for the open incidents' drop rates (summed over each incident's
// bans, without allocating: the daemon calls this every poll); incidents
// whose figures changed go to out.Drops.
func (d *Detector) observeBanCounters(s Snapshot, now int64, dt float64, out *Decisions) {
	// Every open incident starts at 0: one whose bans were lifted (or
	// unblocked by hand) drops nothing any more.
	for _, inc := range d.incs {
		if inc != nil {
			inc.droppedNow = 0
		}
	}
	for _, bc := range s.Bans {
		b := d.bans[bc.Prefix]
		if b == nil {
			continue
		}
		n := delta(bc.Dropped, b.dropped)
		if n > 0 {
			b.lastActive = now
		}
		if inc := d.byID[b.IncidentID]; inc != nil {
			inc.Dropped += n
			inc.droppedNow += n
		}
		b.dropped = bc.Dropped
	}
	// dt > 0: observe returns early for a snapshot not after the last.
	for _, inc := range d.incs {
		if inc == nil {
			continue
		}
		rate := float64(inc.droppedNow) / dt
		if inc.droppedNow > 0 || rate != inc.DroppedPerSecond {
			inc.DroppedPerSecond = rate
			out.Drops = append(out.Drops, IncidentDrops{ID: inc.ID, Dropped: inc.Dropped, PerSecond: rate})
		}
	}
}

// maintainBans renews bans whose prefix kept sending within BanGrace, a
// little before the kernel would expire them, and lifts the others at
// expiry.
func (d *Detector) maintainBans(now int64, out *Decisions) {
	ahead := int64(max(2*d.renewHint, time.Second))
	for p, b := range d.bans {
		until := b.Until.UnixNano()
		if now < until-ahead {
			continue
		}
		if now-b.lastActive < int64(d.cfg.BanGrace) {
			b.Until = time.Unix(0, now).UTC().Add(b.length)
			out.Bans = append(out.Bans, b.Ban)
			continue
		}
		if now >= until {
			d.lift(p, out)
		}
	}
}

// pruneOffences keeps the escalation history bounded: entries older than
// OffenceMemory go, and beyond 4 x MaxBans entries the oldest go.
func (d *Detector) pruneOffences(now int64) {
	limit := 4 * d.cfg.MaxBans
	if len(d.offences) <= limit {
		return
	}
	var oldest []int64
	for p, o := range d.offences {
		if now-o.Last.UnixNano() > int64(d.cfg.OffenceMemory) && d.bans[p] == nil {
			delete(d.offences, p)
			continue
		}
		oldest = append(oldest, o.Last.UnixNano())
	}
	if len(d.offences) <= limit*3/4 {
		return
	}
	// Drop the oldest quarter that has no active ban.
	cut := quantile(oldest, 0.25)
	for p, o := range d.offences {
		if o.Last.UnixNano() <= cut && d.bans[p] == nil {
			delete(d.offences, p)
		}
	}
}

func quantile(v []int64, q float64) int64 {
	if len(v) == 0 {
		return 0
	}
	// A rough quantile is enough for pruning; sort a copy.
	c := slices.Clone(v)
	slices.Sort(c)
	return c[int(float64(len(c)-1)*q)]
}
