package detector

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// BenchmarkObserve measures one snapshot in which every tracked source
// moved (the worst case: a full scan during a random-source flood): 90%
// clients completing handshakes, 10% spoofed one-SYN sources, 100 flooders.
//
// In order, the list comes in the same order every time, as full scans of
// the kernel LRU do; shuffled, every snapshot comes in a new order, so each
// source costs a map lookup.
func BenchmarkObserve(b *testing.B) {
	for _, shuffled := range []bool{false, true} {
		for _, n := range []int{10_000, 100_000, 1_000_000} {
			name := fmt.Sprintf("order=same/sources=%d", n)
			if shuffled {
				name = fmt.Sprintf("order=shuffled/sources=%d", n)
			}
			b.Run(name, func(b *testing.B) { benchObserve(b, n, shuffled) })
		}
	}
}

func benchObserve(b *testing.B, n int, shuffled bool) {
	{
		{
			cfg := DefaultConfig()
			cfg.MaxSources = max(cfg.MaxSources, n)
			d := New(cfg, Options{Enforce: true})
			r := rand.New(rand.NewPCG(1, 1))
			snap := Snapshot{Time: t0, Complete: true, Sources: make([]SourceCounters, n)}
			for i := range snap.Sources {
				snap.Sources[i].Addr = netip.AddrFrom4([4]byte{byte(1 + i>>24), byte(i >> 16), byte(i >> 8), byte(i)})
			}
			for p := range 100 {
				snap.Services = append(snap.Services, ServiceCounters{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 1}), uint16(8000+p))})
			}
			step := func() {
				snap.Time = snap.Time.Add(time.Second)
				for j := range snap.Sources {
					c := &snap.Sources[j]
					a := c.Addr.As4()
					i := int(a[0]-1)<<24 | int(a[1])<<16 | int(a[2])<<8 | int(a[3])
					switch {
					case i < 100:
						c.SYN += 500
					case i%10 == 0:
						c.SYN++
					default:
						c.SYN++
						c.ACK += 5
					}
				}
				for i := range snap.Services {
					snap.Services[i].SYN += uint64(n / 100)
					snap.Services[i].ACK += uint64(n / 25)
				}
				if shuffled {
					r.Shuffle(len(snap.Sources), func(i, j int) { snap.Sources[i], snap.Sources[j] = snap.Sources[j], snap.Sources[i] })
				}
			}
			d.Observe(snap) // baseline
			for range 3 {
				step()
				d.Observe(snap)
			}
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			// The snapshot itself is the caller's; what the detector keeps
			// per tracked source is the rest.
			snapBytes := float64(cap(snap.Sources)) * float64(unsafe.Sizeof(SourceCounters{}))
			heapPerSource := (float64(ms.HeapAlloc) - snapBytes) / float64(n)
			b.ReportAllocs()
			b.ResetTimer()
			// CPU time of the process, besides wall time: on a shared
			// machine the wall time includes waiting for a core.
			var cpu time.Duration
			for range b.N {
				b.StopTimer()
				step()
				c0 := cpuTime()
				b.StartTimer()
				d.Observe(snap)
				b.StopTimer()
				cpu += cpuTime() - c0
				b.StartTimer()
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/source")
			b.ReportMetric(heapPerSource, "heap-B/source")
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
