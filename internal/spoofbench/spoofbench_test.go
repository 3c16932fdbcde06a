package spoofbench

import (
	"context"
	"fmt"

	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/internal/synproxy"
	"github.com/synguard/synguard/internal/testbed"
)

const (
	port = 8080
	// floodFor is each phase's flood; clients measure from warmup after
	// its start until settle before its end.
	floodFor = 12 * time.Second
	warmup   = 1500 * time.Millisecond
	settle   = 500 * time.Millisecond
	// attemptEvery: each client starts a new connection this often, each
	// with connTimeout to get the greeting. connTimeout covers one SYN
	// retransmission (Linux retries after 1 s), as a real user waits: a
	// single frame lost in a veth ring both cores are flooding into is
	// the machine's load, not a client shut out, and must not decide a
	// share measured over ~70 attempts.
	attemptEvery = 100 * time.Millisecond
	connTimeout  = 3 * time.Second
	meterTable   = "sgp_meter"
)

// bench is one bed shared by the phases of a run.
type bench struct {
	*testbed.Bed
	old, new, atk *testbed.NS
	svc           netip.AddrPort
}

func newBench(t *testing.T) *bench {
	t.Helper()
	testbed.RequireRoot(t)
	b, err := testbed.New(t, testbed.Config{Prefix: "sgp", Subnet: 50, Hosts: []string{"old", "new", "atk"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := b.Server
	// The overloaded server of the issue: no SYN cookies, a 64-entry SYN
	// and accept backlog, no cached per-destination metrics.
	if err := srv.Sysctl("net.ipv4.tcp_syncookies=0", "net.core.somaxconn=64",
		"net.ipv4.tcp_max_syn_backlog=64", "net.ipv4.tcp_no_metrics_save=1"); err != nil {
		t.Fatal(err)
	}
	// Counters: SYNs to the port entering IP (before everything, including
	// conntrack and SYNPROXY) and SYNs left at the end of the input hook,
	// i.e. delivered to TCP.
	meter := fmt.Sprintf("table inet %[1]s {\n"+
		"\tchain pre { type filter hook prerouting priority -450; policy accept; tcp dport %[2]d tcp flags & (fin|syn|rst|ack) == syn counter; }\n"+
		"\tchain in { type filter hook input priority 300; policy accept; tcp dport %[2]d tcp flags & (fin|syn|rst|ack) == syn counter; }\n}\n",
		meterTable, port)
	c := srv.Command(context.Background(), "nft", "-f", "-")
	c.Stdin = strings.NewReader(meter)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("nft meter: %v: %s", err, out)
	}
	return &bench{Bed: b, old: b.Host("old"), new: b.Host("new"), atk: b.Host("atk"), svc: netip.AddrPortFrom(srv.Addr4, port)}
}

// meter returns the SYNs counted entering IP and reaching TCP.
func (b *bench) meter(t *testing.T) (arrived, toStack uint64) {
	t.Helper()
	read := func(chain string) uint64 {
		out, err := b.Server.Run(context.Background(), "nft", "list", "chain", "inet", meterTable, chain)
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(out))
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "packets" {
				n, err := strconv.ParseUint(f[i+1], 10, 64)
				if err != nil {
					t.Fatalf("meter %s: %q: %v", chain, f[i+1], err)
				}
				return n
			}
		}
		t.Fatalf("meter %s: no counter in %q", chain, out)
		return 0
	}
	return read("pre"), read("in")
}

// listen serves a greeting on the port until the returned stop is called.
// Each phase gets a fresh listener, so half-open requests of an earlier
// phase's flood are gone.
func (b *bench) listen(t *testing.T) (stop func()) {
	t.Helper()
	stop, err := b.Server.ServeGreeting(port)
	if err != nil {
		t.Fatal(err)
	}
	return stop
}

// connect makes one new connection from ns and reports whether the
// listener's greeting arrived within connTimeout: a completed handshake
// alone is not success, since with SYN cookies the client completes it
// against XDP before the listener knows of it.
func connect(ns *testbed.NS, to netip.AddrPort) bool {
	ok, _ := connectWhy(ns, to)
	return ok
}

// connectWhy is connect saying why a connection failed ("dial: ...",
// "read: ...") or how long a successful one took.
func connectWhy(ns *testbed.NS, to netip.AddrPort) (bool, string) {
	start := time.Now()
	ok, why := ns.DialGreeting(to, connTimeout)
	if ok {
		why = time.Since(start).Round(100 * time.Millisecond).String()
	}
	return ok, why
}

// clientResult counts one client's connections in a phase.
type clientResult struct {
	attempts, ok atomic.Int64
	mu           sync.Mutex
	outcomes     map[string]int // failure reasons, success latencies
}

func (c *clientResult) record(ok bool, why string) {
	c.attempts.Add(1)
	if ok {
		c.ok.Add(1)
		why = "ok " + why
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.outcomes == nil {
		c.outcomes = map[string]int{}
	}
	c.outcomes[why]++
}

func (c *clientResult) share() float64 {
	if n := c.attempts.Load(); n > 0 {
		return float64(c.ok.Load()) / float64(n)
	}
	return 0
}

// runClient starts a connection every attemptEvery until stop closes, each
// in its own goroutine (a failing one takes connTimeout), and waits for all.
func runClient(ns *testbed.NS, to netip.AddrPort, stop <-chan struct{}, r *clientResult) {
	var wg sync.WaitGroup
	tick := time.NewTicker(attemptEvery)
	defer tick.Stop()
	for {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.record(connectWhy(ns, to))
		}()
		select {
		case <-stop:
			wg.Wait()
			return
		case <-tick.C:
		}
	}
}

// phaseResult is one row of the table.
type phaseResult struct {
	name             string
	sent             int
	rate             float64
	preFloodOK       bool
	old, new         clientResult
	arrived, toStack uint64
	extra            string
}

// phase hooks: before the pre-flood connection, at flood start, and after
// the flood (returns a line for the log).
type phase struct {
	name    string
	before  func(t *testing.T)
	onFlood func(t *testing.T)
	after   func(t *testing.T) string
}

func (b *bench) run(t *testing.T, p phase) *phaseResult {
	t.Helper()
	res := &phaseResult{name: p.name}
	stopListen := b.listen(t)
	defer stopListen()
	if p.before != nil {
		p.before(t)
	}
	// The old client was a user before the flood.
	res.preFloodOK = connect(b.old, b.svc)
	arrived0, stack0 := b.meter(t)
	k0, _ := b.Server.Counters()

	var (
		floodErr error
		floodWG  sync.WaitGroup
	)
	floodWG.Add(1)
	go func() {
		defer floodWG.Done()
		res.sent, floodErr = b.atk.Flood(context.Background(), testbed.Flood{To: b.svc, Duration: floodFor, RandSource: true})
	}()
	if p.onFlood != nil {
		p.onFlood(t)
	}
	time.Sleep(warmup)
	stop := make(chan struct{})
	var cwg sync.WaitGroup
	for _, c := range []struct {
		ns *testbed.NS
		r  *clientResult
	}{{b.old, &res.old}, {b.new, &res.new}} {
		cwg.Add(1)
		go func() { defer cwg.Done(); runClient(c.ns, b.svc, stop, c.r) }()
	}
	time.Sleep(floodFor - warmup - settle - connTimeout)
	close(stop)
	cwg.Wait()
	floodWG.Wait()
	if floodErr != nil {
		t.Fatalf("%s: flood: %v", p.name, floodErr)
	}
	arrived1, stack1 := b.meter(t)
	k1, _ := b.Server.Counters()
	var kd []string
	for _, k := range []string{"TcpExt.SyncookiesSent", "TcpExt.SyncookiesRecv", "TcpExt.SyncookiesFailed", "TcpExt.ListenDrops",
		"TcpExt.ListenOverflows", "TcpExt.TCPReqQFullDrop", "TcpExt.TCPReqQFullDoCookies", "Tcp.PassiveOpens", "Tcp.AttemptFails", "Tcp.OutRsts"} {
		kd = append(kd, fmt.Sprintf("%s=%d", k, k1[k]-k0[k]))
	}
	t.Logf("%s: server TCP counters: %s", p.name, strings.Join(kd, " "))
	res.arrived, res.toStack = arrived1-arrived0, stack1-stack0
	res.rate = float64(res.sent) / floodFor.Seconds()
	if p.after != nil {
		res.extra = p.after(t)
	}
	t.Logf("%s: old client outcomes %v; new client outcomes %v", p.name, res.old.outcomes, res.new.outcomes)
	t.Logf("%s: flood %d SYNs (%.0f/s); old client %d/%d ok (pre-flood %v), new client %d/%d ok; SYNs entering IP %d, reaching TCP %d; %s",
		p.name, res.sent, res.rate, res.old.ok.Load(), res.old.attempts.Load(), res.preFloodOK,
		res.new.ok.Load(), res.new.attempts.Load(), res.arrived, res.toStack, res.extra)
	return res
}

func table(rs []*phaseResult) string {
	var b strings.Builder
	b.WriteString("| phase | flood SYNs sent (rate) | old client ok | new client ok | SYNs entering IP | SYNs reaching TCP |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %d (%.0f/s) | %d/%d (%.1f%%) | %d/%d (%.1f%%) | %d | %d |\n", r.name, r.sent, r.rate,
			r.old.ok.Load(), r.old.attempts.Load(), 100*r.old.share(), r.new.ok.Load(), r.new.attempts.Load(), 100*r.new.share(),
			r.arrived, r.toStack)
	}
	return b.String()
}

// TestSpoofedFlood measures the overloaded server without synguard, then
// with it (XDP SYN cookies + nftables SYNPROXY), in one run on one bed.
func TestSpoofedFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("floods flat out for 50 s (five phases); skipped with -short")
	}
	b := newBench(t)
	var rs []*phaseResult
	rs = append(rs, b.run(t, phase{name: "without synguard"}))
	for _, m := range []bpf.AttachMode{bpf.AttachNative, bpf.AttachGeneric} {
		rs = append(rs, b.run(t, b.withSynguard(t, m, false, 20)))
	}
	// The fallback where XDP cookies are impossible: kernel cookies on,
	// unverified SYNs all passed (budget 0) or budgeted.
	rs = append(rs, b.run(t, b.withSynguard(t, bpf.AttachNative, true, 0)))
	rs = append(rs, b.run(t, b.withSynguard(t, bpf.AttachNative, true, 20)))
	t.Logf("results:\n%s", table(rs))
	without := rs[0]
	// The shares are figures of this machine and its load (the table
	// above, and the README, report them). What is asserted holds on a
	// slower or busier machine: against the server without synguard,
	// measured in the same run, clients get in and SYNs stay off the
	// stack. Measured on clean CI runs here: 93-100% with XDP cookies,
	// 73-100% on the kernel-cookie fallback, 0-1.4% without synguard.
	above := func(got, base, min, points float64) bool { return got >= min && got >= base+points }
	for _, with := range rs[1:3] {
		if !above(with.old.share(), without.old.share(), 0.8, 0.5) || !above(with.new.share(), without.new.share(), 0.8, 0.5) {
			t.Errorf("%s: old client %.1f%%, new client %.1f%% (without synguard %.1f%%, %.1f%%), want >= 80%% and 50 points above",
				with.name, 100*with.old.share(), 100*with.new.share(), 100*without.old.share(), 100*without.new.share())
		}
		if float64(with.toStack) > 0.1*float64(without.toStack) {
			t.Errorf("%s: %d SYNs reached TCP, without synguard %d: want at least 90%% fewer", with.name, with.toStack, without.toStack)
		}
	}
	// The fallback lets clients in where the server without synguard lets
	// almost none in. With kernel cookies every flood SYN reaches the TCP
	// stack (about a million here), so how many get in depends on the CPU
	// the kernel's cookie code is left.
	if fb := rs[3]; !above(fb.old.share(), without.old.share(), 0.5, 0.4) || !above(fb.new.share(), without.new.share(), 0.5, 0.4) {
		t.Errorf("%s: old client %.1f%%, new client %.1f%% (without synguard %.1f%%, %.1f%%), want >= 50%% and 40 points above",
			fb.name, 100*fb.old.share(), 100*fb.new.share(), 100*without.old.share(), 100*without.new.share())
	}
	// A verified user passes the budget whatever the flood.
	if fb := rs[4]; fb.old.share() < 0.95 {
		t.Errorf("%s: old (verified) client %.1f%%, want >= 95%%", fb.name, 100*fb.old.share())
	}
}

// withSynguard is the phase with the XDP program attached to the server's
// interface in mode; at flood start the service is put under protection
// the way the daemon does it: SYNPROXY rules first (internal/synproxy),
// then bpf Protect with Cookies set when SYNPROXY is in place. fallback
// forces synproxy's kernel-cookies path.
func (b *bench) withSynguard(t *testing.T, mode bpf.AttachMode, fallback bool, budget uint32) phase {
	var (
		d      *bpf.Datapath
		m      *synproxy.Manager
		res    synproxy.Result
		unpeer = func() {}
	)
	name := fmt.Sprintf("with synguard (%s XDP, XDP cookies + SYNPROXY)", mode)
	if fallback {
		name = fmt.Sprintf("with synguard (%s XDP, fallback: kernel cookies, budget %d/s)", mode, budget)
		if budget == 0 {
			name = fmt.Sprintf("with synguard (%s XDP, fallback: kernel cookies, no budget)", mode)
		}
	}
	return phase{
		name: name,
		before: func(t *testing.T) {
			var err error
			d, err = bpf.Load(bpf.Options{MaxSources: 1 << 16, MaxServices: 1024, MaxBans: 1024, MaxAllows: 1024, MaxVerified: 1 << 14})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			if err := b.Server.Do(func() error { _, err := d.Attach(b.Server.Iface, mode); return err }); err != nil {
				t.Fatal(err)
			}
			if mode == bpf.AttachNative {
				detach, err := b.PassXDPOnServerPeer()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(detach)
				unpeer = detach
			}
			sm := synproxy.ModeAuto
			if fallback {
				sm = synproxy.ModeKernelCookies
			}
			m, err = synproxy.New(synproxy.Options{Mode: sm, Run: b.Server.RunInput})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = m.Close(context.Background()) })
		},
		onFlood: func(t *testing.T) {
			var err error
			if res, err = m.Enable(context.Background(), b.svc); err != nil {
				t.Fatal(err)
			}
			p := bpf.Protection{Cookies: res.Path == synproxy.PathSynproxy, Budget: budget}
			if err := d.Protect(b.svc, p); err != nil {
				t.Fatal(err)
			}
		},
		after: func(t *testing.T) string {
			ps, err := d.Protections()
			if err != nil || len(ps) != 1 {
				t.Fatalf("protections %v %v", ps, err)
			}
			nv, err := d.VerifiedSources()
			if err != nil {
				t.Fatal(err)
			}
			c, err := d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			for _, ns := range []*testbed.NS{b.old, b.new} {
				if ok, _ := d.IsVerified(ns.Addr4); !ok && !fallback {
					t.Errorf("%s client %v not verified after the phase", ns.Name, ns.Addr4)
				}
			}
			if err := d.Unprotect(b.svc); err != nil {
				t.Error(err)
			}
			if err := m.Disable(context.Background(), b.svc); err != nil {
				t.Error(err)
			}
			if err := d.Detach(); err != nil {
				t.Error(err)
			}
			unpeer()
			p := ps[0]
			return fmt.Sprintf("path %s; XDP saw %d SYNs: verified %d, admitted %d, dropped %d, cookies sent %d, validated %d; verified sources %d",
				res.Path, c.SYN, p.Verified, p.Admitted, p.Dropped, p.CookiesSent, p.CookiesValidated, nv)
		},
	}
}
