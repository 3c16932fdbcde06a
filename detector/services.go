package detector

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"
)

// service is one local address:port with its learned baseline.
type service struct {
	addr     netip.AddrPort
	syn, ack uint64 // cumulative counters at seen
	seen     int64
	// Fast EWMAs (time constant Window) of the SYN and ACK rates.
	synRate, ackRate float64
	// Slow, bias-corrected EWMAs (time constant ServiceBaseline): weight w,
	// weighted sums of the SYN rate, its square and the ACK rate.
	w, m1, m2, mack float64
	cusum           float64
	lastAlarm       int64
	inc             *incident
	// ovl is the open overload incident, lastOverload the last time the
	// kernel dropped handshakes while this service was busy.
	ovl          *incident
	lastOverload int64
}

// baseline returns the learned SYN rate, its spread and the ACK rate.
func (sv *service) baseline() (mu, sd, ack float64) {
	if sv.w <= 0 {
		return 0, 1, 0
	}
	mu = sv.m1 / sv.w
	v := sv.m2/sv.w - mu*mu
	sd = math.Max(math.Sqrt(math.Max(v, 0)), math.Max(0.1*mu, 1))
	return mu, sd, sv.mack / sv.w
}

// service returns the state for a, creating it; nil when the table is full
// of services under attack.
func (d *Detector) service(a netip.AddrPort, now int64) *service {
	if sv := d.svcs[a]; sv != nil {
		return sv
	}
	if len(d.svcs) >= d.cfg.MaxServices {
		d.evictServices()
		if len(d.svcs) >= d.cfg.MaxServices {
			return nil
		}
	}
	sv := &service{addr: a}
	d.svcs[a] = sv
	return sv
}

// evictServices forgets the least recently seen quarter of the services
// that have no open incident.
func (d *Detector) evictServices() {
	var seen []int64
	for _, sv := range d.svcs {
		if sv.inc == nil && sv.ovl == nil {
			seen = append(seen, sv.seen)
		}
	}
	if len(seen) == 0 {
		return
	}
	slices.Sort(seen)
	cut := seen[len(seen)/4]
	for a, sv := range d.svcs {
		if sv.inc == nil && sv.ovl == nil && sv.seen <= cut {
			delete(d.svcs, a)
		}
	}
}

func (d *Detector) observeServices(s Snapshot, now int64, dtPrev float64, out *Decisions) {
	drops := d.handshakeDrops()
	for _, sc := range s.Services {
		sv := d.service(sc.Addr, now)
		if sv == nil {
			continue
		}
		var dsyn, dack uint64
		var dt float64
		if sv.seen == 0 {
			dsyn, dack, dt = sc.SYN, sc.ACK, dtPrev
		} else {
			dt = float64(now-sv.seen) / 1e9
			if dt <= 0 {
				continue
			}
			dsyn, dack = delta(sc.SYN, sv.syn), delta(sc.ACK, sv.ack)
		}
		// SYNs from flagged sources are explained already: a single-source
		// flood must not also open a service incident. (Attribution is
		// by time: the per-source entries do not say which service.)
		x, xack := float64(dsyn-min(dsyn, d.flaggedSYN))/dt, float64(dack)/dt
		if sv.seen == 0 {
			sv.synRate, sv.ackRate = x, xack
		} else {
			a := d.alpha(dt)
			sv.synRate += a * (x - sv.synRate)
			sv.ackRate += a * (xack - sv.ackRate)
		}
		sv.syn, sv.ack, sv.seen = sc.SYN, sc.ACK, now
		if sv.inc != nil {
			sv.inc.SYN += dsyn
			sv.inc.ACK += dack
			sv.inc.halfOpenSYN += dsyn - min(dsyn, dack)
		}

		// The rates judged: the smoothed ones, or this interval's when it
		// is busier, so that a flood at the floor is seen in its first
		// interval instead of after the EWMA has caught up with it (63%
		// of the way after one Window).
		rate, ackRate := sv.synRate, sv.ackRate
		if x > rate {
			rate, ackRate = x, xack
		}
		// A baseline still being learned holds normal traffic only (see
		// learnService), so it says which SYNs and ACKs are extra; it is
		// too short for its spread to be trusted, so it cannot open an
		// incident by CUSUM, and its limit is at least the floor.
		learned := sv.w >= learnedWeight
		mu, sd, muAck := sv.baseline()
		limit := mu + d.cfg.ServiceDeviations*sd
		if !learned {
			limit = math.Max(limit, d.cfg.ServiceSYNRate)
		}
		// The share of the SYNs above the baseline that are not matched by
		// ACKs above the baseline: a flash crowd brings its ACKs, a flood
		// does not. With no baseline at all, every SYN is "extra".
		extra := rate - mu
		extraShare := 0.0
		if extra > 0 {
			extraShare = math.Max(0, math.Min(1, (extra-(ackRate-muAck))/extra))
		}
		// A learned baseline: CUSUM opens the incident; it stays open while
		// the rate of this interval is above the limit. The sum is capped so
		// that it drains within seconds once the flood stops. No learned
		// baseline (a new service, a daemon with no saved state): the
		// absolute floors alone open it, from the first sample on. Either
		// way opening also needs the judged rate at the threshold the
		// incident reports, so that its figures never contradict it.
		var opens bool
		if learned {
			h := d.cfg.ServiceCUSUM * sd
			sv.cusum = math.Min(math.Max(0, sv.cusum+(x-limit)*dt), 2*h)
			opens = sv.cusum >= h && rate >= limit
		} else {
			sv.cusum = 0
			opens = extra >= d.cfg.ServiceSYNRate && rate >= limit
		}
		alarm := rate >= d.cfg.ServiceSYNRate && extraShare >= d.cfg.ServiceHalfOpen &&
			((sv.inc == nil && opens) || (sv.inc != nil && x > limit))
		if alarm {
			sv.lastAlarm = now
			d.alarmService(sv, now, rate, ackRate, mu, sd, limit, extraShare, learned, dsyn, dack, out)
		} else if sv.inc == nil {
			d.learnService(sv, x, xack, dt, learned, limit)
			// A capacity problem: a busy service whose SYNs mostly
			// complete while the kernel drops at least one handshake per
			// hundred of its SYNs. The drops are the host's: a stray one
			// is no overload, and a flood anywhere explains them (judged
			// below, once every service has been).
			if drops > 0 && drops*100 >= dsyn && rate >= d.cfg.ServiceSYNRate && extraShare < d.cfg.ServiceHalfOpen {
				d.overloaded = append(d.overloaded, overloadCandidate{sv, rate, extraShare, dsyn, dack})
			}
		}
	}
	// Judged once every service is: a flood anywhere explains the drops.
	if len(d.overloaded) == 0 {
		return
	}
	flooded := d.flood.inc != nil
	for _, sv := range d.svcs {
		if flooded {
			break
		}
		flooded = sv.inc != nil
	}
	if !flooded {
		for _, c := range d.overloaded {
			d.overload(c.sv, now, c.rate, c.extraShare, drops, c.dsyn, c.dack, out)
		}
	}
	d.overloaded = d.overloaded[:0]
}

// overloadCandidate is a busy service whose SYNs complete while the kernel
// drops handshakes, waiting for the snapshot's other services to be judged.
type overloadCandidate struct {
	sv               *service
	rate, extraShare float64
	dsyn, dack       uint64
}

// handshakeDrops is how many handshakes the kernel dropped since the
// previous snapshot (ListenDrops includes the accept queue's overflows;
// some kernels count SYN-queue drops only as ReqQFullDrop).
func (d *Detector) handshakeDrops() uint64 {
	cur, prev := d.kern.latest(), d.kernBase
	if prev.empty() {
		return 0 // no previous reading (the first, or after a failed one)
	}
	return max(sub(cur.ListenDrops, prev.ListenDrops), sub(cur.ListenOverflows, prev.ListenOverflows)+sub(cur.ReqQFullDrop, prev.ReqQFullDrop))
}

// overload opens or updates the overload incident of a busy service whose
// SYNs mostly complete their handshakes (it is no flood: that was judged
// first) while the kernel drops handshakes: a capacity problem.
func (d *Detector) overload(sv *service, now int64, rate, extraShare float64, drops, dsyn, dack uint64, out *Decisions) {
	sv.lastOverload = now
	addr := sv.addr.String()
	reason := fmt.Sprintf("service %s receives %s SYN/s and %s of the extra SYNs complete their handshakes, while the kernel dropped %s handshakes since the last reading: capacity, not an attack; nothing banned. What helps: a larger listen backlog (net.core.somaxconn, net.ipv4.tcp_max_syn_backlog and the server's own listen() backlog), more workers accepting connections, kernel SYN cookies on",
		addr, num(rate), pct(1-extraShare), num(float64(drops)))
	if sv.ovl == nil {
		if d.open >= d.cfg.MaxIncidents {
			return
		}
		inc := d.openIncident(KindOverload, addr, now, dsyn, dack)
		inc.Service = sv.addr
		inc.SYNThreshold = d.cfg.ServiceSYNRate
		inc.HalfOpenThreshold = d.cfg.ServiceHalfOpen
		sv.ovl = inc
		d.fillIncident(inc, rate, extraShare, reason, now)
		out.Incidents = append(out.Incidents, inc.Incident)
		return
	}
	sv.ovl.SYN += dsyn
	sv.ovl.ACK += dack
	d.updateIncident(sv.ovl, rate, extraShare, reason, now, out)
}

// learnedWeight is the weight a service's baseline must reach before it is
// trusted: a fifth of detector.service_baseline of normal traffic (60 s at
// the default 5 min). Until then the service is judged against the floors
// service_syn_rate and service_half_open alone, so a service flooded from
// its first second, or while the daemon has no saved baseline, is flagged.
var learnedWeight = 1 - math.Exp(-0.2)

// learnService teaches the baseline one interval of normal traffic. A flood
// is never learned: with no learned baseline an interval at or above both
// floors is skipped; with one, the rate is clipped at the limit, and its
// ACKs with it in proportion (unclipped ACKs would let a burst teach an ACK
// baseline that later makes a flash crowd's ACKs look missing).
func (d *Detector) learnService(sv *service, x, xack, dt float64, learned bool, limit float64) {
	if learned {
		if x > limit {
			xack *= limit / x
			x = limit
		}
	} else if x >= d.cfg.ServiceSYNRate && halfOpen(x, xack) >= d.cfg.ServiceHalfOpen {
		return
	}
	dec := math.Exp(-dt / d.cfg.ServiceBaseline.Seconds())
	sv.w = dec*sv.w + (1 - dec)
	sv.m1 = dec*sv.m1 + (1-dec)*x
	sv.m2 = dec*sv.m2 + (1-dec)*x*x
	sv.mack = dec*sv.mack + (1-dec)*xack
}

func (d *Detector) alarmService(sv *service, now int64, rate, ackRate, mu, sd, limit, extraShare float64, learned bool, dsyn, dack uint64, out *Decisions) {
	share := halfOpen(rate, ackRate)
	addr := sv.addr.String()
	// The bar the rate crossed: without a learned baseline the extra SYNs
	// themselves must reach the floor.
	threshold := math.Max(d.cfg.ServiceSYNRate, limit)
	if !learned {
		threshold = math.Max(threshold, mu+d.cfg.ServiceSYNRate)
	}
	var reason string
	if learned {
		reason = fmt.Sprintf("service %s receives %s SYN/s from sources not flagged individually (over the last interval or smoothed over %v, whichever is higher) against a baseline of %s ± %s SYN/s (CUSUM %s ≥ %s); %s of the extra SYNs are half-open (overall %s); thresholds: %s SYN/s, %s half-open",
			addr, num(rate), d.cfg.Window, num(mu), num(sd), num(sv.cusum/sd), num(d.cfg.ServiceCUSUM),
			pct(extraShare), pct(share), num(threshold), pct(d.cfg.ServiceHalfOpen))
	} else {
		learnt := time.Duration(-math.Log1p(-sv.w) * float64(d.cfg.ServiceBaseline)).Round(time.Second)
		need := time.Duration(-math.Log1p(-learnedWeight) * float64(d.cfg.ServiceBaseline)).Round(time.Second)
		reason = fmt.Sprintf("service %s receives %s SYN/s from sources not flagged individually (over the last interval or smoothed over %v, whichever is higher); its baseline (%s SYN/s) has learned from %v of normal traffic, not yet the %v it needs, so it is judged against the floors; %s of the extra SYNs are half-open (overall %s); thresholds: %s SYN/s, %s half-open",
			addr, num(rate), d.cfg.Window, num(mu), learnt, need,
			pct(extraShare), pct(share), num(threshold), pct(d.cfg.ServiceHalfOpen))
	}
	if sv.inc == nil {
		if d.open >= d.cfg.MaxIncidents {
			return
		}
		inc := d.openIncident(KindService, addr, now, dsyn, dack)
		inc.halfOpenSYN = dsyn - min(dsyn, dack)
		inc.Service = sv.addr
		inc.SYNThreshold = threshold
		inc.HalfOpenThreshold = d.cfg.ServiceHalfOpen
		inc.BaselineSYNPerSecond = mu
		sv.inc = inc
		d.fillIncident(inc, rate, extraShare, reason, now)
		d.measureUntracked(inc)
		d.judgeVerdict(inc)
		out.Incidents = append(out.Incidents, inc.Incident)
		return
	}
	d.updateIncident(sv.inc, rate, extraShare, reason, now, out)
}

// UnderFlood reports whether service a has an open distributed-flood
// incident; the daemon switches on per-service protection while it does.
func (d *Detector) UnderFlood(a netip.AddrPort) bool {
	sv := d.svcs[a]
	return sv != nil && sv.inc != nil
}

// ServicesUnderFlood lists the services with an open distributed-flood
// incident, sorted.
func (d *Detector) ServicesUnderFlood() []netip.AddrPort {
	var r []netip.AddrPort
	for a, sv := range d.svcs {
		if sv.inc != nil {
			r = append(r, a)
		}
	}
	slices.SortFunc(r, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return r
}

// durationPhrase is "the last minute" or "the last 30s".
func durationPhrase(w time.Duration) string {
	switch w {
	case time.Minute:
		return "the last minute"
	case time.Hour:
		return "the last hour"
	}
	return "the last " + w.String()
}
