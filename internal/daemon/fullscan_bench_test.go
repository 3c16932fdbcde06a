package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/internal/config"
)

// sourceValue mirrors the kernel's per-source value (struct source_stats
// in bpf/synguard.c) for filling the map from a benchmark.
type sourceValue struct {
	Syn, Ack, Rst, FirstSeen, LastSeen, SynMark, LastEvent, Verdict uint64
}

// BenchmarkFullScanMemory measures what the daemon's full scan of a full
// 1M-entry kernel table costs in Go heap: a real bpf.Datapath (loaded and
// pinned, not attached) holding 1,048,448 sources with 5 SYNs each (all
// pass the scan's bar, as in bench/resources), a real detector, Poll with a
// full scan. heap-MiB is the Go heap in use right after the scan (what the
// process holds unless a GC runs), live-MiB after a forced GC, alloc-MiB
// allocated by one scan. Run with -memprofile for the heap profile. Needs
// root; takes ~30 s of setup.
func BenchmarkFullScanMemory(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: loads the XDP program and fills its maps (CI runs as root)")
	}
	const n = 1_048_448
	pin := fmt.Sprintf("/sys/fs/bpf/synguard-test-memory-%d", os.Getpid())
	os.RemoveAll(pin)
	dp, err := bpf.Load(bpf.Options{PinDir: pin, MaxSources: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Close(); bpf.Remove(pin); os.RemoveAll(pin) })
	m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "sources"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if m.ValueSize() != 64 {
		b.Skipf("per-source value is %d bytes, the benchmark fills 64", m.ValueSize())
	}
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	stamp := uint64(ts.Nano())
	const chunk = 8192
	keys := make([][16]byte, chunk)
	vals := make([]sourceValue, chunk)
	for base := 0; base < n; base += chunk {
		k := min(chunk, n-base)
		for i := range k {
			v := uint32(100)<<24 | uint32(64)<<16 + uint32(base+i)
			keys[i] = [16]byte{10: 0xff, 11: 0xff, 12: byte(v >> 24), 13: byte(v >> 16), 14: byte(v >> 8), 15: byte(v)}
			vals[i] = sourceValue{Syn: 5, FirstSeen: stamp - 2e9, LastSeen: stamp}
		}
		if _, err := m.BatchUpdate(keys[:k], vals[:k], nil); err != nil {
			b.Fatalf("fill sources: %v", err)
		}
	}
	keys, vals = nil, nil

	cfg := config.Default()
	cfg.Interfaces = []string{"probe0"}
	cfg.Protect = config.Protect{}
	plane := &BPFPlane{ifaces: []*bpfIface{{name: "probe0", dp: dp}}, suspects: make(chan Suspect)}
	d, err := New(Deps{Config: cfg, Plane: plane, NewEngine: NewDetector, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Start(); err != nil {
		b.Fatal(err)
	}
	d.Poll(time.Now()) // baseline snapshot: every source becomes tracked
	runtime.GC()
	var ms0, ms1 runtime.MemStats
	var heap, live, alloc float64
	b.ResetTimer()
	for b.Loop() {
		d.mu.Lock()
		d.fullNext = true
		d.mu.Unlock()
		runtime.ReadMemStats(&ms0)
		d.Poll(time.Now())
		runtime.ReadMemStats(&ms1)
		heap += float64(ms1.HeapInuse) / (1 << 20)
		alloc += float64(ms1.TotalAlloc-ms0.TotalAlloc) / (1 << 20)
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&ms1)
		live += float64(ms1.HeapInuse) / (1 << 20)
		b.StartTimer()
	}
	b.StopTimer()
	if path := os.Getenv("SYNGUARD_HEAPPROFILE"); path != "" {
		// The heap as the daemon holds it after a scan (-memprofile is
		// written after the benchmark, when the daemon is garbage).
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	d.mu.Lock()
	listed := d.engine.Explain(netip4(100, 64, 3, 7)).Tracked
	d.mu.Unlock()
	if !listed {
		b.Fatal("a scanned source is not tracked by the detector")
	}
	b.ReportMetric(heap/float64(b.N), "heap-MiB")
	b.ReportMetric(live/float64(b.N), "live-MiB")
	b.ReportMetric(alloc/float64(b.N), "alloc-MiB/op")
}

func netip4(a, b, c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{a, b, c, d}) }
