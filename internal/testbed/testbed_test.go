package testbed

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/frame"
)

// TestBed is the harness's self-test: addresses, reachability over IPv4 and
// IPv6 through the bridge, an HTTP request from a client namespace to a
// server namespace, counters of the right namespace, background processes,
// a bounded flood, and that cleanup leaves nothing behind.
func TestBed(t *testing.T) {
	RequireRoot(t)
	// A leftover from a "killed" run must be removed by New.
	if out, err := exec.Command("ip", "netns", "add", "sgct-leftover").CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	start := time.Now()
	b, err := New(t, Config{Prefix: "sgct", Subnet: 20, Hosts: []string{"cli", "atk"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bed up in %v", time.Since(start))
	if nsExists(t, "sgct-leftover") {
		t.Error("leftover namespace sgct-leftover survived New")
	}
	cli, atk, srv := b.Host("cli"), b.Host("atk"), b.Server
	if b.Config.Prefix4().String() != "10.200.20.0/24" || b.Config.Prefix6().String() != "fd00:200:20::/64" ||
		!b.Config.Prefix6().Contains(srv.Addr6) || b.Host("nope") != nil {
		t.Errorf("subnets %v %v", b.Config.Prefix4(), b.Config.Prefix6())
	}
	if srv.Iface != "sgct-srv" || srv.Addr4 != netip.MustParseAddr("10.200.20.1") ||
		srv.Addr6 != netip.MustParseAddr("fd00:200:20::1") || srv.Index == 0 || len(srv.MAC) != 6 {
		t.Errorf("server %+v", srv)
	}
	if cli.Addr4 != netip.MustParseAddr("10.200.20.2") || atk.Addr6 != netip.MustParseAddr("fd00:200:20::3") {
		t.Errorf("cli %v atk %v", cli.Addr4, atk.Addr6)
	}
	// The server has exactly one interface besides lo.
	out, err := srv.Run(context.Background(), "ip", "-o", "link")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(out), "\n"); n != 2 || !strings.Contains(string(out), "sgct-srv@") {
		t.Errorf("server links:\n%s", out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, a := range []netip.Addr{srv.Addr4, srv.Addr6, atk.Addr4} {
		if err := cli.Ping(ctx, a); err != nil {
			t.Errorf("ping %v from cli: %v", a, err)
		}
	}

	before, err := srv.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.ServeHTTP(8080, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.RemoteAddr)
	})); err != nil {
		t.Fatal(err)
	}
	c := cli.HTTPClient(5 * time.Second)
	for _, u := range []string{"http://10.200.20.1:8080/", "http://[fd00:200:20::1]:8080/"} {
		resp, err := c.Get(u)
		if err != nil {
			t.Fatalf("GET %s from cli: %v", u, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(string(body), "hello 10.200.20.2:") && !strings.HasPrefix(string(body), "hello [fd00:200:20::2]:") {
			t.Errorf("GET %s: body %q, want the client's address", u, body)
		}
	}
	if out, err := cli.Run(ctx, "curl", "-sS", "-m", "5", "http://10.200.20.1:8080/"); err != nil || !strings.HasPrefix(string(out), "hello 10.200.20.2:") {
		t.Errorf("curl from cli: %q %v", out, err)
	}
	after, err := srv.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := after["Tcp.PassiveOpens"] - before["Tcp.PassiveOpens"]; d != 3 {
		t.Errorf("server Tcp.PassiveOpens grew by %d, want 3 (counters read from the wrong namespace?)", d)
	}

	// A bounded flood from an attacker whose RSTs are dropped leaves the
	// server with half-open connections answered by SYN-ACK retries.
	if err := atk.DropOutgoingRST(); err != nil {
		t.Fatal(err)
	}
	before = after
	sent, err := atk.Flood(ctx, Flood{To: netip.AddrPortFrom(srv.Addr4, 8080), Count: 300})
	if err != nil {
		t.Fatal(err)
	}
	after, err = srv.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if sent != 300 {
		t.Errorf("hping3 sent %d, want 300", sent)
	}
	if d := after["Tcp.InSegs"] - before["Tcp.InSegs"]; d < 300 {
		t.Errorf("server Tcp.InSegs grew by %d after a 300-SYN flood", d)
	}
	// Without the attacker's RSTs the flood leaves half-open connections.
	out, err = srv.Run(ctx, "ss", "-Htn", "state", "syn-recv")
	if n := strings.Count(string(out), "\n"); err != nil || n < 250 {
		t.Errorf("server has %d SYN-RECV sockets after a 300-SYN flood with the attacker's RSTs dropped (%v)", n, err)
	}
	if d := after["Tcp.OutRsts"] - before["Tcp.OutRsts"]; d != 0 {
		t.Errorf("server sent %d RSTs: flood SYNs should be half-open, not refused", d)
	}
	atkC, err := atk.Counters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server: InSegs +%d, SyncookiesSent +%d, ListenDrops +%d; attacker OutRsts %d",
		after["Tcp.InSegs"]-before["Tcp.InSegs"], after["TcpExt.SyncookiesSent"]-before["TcpExt.SyncookiesSent"],
		after["TcpExt.ListenDrops"]-before["TcpExt.ListenDrops"], atkC["Tcp.OutRsts"])

	// Exact raw frames, IPv4 and IPv6, from an AF_PACKET socket.
	before = srvCounters(t, srv)
	syns := [][]byte{
		frame.TCP{Src: netip.AddrPortFrom(atk.Addr4, 5555), Dst: netip.AddrPortFrom(srv.Addr4, 8080), Flags: frame.FlagSYN,
			SrcMAC: atk.MAC, DstMAC: srv.MAC}.Build(),
		frame.TCP{Src: netip.AddrPortFrom(atk.Addr6, 5555), Dst: netip.AddrPortFrom(srv.Addr6, 8080), Flags: frame.FlagSYN,
			SrcMAC: atk.MAC, DstMAC: srv.MAC}.Build(),
	}
	// In chunks, each received before the next: a 1000-frame burst can
	// overflow the receive backlog (netdev_max_backlog) on a loaded
	// machine, and the count is exact.
	for sent := 100; sent <= 1000; sent += 100 {
		if n, err := atk.SendFrames(syns, 100); err != nil || n != 100 {
			t.Fatalf("SendFrames: %d sent: %v", n, err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for srvCounters(t, srv)["Tcp.InSegs"]-before["Tcp.InSegs"] < int64(sent) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if d := srvCounters(t, srv)["Tcp.InSegs"] - before["Tcp.InSegs"]; d != 1000 {
		t.Errorf("server Tcp.InSegs grew by %d after 1000 raw SYNs", d)
	}

	// A flat-out spoofed flood bounded by time.
	start = time.Now()
	// One second: hping3's start-up (hundreds of ms on a slow machine)
	// must not eat the window; 1000 SYNs is >= 10x below any rate seen.
	sent, err = atk.Flood(ctx, Flood{To: netip.AddrPortFrom(srv.Addr4, 8080), Duration: time.Second, RandSource: true})
	if err != nil || sent < 1000 || time.Since(start) > 4*time.Second {
		t.Errorf("1s --flood: sent %d in %v: %v", sent, time.Since(start), err)
	}
	t.Logf("1s --flood --rand-source: %d SYNs", sent)

	// The bridge is a plain switch (no br_netfilter validation/conntrack).
	if out, err := b.LAN.Run(ctx, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables"); err == nil && strings.TrimSpace(string(out)) != "0" {
		t.Errorf("lan bridge-nf-call-iptables = %s, want 0", out)
	}

	// Commands keep the host's mount namespace: bpffs pins stay reachable.
	if out, err := srv.Run(ctx, "stat", "-f", "-c", "%T", "/sys/fs/bpf"); err != nil || strings.TrimSpace(string(out)) != "bpf_fs" {
		t.Errorf("/sys/fs/bpf from a command in the server namespace: %q %v, want bpf_fs", out, err)
	}

	// A separate server process (python3 -m http.server) in the namespace.
	py, err := srv.StartPythonHTTP(8081, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := c.Get("http://10.200.20.1:8081/"); err != nil {
		t.Errorf("python3 http.server in the server namespace: %v\n%s", err, py.Output())
	} else if resp.Body.Close(); resp.StatusCode != http.StatusOK {
		t.Errorf("python3 http.server: %s", resp.Status)
	}
	py.Stop()

	p, err := cli.Start("sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	p.Stop()
	if err := p.Wait(); err == nil {
		t.Error("killed sleep exited cleanly")
	}
}

// TestCleanup checks that a bed's cleanup removes its namespaces.
func TestCleanup(t *testing.T) {
	RequireRoot(t)
	s := &Standalone{Log: t.Logf}
	b, err := New(s, Config{Prefix: "sgct", Subnet: 21, Hosts: []string{"h1"}})
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	if _, err := b.Host("h1").Start("sleep", "60"); err != nil {
		t.Error(err)
	}
	if _, err := New(s, Config{Prefix: "sgct", Subnet: 21}); err == nil {
		t.Error("second bed with a running bed's prefix accepted")
	}
	for _, ns := range []string{"sgct-srv", "sgct-lan", "sgct-h1"} {
		if !nsExists(t, ns) {
			t.Errorf("namespace %s missing", ns)
		}
	}
	s.Close()
	for _, ns := range []string{"sgct-srv", "sgct-lan", "sgct-h1"} {
		if nsExists(t, ns) {
			t.Errorf("namespace %s left after Close", ns)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	s := &Standalone{Log: t.Logf}
	defer s.Close()
	for _, cfg := range []Config{
		{Prefix: "", Subnet: 20},
		{Prefix: "a-b", Subnet: 20},
		{Prefix: "sgc", Subnet: 20, Hosts: []string{"lan"}},
		{Prefix: "sgc", Subnet: 20, Hosts: []string{"srv"}},
		{Prefix: "sgc", Subnet: 20, Hosts: []string{"a", "a"}},
		{Prefix: "sgc", Subnet: 20, Hosts: []string{"waytoolonghost"}},
	} {
		if _, err := New(s, cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	if err := Clean(""); err == nil {
		t.Error("Clean(\"\") accepted")
	}
}

func nsExists(t *testing.T, name string) bool {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}

func srvCounters(t *testing.T, n *NS) map[string]int64 {
	t.Helper()
	c, err := n.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}
