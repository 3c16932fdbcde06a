// Package testbed builds throw-away network namespaces wired over veth for
// live tests of the XDP program, the daemon end-to-end test and the demo.
//
// Topology (P is the caller's prefix, X its subnet):
//
//	P-srv ns                  P-lan ns                          P-<host> ns
//	[P-srv] 10.200.X.1 ==== [Pb-srv]--+                      +--[Pb-<host>] ==== [P-<host>] 10.200.X.2..
//	        fd00:200:X::1             |  bridge P-br         |                           fd00:200:X::2..
//	                                  +--10.200.X.254 -------+
//	                                     fd00:200:X::fe, forwarding on,
//	                                     default route: blackhole
//
// The server namespace has exactly one interface, Server.Iface ("P-srv"):
// the one to attach XDP to. Every host, the server included, uses the lan
// namespace as its default gateway; the lan namespace blackholes everything
// it would route, so replies to spoofed sources die silently there, as on
// the Internet, instead of being refused by the server's own stack.
//
// The bridge is a plain switch: br_netfilter, built into this kernel and on
// by default, is switched off in the lan namespace, so crafted frames with
// bad IP checksums or lengths reach the server and floods are not tracked by
// conntrack on the way. VLAN-tagged frames do cross it, but the kernel moves
// the tag into skb metadata, so XDP on the server sees them untagged.
//
// Traffic: NS.Flood (hping3, IPv4, exact counts or timed --flood),
// NS.SendFrames (AF_PACKET, exact counts of any frame, IPv6 too),
// NS.DialContext/HTTPClient (real handshakes), NS.ServeHTTP and
// NS.StartPythonHTTP (real servers), NS.DropOutgoingRST (half-open floods).
//
// A bed is deleted through the caller's Cleanup (a *testing.T, or a
// Standalone for programs), even when the test fails; New first deletes
// leftovers with the same prefix from a killed run. Live tests need root:
// call RequireRoot first.
//
// `ip netns exec` remounts /sys, so bpffs pins under /sys/fs/bpf would not
// be visible to commands it runs; Run and Start therefore use `nsenter
// --net`, which switches only the network namespace. In Go, switch only a
// thread's network namespace with NS.Do (for example to attach XDP to
// Server.Iface) and load and pin BPF objects from the process itself.
package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// T is what a bed needs from its owner: *testing.T and *testing.B satisfy
// it, and so does Standalone for programs such as the demo.
type T interface {
	Helper()
	Logf(format string, args ...any)
	Cleanup(func())
}

// Skipper is the part of *testing.T that RequireRoot needs.
type Skipper interface {
	Helper()
	Skip(args ...any)
}

// RequireRoot skips the test with a reason unless it runs as root, which
// creating namespaces and loading XDP programs need. CI runs as root.
func RequireRoot(t Skipper) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and loads XDP programs (CI runs as root)")
	}
}

// Config describes a bed.
type Config struct {
	// Prefix names every namespace ("P-srv", "P-lan", "P-<host>") and
	// interface of the bed; it is the owner's prefix from the team notes
	// (e.g. "sgc"). Leftovers with this prefix are deleted by New.
	Prefix string
	// Subnet is X in 10.200.X.0/24 and fd00:200:X::/64.
	Subnet uint8
	// Hosts are the namespaces besides the server, e.g. "cli", "atk". They
	// get addresses .2, .3, ... in order. "srv" and "lan" are reserved.
	Hosts []string
}

// Bed is a running test bed.
type Bed struct {
	Config Config
	// Server is the namespace under test; Server.Iface is its only
	// interface.
	Server *NS
	// LAN holds the bridge and is everyone's (blackholing) gateway.
	LAN   *NS
	hosts map[string]*NS
	t     T
}

// NS is one network namespace of a bed.
type NS struct {
	Name  string           // namespace name, "P-srv"
	Iface string           // its veth ("P-srv"); the bridge "P-br" in the lan namespace
	MAC   net.HardwareAddr // of Iface
	Index int              // ifindex of Iface inside the namespace
	Addr4 netip.Addr       // 10.200.X.n
	Addr6 netip.Addr       // fd00:200:X::n
	t     T
}

// Host returns the namespace of a host named in Config.Hosts, or nil.
func (b *Bed) Host(name string) *NS { return b.hosts[name] }

// Prefix4 is the bed's IPv4 subnet, 10.200.X.0/24.
func (c Config) Prefix4() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, c.Subnet, 0}), 24)
}

// Prefix6 is the bed's IPv6 subnet fd00:200:X::/64.
func (c Config) Prefix6() netip.Prefix {
	return netip.PrefixFrom(addr6(c.Subnet, 0), 64)
}

// addr6 returns fd00:200:X::n, writing X with the same digits as in
// 10.200.X.0 (subnet 20 is fd00:200:20::, i.e. the group 0x0020).
func addr6(x uint8, n uint16) netip.Addr {
	g, _ := strconv.ParseUint(strconv.Itoa(int(x)), 16, 16)
	return netip.AddrFrom16([16]byte{0xfd, 0x00, 0x02, 0x00, byte(g >> 8), byte(g), 14: byte(n >> 8), 15: byte(n)})
}

const maxIfname = 15

// livePrefixes are the prefixes of this process's running beds.
var livePrefixes = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

// New creates the bed and registers its deletion with t.Cleanup. On error
// whatever was created is already scheduled for deletion.
func New(t T, cfg Config) (*Bed, error) {
	t.Helper()
	if cfg.Prefix == "" || strings.ContainsAny(cfg.Prefix, "-/ ") {
		return nil, fmt.Errorf("testbed prefix %q: want a short name without '-', '/' or spaces", cfg.Prefix)
	}
	names := append([]string{"srv"}, cfg.Hosts...)
	seen := map[string]bool{"lan": true}
	for _, h := range names {
		if h == "" || seen[h] || strings.ContainsAny(h, "-/ ") {
			return nil, fmt.Errorf("testbed host %q: want a unique short name, not lan", h)
		}
		seen[h] = true
		if n := len(cfg.Prefix) + 2 + len(h); n > maxIfname {
			return nil, fmt.Errorf("testbed host %q with prefix %q: interface name %sb-%s is %d bytes, at most %d",
				h, cfg.Prefix, cfg.Prefix, h, n, maxIfname)
		}
	}
	if len(names) > 250 {
		return nil, fmt.Errorf("testbed: %d hosts, at most 249", len(cfg.Hosts))
	}
	// Clean would delete a running bed's namespaces: one bed per prefix.
	livePrefixes.Lock()
	inUse := livePrefixes.m[cfg.Prefix]
	if !inUse {
		livePrefixes.m[cfg.Prefix] = true
	}
	livePrefixes.Unlock()
	if inUse {
		return nil, fmt.Errorf("testbed prefix %q: a bed with this prefix is running in this process; use another prefix", cfg.Prefix)
	}
	t.Cleanup(func() {
		livePrefixes.Lock()
		delete(livePrefixes.m, cfg.Prefix)
		livePrefixes.Unlock()
	})
	if err := Clean(cfg.Prefix); err != nil {
		return nil, err
	}
	b := &Bed{Config: cfg, hosts: map[string]*NS{}, t: t}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	p := cfg.Prefix
	lan, err := b.addNS(ctx, p+"-lan")
	if err != nil {
		return nil, err
	}
	lan.Iface = p + "-br"
	lan.Addr4 = netip.AddrFrom4([4]byte{10, 200, cfg.Subnet, 254})
	lan.Addr6 = addr6(cfg.Subnet, 0xfe)
	b.LAN = lan
	if err := lan.batch(ctx,
		"link set lo up",
		"link add "+lan.Iface+" type bridge",
		"link set "+lan.Iface+" up",
		"addr add "+lan.Addr4.String()+"/24 dev "+lan.Iface,
		"addr add "+lan.Addr6.String()+"/64 dev "+lan.Iface+" nodad",
		"route add blackhole default",
		"route add blackhole ::/0",
	); err != nil {
		return nil, err
	}
	// The bridge must be a plain switch: with br_netfilter (built into this
	// kernel, on by default) bridged IPv4/IPv6 would go through netfilter,
	// which drops frames with bad IP checksums or lengths before they reach
	// the server, and tracks every flood packet in conntrack.
	if _, err := lan.Run(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return nil, err
	}
	if _, err := os.Stat("/proc/sys/net/bridge"); err == nil {
		if _, err := lan.Run(ctx, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0",
			"net.bridge.bridge-nf-call-ip6tables=0", "net.bridge.bridge-nf-call-arptables=0"); err != nil {
			return nil, err
		}
	}

	for i, h := range names {
		n, err := b.addNS(ctx, p+"-"+h)
		if err != nil {
			return nil, err
		}
		n.Iface = n.Name
		n.Addr4 = netip.AddrFrom4([4]byte{10, 200, cfg.Subnet, byte(i + 1)})
		n.Addr6 = addr6(cfg.Subnet, uint16(i+1))
		peer := p + "b-" + h
		if err := lan.batch(ctx,
			"link add "+peer+" type veth peer name "+n.Iface+" netns "+n.Name,
			"link set "+peer+" master "+lan.Iface+" up",
		); err != nil {
			return nil, err
		}
		if err := n.batch(ctx,
			"link set lo up",
			"link set "+n.Iface+" up",
			"addr add "+n.Addr4.String()+"/24 dev "+n.Iface,
			"addr add "+n.Addr6.String()+"/64 dev "+n.Iface+" nodad",
			"route add default via "+lan.Addr4.String(),
			"route add ::/0 via "+lan.Addr6.String(),
		); err != nil {
			return nil, err
		}
		if err := n.linkInfo(ctx); err != nil {
			return nil, err
		}
		if h == "srv" {
			b.Server = n
		} else {
			b.hosts[h] = n
		}
	}
	if err := lan.linkInfo(ctx); err != nil {
		return nil, err
	}
	t.Logf("testbed %s: server %s %s/%s on %s, hosts %v", p, b.Server.Name, b.Server.Addr4, b.Server.Addr6, b.Server.Iface, cfg.Hosts)
	return b, nil
}

func (b *Bed) addNS(ctx context.Context, name string) (*NS, error) {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	b.t.Cleanup(func() {
		var out []byte
		var err error
		for try := 0; try < 3; try++ { // a busy mount can fail once
			if out, err = exec.Command("ip", "netns", "del", name).CombinedOutput(); err == nil {
				return
			}
			if _, serr := os.Stat(netnsDir + name); errors.Is(serr, os.ErrNotExist) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		b.t.Logf("testbed cleanup: ip netns del %s: %v: %s (New with this prefix removes it)", name, err, bytes.TrimSpace(out))
	})
	return &NS{Name: name, t: b.t}, nil
}

// batch runs `ip -n NS` commands, one per line of an `ip -batch` script.
func (n *NS) batch(ctx context.Context, cmds ...string) error {
	c := exec.CommandContext(ctx, "ip", "-n", n.Name, "-batch", "-")
	c.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s -batch %q: %w: %s", n.Name, cmds, err, bytes.TrimSpace(out))
	}
	return nil
}

func (n *NS) linkInfo(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "ip", "-n", n.Name, "-j", "link", "show", "dev", n.Iface).Output()
	if err != nil {
		return fmt.Errorf("ip -n %s link show %s: %w", n.Name, n.Iface, err)
	}
	var links []struct {
		Index   int    `json:"ifindex"`
		Address string `json:"address"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return fmt.Errorf("ip -n %s link show %s: unexpected output %q: %v", n.Name, n.Iface, out, err)
	}
	n.Index = links[0].Index
	n.MAC, err = net.ParseMAC(links[0].Address)
	return err
}

// Clean deletes every namespace named "<prefix>-*" and every interface in
// the host namespace named "<prefix>-*" or "<prefix>b-*": leftovers of a
// run that was killed before its cleanup.
func Clean(prefix string) error {
	if prefix == "" {
		return errors.New("testbed clean: empty prefix would match everything")
	}
	var errs []error
	out, err := exec.Command("ip", "-j", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("ip netns list: %w", err)
	}
	var nss []struct{ Name string }
	if len(bytes.TrimSpace(out)) > 0 {
		if err := json.Unmarshal(out, &nss); err != nil {
			return fmt.Errorf("ip netns list: %w: %q", err, out)
		}
	}
	for _, ns := range nss {
		if strings.HasPrefix(ns.Name, prefix+"-") {
			if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", ns.Name, err, bytes.TrimSpace(out)))
			}
		}
	}
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if strings.HasPrefix(i.Name, prefix+"-") || strings.HasPrefix(i.Name, prefix+"b-") {
				if out, err := exec.Command("ip", "link", "del", i.Name).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("ip link del %s: %w: %s", i.Name, err, bytes.TrimSpace(out)))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Do runs f on a new OS thread switched into the namespace and waits for
// it. Sockets, XDP attachments, interface lookups and /proc/thread-self/net
// reads made in f belong to the namespace; sockets keep working from any
// goroutine after f returns. Goroutines f starts run on other threads, in
// the host namespace. The thread is never switched back: it exits with f.
func (n *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		errc <- n.do(f)
	}()
	return <-errc
}

func (n *NS) do(f func() error) (err error) {
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return fmt.Errorf("enter netns %s: %w", n.Name, err)
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("in netns %s: panic: %v", n.Name, r)
		}
	}()
	return f()
}

// Listen opens a listening socket in the namespace (net.Listen semantics,
// e.g. ("tcp", ":8080") for all addresses, IPv4 and IPv6). The kernel caps
// the backlog at the namespace's net.core.somaxconn.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// DialContext connects from the namespace; use it as an
// http.Transport.DialContext to make HTTP requests from a host.
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Command returns a command that runs in the namespace. It uses
// `nsenter --net`, not `ip netns exec`: the command switches only its
// network namespace and keeps the host's mount namespace, so it sees the
// bpffs pins under /sys/fs/bpf (a daemon started here can load pinned maps)
// but /sys/class/net still lists the host's interfaces; tools that use
// netlink or ioctls (ip, nft, sysctl, hping3, curl) see the namespace.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netnsDir + n.Name, "--", name}, args...)...)
}

// netnsDir is where `ip netns add` puts its namespace files.
const netnsDir = "/run/netns/"

// Run runs a command in the namespace (see Command) and returns its
// combined output; the error includes the output. Without a deadline in ctx
// the command gets one minute.
func (n *NS) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return n.RunInput(ctx, "", name, args...)
}

// RunInput is Run with stdin as the command's standard input. Its signature
// is synproxy.Runner's, so tests hand ns.RunInput to code that runs nft and
// sysctl.
func (n *NS) RunInput(ctx context.Context, stdin, name string, args ...string) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	c := n.Command(ctx, name, args...)
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	out, err := c.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("in netns %s: %s %s: %w: %s", n.Name, name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Proc is a background command started with Start.
type Proc struct {
	Cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// Output is what the process wrote to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// Wait waits for the process to exit by itself.
func (p *Proc) Wait() error { <-p.done; return p.err }

// Stop kills the process group (SIGKILL) and waits for it; safe to call
// more than once. Cleanup calls it too.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Start starts a long-running command in the namespace (a python3 HTTP
// server, tcpdump, the daemon) in its own process group; it is killed at
// cleanup if it is still running.
func (n *NS) Start(name string, args ...string) (*Proc, error) {
	c := n.Command(context.Background(), name, args...)
	p := &Proc{Cmd: c, out: &syncBuffer{}, done: make(chan struct{})}
	c.Stdout, c.Stderr = p.out, p.out
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("in netns %s: start %s: %w", n.Name, name, err)
	}
	go func() { p.err = c.Wait(); close(p.done) }()
	n.t.Cleanup(p.Stop)
	return p, nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Sysctl sets sysctls in the namespace, e.g. Sysctl("net.ipv4.tcp_syncookies=0").
func (n *NS) Sysctl(settings ...string) error {
	_, err := n.Run(context.Background(), "sysctl", append([]string{"-qw"}, settings...)...)
	return err
}
