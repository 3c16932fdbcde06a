package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

// protBackend is memBackend with service protection.
type protBackend struct {
	*memBackend
	calls []string
	on    map[netip.AddrPort]bool
}

func (b *protBackend) Protect(_ context.Context, svc netip.AddrPort) (ServiceProtection, error) {
	b.calls = append(b.calls, "protect "+svc.String())
	b.on[svc] = true
	return ServiceProtection{Service: svc, Protection: detector.Protection{State: detector.ProtectionOn, Origin: "manual", Cookies: true, Budget: 100}}, nil
}

func (b *protBackend) Unprotect(_ context.Context, svc netip.AddrPort) (ServiceProtection, error) {
	b.calls = append(b.calls, "unprotect "+svc.String())
	if !b.on[svc] {
		return ServiceProtection{}, NotFound(fmt.Errorf("unprotect %v: not protected", svc))
	}
	delete(b.on, svc)
	return ServiceProtection{Service: svc, Protection: detector.Protection{State: detector.ProtectionOff}}, nil
}

func (b *protBackend) Protections(context.Context) (ProtectionStatus, error) {
	st := ProtectionStatus{Available: true, Auto: true}
	for svc := range b.on {
		st.Services = append(st.Services, ServiceProtection{Service: svc, Protection: detector.Protection{State: detector.ProtectionOn}})
	}
	return st, nil
}

func serveBackend(t *testing.T, be Backend) *Client {
	t.Helper()
	dir := t.TempDir()
	ln, _, err := Listen(filepath.Join(dir, "s.sock"), "")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Backend: be, GID: -1, DefaultTTL: time.Hour, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return NewClient(filepath.Join(dir, "s.sock"))
}

func TestProtectEndpoints(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changes need root or the socket's group; run as root")
	}
	be := &protBackend{memBackend: &memBackend{bans: map[netip.Prefix]Ban{}}, on: map[netip.AddrPort]bool{}}
	c := serveBackend(t, be)
	ctx := context.Background()
	for _, tc := range []struct{ in, msg string }{
		{"192.0.2.10", "want ADDR:PORT"},
		{"192.0.2.10:0", "port 0"},
		{"192.0.2.10:70000", "want ADDR:PORT"},
		{"0.0.0.0:443", "local unicast"},
		{"[::]:443", "local unicast"},
		{"[fe80::1%eth0]:443", "zones"},
		{"web:443", "want ADDR:PORT"},
		{"", "want ADDR:PORT"},
	} {
		for _, do := range []func(context.Context, string) (ServiceProtection, error){c.Protect, c.Unprotect} {
			_, err := do(ctx, tc.in)
			var se *StatusError
			if !errors.As(err, &se) || se.Code != 400 || !strings.Contains(se.Msg, tc.msg) {
				t.Errorf("%q: %v, want HTTP 400 mentioning %q", tc.in, err, tc.msg)
			}
		}
	}
	if len(be.calls) != 0 {
		t.Fatalf("refused input reached the backend: %v", be.calls)
	}
	p, err := c.Protect(ctx, "[::ffff:192.0.2.10]:443")
	if err != nil || p.Service.String() != "192.0.2.10:443" || p.State != detector.ProtectionOn || p.Budget != 100 {
		t.Fatalf("Protect = %+v, %v (want the unmapped service, on)", p, err)
	}
	st, err := c.Protections(ctx)
	if err != nil || len(st.Services) != 1 {
		t.Errorf("Protections = %+v, %v", st, err)
	}
	if _, err := c.Unprotect(ctx, "192.0.2.10:443"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Unprotect(ctx, "192.0.2.10:443")
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 404 {
		t.Errorf("unprotect twice: %v, want 404", err)
	}
	// A backend that cannot protect says so.
	c2 := serveBackend(t, &memBackend{bans: map[netip.Prefix]Ban{}})
	if _, err := c2.Protect(ctx, "192.0.2.10:443"); !errors.As(err, &se) || se.Code != 501 {
		t.Errorf("protect on a backend without protection: %v, want 501", err)
	}
}

func TestProtectNeedsChangeRights(t *testing.T) {
	requireRoot(t)
	sock, _ := serve(t, 4242)
	os.Chmod(sock, 0o666)
	if got := curlAs(t, sock, 65534, 65534, nil, "POST", "/v1/protect", `{"service":"192.0.2.10:443"}`); got != "403" {
		t.Errorf("protect as nobody: HTTP %s, want 403", got)
	}
	if got := curlAs(t, sock, 65534, 65534, nil, "GET", "/v1/protections", ""); got != "501" {
		t.Errorf("protections read as nobody on a backend without protection: HTTP %s, want 501", got)
	}
}
