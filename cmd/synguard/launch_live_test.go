package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/testbed"
)

// The launch-day live test: prefix "sgl", 10.200.83.0/24, pins under
// /sys/fs/bpf/synguard-test-pl-*.
const (
	plPrefix  = "sgl"
	plSubnet  = 83
	plPinGlob = "/sys/fs/bpf/synguard-test-pl-*"
	// The portal's new service, and an older one the known client used.
	plNewPort, plOldPort = 8443, 8080
)

// clientShare dials `to` from ns every 100 ms for d, each attempt with 3 s
// to get the greeting (one SYN retransmission still gets a user in), and
// returns how many attempts got in.
func clientShare(ns *testbed.NS, to netip.AddrPort, d time.Duration) (ok, attempts int64) {
	var okN, n atomic.Int64
	var wg sync.WaitGroup
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if good, _ := ns.DialGreeting(to, 3*time.Second); good {
				okN.Add(1)
			}
			n.Add(1)
		}()
	}
	wg.Wait()
	return okN.Load(), n.Load()
}

// TestLaunchDayFloodOnNeverSeenService is issue 12's launch day, live: an
// overloaded server (SYN cookies off, backlog 64) runs the real `synguard
// run` in enforce mode with the built-in detector defaults, and a new
// service that has never had a SYN is flooded from random spoofed sources
// from its first second. Without synguard (measured first, on the same bed)
// the clients are locked out; with it, protection is on within 2 s of the
// flood's start and a known client and a client never seen before keep
// getting in.
func TestLaunchDayFloodOnNeverSeenService(t *testing.T) {
	testbed.RequireRoot(t)
	if testing.Short() {
		t.Skip("floods for about 25 s; skipped with -short")
	}
	bed := overloadedBed(t, plPrefix, plSubnet, plPinGlob, plNewPort, plOldPort)
	srv := bed.Server
	portal, older := netip.AddrPortFrom(srv.Addr4, plNewPort), netip.AddrPortFrom(srv.Addr4, plOldPort)
	flood := func(d time.Duration) (wait func() (int, error)) {
		var sent int
		var ferr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			sent, ferr = bed.Host("atk").Flood(context.Background(), testbed.Flood{To: portal, Duration: d, RandSource: true})
		}()
		return func() (int, error) { <-done; return sent, ferr }
	}

	// Without synguard: the same flood locks the clients out.
	waitBase := flood(7 * time.Second)
	time.Sleep(time.Second)
	baseOK, baseN := clientShare(bed.Host("new"), portal, 3*time.Second)
	if _, err := waitBase(); err != nil {
		t.Fatalf("flood without synguard: %v", err)
	}
	t.Logf("without synguard: new client %d/%d got in", baseOK, baseN)
	if float64(baseOK) > 0.5*float64(baseN) {
		t.Fatalf("without synguard %d/%d connections got in: the bed is not overloaded, so the test would prove nothing", baseOK, baseN)
	}
	time.Sleep(3 * time.Second) // the SYN queue's half-open entries time out

	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	cfg := filepath.Join(dir, "synguard.yaml")
	// writeConfig points the daemon at a state directory: the restart
	// below uses a new one, so the second daemon restores no incident and
	// must find the flood itself, with no baseline.
	writeConfig := func(state string) {
		text := fmt.Sprintf(`interfaces: [%s]
mode: enforce
attach: native
socket: %s
state_dir: %s
bpffs: /sys/fs/bpf/synguard-test-pl-%d
metrics_addr: ""
protect: {default_gateways: false, ssh_ports: []}
`, srv.Iface, sock, filepath.Join(dir, state), os.Getpid())
		if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig("state")
	start := daemonStarter(t, srv, cfg)
	daemon := start()
	status := statusOf(t, sock)
	waitFor(t, 15*time.Second, "daemon answering status", func() bool { _, ok := status(); return ok })
	// The known client: it has used the older service (so the host knows
	// it), never the new one.
	for range 5 {
		if ok, why := bed.Host("old").DialGreeting(older, 3*time.Second); !ok {
			t.Fatalf("known client before the flood: %s", why)
		}
	}

	const floodFor = 24 * time.Second
	floodStart := time.Now()
	waitFlood := flood(floodFor)
	protectedSince := func(what string) time.Time {
		var on api.ServiceProtection
		waitFor(t, 10*time.Second, what, func() bool {
			st, ok := status()
			if !ok || st.Protection == nil {
				return false
			}
			for _, s := range st.Protection.Services {
				if s.Service == portal && s.State == detector.ProtectionOn {
					on = s
					return true
				}
			}
			return false
		})
		if on.Since == nil {
			t.Fatalf("protection %+v has no start time", on)
		}
		return *on.Since
	}
	// Each client's share over d, both at once.
	measure := func(d time.Duration) (known, fresh [2]int64) {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); known[0], known[1] = clientShare(bed.Host("old"), portal, d) }()
		go func() { defer wg.Done(); fresh[0], fresh[1] = clientShare(bed.Host("new"), portal, d) }()
		wg.Wait()
		return known, fresh
	}
	// The daemon's own timestamp; the span includes hping3's start-up.
	since := protectedSince("protection switched on for the never-seen service")
	if took := since.Sub(floodStart); took > 2*time.Second {
		t.Errorf("protection on %v after the flood started, want within 2 s", took)
	}
	known, fresh := measure(6 * time.Second)
	st, _ := status()

	// Restarted in the middle of the flood: a clean stop ends protection
	// (and restores the sysctls), so the new daemon must find the flood
	// again, with no baseline for the service.
	_ = daemon.Cmd.Process.Signal(syscall.SIGTERM)
	if err := daemon.Wait(); err != nil {
		t.Logf("daemon exit: %v", err)
	}
	writeConfig("state-after-restart")
	restartAt := time.Now()
	start()
	since2 := protectedSince("protection on again after a restart mid-flood")
	if took := since2.Sub(restartAt); took > 2*time.Second {
		t.Errorf("protection on %v after the restart in the middle of the flood, want within 2 s", took)
	}
	known2, fresh2 := measure(4 * time.Second)
	sent, err := waitFlood()
	if err != nil {
		t.Fatalf("flood: %v", err)
	}
	var inc *detector.Incident
	for i := range st.Incidents {
		if st.Incidents[i].Addr == portal.String() {
			inc = &st.Incidents[i]
		}
	}
	if inc == nil {
		t.Fatalf("no incident for the portal in status: %+v", st.Incidents)
	}
	t.Logf("flood %d SYNs (%.0f/s); protection on %v after the flood started; known client %d/%d, new client %d/%d; incident %s verdict %s",
		sent, float64(sent)/floodFor.Seconds(), since.Sub(floodStart).Round(time.Millisecond), known[0], known[1], fresh[0], fresh[1], inc.ID, inc.Verdict)
	t.Logf("restart mid-flood: protection on %v after the restart; known client %d/%d, new client %d/%d",
		since2.Sub(restartAt).Round(time.Millisecond), known2[0], known2[1], fresh2[0], fresh2[1])
	for _, c := range []struct {
		who string
		n   [2]int64
	}{{"known", known}, {"new", fresh}, {"known, after the restart", known2}, {"new, after the restart", fresh2}} {
		if c.n[1] < 20 || float64(c.n[0]) < 0.99*float64(c.n[1]) {
			t.Errorf("%s client: %d/%d connections got in during the flood, want >= 99%% of at least 20", c.who, c.n[0], c.n[1])
		}
	}
	if inc == nil || inc.Kind != detector.KindService || inc.Verdict != detector.VerdictSpoofed {
		t.Errorf("incident for the portal: %+v, want a service incident with verdict spoofed", inc)
	}
}
