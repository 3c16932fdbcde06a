package bpf

import (
	"errors"
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
// up its per-source entry. The per-source entry is deleted right after the
// first drop; then a burst follows. Every frame of the burst must be dropped
// and counted exactly as the slow path counts it, and the two paths must
// account for it consistently: BanCacheDrops (moved by the fast path alone)
// counts the cached drops, and the entry comes back only when some frame
// took the slow path (which recreates it through cache_only).
//
// Kernel facts this relies on (../shared/KERNEL-TESTING.md): a slot is
// trusted only within one jiffy, 4 ms at HZ=250; a BPF_PROG_RUN with
// Repeat >= 2 first waits for an RCU grace period (~24 ms on some
// machines), so its first frame always lands in a later tick than the frame
// that filled the slot. The burst is therefore a loop of single runs
// (4-12 us each), and a tick boundary inside a burst is a legitimate slow
// frame, not a failure: what must hold is the consistency above on every
// attempt, and that the cache answered on at least one.
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
	const (
		burst    = 20
		attempts = 50
	)
	pinToCPU0(t)
	fastBursts := 0
	for attempt := 0; attempt < attempts; attempt++ {
		if a := runFrame(t, d, synFrame); a != xdpDrop {
			t.Fatalf("first frame: %v, want DROP", a)
		}
		// Absent already when the previous burst and this frame were all
		// answered by the cache.
		if err := d.objs.Sources.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("delete source entry: %v", err)
		}
		before, hitsBefore := counters(t, d), banDrops(t, d)
		for i := 0; i < burst; i++ {
			if a := runFrame(t, d, synFrame); a != xdpDrop {
				t.Fatalf("burst frame %d: %v, want DROP", i, a)
			}
		}
		delta, hits := counters(t, d).sub(before), banDrops(t, d)-hitsBefore
		if delta.Frames != burst || delta.SYN != burst || delta.TCP != burst ||
			delta.Dropped != burst || hits != burst {
			t.Fatalf("burst of %d counted as %+v, ban drops %d: want every frame counted as a dropped SYN",
				burst, delta, hits)
		}
		if delta.BanCacheDrops > burst {
			t.Fatalf("%d cached drops in a burst of %d", delta.BanCacheDrops, burst)
		}
		_, recreated, err := d.Source(cli4.Addr())
		if err != nil {
			t.Fatalf("source: %v", err)
		}
		slow := burst - delta.BanCacheDrops
		switch {
		case slow == 0 && recreated:
			t.Fatalf("attempt %d: all %d drops cached, yet the per-source entry came back: the fast path looked it up", attempt, burst)
		case slow > 0 && !recreated:
			t.Fatalf("attempt %d: %d drops took the slow path, yet the per-source entry was not recreated", attempt, slow)
		}
		if slow == 0 {
			fastBursts++
		}
	}
	// A burst of single runs takes well under a tick; even on a machine
	// several times slower, most of the 50 attempts fit in one.
	if fastBursts == 0 {
		t.Fatalf("none of %d bursts of %d single runs was answered by the ban cache alone", attempts, burst)
	}
	t.Logf("%d of %d bursts answered by the ban cache alone", fastBursts, attempts)
}

// Every CPU's cached drops end with the ban: frames are sent without pause
// through the expiry of a short ban, and none is dropped after it (allowing
// the coarse clock's lag of at most one tick), none passed before it. Each
// frame is its own BPF_PROG_RUN (Repeat 1, microseconds), so the check is as
// fine-grained as the clock, and the cache must have answered some of them:
// otherwise the test proved nothing about it.
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
	before := counters(t, d)

	cpus := min(2, runtime.NumCPU())
	var drops, passes [2]int
	onEachCPU(t, cpus, func(cpu int) {
		data := make([]byte, len(synFrame))
		for {
			// start and end bracket the run: a drop seen after start
			// happened after start, a pass seen before end before end.
			start := time.Duration(kernelNow())
			if start > latest+ttl {
				return
			}
			copy(data, synFrame)
			ret, err := d.program().Run(&ebpf.RunOptions{Data: data})
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
	delta := counters(t, d).sub(before)
	if delta.BanCacheDrops == 0 || delta.BanCacheDrops > delta.Dropped {
		t.Errorf("%d of %d drops answered by the ban cache: want some, at most all", delta.BanCacheDrops, delta.Dropped)
	}
	t.Logf("drops %v, passes %v, %d of %d drops from the ban cache", drops, passes, delta.BanCacheDrops, delta.Dropped)
}
