package detector

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// chunked cuts sources into random chunks (some empty), the way a kernel
// walk delivers them, reusing one buffer as the daemon's feed does.
func chunked(r *rand.Rand, sources []SourceCounters) SourceFeed {
	return func(observe func([]SourceCounters)) error {
		buf := make([]SourceCounters, 0, 64)
		for rest := sources; len(rest) > 0; {
			n := min(len(rest), r.IntN(65))
			buf = append(buf[:0], rest[:n]...)
			observe(buf)
			clear(buf) // the detector must not keep the chunk
			rest = rest[n:]
		}
		return nil
	}
}

// ObserveFeed with the sources cut into any chunks decides and ends in
// exactly the state of Observe with them in one slice: same decisions,
// same incidents, same figures per source, over floods, clients, spoofed
// one-SYN sources, partial and complete snapshots, suspect events and a
// source table small enough to evict.
func TestObserveFeedEqualsObserve(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 11))
		cfg := randomConfig(r)
		cfg.MaxSources = 1024
		opt := Options{Enforce: true, Protected: randomProtected(r)}
		one, fed := New(cfg, opt), New(cfg, opt)
		addrs := pool(r)
		for i := range 1500 {
			addrs = append(addrs, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}))
		}
		cum := map[netip.Addr]*SourceCounters{}
		svc := ServiceCounters{Addr: netip.MustParseAddrPort("192.0.2.1:443")}
		now := t0
		for step := range 120 {
			now = now.Add(time.Duration(500+r.IntN(1500)) * time.Millisecond)
			complete := r.IntN(3) > 0
			var moved []SourceCounters
			for _, a := range addrs {
				c := cum[a]
				if c == nil {
					c = &SourceCounters{Addr: a, FirstSeen: now.Add(-time.Duration(r.IntN(5)) * time.Second)}
					cum[a] = c
				}
				switch x := r.IntN(100); {
				case x < 3 && step > 20 && step < 80: // flooding
					c.SYN += uint64(200 + r.IntN(2000))
				case x < 40: // a client
					c.SYN += uint64(r.IntN(5))
					c.ACK += uint64(r.IntN(20))
				case x < 45: // spoofed, one SYN
					c.SYN++
				default:
					if complete || r.IntN(2) == 0 {
						continue
					}
				}
				svc.SYN += c.SYN % 7
				svc.ACK += c.ACK % 5
				moved = append(moved, *c)
			}
			r.Shuffle(len(moved), func(i, j int) { moved[i], moved[j] = moved[j], moved[i] })
			head := r.IntN(len(moved) + 1)
			snap := Snapshot{Time: now, Complete: complete, Services: []ServiceCounters{svc}}

			snap.Sources = moved
			want := one.Observe(snap)
			snap.Sources = moved[:head:head]
			got, err := fed.ObserveFeed(snap, chunked(r, moved[head:]))
			if err != nil {
				t.Fatalf("seed %d step %d: feed error %v", seed, step, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d step %d: ObserveFeed decided\n%+v\nObserve decided\n%+v", seed, step, got, want)
			}
			if r.IntN(4) == 0 {
				a, syns := addrs[r.IntN(len(addrs))], uint32(100+r.IntN(5000))
				at := now.Add(300 * time.Millisecond)
				if g, w := fed.Suspect(at, a, syns), one.Suspect(at, a, syns); !reflect.DeepEqual(g, w) {
					t.Fatalf("seed %d step %d: suspect decisions differ: %+v vs %+v", seed, step, g, w)
				}
			}
		}
		if !reflect.DeepEqual(fed.State(), one.State()) || !reflect.DeepEqual(fed.Open(), one.Open()) {
			t.Fatalf("seed %d: state or open incidents differ after the run", seed)
		}
		for _, a := range addrs {
			if g, w := fed.Explain(a), one.Explain(a); !reflect.DeepEqual(g, w) {
				t.Fatalf("seed %d: %v explained as\n%+v\nvs\n%+v", seed, a, g, w)
			}
		}
	}
}

// A failing feed: what it delivered is observed, the snapshot counts as
// incomplete (so the sources it never delivered are not taken as quiet),
// and the error comes back. An ignored (not later) snapshot still runs the
// feed, so the caller's side of the walk happens.
func TestObserveFeedError(t *testing.T) {
	cfg := DefaultConfig()
	one, fed := New(cfg, Options{Enforce: true}), New(cfg, Options{Enforce: true})
	flooder, quiet := addr("203.0.113.9"), addr("198.51.100.7")
	boom := errors.New("walk failed")
	for i := range 10 {
		now := t0.Add(time.Duration(i) * time.Second)
		src := []SourceCounters{
			{Addr: flooder, SYN: uint64(i) * 5000},
			{Addr: quiet, SYN: uint64(i) * 3, ACK: uint64(i) * 9},
		}
		// The reference sees only what the failing feed delivered, as an
		// incomplete snapshot.
		want := one.Observe(Snapshot{Time: now, Sources: src[:1]})
		got, err := fed.ObserveFeed(Snapshot{Time: now, Complete: true}, func(observe func([]SourceCounters)) error {
			observe(src[:1])
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("step %d: error %v, want %v", i, err, boom)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: decisions %+v, want %+v", i, got, want)
		}
	}
	if !reflect.DeepEqual(fed.State(), one.State()) || !reflect.DeepEqual(fed.Explain(quiet), one.Explain(quiet)) {
		t.Fatal("state after failed feeds differs from incomplete snapshots")
	}
	if len(fed.Open()) == 0 {
		t.Fatal("the flooder delivered before the failure was not flagged")
	}

	calls := 0
	if _, err := fed.ObserveFeed(Snapshot{Time: t0}, func(observe func([]SourceCounters)) error {
		calls++
		observe([]SourceCounters{{Addr: quiet, SYN: 1 << 40}})
		return nil
	}); err != nil || calls != 1 {
		t.Fatalf("ignored snapshot: feed called %d times, err %v", calls, err)
	}
	if ex := fed.Explain(quiet); ex.SYN == 1<<40 {
		t.Fatal("an ignored snapshot's sources were observed")
	}
}
