package bpf

// Live tests: the XDP program attached (native and generic) to the server
// interface of a network-namespace test bed (internal/testbed), with real
// TCP stacks, a real hping3 flood and the server's own kernel counters as
// the witness of what got through. Namespaces use the prefix "sgc" and
// 10.200.20.0/24 (native) and 10.200.21.0/24 (generic); pins live under
// /sys/fs/bpf/synguard-test-cl-*.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/classify"
	"github.com/synguard/synguard/internal/testbed"
)

const livePort = 8080

var liveModes = []struct {
	mode   AttachMode
	subnet uint8
}{{AttachNative, 20}, {AttachGeneric, 21}}

type liveBed struct {
	*testbed.Bed
	cli, atk *testbed.NS
	dp       *Datapath
}

// newLiveBed builds a bed with a client and an attacker, a TCP listener on
// the server (connections accepted and held until cleanup), and, unless
// opts.PinDir is set, loads the program and attaches it to the server's
// interface in mode.
func newLiveBed(t *testing.T, mode AttachMode, subnet uint8, opts *Options) *liveBed {
	t.Helper()
	testbed.RequireRoot(t)
	b, err := testbed.New(t, testbed.Config{Prefix: "sgc", Subnet: subnet, Hosts: []string{"cli", "atk"}})
	if err != nil {
		t.Fatal(err)
	}
	lb := &liveBed{Bed: b, cli: b.Host("cli"), atk: b.Host("atk")}
	l, err := b.Server.Listen("tcp", fmt.Sprintf(":%d", livePort))
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	if opts != nil {
		return lb
	}
	lb.dp = loadForTest(t, Options{})
	lb.attach(t, lb.dp, mode)
	return lb
}

func (lb *liveBed) attach(t *testing.T, d *Datapath, mode AttachMode) {
	t.Helper()
	err := lb.Server.Do(func() error {
		used, err := d.Attach(lb.Server.Iface, mode)
		if err == nil && used != mode {
			err = fmt.Errorf("attached in %s mode, asked for %s", used, mode)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (lb *liveBed) srvAddr(v6 bool) netip.AddrPort {
	if v6 {
		return netip.AddrPortFrom(lb.Server.Addr6, livePort)
	}
	return netip.AddrPortFrom(lb.Server.Addr4, livePort)
}

// dial connects from ns to the server's listener.
func dial(ns *testbed.NS, to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return ns.DialContext(ctx, "tcp", to.String())
}

// waitSource polls the per-source entry of a until ok accepts it or two
// seconds pass (frames cross the bridge asynchronously), and returns it.
func waitSource(t *testing.T, d *Datapath, a netip.Addr, ok func(Source) bool) Source {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		s, found, err := d.Source(a)
		if err != nil {
			t.Fatal(err)
		}
		if found && ok(s) || time.Now().After(deadline) {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func serviceOf(t *testing.T, d *Datapath, a netip.AddrPort) Service {
	t.Helper()
	svcs, err := d.Services()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.Addr == a {
			return s
		}
	}
	return Service{Addr: a}
}

func srvCounters(t *testing.T, ns *testbed.NS) map[string]int64 {
	t.Helper()
	c, err := ns.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestLiveHandshake: a real TCP handshake over IPv4 and IPv6 is counted as
// one SYN and one ACK for the client's address and the server's service.
func TestLiveHandshake(t *testing.T) {
	for _, m := range liveModes {
		t.Run(string(m.mode), func(t *testing.T) {
			start := time.Now()
			lb := newLiveBed(t, m.mode, m.subnet, nil)
			for _, v6 := range []bool{false, true} {
				src, to := lb.cli.Addr4, lb.srvAddr(false)
				if v6 {
					src, to = lb.cli.Addr6, lb.srvAddr(true)
				}
				c, err := dial(lb.cli, to, 3*time.Second)
				if err != nil {
					t.Fatalf("dial %v: %v", to, err)
				}
				s := waitSource(t, lb.dp, src, func(s Source) bool { return s.ACK >= 1 })
				if s.SYN != 1 || s.ACK != 1 || s.RST != 0 {
					t.Errorf("source %v after one handshake: SYN %d ACK %d RST %d, want 1 1 0", src, s.SYN, s.ACK, s.RST)
				}
				// Order is checked on the kernel's raw timestamps: Source
				// converts each to wall time separately, so equal kernel
				// times (same coarse-clock tick) can come out microseconds
				// apart in either order.
				var raw synguardSourceStats
				if err := lb.dp.objs.Sources.Lookup(addrKey(src), &raw); err != nil || raw.FirstSeen == 0 || raw.LastSeen < raw.FirstSeen {
					t.Errorf("source %v: kernel first seen %d, last seen %d: %v", src, raw.FirstSeen, raw.LastSeen, err)
				}
				if d := time.Since(s.FirstSeen); d < -time.Second || d > time.Minute {
					t.Errorf("source %v: first seen %v, %v ago", src, s.FirstSeen, d)
				}
				if svc := serviceOf(t, lb.dp, to); svc.SYN != 1 || svc.ACK != 1 {
					t.Errorf("service %v: SYN %d ACK %d, want 1 1", to, svc.SYN, svc.ACK)
				}
				c.Close()
			}
			t.Logf("%s: %v", m.mode, time.Since(start))
		})
	}
}

// TestLiveFlood: a bounded hping3 SYN flood from an attacker whose stack's
// RSTs are dropped is counted exactly in the attacker's per-source entry.
func TestLiveFlood(t *testing.T) {
	const n = 1000
	for _, m := range liveModes {
		t.Run(string(m.mode), func(t *testing.T) {
			start := time.Now()
			lb := newLiveBed(t, m.mode, m.subnet, nil)
			if err := lb.atk.DropOutgoingRST(); err != nil {
				t.Fatal(err)
			}
			sent, err := lb.atk.Flood(context.Background(), testbed.Flood{To: lb.srvAddr(false), Count: n})
			if err != nil || sent != n {
				t.Fatalf("flood: sent %d of %d: %v", sent, n, err)
			}
			s := waitSource(t, lb.dp, lb.atk.Addr4, func(s Source) bool { return s.SYN >= n })
			if s.SYN != n || s.ACK != 0 || s.RST != 0 {
				t.Errorf("attacker %v: SYN %d ACK %d RST %d, want %d 0 0", lb.atk.Addr4, s.SYN, s.ACK, s.RST, n)
			}
			if svc := serviceOf(t, lb.dp, lb.srvAddr(false)); svc.SYN != n || svc.ACK != 0 {
				t.Errorf("service: SYN %d ACK %d, want %d 0", svc.SYN, svc.ACK, n)
			}
			t.Logf("%s: %v", m.mode, time.Since(start))
		})
	}
}

// TestLiveBan: in enforce mode a banned source's TCP never reaches the
// server's stack (its TCP InSegs do not move), the ban counts the drops,
// non-TCP from it still passes, and other sources are untouched.
func TestLiveBan(t *testing.T) {
	const n = 500
	for _, m := range liveModes {
		t.Run(string(m.mode), func(t *testing.T) {
			start := time.Now()
			lb := newLiveBed(t, m.mode, m.subnet, nil)
			if err := lb.atk.DropOutgoingRST(); err != nil {
				t.Fatal(err)
			}
			if err := lb.dp.SetMode(ModeEnforce); err != nil {
				t.Fatal(err)
			}
			banned := netip.PrefixFrom(lb.atk.Addr4, 32)
			if err := lb.dp.Block(banned, time.Minute); err != nil {
				t.Fatal(err)
			}
			before := srvCounters(t, lb.Server)
			cBefore := counters(t, lb.dp)
			sent, err := lb.atk.Flood(context.Background(), testbed.Flood{To: lb.srvAddr(false), Count: n})
			if err != nil || sent != n {
				t.Fatalf("flood: sent %d of %d: %v", sent, n, err)
			}
			if _, err := dial(lb.atk, lb.srvAddr(false), 300*time.Millisecond); err == nil {
				t.Error("banned attacker completed a TCP handshake")
			}
			after := srvCounters(t, lb.Server)
			delta := counters(t, lb.dp).sub(cBefore)
			for _, k := range []string{"Tcp.InSegs", "Tcp.PassiveOpens", "TcpExt.ListenDrops", "TcpExt.SyncookiesSent"} {
				if d := after[k] - before[k]; d != 0 {
					t.Errorf("server %s grew by %d while the only TCP sender was banned", k, d)
				}
			}
			if delta.Dropped != n+1 { // the flood and the dial's SYN
				t.Errorf("dropped %d, want %d", delta.Dropped, n+1)
			}
			bans, err := lb.dp.Bans()
			if err != nil || len(bans) != 1 || bans[0].Prefix != banned || bans[0].Dropped != n+1 {
				t.Errorf("bans %+v (%v), want %v with %d dropped", bans, err, banned, n+1)
			}
			if s, found, _ := lb.dp.Source(lb.atk.Addr4); found && s.SYN != 0 {
				t.Errorf("dropped SYNs were counted: %+v", s)
			}
			if err := lb.atk.Ping(context.Background(), lb.Server.Addr4); err != nil {
				t.Errorf("non-TCP from a banned source must pass: %v", err)
			}
			c, err := dial(lb.cli, lb.srvAddr(false), 3*time.Second)
			if err != nil {
				t.Errorf("unbanned client: %v", err)
			} else {
				c.Close()
			}
			t.Logf("%s: %v", m.mode, time.Since(start))
		})
	}
}

// TestLiveBanExpiry: a ban with a short TTL stops dropping by itself, in the
// kernel, when it expires.
func TestLiveBanExpiry(t *testing.T) {
	const ttl = 700 * time.Millisecond
	for _, m := range liveModes {
		t.Run(string(m.mode), func(t *testing.T) {
			start := time.Now()
			lb := newLiveBed(t, m.mode, m.subnet, nil)
			if err := lb.dp.SetMode(ModeEnforce); err != nil {
				t.Fatal(err)
			}
			if err := lb.dp.Block(netip.PrefixFrom(lb.cli.Addr4, 32), ttl); err != nil {
				t.Fatal(err)
			}
			bans, err := lb.dp.Bans()
			if err != nil || len(bans) != 1 {
				t.Fatalf("bans %+v: %v", bans, err)
			}
			until := bans[0].Until
			if d := time.Until(until); d <= 0 || d > ttl {
				t.Errorf("ban until %v: %v from now, want within %v", until, d, ttl)
			}
			if _, err := dial(lb.cli, lb.srvAddr(false), 200*time.Millisecond); err == nil {
				t.Fatal("banned client completed a handshake")
			}
			time.Sleep(time.Until(until) + 50*time.Millisecond)
			c, err := dial(lb.cli, lb.srvAddr(false), 2*time.Second)
			if err != nil {
				t.Fatalf("after expiry at %v: %v", until, err)
			}
			c.Close()
			if s := waitSource(t, lb.dp, lb.cli.Addr4, func(s Source) bool { return s.ACK >= 1 }); s.SYN != 1 || s.ACK < 1 {
				t.Errorf("after expiry: source %+v, want the handshake counted", s)
			}
			if bans, err := lb.dp.Bans(); err != nil || len(bans) != 0 {
				t.Errorf("expired ban still listed: %+v %v", bans, err)
			}
			if d := counters(t, lb.dp); d.Dropped != 1 {
				t.Errorf("dropped %d, want 1 (the SYN before expiry)", d.Dropped)
			}
			t.Logf("%s: %v", m.mode, time.Since(start))
		})
	}
}

// Environment of the child process of TestLivePinnedRestart.
const (
	envChildPinDir = "SYNGUARD_TEST_CL_PINDIR"
	envChildNS     = "SYNGUARD_TEST_CL_NETNS"
	envChildIface  = "SYNGUARD_TEST_CL_IFACE"
	envChildMode   = "SYNGUARD_TEST_CL_MODE"
	envChildBlock  = "SYNGUARD_TEST_CL_BLOCK"
)

// TestLivePinnedChild is the first "daemon run" of TestLivePinnedRestart:
// it loads with a PinDir, attaches, enforces a ban and exits without
// detaching. It does nothing unless started by that test.
func TestLivePinnedChild(t *testing.T) {
	dir := os.Getenv(envChildPinDir)
	if dir == "" {
		t.Skip("child of TestLivePinnedRestart")
	}
	d, err := Load(testOptions(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	srv := &testbed.NS{Name: os.Getenv(envChildNS)}
	err = srv.Do(func() error {
		_, err := d.Attach(os.Getenv(envChildIface), AttachMode(os.Getenv(envChildMode)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SetMode(ModeEnforce); err != nil {
		t.Fatal(err)
	}
	if err := d.Block(netip.MustParsePrefix(os.Getenv(envChildBlock)), time.Minute); err != nil {
		t.Fatal(err)
	}
	bans, err := d.Bans()
	if err != nil || len(bans) != 1 {
		t.Fatalf("bans %+v: %v", bans, err)
	}
	fmt.Printf("UNTIL %d\n", bans[0].Until.UnixNano())
}

// TestLivePinnedRestart: bans pinned by one process survive it. A child
// process (this test binary) loads with a PinDir, attaches, bans the
// attacker and exits; the program keeps dropping with nobody running; then
// this process loads the same PinDir and sees the ban with the same expiry,
// the attachment, and the program (now its own, swapped into the pinned
// link) still dropping.
func TestLivePinnedRestart(t *testing.T) {
	for _, m := range liveModes {
		t.Run(string(m.mode), func(t *testing.T) {
			start := time.Now()
			lb := newLiveBed(t, m.mode, m.subnet, &Options{})
			dir := livePinDir(t, string(m.mode))
			if err := lb.atk.DropOutgoingRST(); err != nil {
				t.Fatal(err)
			}
			banned := netip.PrefixFrom(lb.atk.Addr4, 32)

			cmd := exec.Command(os.Args[0], "-test.run=^TestLivePinnedChild$", "-test.count=1")
			cmd.Env = append(os.Environ(),
				envChildPinDir+"="+dir, envChildNS+"="+lb.Server.Name, envChildIface+"="+lb.Server.Iface,
				envChildMode+"="+string(m.mode), envChildBlock+"="+banned.String())
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			var until time.Time
			sc := bufio.NewScanner(strings.NewReader(string(out)))
			for sc.Scan() {
				if v, ok := strings.CutPrefix(sc.Text(), "UNTIL "); ok {
					ns, _ := strconv.ParseInt(v, 10, 64)
					until = time.Unix(0, ns)
				}
			}
			if until.IsZero() {
				t.Fatalf("child printed no expiry:\n%s", out)
			}

			// Nobody runs now: the pinned link keeps the program attached.
			const n = 200
			before := srvCounters(t, lb.Server)
			if sent, err := lb.atk.Flood(context.Background(), testbed.Flood{To: lb.srvAddr(false), Count: n}); err != nil || sent != n {
				t.Fatalf("flood while no loader runs: sent %d: %v", sent, err)
			}
			if d := srvCounters(t, lb.Server)["Tcp.InSegs"] - before["Tcp.InSegs"]; d != 0 {
				t.Errorf("with the loader gone, the server received %d segments from the banned source", d)
			}

			d, err := Load(testOptions(dir))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			iface, mode, ok := d.Attached()
			if !ok || mode != m.mode {
				t.Errorf("after restart: attached %q %q %v, want %s", iface, mode, ok, m.mode)
			}
			if mo, err := d.Mode(); err != nil || mo != ModeEnforce {
				t.Errorf("mode after restart %v %v, want enforce", mo, err)
			}
			bans, err := d.Bans()
			if err != nil || len(bans) != 1 || bans[0].Prefix != banned {
				t.Fatalf("bans after restart %+v: %v", bans, err)
			}
			// Each process converts the same kernel expiry to wall time with
			// its own clock reads; allow for a preempted conversion.
			if diff := bans[0].Until.Sub(until).Abs(); diff > 50*time.Millisecond {
				t.Errorf("ban expiry moved by %v across the restart: %v -> %v", diff, until, bans[0].Until)
			}
			if bans[0].Dropped != n {
				t.Errorf("ban dropped %d while no loader ran, want %d", bans[0].Dropped, n)
			}

			before = srvCounters(t, lb.Server)
			if sent, err := lb.atk.Flood(context.Background(), testbed.Flood{To: lb.srvAddr(false), Count: n}); err != nil || sent != n {
				t.Fatalf("flood after restart: sent %d: %v", sent, err)
			}
			if d := srvCounters(t, lb.Server)["Tcp.InSegs"] - before["Tcp.InSegs"]; d != 0 {
				t.Errorf("after restart the server received %d segments from the banned source", d)
			}
			if c := counters(t, d); c.Dropped != 2*n {
				t.Errorf("dropped %d in total, want %d", c.Dropped, 2*n)
			}
			t.Logf("%s: %v", m.mode, time.Since(start))
		})
	}
}

// livePinDir returns /sys/fs/bpf/synguard-test-cl-<name>-<pid>, removing
// leftovers of killed runs first and everything (link included) at cleanup.
func livePinDir(t *testing.T, name string) string {
	t.Helper()
	old, _ := filepath.Glob("/sys/fs/bpf/synguard-test-cl-*")
	for _, o := range old {
		if err := Remove(o); err != nil {
			t.Logf("remove leftover %s: %v", o, err)
		}
	}
	dir := fmt.Sprintf("/sys/fs/bpf/synguard-test-cl-%s-%d", name, os.Getpid())
	t.Cleanup(func() {
		if err := Remove(dir); err != nil {
			t.Errorf("remove pins: %v", err)
		}
	})
	return dir
}

// TestLiveClassify sends the fuzz seed frames (except VLAN-tagged ones: the
// bridge moves tags into skb metadata before XDP sees them) from the client
// namespace over the bridge to the server, and requires the attached
// program to count them as the Go classifier says: the same totals per TCP
// kind, malformed and fragment, and the same per-source entries. It checks
// that native and generic attachment hand the program the same bytes as
// BPF_PROG_RUN. ARP and IPv6 neighbour discovery of the bed add NonIP and
// NonTCP frames, so those two are lower bounds.
func TestLiveClassify(t *testing.T) {
	const rounds = 10
	for _, m := range liveModes {
		t.Run(string(m.mode), func(t *testing.T) {
			start := time.Now()
			lb := newLiveBed(t, m.mode, m.subnet, nil)
			var (
				frames [][]byte
				want   [classify.NumKinds]uint64
				srcs   = map[netip.Addr]Source{}
			)
			for _, f := range fuzzSeeds() {
				if len(f) < 14 || len(f) > 1514 || isVLAN(f) {
					continue
				}
				f = bytes.Clone(f)
				copy(f[0:6], lb.Server.MAC)
				copy(f[6:12], lb.cli.MAC)
				frames = append(frames, f)
				r := classify.Classify(f)
				want[r.Kind] += rounds
				if r.Counted() {
					s := srcs[r.Src]
					s.Addr = r.Src
					switch r.Kind {
					case classify.SYN:
						s.SYN += rounds
					case classify.ACK:
						s.ACK += rounds
					case classify.RST:
						s.RST += rounds
					}
					srcs[r.Src] = s
				}
			}
			// One round at a time, each seen by the program before the
			// next: a burst larger than the veth ring (256 frames in
			// native mode) or the backlog loses frames before XDP on a
			// loaded machine, and the counts below are exact.
			before := counters(t, lb.dp)
			var got Counters
			for r := 1; r <= rounds; r++ {
				if n, err := lb.cli.SendFrames(frames, len(frames)); err != nil {
					t.Fatalf("round %d: sent %d: %v", r, n, err)
				}
				for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
					got = counters(t, lb.dp).sub(before)
					if got.Frames >= uint64(r*len(frames)) {
						break
					}
				}
			}
			exact := []struct {
				name      string
				got, want uint64
			}{
				{"SYN", got.SYN, want[classify.SYN]}, {"SYNACK", got.SYNACK, want[classify.SYNACK]},
				{"ACK", got.ACK, want[classify.ACK]}, {"RST", got.RST, want[classify.RST]},
				{"TCPOther", got.TCPOther, want[classify.TCPOther]}, {"NotParsed", got.NotParsed, want[classify.Malformed]},
				{"Fragments", got.Fragments, want[classify.Fragment]},
			}
			for _, e := range exact {
				if e.got != e.want {
					t.Errorf("%s: kernel counted %d, classify says %d", e.name, e.got, e.want)
				}
			}
			if got.NonIP < want[classify.NonIP] || got.NonTCP < want[classify.NonTCP] {
				t.Errorf("NonIP %d NonTCP %d, classify says at least %d and %d", got.NonIP, got.NonTCP, want[classify.NonIP], want[classify.NonTCP])
			}
			kernel, err := lb.dp.Sources()
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range kernel {
				w := srcs[s.Addr]
				if s.SYN != w.SYN || s.ACK != w.ACK || s.RST != w.RST {
					t.Errorf("source %v: kernel SYN %d ACK %d RST %d, classify %d %d %d", s.Addr, s.SYN, s.ACK, s.RST, w.SYN, w.ACK, w.RST)
				}
				delete(srcs, s.Addr)
			}
			for a, w := range srcs {
				t.Errorf("source %v: no kernel entry, classify counts %+v", a, w)
			}
			t.Logf("%s: %d frames (%d distinct), %v", m.mode, rounds*len(frames), len(frames), time.Since(start))
		})
	}
}

func isVLAN(f []byte) bool {
	et := uint16(f[12])<<8 | uint16(f[13])
	return et == 0x8100 || et == 0x88a8
}

// kernelTick is one jiffy, the ban cache's time unit: the resolution of
// CLOCK_MONOTONIC_COARSE is 1/HZ (4 ms at HZ=250).
func kernelTick(t *testing.T) time.Duration {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil || ts.Nano() <= 0 {
		t.Fatalf("clock_getres(CLOCK_MONOTONIC_COARSE): %v %v", ts, err)
	}
	return time.Duration(ts.Nano())
}

// TestLiveBanCache: on the real receive path, a banned source's flood is
// dropped by the per-CPU ban cache ("Ban cache" in synguard.c) while its
// per-source entry is deleted every millisecond. The cache trusts a slot
// for one tick only, so each CPU sends its first frame of a tick down the
// full path (which refills the slot and recreates the entry); every other
// frame must be answered from the cache. The bound is therefore counted in
// ticks of the flood's own duration, not as a share of frames: it holds at
// any flood rate and on any machine speed.
func TestLiveBanCache(t *testing.T) {
	const n = 5000
	tick := kernelTick(t)
	for _, m := range liveModes {
		t.Run(string(m.mode), func(t *testing.T) {
			lb := newLiveBed(t, m.mode, m.subnet, nil)
			if err := lb.atk.DropOutgoingRST(); err != nil {
				t.Fatal(err)
			}
			if err := lb.dp.SetMode(ModeEnforce); err != nil {
				t.Fatal(err)
			}
			if err := lb.dp.Block(netip.PrefixFrom(lb.atk.Addr4, 32), time.Minute); err != nil {
				t.Fatal(err)
			}
			key := addrKey(lb.atk.Addr4)
			before, framesBefore := counters(t, lb.dp), perCPUFrames(t, lb.dp)
			done := make(chan struct{})
			deleted := make(chan int)
			go func() {
				found := 0
				for {
					select {
					case <-done:
						deleted <- found
						return
					case <-time.After(time.Millisecond):
					}
					if lb.dp.objs.Sources.Delete(key) == nil {
						found++
					}
				}
			}()
			start := time.Now()
			sent, err := lb.atk.Flood(context.Background(), testbed.Flood{To: lb.srvAddr(false), Count: n})
			// Frames still queued on the receive path when hping3 exits
			// are processed within a NAPI poll; two ticks cover them.
			time.Sleep(2 * tick)
			elapsed := time.Since(start)
			close(done)
			recreated := <-deleted
			if err != nil || sent != n {
				t.Fatalf("flood: sent %d of %d: %v", sent, n, err)
			}
			delta := counters(t, lb.dp).sub(before)
			if delta.Dropped != n {
				t.Fatalf("dropped %d of the %d SYNs from a banned source", delta.Dropped, n)
			}
			// Only the CPUs that ran the program for this flood send a
			// first frame of a tick down the full path.
			var cpus uint64
			for i, f := range perCPUFrames(t, lb.dp) {
				if f > framesBefore[i] {
					cpus++
				}
			}
			ticks := uint64(elapsed/tick) + 2
			if cpus*ticks >= n {
				t.Fatalf("%d frames on %d CPUs over %d ticks: too slow a flood for the bound to prove anything", n, cpus, ticks)
			}
			slow := delta.Dropped - delta.BanCacheDrops
			if delta.BanCacheDrops > delta.Dropped || slow > cpus*ticks {
				t.Errorf("%d of %d drops took the full path in %v (%d ticks of %v on %d CPUs): want at most one per CPU per tick, %d",
					slow, n, elapsed, ticks, tick, cpus, cpus*ticks)
			}
			t.Logf("%s: %d of %d drops from the ban cache in %v; the per-source entry was recreated and deleted %d times",
				m.mode, delta.BanCacheDrops, n, elapsed, recreated)
		})
	}
}

// perCPUFrames reads the frames counter of every CPU.
func perCPUFrames(t *testing.T, d *Datapath) []uint64 {
	t.Helper()
	var perCPU []synguardGlobalCounters
	if err := d.objs.Counters.Lookup(uint32(0), &perCPU); err != nil {
		t.Fatal(err)
	}
	out := make([]uint64, len(perCPU))
	for i, c := range perCPU {
		out[i] = c.Frames
	}
	return out
}
