package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
)

// protectBackend answers protect and unprotect; the rest of api.Backend is
// not used by these commands.
type protectBackend struct {
	api.Backend
	mu    sync.Mutex
	calls []string
	on    map[netip.AddrPort]bool
}

func (b *protectBackend) Protect(_ context.Context, svc netip.AddrPort) (api.ServiceProtection, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, "protect "+svc.String())
	b.on[svc] = true
	return api.ServiceProtection{Service: svc, Protection: detector.Protection{State: detector.ProtectionOn, Origin: "manual",
		Path: "xdp-cookies+nft-synproxy", Cookies: true, Budget: 100}}, nil
}

func (b *protectBackend) Unprotect(_ context.Context, svc netip.AddrPort) (api.ServiceProtection, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, "unprotect "+svc.String())
	if !b.on[svc] {
		return api.ServiceProtection{}, api.NotFound(fmt.Errorf("unprotect %v: not protected (see `synguard status`)", svc))
	}
	delete(b.on, svc)
	return api.ServiceProtection{Service: svc, Protection: detector.Protection{State: detector.ProtectionOff, CookiesSent: 1234, CookiesValidated: 56}}, nil
}

func (b *protectBackend) Protections(context.Context) (api.ProtectionStatus, error) {
	return api.ProtectionStatus{Available: true}, nil
}

func TestProtectCommands(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changes through the socket need root or its group")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	ln, _, err := api.Listen(sock, "")
	if err != nil {
		t.Fatal(err)
	}
	be := &protectBackend{on: map[netip.AddrPort]bool{}}
	srv := &api.Server{Backend: be, GID: -1, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), DefaultTTL: time.Hour}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })

	for _, args := range [][]string{
		{"protect", "192.0.2.10"},
		{"protect", "192.0.2.10:0"},
		{"protect", "0.0.0.0:443"},
		{"protect", "nonsense:443"},
		{"protect"},
		{"protect", "192.0.2.10:443", "192.0.2.11:443"},
		{"unprotect", "[fe80::1%eth0]:22"},
	} {
		r := runBin(t, append(args, "--socket", sock)...)
		if r.code != 2 || !strings.Contains(r.stderr, args[0]) {
			t.Errorf("%v: exit %d stderr %q, want 2 with a message naming the command", args, r.code, r.stderr)
		}
	}
	if len(be.calls) != 0 {
		t.Fatalf("bad input reached the daemon: %v", be.calls)
	}

	r := runBin(t, "protect", "192.0.2.10:443", "--socket", sock)
	if r.code != 0 || !strings.Contains(r.stdout, "protected 192.0.2.10:443") || !strings.Contains(r.stdout, "SYNPROXY") || !strings.Contains(r.stdout, "100 SYN/s") {
		t.Errorf("protect: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runBin(t, "unprotect", "192.0.2.10:443", "--socket", sock, "--json")
	var sp api.ServiceProtection
	decodeJSON(t, r.stdout, &sp)
	if r.code != 0 || sp.State != detector.ProtectionOff || sp.CookiesSent != 1234 || sp.Service.String() != "192.0.2.10:443" {
		t.Errorf("unprotect --json: exit %d, %+v", r.code, sp)
	}
	r = runBin(t, "unprotect", "192.0.2.10:443", "--socket", sock)
	if r.code != 2 || !strings.Contains(r.stderr, "not protected") {
		t.Errorf("unprotect of an unprotected service: exit %d stderr %q, want 2 saying so", r.code, r.stderr)
	}
	r = runBin(t, "protect", "192.0.2.10:443", "--socket", filepath.Join(dir, "none.sock"))
	if r.code != 1 || !strings.Contains(r.stderr, "not reachable") {
		t.Errorf("unreachable: exit %d stderr %q", r.code, r.stderr)
	}
}

func TestStatusTextShowsProtection(t *testing.T) {
	since := time.Now().Add(-time.Minute)
	var b strings.Builder
	printProtection(&b, &api.ProtectionStatus{Available: true, Auto: true, Cookies: true, VerifiedSources: 7, Services: []api.ServiceProtection{{
		Service: netip.MustParseAddrPort("192.0.2.10:443"), IncidentID: "svc-1",
		Protection: detector.Protection{State: detector.ProtectionOn, Origin: "detector", Path: "xdp-cookies+nft-synproxy", Cookies: true,
			Budget: 200, Since: &since, Verified: 11, Admitted: 12, Dropped: 13, CookiesSent: 14, CookiesValidated: 15},
	}}})
	out := b.String()
	for _, want := range []string{"auto on, cookies on; 7 verified sources", "192.0.2.10:443", "ON", "200 SYN/s", "11", "12", "13", "14", "15", "svc-1"} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
}
