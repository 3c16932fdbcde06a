package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

// memBackend is a minimal Backend that records changes.
type memBackend struct {
	mu   sync.Mutex
	bans map[netip.Prefix]Ban
}

func (m *memBackend) Status(context.Context) (Status, error) {
	return Status{Running: true, Mode: "observe"}, nil
}
func (m *memBackend) Top(_ context.Context, n int) ([]SourceRow, error) {
	return []SourceRow{{Addr: netip.MustParseAddr("192.0.2.1"), SYN: uint64(n)}}, nil
}
func (m *memBackend) Bans(context.Context) ([]Ban, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []Ban{}
	for _, b := range m.bans {
		out = append(out, b)
	}
	return out, nil
}
func (m *memBackend) Allows(context.Context) ([]Allow, error)                { return []Allow{}, nil }
func (m *memBackend) Incidents(context.Context) ([]detector.Incident, error) { return nil, nil }
func (m *memBackend) Explain(_ context.Context, a netip.Addr) (Explanation, error) {
	return Explanation{Addr: a, Verdict: StateOK}, nil
}
func (m *memBackend) Block(_ context.Context, p netip.Prefix, ttl time.Duration, reason string) (Ban, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := Ban{Prefix: p, Until: time.Now().Add(ttl), Reason: reason, Origin: OriginManual}
	m.bans[p] = b
	return b, nil
}
func (m *memBackend) Unblock(_ context.Context, p netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.bans[p]; !ok {
		return NotFound(fmt.Errorf("unblock %s: not banned", p))
	}
	delete(m.bans, p)
	return nil
}
func (m *memBackend) Allow(_ context.Context, p netip.Prefix) (Allow, error) {
	return Allow{Prefix: p, Origin: OriginManual}, nil
}
func (m *memBackend) Disallow(context.Context, netip.Prefix) error { return nil }

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: peer-credential tests run clients under other uids")
	}
}

// serve starts a server on a real Unix socket in a directory anyone may
// traverse, so that clients with other uids can reach it.
func serve(t *testing.T, gid int) (string, *memBackend) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sgi-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "s.sock")
	ln, _, err := Listen(path, "")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", fi.Mode().Perm())
	}
	be := &memBackend{bans: map[netip.Prefix]Ban{}}
	srv := &Server{Backend: be, GID: gid, DefaultTTL: time.Hour, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return path, be
}

// curlAs runs curl against the socket as uid/gid (with extra groups) and
// returns the HTTP status code.
func curlAs(t *testing.T, sock string, uid, gid uint32, groups []uint32, method, path, body string) string {
	t.Helper()
	args := []string{"-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", sock, "-X", method}
	if body != "" {
		args = append(args, "-H", "Content-Type: application/json", "-d", body)
	}
	cmd := exec.Command("curl", append(args, "http://synguard"+path)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl as uid %d: %v (%s)", uid, err, out)
	}
	return string(out)
}

func TestPeerCredentials(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	const group = 4242 // the "synguard" group of this test; it need not exist
	sock, be := serve(t, group)
	// Only for this test: let other uids connect at all, so that the
	// server's own check is what decides.
	os.Chmod(sock, 0o666)
	block := `{"prefix":"192.0.2.0/24","ttl":"10m"}`

	if got := curlAs(t, sock, 65534, 65534, nil, "GET", "/v1/status", ""); got != "200" {
		t.Errorf("read as nobody: HTTP %s, want 200", got)
	}
	if got := curlAs(t, sock, 65534, 65534, nil, "POST", "/v1/block", block); got != "403" {
		t.Errorf("block as nobody: HTTP %s, want 403", got)
	}
	if bans, _ := be.Bans(context.Background()); len(bans) != 0 {
		t.Fatalf("refused change reached the backend: %+v", bans)
	}
	if got := curlAs(t, sock, 65534, group, nil, "POST", "/v1/block", block); got != "200" {
		t.Errorf("block with primary group %d: HTTP %s, want 200", group, got)
	}
	if got := curlAs(t, sock, 65534, 65534, []uint32{group}, "POST", "/v1/unblock", `{"prefix":"192.0.2.0/24"}`); got != "200" {
		t.Errorf("unblock with supplementary group %d: HTTP %s, want 200", group, got)
	}
	if got := curlAs(t, sock, 0, 0, nil, "POST", "/v1/block", block); got != "200" {
		t.Errorf("block as root: HTTP %s, want 200", got)
	}
}

func TestClientAgainstServer(t *testing.T) {
	sock, _ := serve(t, -1)
	c := NewClient(sock)
	ctx := context.Background()
	if os.Geteuid() != 0 {
		t.Skip("changes need root or the group; run as root")
	}
	b, err := c.Block(ctx, "192.0.2.0/24", "", "test")
	if err != nil || b.Prefix.String() != "192.0.2.0/24" || time.Until(b.Until) < 59*time.Minute {
		t.Fatalf("Block = %+v, %v (want default TTL 1h)", b, err)
	}
	for _, tc := range []struct {
		name string
		do   func() error
		code int
		msg  string
	}{
		{"malformed prefix", func() error { _, err := c.Block(ctx, "10.0.0.0/33", "", ""); return err }, 400, "10.0.0.0/33"},
		{"host bits", func() error { _, err := c.Block(ctx, "10.0.0.1/8", "", ""); return err }, 400, "did you mean 10.0.0.0/8"},
		{"zero ttl", func() error { _, err := c.Block(ctx, "192.0.2.0/24", "0s", ""); return err }, 400, "must be positive"},
		{"negative ttl", func() error { _, err := c.Block(ctx, "192.0.2.0/24", "-5m", ""); return err }, 400, "must be positive"},
		{"allow everything", func() error { _, err := c.Allow(ctx, "0.0.0.0/0"); return err }, 400, "every address"},
		{"allow everything v6", func() error { _, err := c.Allow(ctx, "::/0"); return err }, 400, "every address"},
		{"unblock unknown", func() error { return c.Unblock(ctx, "198.51.100.0/24") }, 404, "not banned"},
		{"explain garbage", func() error { _, err := c.Explain(ctx, "not-an-ip"); return err }, 400, "not an IP"},
	} {
		err := tc.do()
		var se *StatusError
		if !errors.As(err, &se) || se.Code != tc.code || !strings.Contains(se.Msg, tc.msg) {
			t.Errorf("%s: %v, want HTTP %d mentioning %q", tc.name, err, tc.code, tc.msg)
		}
	}
	bans, err := c.Bans(ctx)
	if err != nil || len(bans) != 1 {
		t.Errorf("after refused requests: bans %+v, %v; want only the first ban", bans, err)
	}
	rows, err := c.Top(ctx, 7)
	if err != nil || len(rows) != 1 || rows[0].SYN != 7 {
		t.Errorf("Top(7) = %+v, %v", rows, err)
	}
}

func TestUnreachableSocket(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "nothing.sock"))
	_, err := c.Status(context.Background())
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "nothing.sock") {
		t.Errorf("Status on a missing socket = %v, want ErrUnreachable naming the socket", err)
	}
}

func TestListenRefusesLiveSocketAndReplacesStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	ln, _, err := Listen(path, "")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, _, err := Listen(path, ""); err == nil || !strings.Contains(err.Error(), "another synguard") {
		t.Errorf("second Listen on a live socket = %v, want a refusal", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // leaves a stale socket file, as kill -9 does
	ln2, _, err := Listen(path, "")
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln2.Close()
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Listen(path, ""); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file = %v, want a refusal", err)
	}
}

func TestParseTTL(t *testing.T) {
	for _, ok := range []string{"1s", "10m", "24h"} {
		if _, err := ParseTTL(ok); err != nil {
			t.Errorf("ParseTTL(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"0", "0s", "-1m", "soon", "9000h"} {
		if _, err := ParseTTL(bad); err == nil {
			t.Errorf("ParseTTL(%q) accepted", bad)
		}
	}
}

// A reloaded manual_ban_ttl applies to the next block without a restart.
func TestDefaultTTLFollowsReload(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changes need root or the group; run as root")
	}
	dir := t.TempDir()
	ln, _, err := Listen(filepath.Join(dir, "s.sock"), "")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	ttl := time.Hour
	be := &memBackend{bans: map[netip.Prefix]Ban{}}
	srv := &Server{Backend: be, GID: -1, DefaultTTL: time.Hour, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		DefaultTTLFunc: func() time.Duration { mu.Lock(); defer mu.Unlock(); return ttl }}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	c := NewClient(filepath.Join(dir, "s.sock"))
	mu.Lock()
	ttl = 7 * time.Minute // SIGHUP with manual_ban_ttl: 7m
	mu.Unlock()
	b, err := c.Block(context.Background(), "192.0.2.0/24", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(b.Until); left > 7*time.Minute || left < 6*time.Minute {
		t.Errorf("block without --ttl lasts %v, want the reloaded 7m", left)
	}
}
