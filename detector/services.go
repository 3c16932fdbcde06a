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
		if sv.inc == nil {
			seen = append(seen, sv.seen)
		}
	}
	if len(seen) == 0 {
		return
	}
	slices.Sort(seen)
	cut := seen[len(seen)/4]
	for a, sv := range d.svcs {
		if sv.inc == nil && sv.seen <= cut {
			delete(d.svcs, a)
		}
	}
}

func (d *Detector) observeServices(s Snapshot, now int64, dtPrev float64, out *Decisions) {
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
		}

		mu, sd, muAck := sv.baseline()
		limit := mu + d.cfg.ServiceDeviations*sd
		if sv.w > 0 {
			sv.cusum = math.Max(0, sv.cusum+(x-limit)*dt)
		}
		// The share of the SYNs above the baseline that are not matched by
		// ACKs above the baseline: a flash crowd brings its ACKs, a flood
		// does not.
		extra := sv.synRate - mu
		extraShare := 0.0
		if extra > 0 {
			extraShare = math.Max(0, math.Min(1, (extra-(sv.ackRate-muAck))/extra))
		}
		// CUSUM opens the incident; it stays open while the rate of this
		// interval is above the limit. The sum is capped so that it drains
		// within seconds once the flood stops.
		h := d.cfg.ServiceCUSUM * sd
		sv.cusum = math.Min(sv.cusum, 2*h)
		alarm := sv.w > 0 && sv.synRate >= d.cfg.ServiceSYNRate && extraShare >= d.cfg.ServiceHalfOpen &&
			((sv.inc == nil && sv.cusum >= h) || (sv.inc != nil && x > limit))
		if alarm {
			sv.lastAlarm = now
			d.alarmService(sv, now, mu, sd, limit, extraShare, dsyn, dack, out)
		} else if sv.inc == nil {
			// Learn only from normal traffic, and clip outliers at the limit
			// so that a ramping flood cannot teach the baseline.
			xc := x
			if sv.w > 0 {
				xc = math.Min(x, limit)
			}
			dec := math.Exp(-dt / d.cfg.ServiceBaseline.Seconds())
			sv.w = dec*sv.w + (1 - dec)
			sv.m1 = dec*sv.m1 + (1-dec)*xc
			sv.m2 = dec*sv.m2 + (1-dec)*xc*xc
			sv.mack = dec*sv.mack + (1-dec)*xack
		}
	}
}

func (d *Detector) alarmService(sv *service, now int64, mu, sd, limit, extraShare float64, dsyn, dack uint64, out *Decisions) {
	share := halfOpen(sv.synRate, sv.ackRate)
	addr := sv.addr.String()
	reason := fmt.Sprintf("service %s receives %s SYN/s from sources not flagged individually (smoothed over %v) against a baseline of %s ± %s SYN/s (CUSUM %s ≥ %s); %s of the extra SYNs are half-open (overall %s); thresholds: %s SYN/s, %s half-open",
		addr, num(sv.synRate), d.cfg.Window, num(mu), num(sd), num(sv.cusum/sd), num(d.cfg.ServiceCUSUM),
		pct(extraShare), pct(share), num(math.Max(d.cfg.ServiceSYNRate, limit)), pct(d.cfg.ServiceHalfOpen))
	if sv.inc == nil {
		if d.open >= d.cfg.MaxIncidents {
			return
		}
		inc := d.openIncident(KindService, addr, now, dsyn, dack)
		inc.Service = sv.addr
		inc.SYNThreshold = math.Max(d.cfg.ServiceSYNRate, limit)
		inc.HalfOpenThreshold = d.cfg.ServiceHalfOpen
		inc.BaselineSYNPerSecond = mu
		sv.inc = inc
		d.fillIncident(inc, sv.synRate, share, reason, now)
		out.Incidents = append(out.Incidents, inc.Incident)
		return
	}
	d.updateIncident(sv.inc, sv.synRate, share, reason, now, out)
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
