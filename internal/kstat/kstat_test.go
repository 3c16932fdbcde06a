package kstat

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/detector"
)

func TestCountersFromFixtures(t *testing.T) {
	k, err := Reader{Proc: "testdata/fixture"}.Counters()
	if err != nil {
		t.Fatal(err)
	}
	want := detector.KernelCounters{ListenOverflows: 1240, ListenDrops: 1302, ReqQFullDrop: 7,
		SyncookiesSent: 48213, SyncookiesRecv: 3120, SyncookiesFailed: 95, PassiveOpens: 123456}
	if k.ListenOverflows != want.ListenOverflows || k.ListenDrops != want.ListenDrops || k.ReqQFullDrop != want.ReqQFullDrop ||
		k.SyncookiesSent != want.SyncookiesSent || k.SyncookiesRecv != want.SyncookiesRecv ||
		k.SyncookiesFailed != want.SyncookiesFailed || k.PassiveOpens != want.PassiveOpens {
		t.Errorf("counters %+v, want %+v", k, want)
	}
}

func TestParseErrorsNameTheInput(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	bad, _ := os.ReadFile("testdata/truncated-netstat")
	os.WriteFile(filepath.Join(dir, "net/netstat"), bad, 0o644)
	_, err := Reader{Proc: dir}.Counters()
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "net/netstat")) || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("truncated netstat: %v, want an error naming the file and line", err)
	}
	_, err = Reader{Proc: filepath.Join(dir, "missing")}.Counters()
	if err == nil || !strings.Contains(err.Error(), "missing/net/netstat") {
		t.Errorf("missing file: %v", err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: sock_diag of all sockets and a private network namespace")
	}
}

// The host's own counters and listeners can be read.
func TestLiveHost(t *testing.T) {
	if _, err := os.Stat("/proc/net/netstat"); err != nil {
		t.Skip("no /proc/net/netstat")
	}
	if _, err := Host().Counters(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ls, err := Listeners()
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddrPort(ln.Addr().String())
	found := false
	for _, l := range ls {
		found = found || (l.Addr == want && l.MaxBacklog > 0)
	}
	if !found {
		t.Errorf("listener %v not among %v", want, ls)
	}
}

// In a private network namespace (the thread's, torn down with it), a
// listener with backlog 1 is flooded with connections nobody accepts: the
// kernel's counters and the accept queue must show it.
func TestLiveNamespaceOverflow(t *testing.T) {
	requireRoot(t)
	type result struct {
		before, after detector.KernelCounters
		listeners     []detector.Listener
		peers         []netip.Addr
		port          uint16
		err           error
	}
	done := make(chan result)
	go func() {
		// Never unlocked: the thread, and its namespace, die with the
		// goroutine.
		runtime.LockOSThread()
		var r result
		defer func() { done <- r }()
		if r.err = unix.Unshare(unix.CLONE_NEWNET); r.err != nil {
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			r.err = err
			return
		}
		if r.err = netlink.LinkSetUp(lo); r.err != nil {
			return
		}
		if r.before, r.err = ThreadSelf().Counters(); r.err != nil {
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			r.err = err
			return
		}
		defer unix.Close(fd)
		if r.err = unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); r.err != nil {
			return
		}
		if r.err = unix.Listen(fd, 1); r.err != nil {
			return
		}
		sa, _ := unix.Getsockname(fd)
		r.port = uint16(sa.(*unix.SockaddrInet4).Port)
		var conns []net.Conn
		for range 6 {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), r.port).String(), 300*time.Millisecond)
			if err == nil {
				conns = append(conns, c)
			}
		}
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		if r.after, r.err = ThreadSelf().Read(); r.err != nil {
			return
		}
		r.listeners = r.after.Listeners
		r.peers, r.err = EstablishedPeers([]uint16{r.port})
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.after.ListenDrops <= r.before.ListenDrops || r.after.ListenOverflows <= r.before.ListenOverflows {
		t.Errorf("no drops counted: before %+v after %+v", r.before, r.after)
	}
	if len(r.listeners) != 1 || r.listeners[0].Addr.Port() != r.port || r.listeners[0].MaxBacklog != 1 || r.listeners[0].Backlog < 1 {
		t.Errorf("listeners %+v, want one on port %d with backlog 1 and a full queue", r.listeners, r.port)
	}
	if len(r.peers) != 1 || r.peers[0] != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("established peers %v, want 127.0.0.1", r.peers)
	}
}
