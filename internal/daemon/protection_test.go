package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
	"github.com/synguard/synguard/internal/synproxy"
)

// protOps is the shared, ordered log of the fake validator's and the fake
// plane's protection calls.
type protOps struct {
	mu  sync.Mutex
	ops []string
}

func (o *protOps) add(format string, args ...any) {
	o.mu.Lock()
	o.ops = append(o.ops, fmt.Sprintf(format, args...))
	o.mu.Unlock()
}

func (o *protOps) take() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := o.ops
	o.ops = nil
	return out
}

// protPlane is the fake data plane plus protections, as pinned maps: a
// restart (a new daemon on the same protPlane) finds them.
type protPlane struct {
	*fakePlane
	ops      *protOps
	prot     map[netip.AddrPort]bpf.ProtectionStatus
	verified []netip.Addr
}

func (p *protPlane) Protect(svc netip.AddrPort, pr bpf.Protection) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ops.add("protect %v cookies=%v budget=%d", svc, pr.Cookies, pr.Budget)
	s, ok := p.prot[svc]
	if !ok {
		s = bpf.ProtectionStatus{Service: svc, Since: p.now()}
	}
	s.Protection = pr
	p.prot[svc] = s
	return nil
}

func (p *protPlane) Unprotect(svc netip.AddrPort) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ops.add("unprotect %v", svc)
	delete(p.prot, svc)
	return nil
}

func (p *protPlane) Protections() ([]bpf.ProtectionStatus, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []bpf.ProtectionStatus
	for _, s := range p.prot {
		out = append(out, s)
	}
	return out, nil
}

func (p *protPlane) VerifiedSources() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.verified), nil
}

func (p *protPlane) Verify(addrs ...netip.Addr) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.verified = append(p.verified, addrs...)
	return nil
}

// traffic adds to a protected service's kernel counters.
func (p *protPlane) traffic(svc netip.AddrPort, verified, admitted, dropped, sent, validated uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.prot[svc]
	if !ok {
		return
	}
	s.Verified += verified
	s.Admitted += admitted
	s.Dropped += dropped
	s.CookiesSent += sent
	s.CookiesValidated += validated
	p.prot[svc] = s
}

// fakeValidator stands in for synproxy.Manager.
type fakeValidator struct {
	ops  *protOps
	path synproxy.Path
	fail error
}

func (v *fakeValidator) Prepare(context.Context) error   { v.ops.add("prepare"); return nil }
func (v *fakeValidator) Unprepare(context.Context) error { v.ops.add("unprepare"); return nil }
func (v *fakeValidator) Enable(_ context.Context, svc netip.AddrPort) (synproxy.Result, error) {
	if v.fail != nil {
		v.ops.add("enable %v failed", svc)
		return synproxy.Result{}, v.fail
	}
	v.ops.add("enable %v", svc)
	return synproxy.Result{Path: v.path, Reason: "test"}, nil
}
func (v *fakeValidator) Disable(_ context.Context, svc netip.AddrPort) error {
	v.ops.add("disable %v", svc)
	return nil
}
func (v *fakeValidator) Close(context.Context) error { v.ops.add("close"); return nil }

// scriptEngine is the real detector plus service incidents the test
// emits at the next Observe.
type scriptEngine struct {
	Engine
	next []detector.Incident
}

func (e *scriptEngine) Observe(s detector.Snapshot) detector.Decisions {
	dec := e.Engine.Observe(s)
	dec.Incidents = append(dec.Incidents, e.next...)
	e.next = nil
	return dec
}

type protHarness struct {
	*harness
	pp  *protPlane
	val *fakeValidator
	ops *protOps
	eng *scriptEngine
}

var (
	websvc  = netip.MustParseAddrPort("10.200.30.1:443")
	sshPeer = netip.MustParseAddr("192.0.2.22")
)

func newProtHarness(t *testing.T, mode string) *protHarness {
	t.Helper()
	clk := &clock{t: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	h := &harness{t: t, clk: clk, plane: newFakePlane(clk.now), rec: &recorder{}, store: &Store{Dir: t.TempDir()}}
	h.cfg = newHarnessConfig(mode)
	ops := &protOps{}
	ph := &protHarness{harness: h, ops: ops, pp: &protPlane{fakePlane: h.plane, ops: ops, prot: map[netip.AddrPort]bpf.ProtectionStatus{}},
		val: &fakeValidator{ops: ops, path: synproxy.PathSynproxy}}
	ph.start()
	return ph
}

func newHarnessConfig(mode string) *config.Config {
	c := config.Default()
	c.Interfaces = []string{"fake0"}
	c.Mode = mode
	c.Protect = config.Protect{}
	return c
}

// start (again: a restart) builds a daemon on the same plane and store.
func (ph *protHarness) start() {
	ph.t.Helper()
	h := ph.harness
	d, err := New(Deps{Config: h.cfg, Plane: ph.pp, Alerts: h.rec, Store: h.store, Clock: h.clk.now, Metrics: NewMetrics("test"),
		Host: "test", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		NewEngine: func(cfg detector.Config, opts detector.Options) (Engine, error) {
			eng, err := NewDetector(cfg, opts)
			ph.eng = &scriptEngine{Engine: eng}
			return ph.eng, err
		},
		Protection: &ProtectionDeps{Validator: ph.val, Peers: func(ports []uint16) ([]netip.Addr, error) {
			if slices.Contains(ports, websvc.Port()) {
				return []netip.Addr{sshPeer}, nil
			}
			return nil, nil
		}},
	})
	if err != nil {
		ph.t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		ph.t.Fatal(err)
	}
	h.d = d
}

// incident emits a service incident stage at the next poll.
func (ph *protHarness) incident(stage detector.Stage, baseline float64) detector.Incident {
	now := ph.clk.now()
	in := detector.Incident{ID: "svc-1", Kind: detector.KindService, Stage: stage, Severity: detector.SeverityCritical,
		Addr: websvc.String(), Service: websvc, OpenedAt: now, UpdatedAt: now, SYNPerSecond: 50000, BaselineSYNPerSecond: baseline}
	if stage == detector.StageResolved {
		in.ResolvedAt = &now
	}
	ph.eng.next = append(ph.eng.next, in)
	ph.second(0)
	return in
}

func (ph *protHarness) alerted(stage detector.Stage) detector.Incident {
	ph.t.Helper()
	ph.rec.mu.Lock()
	defer ph.rec.mu.Unlock()
	for i := len(ph.rec.got) - 1; i >= 0; i-- {
		if in := ph.rec.got[i]; in.ID == "svc-1" && in.Stage == stage {
			return in
		}
	}
	ph.t.Fatalf("no %s alert for svc-1 in %d alerts", stage, len(ph.rec.got))
	return detector.Incident{}
}

func (ph *protHarness) status() *api.ProtectionStatus {
	ph.t.Helper()
	st, err := ph.d.Status(context.Background())
	if err != nil || st.Protection == nil {
		ph.t.Fatalf("status: %+v, %v", st.Protection, err)
	}
	return st.Protection
}

func wantOps(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("calls:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// The whole automatic cycle in enforce mode: a service incident switches
// protection on (SYNPROXY first, then XDP with cookies and a budget sized
// from the baseline), status, incidents, alerts and metrics carry the
// figures, and the resolved incident switches it off (XDP first).
func TestProtectionFollowsServiceIncident(t *testing.T) {
	ph := newProtHarness(t, "enforce")
	wantOps(t, ph.ops.take(), "prepare", "close")
	ph.second(0)
	ph.incident(detector.StageOpened, 300)
	wantOps(t, ph.ops.take(), "enable "+websvc.String(), "protect "+websvc.String()+" cookies=true budget=600")
	if !slices.Contains(ph.pp.verified, sshPeer) {
		t.Errorf("established peer %v not verified at protection start (verified %v)", sshPeer, ph.pp.verified)
	}
	opened := ph.alerted(detector.StageOpened)
	if p := opened.Protection; p == nil || p.State != detector.ProtectionOn || !p.Cookies || p.Budget != 600 || p.Path != string(synproxy.PathSynproxy) {
		t.Fatalf("opened alert protection = %+v, want on with cookies and budget 600", p)
	}

	ph.pp.traffic(websvc, 40, 3, 2, 90000, 35)
	ph.clk.step(verifiedEvery)
	ph.second(0)
	st := ph.status()
	if len(st.Services) != 1 {
		t.Fatalf("status services = %+v", st.Services)
	}
	s := st.Services[0]
	if s.Service != websvc || s.State != detector.ProtectionOn || s.Origin != originDetector || s.IncidentID != "svc-1" ||
		s.CookiesSent != 90000 || s.CookiesValidated != 35 || s.Verified != 40 || s.Admitted != 3 || s.Dropped != 2 || st.VerifiedSources != 1 {
		t.Errorf("status protection = %+v (verified sources %d)", s, st.VerifiedSources)
	}
	ins, _ := ph.d.Incidents(context.Background())
	if p := ins[0].Protection; p == nil || p.CookiesSent != 90000 {
		t.Errorf("open incident protection = %+v, want fresh figures", p)
	}
	page := scrapeMetrics(t, ph.d)
	for _, want := range []string{"synguard_protected_services 1", `synguard_protection_syns_total{result="cookie"} 90000`,
		`synguard_protection_syns_total{result="dropped"} 2`, "synguard_protection_cookies_validated_total 35", "synguard_verified_sources 1",
		`synguard_protection_switches_total{state="on"} 1`} {
		if !strings.Contains(page, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(page, "10.200.30.1") {
		t.Error("metrics carry a per-service label")
	}

	ph.pp.traffic(websvc, 0, 0, 0, 10000, 5)
	ph.incident(detector.StageResolved, 300)
	wantOps(t, ph.ops.take(), "unprotect "+websvc.String(), "disable "+websvc.String())
	res := ph.alerted(detector.StageResolved)
	if p := res.Protection; p == nil || p.State != detector.ProtectionOff || p.CookiesSent != 100000 || p.CookiesValidated != 40 || p.Until == nil {
		t.Errorf("resolved alert protection = %+v, want off with final figures", p)
	}
	if st := ph.status(); len(st.Services) != 0 {
		t.Errorf("after resolution: %+v", st.Services)
	}
	page = scrapeMetrics(t, ph.d)
	for _, want := range []string{"synguard_protected_services 0", `synguard_protection_syns_total{result="cookie"} 100000`, `synguard_protection_switches_total{state="off"} 1`} {
		if !strings.Contains(page, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func scrapeMetrics(t *testing.T, d *Daemon) string {
	t.Helper()
	srv := httptest.NewServer(d.deps.Metrics.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Observe mode drops nothing: no protection, but incident, status and
// metrics say it would have protected.
func TestProtectionObserveModeOnlyReports(t *testing.T) {
	ph := newProtHarness(t, "observe")
	// No conntrack for the host's traffic while nothing can be protected;
	// only a leftover table of a killed daemon is removed.
	wantOps(t, ph.ops.take(), "close", "unprepare")
	ph.incident(detector.StageOpened, 0)
	if ops := ph.ops.take(); len(ops) != 0 {
		t.Errorf("observe mode touched the data plane: %v", ops)
	}
	if p := ph.alerted(detector.StageOpened).Protection; p == nil || p.State != detector.ProtectionWouldProtect {
		t.Errorf("opened alert protection = %+v, want would-protect", p)
	}
	st := ph.status()
	if len(st.Services) != 1 || st.Services[0].State != detector.ProtectionWouldProtect || !strings.Contains(st.Note, "observe") {
		t.Errorf("status protection = %+v", st)
	}
	if page := scrapeMetrics(t, ph.d); !strings.Contains(page, "synguard_protection_would_protect_services 1\n") ||
		!strings.Contains(page, "synguard_protected_services 0\n") {
		t.Error("metrics do not report the would-protect service")
	}
	if _, err := ph.d.Protect(context.Background(), websvc); !isCode(err, 409) || !strings.Contains(err.Error(), "observe") {
		t.Errorf("manual protect in observe mode: %v, want 409 naming observe mode", err)
	}
	// Switching to enforce protects the service under attack at once.
	cfg := *ph.cfg
	cfg.Mode = "enforce"
	if err := ph.d.Reload(&cfg); err != nil {
		t.Fatal(err)
	}
	wantOps(t, ph.ops.take(), "prepare", "enable "+websvc.String(), "protect "+websvc.String()+" cookies=true budget=100")
	// Back to observe: protection off first, then conntrack.
	cfg.Mode = "observe"
	if err := ph.d.Reload(&cfg); err != nil {
		t.Fatal(err)
	}
	wantOps(t, ph.ops.take(), "unprotect "+websvc.String(), "disable "+websvc.String(), "unprepare")
}

func isCode(err error, code int) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == code
}

// Where nftables cannot do SYNPROXY, XDP must not send cookies and every
// unverified SYN goes to the kernel's cookies (budget 0); with
// protection.cookies off the operator asked for the budget.
func TestProtectionFallbackPath(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cookies bool
		want    string
	}{
		{"fallback", true, "cookies=false budget=0"},
		{"budget only", false, "cookies=false budget=100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ph := newProtHarness(t, "enforce")
			ph.cfg.Protection.Cookies = tc.cookies
			ph.val.path = synproxy.PathKernelCookies
			ph.start()
			ph.ops.take()
			ph.incident(detector.StageOpened, 10)
			wantOps(t, ph.ops.take(), "enable "+websvc.String(), "protect "+websvc.String()+" "+tc.want)
		})
	}
}

// A failed switch is reported in the incident and retried at the next poll.
func TestProtectionFailureReportedAndRetried(t *testing.T) {
	ph := newProtHarness(t, "enforce")
	ph.ops.take()
	ph.val.fail = errors.New("nft: table busy")
	ph.incident(detector.StageOpened, 0)
	if p := ph.alerted(detector.StageOpened).Protection; p == nil || p.State != detector.ProtectionFailed || !strings.Contains(p.Reason, "table busy") {
		t.Errorf("opened alert protection = %+v, want failed with the reason", p)
	}
	ph.ops.take()
	ph.second(0) // within retryAfter: no new attempt
	if ops := ph.ops.take(); len(ops) != 0 {
		t.Errorf("retried within %v: %v", retryAfter, ops)
	}
	ph.val.fail = nil
	ph.clk.step(retryAfter)
	ph.second(0)
	wantOps(t, ph.ops.take(), "enable "+websvc.String(), "protect "+websvc.String()+" cookies=true budget=100")
}

// By hand: protect stays across restarts and incident ends; unprotect
// during an incident holds automatic protection off until it resolves;
// errors change nothing.
func TestManualProtection(t *testing.T) {
	ph := newProtHarness(t, "enforce")
	ctx := context.Background()
	ph.ops.take()
	sp, err := ph.d.Protect(ctx, websvc)
	if err != nil || sp.State != detector.ProtectionOn || sp.Origin != originManual {
		t.Fatalf("Protect = %+v, %v", sp, err)
	}
	wantOps(t, ph.ops.take(), "enable "+websvc.String(), "protect "+websvc.String()+" cookies=true budget=100")

	// A graceful stop switches everything off; the restart restores it.
	ph.d.Shutdown()
	wantOps(t, ph.ops.take(), "unprotect "+websvc.String(), "disable "+websvc.String(), "close", "unprepare")
	ph.start()
	wantOps(t, ph.ops.take(), "prepare", "enable "+websvc.String(), "protect "+websvc.String()+" cookies=true budget=100")

	// The incident's end does not end a manual protection.
	ph.incident(detector.StageOpened, 0)
	ph.incident(detector.StageResolved, 0)
	if ops := ph.ops.take(); len(ops) != 0 {
		t.Errorf("incident changed a manual protection: %v", ops)
	}
	if p := ph.alerted(detector.StageResolved).Protection; p == nil || p.State != detector.ProtectionOn || !strings.Contains(p.Reason, "synguard unprotect") {
		t.Errorf("resolved alert protection = %+v, want still on (manual)", p)
	}

	if _, err := ph.d.Unprotect(ctx, websvc); err != nil {
		t.Fatal(err)
	}
	wantOps(t, ph.ops.take(), "unprotect "+websvc.String(), "disable "+websvc.String())
	if _, err := ph.d.Unprotect(ctx, websvc); !isCode(err, 404) {
		t.Errorf("second unprotect: %v, want 404", err)
	}

	// Unprotect during an open incident holds it off until it resolves.
	ph.incident(detector.StageOpened, 0)
	ph.ops.take()
	sp, err = ph.d.Unprotect(ctx, websvc)
	if err != nil || sp.State != detector.ProtectionHeldOff {
		t.Fatalf("Unprotect during incident = %+v, %v", sp, err)
	}
	ph.ops.take()
	ph.second(0)
	ph.second(0)
	if ops := ph.ops.take(); len(ops) != 0 {
		t.Errorf("held-off service re-protected: %v", ops)
	}
	ph.incident(detector.StageResolved, 0)
	ph.incident(detector.StageOpened, 0)
	wantOps(t, ph.ops.take(), "enable "+websvc.String(), "protect "+websvc.String()+" cookies=true budget=100")
}

// A killed daemon leaves protections pinned: the next start keeps (and
// re-enables SYNPROXY for) those still wanted and removes the others.
func TestRestartReconcilesPinnedProtections(t *testing.T) {
	ph := newProtHarness(t, "enforce")
	ph.incident(detector.StageOpened, 0)
	stale := netip.MustParseAddrPort("10.200.30.1:25")
	ph.pp.Protect(stale, bpf.Protection{Cookies: true})
	ph.d.mu.Lock()
	ph.d.saveLocked(ph.clk.now(), true) // what the poll loop did before the kill
	ph.d.mu.Unlock()
	ph.ops.take()
	ph.start() // no Shutdown: killed
	ops := ph.ops.take()
	wantOps(t, ops, "prepare", "unprotect "+stale.String(), "enable "+websvc.String(), "protect "+websvc.String()+" cookies=true budget=100")
	if st := ph.status(); len(st.Services) != 1 || st.Services[0].Service != websvc {
		t.Errorf("after restart: %+v", st.Services)
	}
	// Observe mode keeps nothing pinned.
	ph.cfg.Mode = "observe"
	ph.ops.take()
	ph.start()
	wantOps(t, ph.ops.take(), "unprotect "+websvc.String(), "close", "unprepare")
	if len(ph.pp.prot) != 0 {
		t.Errorf("observe mode left protections pinned: %v", ph.pp.prot)
	}
	// Without anything wanted, a restart removes every leftover and the table.
	ph2 := newProtHarness(t, "enforce")
	ph2.pp.Protect(stale, bpf.Protection{Cookies: true})
	ph2.ops.take()
	ph2.start()
	wantOps(t, ph2.ops.take(), "prepare", "unprotect "+stale.String(), "close")
}

// protection.cookies changes at the next restart, as the reload warning
// says: not half of it now (conntrack stopped under a SYNPROXY service).
func TestReloadOfCookiesWaitsForRestart(t *testing.T) {
	ph := newProtHarness(t, "enforce")
	ph.ops.take()
	ph.incident(detector.StageOpened, 0)
	if ops := ph.ops.take(); len(ops) == 0 {
		t.Fatal("the incident did not switch protection on")
	}
	cfg := *ph.cfg
	cfg.Protection.Cookies = false
	if err := ph.d.Reload(&cfg); err != nil {
		t.Fatal(err)
	}
	if ops := ph.ops.take(); len(ops) != 0 {
		t.Errorf("reload of protection.cookies acted at once: %v, want nothing until the restart", ops)
	}
}
