package synproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/testbed"
)

func TestScript(t *testing.T) {
	m, err := New(Options{Run: func(context.Context, string, string, ...string) ([]byte, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Script(), "table inet synguard_synproxy\ndelete table inet synguard_synproxy\n"; got != want {
		t.Errorf("empty script %q, want %q", got, want)
	}
	m.services[netip.MustParseAddrPort("10.0.0.1:80")] = PathSynproxy
	m.services[netip.MustParseAddrPort("[2001:db8::1]:443")] = PathSynproxy
	m.services[netip.AddrPortFrom(netip.Addr{}, 22)] = PathSynproxy
	m.services[netip.MustParseAddrPort("10.0.0.1:25")] = PathKernelCookies // not in the table
	s := m.Script()
	for _, want := range []string{
		`iifname != "lo" ip daddr 10.0.0.1 tcp dport 80 tcp flags & (fin|syn|rst|ack) == syn notrack`,
		`iifname != "lo" ip daddr 10.0.0.1 tcp dport 80 ct state invalid,untracked counter synproxy mss 1460 wscale 7 sack-perm`,
		`iifname != "lo" ip6 daddr 2001:db8::1 tcp dport 443 ct state invalid,untracked counter synproxy mss 1440 wscale 7 sack-perm`,
		`iifname != "lo" meta nfproto ipv4 tcp dport 22 tcp flags & (fin|syn|rst|ack) == syn notrack`,
		`iifname != "lo" meta nfproto ipv6 tcp dport 22 ct state invalid,untracked counter synproxy mss 1440`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "dport 25") {
		t.Errorf("kernel-cookies service in the nft script:\n%s", s)
	}
	m.opts.Timestamps, m.opts.WScale, m.opts.MSS4 = true, 9, 1400
	if s := m.Script(); !strings.Contains(s, `ip daddr 10.0.0.1 tcp dport 80 ct state invalid,untracked counter synproxy mss 1400 wscale 9 timestamp sack-perm`) {
		t.Errorf("timestamps on:\n%s", s)
	}
	if _, err := New(Options{Mode: "bogus"}); err == nil || !strings.Contains(err.Error(), "auto or kernel-cookies") {
		t.Errorf("bad mode: %v", err)
	}
	if _, err := New(Options{WScale: 15}); err == nil {
		t.Error("wscale 15 accepted")
	}
}

func sysctl(t *testing.T, ns *testbed.NS, key string) string {
	t.Helper()
	out, err := ns.Run(context.Background(), "sysctl", "-n", key)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// greeter accepts connections in the server namespace and writes the peer
// address to each, so a client proves the listener (not a proxy) answered.
func greeter(t *testing.T, srv *testbed.NS, port string) {
	l, err := srv.Listen("tcp", ":"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, c.RemoteAddr().String()+"\n")
			c.Close()
		}
	}()
}

func fetch(cli *testbed.NS, to string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := cli.DialContext(ctx, "tcp", to)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestSynproxyLive installs the rules in a real namespace: a client still
// gets through to the listener, SYNPROXY (not the listener) answered its
// SYN, and Disable removes the table and restores the sysctl.
func TestSynproxyLive(t *testing.T) {
	testbed.RequireRoot(t)
	b, err := testbed.New(t, testbed.Config{Prefix: "sgpy", Subnet: 51, Hosts: []string{"cli"}})
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := b.Server, b.Host("cli")
	if err := srv.Sysctl("net.ipv4.tcp_syncookies=0"); err != nil {
		t.Fatal(err)
	}
	greeter(t, srv, "8080")
	ctx := context.Background()
	m, err := New(Options{Run: srv.RunInput})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(ctx) })
	loose := sysctl(t, srv, sysctlLoose)

	svc := netip.AddrPortFrom(srv.Addr4, 8080)
	res, err := m.Enable(ctx, svc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("enable: %s: %s", res.Path, res.Reason)
	if res.Path != PathSynproxy {
		t.Fatalf("path %s, want %s", res.Path, PathSynproxy)
	}
	if got := sysctl(t, srv, sysctlLoose); got != "0" {
		t.Errorf("%s = %s while enabled, want 0", sysctlLoose, got)
	}
	if got := sysctl(t, srv, sysctlSyncookies); got != "1" {
		t.Errorf("%s = %s while enabled, want 1", sysctlSyncookies, got)
	}
	for _, to := range []string{svc.String(), svc.String(), svc.String(), net.JoinHostPort(srv.Addr6.String(), "8080")} {
		start := time.Now()
		got, err := fetch(cli, to)
		// A SYNPROXY ACK the listener rejects costs a one-second SYN-ACK
		// retransmission (the timestamp problem, see Options.Timestamps).
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("connect %s through synproxy took %v", to, d)
		}
		if err != nil {
			t.Fatalf("connect %s through synproxy: %v", to, err)
		}
		if !strings.HasPrefix(got, cli.Addr4.String()+":") && !strings.HasPrefix(got, "["+cli.Addr6.String()+"]:") {
			t.Errorf("listener saw %q, want the client's own address", got)
		}
	}
	n, err := m.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// IPv4: the client's SYN and its ACK went through SYNPROXY. IPv6 is not
	// covered by an IPv4 service, so it went straight to the listener.
	if n < 6 {
		t.Errorf("synproxy rule counted %d packets, want >= 6 (SYN and ACK of each IPv4 connection)", n)
	}
	if again, err := m.Enable(ctx, svc); err != nil || again.Path != PathSynproxy {
		t.Errorf("enable again: %v %v", again, err)
	}

	if err := m.Disable(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if out, err := srv.Run(ctx, "nft", "list", "table", "inet", DefaultTable); err == nil {
		t.Errorf("table still there after the last Disable:\n%s", out)
	}
	if got := sysctl(t, srv, sysctlLoose); got != loose {
		t.Errorf("%s = %s after Disable, want restored %s", sysctlLoose, got, loose)
	}
	if got := sysctl(t, srv, sysctlSyncookies); got != "0" {
		t.Errorf("%s = %s after Disable, want restored 0", sysctlSyncookies, got)
	}
	if _, err := fetch(cli, svc.String()); err != nil {
		t.Errorf("connect after Disable: %v", err)
	}
}

// TestFallbackLive: without nftables (a runner where nft fails) Enable turns
// kernel SYN cookies on and says why; the last Disable restores them.
func TestFallbackLive(t *testing.T) {
	testbed.RequireRoot(t)
	b, err := testbed.New(t, testbed.Config{Prefix: "sgpz", Subnet: 51, Hosts: []string{"cli"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := b.Server
	if err := srv.Sysctl("net.ipv4.tcp_syncookies=0"); err != nil {
		t.Fatal(err)
	}
	run := srv.RunInput
	noNft := func(ctx context.Context, stdin, name string, args ...string) ([]byte, error) {
		if name == "nft" {
			return nil, errors.New(`exec: "nft": executable file not found in $PATH`)
		}
		return run(ctx, stdin, name, args...)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		opts Options
		why  string
	}{
		{"no nft", Options{Run: noNft}, "nftables synproxy unavailable: nft table inet synguard_synproxy: exec: \"nft\": executable file not found"},
		{"mode kernel-cookies", Options{Run: run, Mode: ModeKernelCookies}, "mode kernel-cookies"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := New(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			a, c := netip.AddrPortFrom(srv.Addr4, 80), netip.AddrPortFrom(srv.Addr4, 443)
			res, err := m.Enable(ctx, a)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("enable: %s: %s", res.Path, res.Reason)
			if res.Path != PathKernelCookies || !strings.Contains(res.Reason, tc.why) || !strings.Contains(res.Reason, "was 0") {
				t.Errorf("result %+v, want kernel cookies because %q, turned on from 0", res, tc.why)
			}
			if got := sysctl(t, srv, sysctlSyncookies); got != "1" {
				t.Errorf("tcp_syncookies = %s while protected, want 1", got)
			}
			if _, err := m.Enable(ctx, c); err != nil {
				t.Fatal(err)
			}
			if err := m.Disable(ctx, a); err != nil {
				t.Fatal(err)
			}
			if got := sysctl(t, srv, sysctlSyncookies); got != "1" {
				t.Errorf("tcp_syncookies = %s with one service still protected, want 1", got)
			}
			if err := m.Disable(ctx, c); err != nil {
				t.Fatal(err)
			}
			if got := sysctl(t, srv, sysctlSyncookies); got != "0" {
				t.Errorf("tcp_syncookies = %s after the last Disable, want restored 0", got)
			}
		})
	}
}

// TestPrepareKeepsConnections: with Prepare run first, a connection that
// was open before Enable keeps working after it (its packets are tracked,
// not invalid, so SYNPROXY leaves them alone).
func TestPrepareKeepsConnections(t *testing.T) {
	testbed.RequireRoot(t)
	b, err := testbed.New(t, testbed.Config{Prefix: "sgpw", Subnet: 51, Hosts: []string{"cli"}})
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := b.Server, b.Host("cli")
	l, err := srv.Listen("tcp", ":9090")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() { // echo
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	ctx := context.Background()
	m, err := New(Options{Run: srv.RunInput})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(ctx); _ = m.Unprepare(ctx) })
	if err := m.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := cli.DialContext(ctx, "tcp", net.JoinHostPort(srv.Addr4.String(), "9090"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func(msg string) error {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return errors.New("echo " + string(buf))
		}
		return nil
	}
	if err := echo("before\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Enable(ctx, netip.AddrPortFrom(srv.Addr4, 9090)); err != nil {
		t.Fatal(err)
	}
	if err := echo("after enable\n"); err != nil {
		t.Errorf("connection opened before Enable broke: %v", err)
	}
	if err := m.Unprepare(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := srv.Run(ctx, "nft", "list", "table", "inet", DefaultTable+"_ct"); err == nil {
		t.Errorf("prepare table left after Unprepare:\n%s", out)
	}
}
