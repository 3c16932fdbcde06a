package daemon

// Service protection: the daemon's side of keeping real users in during a
// spoofed flood (the data plane's side is bpf.Protect and internal/synproxy).
//
// A service is protected while one of these holds, in enforce mode:
//   - protection.auto is on and the service has an open service incident
//     (the detector's distributed-flood alarm), unless an operator ran
//     `synguard unprotect` during that incident ("held off");
//   - an operator ran `synguard protect` (until `synguard unprotect`);
//     manual protections are kept in the state dir across restarts.
//
// Observe mode drops nothing, and a budget drops: it protects nothing and
// reports "would-protect" instead.
//
// Switching on follows the order the data plane needs: Validator.Enable
// (nftables SYNPROXY rules, or kernel SYN cookies as the fallback) first,
// then Plane.Protect with Cookies only on the SYNPROXY path (XDP cookies
// without SYNPROXY would have every cookie ACK reset) and, on the kernel
// cookie fallback with protection.cookies on, budget 0: every unverified SYN
// reaches the kernel's cookies, so new users keep getting in. Switching off
// is the reverse: Unprotect, then Disable.
//
// Stop and restart: protection depends on state outside the XDP program
// (the nftables table and the sysctls the Validator set and remembers in
// memory only), and nobody would end a protection the daemon left behind.
// A daemon that stops therefore switches every protection off and closes
// the Validator, leaving the host as it found it; a restarted daemon
// switches protection on again within a poll for the services whose
// incident is still open (the detector's state is restored) and for manual
// protections. A daemon that was killed leaves protections pinned and the
// nftables rules in place (they keep working together); the next start
// re-enables the Validator for the pinned services it still wants and
// removes the others with their rules.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
	"github.com/synguard/synguard/internal/synproxy"
)

// ProtectionPlane is the part of the data plane that protects services;
// BPFPlane implements it. A Plane without it cannot protect.
type ProtectionPlane interface {
	Protect(svc netip.AddrPort, p bpf.Protection) error
	// Unprotect of a service that is not protected is not an error.
	Unprotect(svc netip.AddrPort) error
	Protections() ([]bpf.ProtectionStatus, error)
	VerifiedSources() (int, error)
	Verify(addrs ...netip.Addr) error
}

// Validator completes the handshakes of a protected service's unverified
// clients; *synproxy.Manager implements it.
type Validator interface {
	Prepare(ctx context.Context) error
	Unprepare(ctx context.Context) error
	Enable(ctx context.Context, svc netip.AddrPort) (synproxy.Result, error)
	Disable(ctx context.Context, svc netip.AddrPort) error
	Close(ctx context.Context) error
}

// ProtectionDeps turn on service protection (Deps.Protection).
type ProtectionDeps struct {
	// Validator is required: a synproxy.Manager whose Mode follows
	// protection.cookies (auto when true, kernel-cookies when false).
	Validator Validator
	// Peers lists the peers of ESTABLISHED connections to local ports
	// (kstat.EstablishedPeers). They are verified when a service's
	// protection starts, so users already connected keep getting in on
	// new connections even without cookies. nil: none.
	Peers func(ports []uint16) ([]netip.Addr, error)
}

// Protection origins.
const (
	originDetector = "detector"
	originManual   = "manual"
)

// protectionFile keeps manual protections and hold-offs across restarts.
const protectionFile = "protection.json"

// verifiedEvery bounds how often the verified sources are counted (a walk
// of the whole verified LRU).
const verifiedEvery = 5 * time.Second

// retryAfter spaces out retries of a protection that failed to switch on.
const retryAfter = 5 * time.Second

// validatorTimeout bounds one nft/sysctl round.
const validatorTimeout = 15 * time.Second

type protEntry struct {
	origin   string
	incident string
	since    time.Time
	res      synproxy.Result
	p        bpf.Protection
}

// savedProtection is protectionFile's content.
type savedProtection struct {
	Manual  map[netip.AddrPort]time.Time `json:"manual"`
	HeldOff map[string]time.Time         `json:"held_off"`
}

// protState is the daemon's protection state; guarded by Daemon.mu, except
// pollMu-only fields noted.
type protState struct {
	plane ProtectionPlane
	val   Validator
	peers func([]uint16) ([]netip.Addr, error)
	// note says why protection is unavailable ("" when available).
	note    string
	on      map[netip.AddrPort]*protEntry
	manual  map[netip.AddrPort]time.Time
	heldOff map[string]time.Time
	// would: observe mode's services that enforce mode would protect.
	would    map[netip.AddrPort]string
	figures  map[netip.AddrPort]bpf.ProtectionStatus
	verified int
	// last figures per service for monotonic metric totals.
	last map[netip.AddrPort]bpf.ProtectionStatus
	// failedAt: when switching a service on last failed; retried after
	// retryAfter, not every poll.
	failedAt map[netip.AddrPort]time.Time
	metrics  *protMetrics
	// prepared: conntrack runs for SYNPROXY (Validator.Prepare).
	prepared bool
	// cookies is protection.cookies as at Start: the Validator's mode came
	// from it, and a reload changes it only at the next start.
	cookies bool

	// pollMu only.
	verifiedAt time.Time
}

// protectionReading is the unlocked part of a poll's protection reads.
type protectionReading struct {
	ok       bool
	figures  []bpf.ProtectionStatus
	verified int
	haveVer  bool
}

// startProtectionLocked sets protection up at Start: it prepares the
// Validator, loads manual protections and reconciles what is pinned in the
// kernel with what is wanted now (see the file comment).
func (d *Daemon) startProtectionLocked(now time.Time) {
	ps := &d.prot
	ps.on = map[netip.AddrPort]*protEntry{}
	ps.manual = map[netip.AddrPort]time.Time{}
	ps.heldOff = map[string]time.Time{}
	ps.would = map[netip.AddrPort]string{}
	ps.figures = map[netip.AddrPort]bpf.ProtectionStatus{}
	ps.last = map[netip.AddrPort]bpf.ProtectionStatus{}
	ps.failedAt = map[netip.AddrPort]time.Time{}
	ps.metrics = registerProtMetrics(d.deps.Metrics)
	ps.cookies = d.cfg.Protection.Cookies
	pd := d.deps.Protection
	plane, ok := d.deps.Plane.(ProtectionPlane)
	switch {
	case pd == nil || pd.Validator == nil:
		ps.note = "service protection not configured in this daemon"
		return
	case !ok:
		ps.note = "the data plane cannot protect services"
		return
	}
	ps.plane, ps.val, ps.peers = plane, pd.Validator, pd.Peers
	d.loadProtectionsLocked()
	for id := range ps.heldOff {
		if _, open := d.open[id]; !open {
			delete(ps.heldOff, id)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), validatorTimeout)
	defer cancel()
	d.syncConntrackLocked()
	pinned, err := plane.Protections()
	if err != nil {
		d.log.Error("pinned protections unreadable", "err", err)
	}
	want := d.wantedLocked()
	if d.cfg.Mode != "enforce" {
		want = nil // observe mode protects nothing, pinned or not
	}
	for _, p := range pinned {
		if _, ok := want[p.Service]; !ok {
			if err := plane.Unprotect(p.Service); err != nil {
				d.log.Error("protection left by a previous daemon not removed", "service", p.Service, "err", err)
				continue
			}
			d.log.Warn("protection left by a previous daemon removed: no open incident or manual protection wants it", "service", p.Service,
				"cookies_sent", p.CookiesSent, "dropped", p.Dropped)
		} else {
			d.log.Warn("protection left by a previous daemon kept: re-enabling its validator", "service", p.Service)
		}
	}
	d.syncProtectionLocked(now)
	if len(ps.on) == 0 {
		// A killed daemon may have left the SYNPROXY table: remove it.
		if err := ps.val.Close(ctx); err != nil {
			d.log.Warn("leftover SYNPROXY rules not removed", "err", err)
		}
	}
	if !ps.prepared {
		// Nor leave a killed enforce-mode daemon's conntrack running.
		if err := ps.val.Unprepare(ctx); err != nil {
			d.log.Warn("leftover conntrack table not removed", "err", err)
		}
	}
}

// wantedLocked is the set of services that should be protected now, with
// their origin and incident.
func (d *Daemon) wantedLocked() map[netip.AddrPort]*protEntry {
	want := map[netip.AddrPort]*protEntry{}
	for svc, since := range d.prot.manual {
		want[svc] = &protEntry{origin: originManual, since: since}
	}
	if d.cfg.Protection.Auto {
		for _, in := range d.open {
			svc, ok := serviceOf(in)
			if !ok || !d.prot.heldOff[in.ID].IsZero() {
				continue
			}
			if _, ok := want[svc]; !ok {
				want[svc] = &protEntry{origin: originDetector, incident: in.ID}
			}
		}
	}
	return want
}

// serviceOf is a service incident's service. Incident.Service is not
// kept in the state file: incidents restored at start have only Addr.
func serviceOf(in detector.Incident) (netip.AddrPort, bool) {
	if in.Kind != detector.KindService {
		return netip.AddrPort{}, false
	}
	if in.Service.IsValid() {
		return in.Service, true
	}
	svc, err := netip.ParseAddrPort(in.Addr)
	return svc, err == nil
}

// budgetLocked sizes the budget for svc from the learned baseline of its
// open incident (or of the incident being tracked, base).
func (d *Daemon) budgetLocked(svc netip.AddrPort, base float64) uint32 {
	for _, in := range d.open {
		if s, ok := serviceOf(in); ok && s == svc {
			base = max(base, in.BaselineSYNPerSecond)
		}
	}
	return d.cfg.Protection.Budget(base)
}

// syncProtectionLocked switches protection on and off until the kernel
// matches wantedLocked (nothing in observe mode).
func (d *Daemon) syncProtectionLocked(now time.Time) {
	ps := &d.prot
	if ps.plane == nil {
		return
	}
	want := d.wantedLocked()
	clear(ps.would)
	if d.cfg.Mode != "enforce" {
		for svc, e := range want {
			ps.would[svc] = e.incident
		}
		want = nil
	}
	for svc := range ps.on {
		if _, ok := want[svc]; !ok {
			d.protectionOffLocked(now, svc, "")
		}
	}
	svcs := make([]netip.AddrPort, 0, len(want))
	for svc := range want {
		svcs = append(svcs, svc)
	}
	slices.SortFunc(svcs, netip.AddrPort.Compare)
	for _, svc := range svcs {
		w := want[svc]
		if e, ok := ps.on[svc]; ok {
			e.origin, e.incident = w.origin, w.incident
			// A reload may have changed the budget.
			if p := d.protectionFor(e.res, svc, 0); p != e.p {
				if err := ps.plane.Protect(svc, p); err != nil {
					d.log.Error("protection settings not updated", "service", svc, "err", err)
				} else {
					e.p = p
				}
			}
			continue
		}
		if t, failed := ps.failedAt[svc]; failed && now.Sub(t) < retryAfter {
			continue
		}
		if err := d.protectionOnLocked(now, svc, w.origin, w.incident, 0); err != nil {
			d.log.Error("service protection not switched on", "service", svc, "err", err, "retry_in", retryAfter)
		}
	}
}

// protectionFor is the XDP protection for svc on the Validator's path.
func (d *Daemon) protectionFor(res synproxy.Result, svc netip.AddrPort, base float64) bpf.Protection {
	p := bpf.Protection{Cookies: res.Path == synproxy.PathSynproxy, Budget: d.budgetLocked(svc, base)}
	if !p.Cookies && d.prot.cookies {
		// The fallback: kernel cookies answer everything the budget would
		// drop, so new users keep getting in (measured in spoofbench).
		p.Budget = 0
	}
	return p
}

// protectionOnLocked switches svc's protection on: Validator first, then
// XDP.
func (d *Daemon) protectionOnLocked(now time.Time, svc netip.AddrPort, origin, incident string, base float64) error {
	ps := &d.prot
	ctx, cancel := context.WithTimeout(context.Background(), validatorTimeout)
	defer cancel()
	res, err := ps.val.Enable(ctx, svc)
	if err != nil {
		ps.failedAt[svc] = now
		if m := ps.metrics; m != nil {
			m.failures.Inc()
		}
		return fmt.Errorf("protect %v: %w", svc, err)
	}
	p := d.protectionFor(res, svc, base)
	if err := ps.plane.Protect(svc, p); err != nil {
		ps.failedAt[svc] = now
		if derr := ps.val.Disable(ctx, svc); derr != nil {
			d.log.Error("validator not disabled after a failed protect", "service", svc, "err", derr)
		}
		if m := ps.metrics; m != nil {
			m.failures.Inc()
		}
		return fmt.Errorf("protect %v: %w", svc, err)
	}
	ps.on[svc] = &protEntry{origin: origin, incident: incident, since: now, res: res, p: p}
	delete(ps.failedAt, svc)
	delete(ps.last, svc)
	if ps.peers != nil {
		if peers, err := ps.peers([]uint16{svc.Port()}); err != nil {
			d.log.Warn("established peers not verified", "service", svc, "err", err)
		} else if len(peers) > 0 {
			if err := ps.plane.Verify(peers...); err != nil {
				d.log.Warn("established peers not verified", "service", svc, "err", err)
			}
		}
	}
	if m := ps.metrics; m != nil {
		m.switches.WithLabelValues("on").Inc()
	}
	d.log.Warn("service protection on", "service", svc, "origin", origin, "incident", incident, "path", res.Path,
		"cookies", p.Cookies, "budget", p.Budget, "why", res.Reason)
	return nil
}

// protectionOffLocked ends svc's protection: XDP first, then the
// Validator. It returns the final figures.
func (d *Daemon) protectionOffLocked(now time.Time, svc netip.AddrPort, why string) (bpf.ProtectionStatus, bool) {
	ps := &d.prot
	e, ok := ps.on[svc]
	if !ok {
		return bpf.ProtectionStatus{}, false
	}
	final, have := ps.figures[svc]
	if all, err := ps.plane.Protections(); err == nil {
		for _, f := range all {
			if f.Service == svc {
				final, have = f, true
			}
		}
	}
	if have {
		d.countProtectionLocked(final)
	}
	if err := ps.plane.Unprotect(svc); err != nil {
		d.log.Error("service protection not switched off", "service", svc, "err", err)
		return final, have
	}
	delete(ps.on, svc)
	delete(ps.figures, svc)
	delete(ps.last, svc)
	ctx, cancel := context.WithTimeout(context.Background(), validatorTimeout)
	defer cancel()
	if err := ps.val.Disable(ctx, svc); err != nil {
		d.log.Error("validator not disabled", "service", svc, "err", err)
	}
	if m := ps.metrics; m != nil {
		m.switches.WithLabelValues("off").Inc()
	}
	if why == "" {
		why = "no longer wanted"
	}
	d.log.Warn("service protection off", "service", svc, "origin", e.origin, "incident", e.incident, "why", why,
		"on_for", now.Sub(e.since).Round(time.Second), "verified", final.Verified, "admitted", final.Admitted, "dropped", final.Dropped,
		"cookies_sent", final.CookiesSent, "cookies_validated", final.CookiesValidated)
	return final, have
}

// protectIncidentLocked follows a service incident's stage change with
// protection and records protection's state in it, before the incident is
// stored and alerted.
func (d *Daemon) protectIncidentLocked(now time.Time, in detector.Incident) detector.Incident {
	ps := &d.prot
	svc, isSvc := serviceOf(in)
	if !isSvc || ps.on == nil {
		return in
	}
	if ps.plane == nil {
		in.Protection = &detector.Protection{State: detector.ProtectionOff, Reason: ps.note}
		return in
	}
	if in.Stage == detector.StageResolved {
		var final bpf.ProtectionStatus
		var have bool
		e := ps.on[svc]
		if e != nil && e.origin == originDetector {
			final, have = d.protectionOffLocked(now, svc, "incident "+in.ID+" resolved")
		}
		if _, held := ps.heldOff[in.ID]; held {
			delete(ps.heldOff, in.ID)
			d.saveProtectionsLocked()
		}
		delete(ps.would, svc)
		if e == nil {
			if d.cfg.Mode != "enforce" && d.cfg.Protection.Auto {
				in.Protection = &detector.Protection{State: detector.ProtectionOff, Reason: "observe mode: protection would have ended"}
			}
			return in
		}
		if e.origin == originManual {
			in.Protection = d.describeLocked(svc, e)
			in.Protection.Reason = "manual protection stays on until `synguard unprotect " + svc.String() + "`"
			return in
		}
		p := describeEntry(e, final, d.prot.verified)
		p.State = detector.ProtectionOff
		t := now
		p.Until = &t
		if !have {
			p.Reason = "protection ended (final figures unreadable)"
		}
		in.Protection = p
		return in
	}
	if _, on := ps.on[svc]; !on && d.cfg.Protection.Auto && ps.heldOff[in.ID].IsZero() {
		if d.cfg.Mode != "enforce" {
			ps.would[svc] = in.ID
			in.Protection = &detector.Protection{State: detector.ProtectionWouldProtect, Origin: originDetector,
				Reason: "observe mode drops nothing: enforce mode would protect this service now"}
			return in
		}
		if err := d.protectionOnLocked(now, svc, originDetector, in.ID, in.BaselineSYNPerSecond); err != nil {
			d.log.Error("service protection not switched on", "service", svc, "incident", in.ID, "err", err)
			in.Protection = &detector.Protection{State: detector.ProtectionFailed, Origin: originDetector, Reason: err.Error()}
			return in
		}
	}
	if e, on := ps.on[svc]; on {
		if e.origin == originDetector && e.incident == "" {
			e.incident = in.ID
		}
		in.Protection = d.describeLocked(svc, e)
		return in
	}
	switch {
	case !ps.heldOff[in.ID].IsZero():
		in.Protection = &detector.Protection{State: detector.ProtectionHeldOff, Reason: "switched off by hand during this incident (`synguard protect " + svc.String() + "` to resume)"}
	case !d.cfg.Protection.Auto:
		in.Protection = &detector.Protection{State: detector.ProtectionOff, Reason: "protection.auto is off: `synguard protect " + svc.String() + "` protects it"}
	}
	return in
}

func describeEntry(e *protEntry, f bpf.ProtectionStatus, verified int) *detector.Protection {
	since := e.since
	return &detector.Protection{
		State: detector.ProtectionOn, Origin: e.origin, Path: string(e.res.Path), Reason: e.res.Reason,
		Cookies: e.p.Cookies, Budget: e.p.Budget, Since: &since,
		Verified: f.Verified, Admitted: f.Admitted, Dropped: f.Dropped, CookiesSent: f.CookiesSent, CookiesValidated: f.CookiesValidated,
		VerifiedSources: verified,
	}
}

func (d *Daemon) describeLocked(svc netip.AddrPort, e *protEntry) *detector.Protection {
	return describeEntry(e, d.prot.figures[svc], d.prot.verified)
}

// readProtections is the unlocked part of a poll: the protected services'
// counters, and every verifiedEvery the verified sources.
func (d *Daemon) readProtections(now time.Time) protectionReading {
	ps := &d.prot
	if ps.plane == nil {
		return protectionReading{}
	}
	var r protectionReading
	var err error
	if r.figures, err = ps.plane.Protections(); err != nil {
		d.log.Warn("protection counters unreadable", "err", err)
		return r
	}
	r.ok = true
	if len(r.figures) > 0 && now.Sub(ps.verifiedAt) >= verifiedEvery {
		if n, err := ps.plane.VerifiedSources(); err != nil {
			d.log.Warn("verified sources not counted", "err", err)
		} else {
			r.verified, r.haveVer, ps.verifiedAt = n, true, now
		}
	}
	return r
}

// pollProtectionLocked stores a poll's protection figures and keeps the
// kernel matching what is wanted (an incident restored at start, a failed
// switch retried).
func (d *Daemon) pollProtectionLocked(now time.Time, r protectionReading) {
	ps := &d.prot
	if ps.plane == nil {
		return
	}
	if r.ok {
		clear(ps.figures)
		for _, f := range r.figures {
			ps.figures[f.Service] = f
			if _, ours := ps.on[f.Service]; ours {
				d.countProtectionLocked(f)
			}
		}
		if r.haveVer {
			ps.verified = r.verified
		}
		if len(r.figures) == 0 {
			ps.verified = 0
		}
	}
	d.syncProtectionLocked(now)
	// Open incidents carry fresh figures for status and the next alert.
	for id, in := range d.open {
		svc, ok := serviceOf(in)
		if !ok {
			continue
		}
		if e, ok := ps.on[svc]; ok {
			in.Protection = d.describeLocked(svc, e)
			d.open[id] = in
		}
	}
	if m := ps.metrics; m != nil {
		m.set(len(ps.on), len(ps.would), ps.verified)
	}
}

// countProtectionLocked adds a service's counter movement to the metric
// totals (kernel counters restart when a protection does).
func (d *Daemon) countProtectionLocked(f bpf.ProtectionStatus) {
	ps := &d.prot
	prev := ps.last[f.Service]
	ps.last[f.Service] = f
	m := ps.metrics
	if m == nil {
		return
	}
	delta := func(cur, old uint64) float64 {
		if cur < old {
			return float64(cur)
		}
		return float64(cur - old)
	}
	m.syns.WithLabelValues("verified").Add(delta(f.Verified, prev.Verified))
	m.syns.WithLabelValues("admitted").Add(delta(f.Admitted, prev.Admitted))
	m.syns.WithLabelValues("dropped").Add(delta(f.Dropped, prev.Dropped))
	m.syns.WithLabelValues("cookie").Add(delta(f.CookiesSent, prev.CookiesSent))
	m.validated.Add(delta(f.CookiesValidated, prev.CookiesValidated))
}

// protectionStatusLocked is the protection part of the status.
func (d *Daemon) protectionStatusLocked() *api.ProtectionStatus {
	ps := &d.prot
	st := &api.ProtectionStatus{Available: ps.plane != nil, Auto: d.cfg.Protection.Auto, Cookies: d.cfg.Protection.Cookies,
		Note: ps.note, VerifiedSources: ps.verified, Services: []api.ServiceProtection{}}
	if ps.on == nil {
		return st
	}
	for svc, e := range ps.on {
		st.Services = append(st.Services, api.ServiceProtection{Service: svc, IncidentID: e.incident, Protection: *d.describeLocked(svc, e)})
	}
	for svc, id := range ps.would {
		st.Services = append(st.Services, api.ServiceProtection{Service: svc, IncidentID: id,
			Protection: detector.Protection{State: detector.ProtectionWouldProtect, Origin: originDetector,
				Reason: "observe mode drops nothing: enforce mode would protect this service now"}})
	}
	slices.SortFunc(st.Services, func(a, b api.ServiceProtection) int { return a.Service.Compare(b.Service) })
	if d.cfg.Mode != "enforce" && st.Available {
		st.Note = "observe mode: no service is protected (protection drops over-budget SYNs); services under a spoofed flood show as would-protect"
	}
	return st
}

// stopProtectionLocked switches every protection off and closes the
// Validator (see the file comment: nobody would end it otherwise).
func (d *Daemon) stopProtectionLocked(now time.Time) {
	ps := &d.prot
	if ps.plane == nil {
		return
	}
	for svc := range ps.on {
		d.protectionOffLocked(now, svc, "daemon stopping")
	}
	ctx, cancel := context.WithTimeout(context.Background(), validatorTimeout)
	defer cancel()
	if err := ps.val.Close(ctx); err != nil {
		d.log.Error("SYNPROXY rules not removed", "err", err)
	}
	if ps.prepared {
		if err := ps.val.Unprepare(ctx); err != nil {
			d.log.Warn("conntrack table not removed", "err", err)
		}
		ps.prepared = false
	}
}

// conntrackWanted: SYNPROXY needs conntrack, and only enforce mode
// protects anything. In observe mode (the first-run default) the host's
// traffic is not tracked for nothing.
func (d *Daemon) conntrackWanted() bool {
	return d.prot.val != nil && d.prot.cookies && d.cfg.Mode == "enforce"
}

// syncConntrackLocked starts or stops conntrack for SYNPROXY to match
// conntrackWanted. It is started ahead of any protection, because starting
// it later breaks connections already open to the protected port.
func (d *Daemon) syncConntrackLocked() {
	ps := &d.prot
	want := d.conntrackWanted()
	if want == ps.prepared {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), validatorTimeout)
	defer cancel()
	if want {
		if err := ps.val.Prepare(ctx); err != nil {
			d.log.Warn("conntrack not started for SYNPROXY: protection will fall back to kernel SYN cookies if nftables fails again", "err", err)
			return
		}
		ps.prepared = true
		return
	}
	if err := ps.val.Unprepare(ctx); err != nil {
		d.log.Warn("conntrack table not removed", "err", err)
		return
	}
	ps.prepared = false
}

// Protect implements api.ProtectionBackend: protection by hand, until
// Unprotect (kept across restarts).
func (d *Daemon) Protect(ctx context.Context, svc netip.AddrPort) (api.ServiceProtection, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	ps := &d.prot
	if ps.plane == nil {
		return api.ServiceProtection{}, api.Conflict(fmt.Errorf("protect %v: %s", svc, ps.note))
	}
	if d.cfg.Mode != "enforce" {
		return api.ServiceProtection{}, api.Conflict(fmt.Errorf("protect %v: mode is observe, which drops nothing, and protection drops over-budget SYNs: set mode: enforce (and reload) first", svc))
	}
	if _, ok := ps.manual[svc]; !ok && len(ps.manual)+len(ps.on) >= 1024 {
		return api.ServiceProtection{}, api.Conflict(fmt.Errorf("protect %v: at most 1024 services can be protected", svc))
	}
	_, was := ps.manual[svc]
	if !was {
		ps.manual[svc] = now
	}
	// An operator's protect ends a hold-off of the service's incident.
	for _, in := range d.open {
		if s, ok := serviceOf(in); ok && s == svc {
			delete(ps.heldOff, in.ID)
		}
	}
	if e, ok := ps.on[svc]; ok {
		e.origin = originManual
	} else if err := d.protectionOnLocked(now, svc, originManual, "", 0); err != nil {
		if !was {
			delete(ps.manual, svc)
		}
		return api.ServiceProtection{}, err
	}
	d.saveProtectionsLocked()
	e := ps.on[svc]
	return api.ServiceProtection{Service: svc, IncidentID: e.incident, Protection: *d.describeLocked(svc, e)}, nil
}

// Unprotect implements api.ProtectionBackend: ends a protection now. During
// an open service incident, automatic protection is held off until that
// incident ends.
func (d *Daemon) Unprotect(ctx context.Context, svc netip.AddrPort) (api.ServiceProtection, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	ps := &d.prot
	if ps.plane == nil {
		return api.ServiceProtection{}, api.Conflict(fmt.Errorf("unprotect %v: %s", svc, ps.note))
	}
	e, ok := ps.on[svc]
	if !ok {
		return api.ServiceProtection{}, api.NotFound(fmt.Errorf("unprotect %v: not protected (see `synguard status`)", svc))
	}
	delete(ps.manual, svc)
	held := ""
	for _, in := range d.open {
		if s, ok := serviceOf(in); ok && s == svc {
			ps.heldOff[in.ID] = now
			held = in.ID
		}
	}
	final, _ := d.protectionOffLocked(now, svc, "unprotected by hand")
	d.saveProtectionsLocked()
	p := describeEntry(e, final, ps.verified)
	p.State = detector.ProtectionOff
	p.Until = &now
	if held != "" {
		p.State = detector.ProtectionHeldOff
		p.Reason = "automatic protection held off until incident " + held + " resolves"
	}
	if _, still := ps.on[svc]; still {
		return api.ServiceProtection{}, fmt.Errorf("unprotect %v: the data plane refused (see the daemon log)", svc)
	}
	return api.ServiceProtection{Service: svc, IncidentID: e.incident, Protection: *p}, nil
}

// Protections implements api.ProtectionBackend.
func (d *Daemon) Protections(ctx context.Context) (api.ProtectionStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return *d.protectionStatusLocked(), nil
}

func (d *Daemon) protectionPath() string {
	if d.deps.Store == nil {
		return ""
	}
	return filepath.Join(d.deps.Store.Dir, protectionFile)
}

func (d *Daemon) loadProtectionsLocked() {
	path := d.protectionPath()
	if path == "" {
		return
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var sp savedProtection
	if err == nil {
		err = json.Unmarshal(data, &sp)
	}
	if err != nil {
		d.log.Error("manual protections not restored", "file", path, "err", err)
		return
	}
	for k, v := range sp.Manual {
		d.prot.manual[k] = v
	}
	for k, v := range sp.HeldOff {
		d.prot.heldOff[k] = v
	}
}

func (d *Daemon) saveProtectionsLocked() {
	path := d.protectionPath()
	if path == "" {
		return
	}
	data, err := json.Marshal(savedProtection{Manual: d.prot.manual, HeldOff: d.prot.heldOff})
	if err == nil {
		tmp := path + ".tmp"
		if err = os.WriteFile(tmp, data, 0o640); err == nil {
			err = os.Rename(tmp, path)
		}
	}
	if err != nil {
		d.log.Error("manual protections not saved", "file", path, "err", err)
	}
}

// protMetrics are the protection metrics: totals and gauges, no
// per-service labels.
type protMetrics struct {
	protected, would, verified prometheus.Gauge
	syns                       *prometheus.CounterVec
	validated                  prometheus.Counter
	switches                   *prometheus.CounterVec
	failures                   prometheus.Counter
}

var protMetricsOf sync.Map // *Metrics -> *protMetrics

func registerProtMetrics(m *Metrics) *protMetrics {
	if m == nil {
		return nil
	}
	if pm, ok := protMetricsOf.Load(m); ok {
		return pm.(*protMetrics)
	}
	pm := &protMetrics{
		protected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "synguard_protected_services", Help: "Services under protection (XDP SYN cookies or budget)."}),
		would: prometheus.NewGauge(prometheus.GaugeOpts{Name: "synguard_protection_would_protect_services",
			Help: "Services under a spoofed flood that enforce mode would protect (observe mode protects none)."}),
		verified: prometheus.NewGauge(prometheus.GaugeOpts{Name: "synguard_verified_sources", Help: "Sources verified by a completed handshake (summed over interfaces)."}),
		syns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "synguard_protection_syns_total",
			Help: "SYNs to protected services, by result: verified (passed), admitted (unverified, within budget), dropped (over budget), cookie (answered with an XDP SYN cookie)."},
			[]string{"result"}),
		validated: prometheus.NewCounter(prometheus.CounterOpts{Name: "synguard_protection_cookies_validated_total",
			Help: "ACKs that returned a valid SYN cookie to a protected service: real clients let in."}),
		switches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "synguard_protection_switches_total", Help: "Service protection switched on or off."},
			[]string{"state"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "synguard_protection_failures_total",
			Help: "Attempts to switch service protection on that failed (nftables, sysctl or XDP error)."}),
	}
	for _, r := range []string{"verified", "admitted", "dropped", "cookie"} {
		pm.syns.WithLabelValues(r)
	}
	pm.switches.WithLabelValues("on")
	pm.switches.WithLabelValues("off")
	for _, c := range []prometheus.Collector{pm.protected, pm.would, pm.verified, pm.syns, pm.validated, pm.switches, pm.failures} {
		if err := m.Registry().Register(c); err != nil {
			return nil
		}
	}
	protMetricsOf.Store(m, pm)
	return pm
}

func (m *protMetrics) set(protected, would, verified int) {
	m.protected.Set(float64(protected))
	m.would.Set(float64(would))
	m.verified.Set(float64(verified))
}

// reloadProtectionLocked applies a reload: mode, protection.auto and the
// budget apply now; protection.cookies and verified_ttl at the next start.
func (d *Daemon) reloadProtectionLocked(now time.Time, old *config.Config) {
	if d.cfg.Protection.Cookies != old.Protection.Cookies || d.cfg.Protection.VerifiedTTL != old.Protection.VerifiedTTL {
		d.log.Warn("protection.cookies and protection.verified_ttl change at the next restart; protection.auto and the budget apply now")
	}
	// Conntrack starts before protection switches on and stops after it
	// switches off.
	if d.conntrackWanted() {
		d.syncConntrackLocked()
	}
	d.syncProtectionLocked(now)
	d.syncConntrackLocked()
}
