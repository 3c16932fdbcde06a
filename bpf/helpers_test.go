package bpf

// Shared helpers for every test in package bpf (also used by fuzz_test.go
// and live_test.go): keep their names and behaviour stable.

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// requireRoot skips tb unless it runs as root: loading BPF programs needs
// CAP_BPF+CAP_NET_ADMIN and unprivileged BPF is disabled on our machines.
// CI runs as root, so these tests run there.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: loads the XDP program (CI runs as root)")
	}
}

// Map sizes loadForTest uses for zero Options fields: small, so loading is
// fast and cheap (the production default preallocates 151 MB of sources).
const (
	testMaxSources  = 16384
	testMaxServices = 4096
	testMaxBans     = 1024
	testMaxAllows   = 1024
)

// loadForTest skips without root, then loads an unpinned Datapath (unless
// opts.PinDir is set) with test-sized maps for zero size fields, and closes
// it when the test ends. Every test gets its own maps, so counters start
// at zero.
func loadForTest(tb testing.TB, opts Options) *Datapath {
	tb.Helper()
	requireRoot(tb)
	if opts.MaxSources == 0 {
		opts.MaxSources = testMaxSources
	}
	if opts.MaxServices == 0 {
		opts.MaxServices = testMaxServices
	}
	if opts.MaxBans == 0 {
		opts.MaxBans = testMaxBans
	}
	if opts.MaxAllows == 0 {
		opts.MaxAllows = testMaxAllows
	}
	d, err := Load(opts)
	if err != nil {
		tb.Fatalf("load: %v", err)
	}
	tb.Cleanup(func() {
		if err := d.Close(); err != nil {
			tb.Errorf("close datapath: %v", err)
		}
	})
	return d
}

// xdpAction is an XDP program's return code.
type xdpAction uint32

// XDP return codes (linux/bpf.h enum xdp_action).
const (
	xdpAborted xdpAction = 0
	xdpDrop    xdpAction = 1
	xdpPass    xdpAction = 2
	xdpTX      xdpAction = 3
)

func (a xdpAction) String() string {
	switch a {
	case xdpAborted:
		return "XDP_ABORTED"
	case xdpDrop:
		return "XDP_DROP"
	case xdpPass:
		return "XDP_PASS"
	case xdpTX:
		return "XDP_TX"
	}
	return fmt.Sprintf("xdp_action(%d)", uint32(a))
}

// program returns the loaded XDP program, for BPF_PROG_RUN and benchmarks.
func (d *Datapath) program() *ebpf.Program { return d.objs.SynguardXdp }

// runFrame runs one frame through the XDP program with BPF_PROG_RUN and
// returns the action. The kernel refuses frames shorter than 14 bytes
// (EINVAL); use tryRunFrame to see that error.
func runFrame(tb testing.TB, d *Datapath, frame []byte) xdpAction {
	tb.Helper()
	a, err := tryRunFrame(d, frame)
	if err != nil {
		tb.Fatalf("BPF_PROG_RUN on %d-byte frame: %v", len(frame), err)
	}
	return a
}

// tryRunFrame is runFrame returning the error.
func tryRunFrame(d *Datapath, frame []byte) (xdpAction, error) {
	// Copy: the kernel may write the (possibly modified) frame back.
	data := append([]byte(nil), frame...)
	ret, err := d.program().Run(&ebpf.RunOptions{Data: data})
	return xdpAction(ret), err
}

// runCounted runs frame and returns the action and how the global counters
// moved, which is how tests (and the fuzz test) read back the kernel's
// classification of the frame.
func runCounted(tb testing.TB, d *Datapath, frame []byte) (xdpAction, Counters) {
	tb.Helper()
	before := counters(tb, d)
	a := runFrame(tb, d, frame)
	return a, counters(tb, d).sub(before)
}

// counters reads the global counters or fails tb.
func counters(tb testing.TB, d *Datapath) Counters {
	tb.Helper()
	c, err := d.Counters()
	if err != nil {
		tb.Fatalf("counters: %v", err)
	}
	return c
}

// sub returns c - o field by field.
func (c Counters) sub(o Counters) Counters {
	return Counters{
		Frames: c.Frames - o.Frames, NonIP: c.NonIP - o.NonIP, NonTCP: c.NonTCP - o.NonTCP,
		Fragments: c.Fragments - o.Fragments, NotParsed: c.NotParsed - o.NotParsed,
		TCP: c.TCP - o.TCP, SYN: c.SYN - o.SYN, SYNACK: c.SYNACK - o.SYNACK, ACK: c.ACK - o.ACK,
		RST: c.RST - o.RST, TCPOther: c.TCPOther - o.TCPOther, Dropped: c.Dropped - o.Dropped,
		WouldDrop: c.WouldDrop - o.WouldDrop, Allowlisted: c.Allowlisted - o.Allowlisted,
		SuspectsLost: c.SuspectsLost - o.SuspectsLost, BanCacheDrops: c.BanCacheDrops - o.BanCacheDrops,
	}
}

// kindOf names the one kind counter a single-frame delta incremented
// ("SYN", "NotParsed", ...), or describes the delta when it is not exactly
// one frame of exactly one kind.
func kindOf(delta Counters) string {
	kinds := []struct {
		name string
		n    uint64
	}{
		{"NonIP", delta.NonIP}, {"NonTCP", delta.NonTCP}, {"Fragment", delta.Fragments},
		{"NotParsed", delta.NotParsed}, {"SYN", delta.SYN}, {"SYNACK", delta.SYNACK},
		{"ACK", delta.ACK}, {"RST", delta.RST}, {"TCPOther", delta.TCPOther},
	}
	var hit []string
	for _, k := range kinds {
		if k.n != 0 {
			hit = append(hit, fmt.Sprintf("%s=%d", k.name, k.n))
		}
	}
	if delta.Frames == 1 && len(hit) == 1 && strings.HasSuffix(hit[0], "=1") {
		return strings.TrimSuffix(hit[0], "=1")
	}
	return fmt.Sprintf("frames=%d %s", delta.Frames, strings.Join(hit, " "))
}

// testPinDir returns a fresh bpffs directory for this test
// (/sys/fs/bpf/synguard-test-dp-<test>-<pid>), removing leftovers of a
// killed earlier run first and everything (link included) at cleanup.
func testPinDir(tb testing.TB) string {
	tb.Helper()
	requireRoot(tb)
	name := strings.NewReplacer("/", "-", " ", "-").Replace(tb.Name())
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("synguard-test-dp-%s-%d", name, os.Getpid()))
	old, _ := filepath.Glob(filepath.Join("/sys/fs/bpf", "synguard-test-dp-"+name+"-*"))
	for _, o := range old {
		if err := Remove(o); err != nil {
			tb.Logf("remove leftover %s: %v", o, err)
		}
	}
	tb.Cleanup(func() {
		if err := Remove(dir); err != nil {
			tb.Errorf("remove pins: %v", err)
		}
	})
	return dir
}

// onEachCPU runs f(cpu) at once for CPUs 0..n-1, each on a thread pinned to
// that CPU, and waits for all of them. The threads die with their
// goroutines, affinity and all. f reports failures with t.Errorf.
func onEachCPU(t *testing.T, n int, f func(cpu int)) {
	t.Helper()
	var wg sync.WaitGroup
	for cpu := 0; cpu < n; cpu++ {
		wg.Add(1)
		go func(cpu int) {
			defer wg.Done()
			runtime.LockOSThread()
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				t.Errorf("pin to cpu %d: %v", cpu, err)
				return
			}
			f(cpu)
		}(cpu)
	}
	wg.Wait()
}
