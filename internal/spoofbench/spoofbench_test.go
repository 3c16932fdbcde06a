package spoofbench

import (
	"context"
	"fmt"
	"io"

	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/testbed"
)

const (
	port = 8080
	// floodFor is each phase's flood; clients measure from warmup after
	// its start until settle before its end.
	floodFor = 10 * time.Second
	warmup   = 1500 * time.Millisecond
	settle   = 500 * time.Millisecond
	// attemptEvery: each client starts a new connection this often, each
	// with connTimeout to get the greeting.
	attemptEvery = 100 * time.Millisecond
	connTimeout  = time.Second
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
	l, err := b.Server.Listen("tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "ok\n")
			c.Close()
		}
	}()
	return func() { l.Close(); <-done }
}

// connect makes one new connection from ns and reports whether the
// listener's greeting arrived within connTimeout: a completed handshake
// alone is not success, since with SYN cookies the client completes it
// against XDP before the listener knows of it.
func connect(ns *testbed.NS, to netip.AddrPort) bool {
	deadline := time.Now().Add(connTimeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp4", to.String())
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	buf := make([]byte, 3)
	_, err = io.ReadFull(c, buf)
	return err == nil && string(buf) == "ok\n"
}

// clientResult counts one client's connections in a phase.
type clientResult struct{ attempts, ok atomic.Int64 }

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
			ok := connect(ns, to)
			r.attempts.Add(1)
			if ok {
				r.ok.Add(1)
			}
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
	floodSeconds     float64
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

	var (
		floodErr error
		floodWG  sync.WaitGroup
	)
	floodWG.Add(1)
	start := time.Now()
	go func() {
		defer floodWG.Done()
		res.sent, floodErr = b.atk.Flood(context.Background(), testbed.Flood{To: b.svc, Duration: floodFor, RandSource: true})
		res.floodSeconds = time.Since(start).Seconds()
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
	res.arrived, res.toStack = arrived1-arrived0, stack1-stack0
	res.rate = float64(res.sent) / floodFor.Seconds()
	if p.after != nil {
		res.extra = p.after(t)
	}
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
// with it, in one run on one bed.
func TestSpoofedFlood(t *testing.T) {
	b := newBench(t)
	var rs []*phaseResult
	without := b.run(t, phase{name: "without synguard"})
	rs = append(rs, without)
	t.Logf("results:\n%s", table(rs))
}
