package bpf

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/frame"
)

// pinToCPU0 keeps the test's thread on CPU 0 until it ends, so every
// BPF_PROG_RUN uses the same per-CPU ban cache.
func pinToCPU0(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("read cpu affinity: %v", err)
	}
	set.Set(0)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("pin to cpu 0: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.SchedSetaffinity(0, &old); err != nil {
			t.Errorf("restore cpu affinity: %v", err)
		}
		runtime.UnlockOSThread()
	})
}

// banDrops returns the drop count of the only ban.
func banDrops(t *testing.T, d *Datapath) uint64 {
	t.Helper()
	bans, err := d.Bans()
	if err != nil || len(bans) != 1 {
		t.Fatalf("bans %+v err %v, want exactly one", bans, err)
	}
	return bans[0].Dropped
}

// The ban cache (see "Ban cache" in synguard.c) drops a banned source's
// frames on a CPU that dropped it before in the same tick without looking
// up its per-source entry: with that entry deleted right after the first
// drop, a burst is still dropped, counted exactly like the slow path
// counts, and the entry is not recreated (the slow path would recreate it).
func TestBanCacheDropsWithoutSourceLookup(t *testing.T) {
	d := loadForTest(t, Options{})
	if err := d.SetMode(ModeEnforce); err != nil {
		t.Fatal(err)
	}
	if err := d.Block(netip.PrefixFrom(cli4.Addr(), 32), time.Hour); err != nil {
		t.Fatal(err)
	}
	synFrame := frame.SYN(cli4, srv4)
	key := addrKey(cli4.Addr())
	const burst = 100
	fastPathSeen := false
	pinToCPU0(t)
	// A tick boundary between the first drop and the burst sends the burst
	// down the slow path: try again (a burst takes ~2 µs, a tick 1-10 ms).
	for attempt := 0; attempt < 20 && !fastPathSeen; attempt++ {
		if a := runFrame(t, d, synFrame); a != xdpDrop {
			t.Fatalf("first frame: %v, want DROP", a)
		}
		if err := d.objs.Sources.Delete(key); err != nil {
			t.Fatalf("delete source entry: %v", err)
		}
		before, hitsBefore := counters(t, d), banDrops(t, d)
		ret, err := d.program().Run(&ebpf.RunOptions{Data: synFrame, Repeat: burst})
		if err != nil || xdpAction(ret) != xdpDrop {
			t.Fatalf("burst: %v %v, want DROP", xdpAction(ret), err)
		}
		delta, hits := counters(t, d).sub(before), banDrops(t, d)-hitsBefore
		if delta.Frames != burst || delta.SYN != burst || delta.TCP != burst ||
			delta.Dropped != burst || hits != burst {
			t.Fatalf("burst of %d counted as %+v, ban drops %d: want every frame counted as a dropped SYN",
				burst, delta, hits)
		}
		_, ok, err := d.Source(cli4.Addr())
		if err != nil {
			t.Fatalf("source: %v", err)
		}
		fastPathSeen = !ok
	}
	if !fastPathSeen {
		t.Fatal("every burst recreated the per-source entry: the ban cache never answered")
	}
}

// Every CPU's cached drops end with the ban: frames are sent without pause
// through the expiry of a short ban, and none is dropped after it (allowing
// the coarse clock's lag of at most one tick), none passed before it.
func TestBanCacheNeverOutlivesBan(t *testing.T) {
	d := loadForTest(t, Options{})
	if err := d.SetMode(ModeEnforce); err != nil {
		t.Fatal(err)
	}
	const (
		ttl   = 300 * time.Millisecond
		slack = 20 * time.Millisecond // > one tick at HZ >= 100, the coarse clock's lag
	)
	synFrame := frame.SYN(cli4, srv4)
	earliest := time.Duration(kernelNow()) + ttl
	if err := d.Block(netip.PrefixFrom(cli4.Addr(), 32), ttl); err != nil {
		t.Fatal(err)
	}
	latest := time.Duration(kernelNow()) + ttl

	cpus := min(2, runtime.NumCPU())
	var drops, passes [2]int
	onEachCPU(t, cpus, func(cpu int) {
		for {
			start := time.Duration(kernelNow())
			if start > latest+ttl {
				return
			}
			ret, err := d.program().Run(&ebpf.RunOptions{Data: synFrame, Repeat: 50})
			end := time.Duration(kernelNow())
			if err != nil {
				t.Errorf("cpu %d: %v", cpu, err)
				return
			}
			switch xdpAction(ret) {
			case xdpDrop:
				drops[cpu]++
				if start > latest+slack {
					t.Errorf("cpu %d: dropped %v after the ban expired", cpu, start-latest)
					return
				}
			case xdpPass:
				passes[cpu]++
				if end < earliest {
					t.Errorf("cpu %d: passed %v before the ban expired", cpu, earliest-end)
					return
				}
			default:
				t.Errorf("cpu %d: %v", cpu, xdpAction(ret))
				return
			}
		}
	})
	for cpu := 0; cpu < cpus; cpu++ {
		if drops[cpu] == 0 || passes[cpu] == 0 {
			t.Errorf("cpu %d: %d drops, %d passes: want both (the run spans the expiry)", cpu, drops[cpu], passes[cpu])
		}
	}
}
