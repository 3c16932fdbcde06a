package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

// putTestSources inserts n IPv4 sources 10.200.0.0+first.. with SYN = i%7+1
// and ACK = i%3 straight into the per-source map.
func putTestSources(tb testing.TB, d *Datapath, first, n int) {
	tb.Helper()
	stamp := kernelNow()
	for i := first; i < first+n; i++ {
		if err := d.objs.Sources.Put(testSourceKey(i), synguardSourceStats{Syn: uint64(i%7 + 1), Ack: uint64(i % 3), FirstSeen: stamp - 1e9, LastSeen: stamp}); err != nil {
			tb.Fatalf("put source %d: %v", i, err)
		}
	}
}

func testSourceKey(i int) [16]byte {
	var key [16]byte
	key[10], key[11] = 0xff, 0xff
	binary.BigEndian.PutUint32(key[12:], 0x0ac80000+uint32(i))
	return key
}

func testSourceIndex(a netip.Addr) int {
	b := a.Unmap().As4()
	return int(binary.BigEndian.Uint32(b[:]) - 0x0ac80000)
}

// TestWalkSources: every entry exactly once, with its counters, in batches
// of at most batchSize whose backing array is reused; an error from fn
// stops the walk and comes back as is; Sources agrees with the walk.
func TestWalkSources(t *testing.T) {
	const n = 3*batchSize + 123
	d := loadForTest(t, Options{MaxSources: 4 * batchSize})
	putTestSources(t, d, 0, n)

	seen := make([]bool, n)
	batches := 0
	var first *Source
	err := d.WalkSources(func(batch []Source) error {
		if len(batch) == 0 || len(batch) > batchSize {
			t.Fatalf("batch of %d entries, want 1..%d", len(batch), batchSize)
		}
		if first == nil {
			first = &batch[0]
		} else if &batch[0] != first {
			t.Errorf("batch %d has a new backing array: batches must be reused", batches)
		}
		batches++
		for _, s := range batch {
			i := testSourceIndex(s.Addr)
			if i < 0 || i >= n || seen[i] {
				t.Fatalf("entry %v: unknown or returned twice", s.Addr)
			}
			seen[i] = true
			if s.SYN != uint64(i%7+1) || s.ACK != uint64(i%3) || s.RST != 0 {
				t.Errorf("entry %v: SYN %d ACK %d RST %d, want %d %d 0", s.Addr, s.SYN, s.ACK, s.RST, i%7+1, i%3)
			}
			if s.FirstSeen.IsZero() || !s.LastSeen.After(s.FirstSeen) {
				t.Errorf("entry %v: first seen %v, last seen %v", s.Addr, s.FirstSeen, s.LastSeen)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk: %v", err)
	}
	for i, ok := range seen {
		if !ok {
			t.Fatalf("entry %d missing from the walk", i)
		}
	}
	if batches < n/batchSize {
		t.Errorf("%d batches for %d entries", batches, n)
	}

	all, err := d.Sources()
	if err != nil || len(all) != n {
		t.Fatalf("Sources: %d entries, %v; want %d", len(all), err, n)
	}

	stop := errors.New("enough")
	calls := 0
	err = d.WalkSources(func([]Source) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("walk stopped by fn: err %v after %d calls, want %v after 1", err, calls, stop)
	}

	// Allocation does not grow with the table: a handful per walk.
	allocs := testing.AllocsPerRun(5, func() {
		if err := d.WalkSources(func([]Source) error { return nil }); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 20 {
		t.Errorf("walk of %d entries: %.0f allocations, want a constant handful", n, allocs)
	}

	// fn runs without the datapath's lock: it may even close it, which
	// ends the walk with an error at the next batch.
	calls = 0
	err = d.WalkSources(func([]Source) error {
		calls++
		if calls == 1 {
			return d.Close()
		}
		return nil
	})
	if err == nil || calls != 1 {
		t.Errorf("walk closed by fn: err %v after %d calls, want an error after 1", err, calls)
	}
	if err := d.WalkSources(func([]Source) error { return nil }); err == nil {
		t.Error("walk of a closed datapath succeeded")
	}
}

// TestWalkSourcesWhileInserting backs WalkSources' claim that no address
// comes twice in one walk while the LRU inserts and evicts (the reason the
// walk keeps no de-duplication map): walks race a writer that keeps
// inserting new addresses into a full table and re-inserting old ones.
func TestWalkSourcesWhileInserting(t *testing.T) {
	const size = 2 * batchSize
	d := loadForTest(t, Options{MaxSources: size})
	putTestSources(t, d, 0, size)

	var (
		stop atomic.Bool
		wg   sync.WaitGroup
		puts atomic.Int64
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		stamp := kernelNow()
		for i := size; !stop.Load(); i++ {
			// New addresses evict old ones; every other one re-inserts an
			// evicted address, which lands in a bucket the walk may have
			// passed already.
			k := testSourceKey(i)
			if i%2 == 0 {
				k = testSourceKey(i / 2)
			}
			if err := d.objs.Sources.Put(k, synguardSourceStats{Syn: 1, FirstSeen: stamp, LastSeen: stamp}); err != nil {
				t.Errorf("put: %v", err)
				return
			}
			puts.Add(1)
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()

	for walk := 0; walk < 30; walk++ {
		seen := map[netip.Addr]bool{}
		err := d.WalkSources(func(batch []Source) error {
			for _, s := range batch {
				if seen[s.Addr] {
					t.Fatalf("walk %d: %v returned twice", walk, s.Addr)
				}
				seen[s.Addr] = true
			}
			return nil
		})
		if err != nil {
			t.Fatalf("walk %d: %v", walk, err)
		}
		if len(seen) == 0 {
			t.Fatalf("walk %d saw no entries", walk)
		}
	}
	stop.Store(true)
	wg.Wait()
	if puts.Load() < size {
		t.Errorf("only %d inserts raced the walks: the test did not exercise eviction", puts.Load())
	}
}
