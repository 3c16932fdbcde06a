package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/kstat"
)

// DropOutgoingRST makes the namespace's stack stop sending TCP RSTs
// (nftables, output hook), so that a SYN flood from it leaves half-open
// connections on the server as a raw-socket flood tool would, instead of
// its kernel resetting every SYN-ACK it did not ask for.
func (n *NS) DropOutgoingRST() error {
	_, err := n.Run(context.Background(), "nft",
		"add table inet testbed_norst; "+
			"add chain inet testbed_norst out { type filter hook output priority 0; policy accept; }; "+
			"add rule inet testbed_norst out tcp flags & rst == rst drop")
	return err
}

// ServeHTTP serves h on a listener in the namespace on port, all addresses
// (IPv4 and IPv6), until cleanup. It returns the listening address.
func (n *NS) ServeHTTP(port uint16, h http.Handler) (net.Addr, error) {
	l, err := n.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { _ = srv.Serve(l); close(done) }()
	n.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			_ = srv.Close()
		}
		<-done
	})
	return l.Addr(), nil
}

// StartPythonHTTP starts `python3 -m http.server` serving dir on port (all
// addresses, IPv4 and IPv6) in the namespace, as a separate process like a
// real service, and waits until it accepts connections (a loopback connect,
// which never crosses the bed's veths). It prefers /usr/bin/python3: a
// pyenv shim can take seconds to start on a loaded machine.
func (n *NS) StartPythonHTTP(port uint16, dir string) (*Proc, error) {
	py := "python3"
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		py = "/usr/bin/python3"
	}
	p, err := n.Start(py, "-m", "http.server", "--bind", "::", "--directory", dir, strconv.Itoa(int(port)))
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("::1", strconv.Itoa(int(port)))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := n.DialContext(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("in netns %s: python3 http.server on port %d exited: %v: %s", n.Name, port, p.err, p.Output())
		default:
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("in netns %s: python3 http.server on port %d: not accepting after 10s: %w", n.Name, port, err)
		}
	}
}

// HTTPClient returns a client whose connections are made from the
// namespace, without keep-alive (every request is a new handshake).
func (n *NS) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true},
	}
}

// Ping sends one ICMP echo request to addr from the namespace and waits up
// to two seconds (or ctx) for the reply. (The image has no ping binary;
// this uses a raw ICMP socket from a thread in the namespace.)
func (n *NS) Ping(ctx context.Context, addr netip.Addr) error {
	network, req := "ip4:icmp", []byte{8, 0, 0, 0, 0x53, 0x47, 0, 1, 's', 'g'}
	if addr.Is6() {
		network, req[0] = "ip6:ipv6-icmp", 128 // the kernel fills in the ICMPv6 checksum
	} else {
		cs := ^checksum(req)
		req[2], req[3] = byte(cs>>8), byte(cs)
	}
	var c net.PacketConn
	if err := n.Do(func() (err error) { c, err = net.ListenPacket(network, ""); return err }); err != nil {
		return fmt.Errorf("ping %v from %s: %w", addr, n.Name, err)
	}
	defer c.Close()
	deadline := time.Now().Add(2 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	if _, err := c.WriteTo(req, &net.IPAddr{IP: addr.AsSlice()}); err != nil {
		return fmt.Errorf("ping %v from %s: %w", addr, n.Name, err)
	}
	buf := make([]byte, 1500)
	for {
		m, from, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("ping %v from %s: no reply: %w", addr, n.Name, err)
		}
		reply := byte(0)
		if addr.Is6() {
			reply = 129
		}
		ip, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		if m >= 8 && buf[0] == reply && buf[4] == 0x53 && buf[5] == 0x47 && ip.Unmap() == addr {
			return nil
		}
	}
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// Flood describes a bounded hping3 SYN flood (IPv4 only: hping3 has no
// IPv6).
type Flood struct {
	To netip.AddrPort // target, IPv4
	// Count is the exact number of SYNs to send. hping3 only honours a
	// count when pacing (-i), so counted floods run at hping3's fastest
	// paced rate, well below --flood (20,000 SYNs took 2.9 s here).
	Count int
	// Interval between SYNs of a counted flood; 0 means 1µs (as fast as
	// hping3 paces).
	Interval time.Duration
	// Duration, with Count 0, floods flat out (--flood, which ignores -c)
	// for this long; hping3 is stopped with SIGINT so it reports its count.
	Duration time.Duration
	// RandSource spoofs a random source address per SYN (--rand-source).
	RandSource bool
	// Timeout bounds a counted run; 0 means 30s.
	Timeout time.Duration
}

var hpingSent = regexp.MustCompile(`(\d+) packets transmitted`)

// Flood runs hping3 in the namespace and returns how many SYNs it reports
// sent. Always bounded, by Count (and Timeout) or by Duration.
func (n *NS) Flood(ctx context.Context, f Flood) (int, error) {
	if !f.To.Addr().Is4() || (f.Count <= 0) == (f.Duration <= 0) {
		return 0, fmt.Errorf("flood %v count %d duration %v: want an IPv4 target and either a count or a duration", f.To, f.Count, f.Duration)
	}
	args := []string{"-q", "-S", "-p", strconv.Itoa(int(f.To.Port()))}
	if f.Count > 0 {
		args = append(args, "-c", strconv.Itoa(f.Count), "-i", "u"+strconv.FormatInt(max(f.Interval.Microseconds(), 1), 10))
	} else {
		args = append(args, "--flood")
	}
	if f.RandSource {
		args = append(args, "--rand-source")
	}
	args = append(args, f.To.Addr().String())
	timeout := f.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	if f.Count <= 0 {
		timeout = f.Duration
	}
	// timeout(1) inside the namespace sends SIGINT, on which hping3 prints
	// its statistics; the context is a backstop.
	ctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	targs := append([]string{"-s", "INT", "-k", "2", fmt.Sprintf("%.3f", timeout.Seconds()), "hping3"}, args...)
	out, err := n.Run(ctx, "timeout", targs...)
	m := hpingSent.FindSubmatch(out)
	if m == nil {
		if err == nil {
			err = fmt.Errorf("in netns %s: hping3 %s: no statistics in output %q", n.Name, strings.Join(args, " "), out)
		}
		return 0, err
	}
	// hping3 exits 1 when nothing answered (the usual case for a flood).
	sent, _ := strconv.Atoi(string(m[1]))
	return sent, nil
}

// Counters reads the namespace's /proc/net/snmp and /proc/net/netstat (as
// /proc/thread-self/net/... from a thread in the namespace). Keys are
// "<section>.<name>", e.g. "Tcp.InSegs", "Tcp.PassiveOpens",
// "TcpExt.ListenDrops", "TcpExt.SyncookiesSent".
func (n *NS) Counters() (map[string]int64, error) {
	m := map[string]int64{}
	err := n.Do(func() error {
		for _, f := range []string{"/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"} {
			fd, err := os.Open(f)
			if err != nil {
				return err
			}
			t, err := kstat.ParseTable(fd)
			fd.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
			for sec, kv := range t {
				for k, v := range kv {
					m[sec+"."+k] = int64(v)
				}
			}
		}
		return nil
	})
	return m, err
}

// Standalone implements T for programs (the demo): Cleanup functions run in
// reverse order on Close, Logf goes to Log (stderr when nil).
type Standalone struct {
	Log func(format string, args ...any)

	mu  sync.Mutex
	fns []func()
}

// Helper does nothing; it exists to satisfy T.
func (s *Standalone) Helper() {}

// Logf logs through s.Log.
func (s *Standalone) Logf(format string, args ...any) {
	if s.Log != nil {
		s.Log(format, args...)
		return
	}
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// Cleanup registers f to run on Close.
func (s *Standalone) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fns = append(s.fns, f)
}

// Close runs the registered cleanups, last first. Call it from a defer and
// from a signal handler so an interrupted demo leaves nothing behind.
func (s *Standalone) Close() error {
	s.mu.Lock()
	fns := s.fns
	s.fns = nil
	s.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	return nil
}

// SendFrames writes raw Ethernet frames on the namespace's interface with
// an AF_PACKET socket, cycling through frames until count have been sent
// (count <= 0 sends each once). It is the precise tool where hping3 is not:
// exact counts, IPv6, crafted or malformed frames (built
// with internal/frame). Frames go out as they are: set their destination
// MAC to the receiver's (Server.MAC) so the bridge forwards them there.
func (n *NS) SendFrames(frames [][]byte, count int) (int, error) {
	if len(frames) == 0 {
		return 0, fmt.Errorf("send frames from %s: no frames", n.Name)
	}
	if count <= 0 {
		count = len(frames)
	}
	var fd int
	err := n.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0) // protocol 0: send only
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: n.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("send frames from %s: af_packet socket on %s: %w", n.Name, n.Iface, err)
	}
	defer unix.Close(fd)
	sent := 0
	for sent < count {
		f := frames[sent%len(frames)]
		if _, err := unix.Write(fd, f); err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
				runtime.Gosched()
				continue
			}
			return sent, fmt.Errorf("send frame %d (%d bytes) from %s: %w", sent, len(f), n.Name, err)
		}
		sent++
	}
	return sent, nil
}
