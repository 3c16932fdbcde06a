package detector

import (
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// randomConfig varies the knobs that change ban decisions.
func randomConfig(r *rand.Rand) Config {
	c := DefaultConfig()
	c.BanBase = time.Duration(1+r.IntN(60)) * time.Second
	c.BanFactor = 1 + r.Float64()*4
	c.BanMax = c.BanBase * time.Duration(1+r.IntN(10))
	c.BanGrace = time.Duration(r.IntN(30)) * time.Second
	c.ResolveAfter = time.Duration(1+r.IntN(30)) * time.Second
	c.AggregateSources = r.IntN(5)
	c.MaxBans = 1 + r.IntN(20)
	return c
}

// pool is a mix of addresses inside and around the protected prefixes.
func pool(r *rand.Rand) []netip.Addr {
	var p []netip.Addr
	for range 60 {
		switch r.IntN(3) {
		case 0:
			p = append(p, netip.AddrFrom4([4]byte{10, 9, byte(r.IntN(3)), byte(r.IntN(256))}))
		case 1:
			p = append(p, netip.AddrFrom4([4]byte{203, 0, 113, byte(r.IntN(256))}))
		default:
			p = append(p, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, byte(r.IntN(2)), 15: byte(r.IntN(256))}))
		}
	}
	return p
}

func randomProtected(r *rand.Rand) []netip.Prefix {
	all := []netip.Prefix{
		netip.MustParsePrefix("10.9.1.0/24"), netip.MustParsePrefix("10.9.0.7/32"),
		netip.MustParsePrefix("203.0.113.128/25"), netip.MustParsePrefix("2001:db8:0:1::/64"),
		netip.MustParsePrefix("2001:db8::5/128"),
	}
	var p []netip.Prefix
	for _, q := range all {
		if r.IntN(2) == 0 {
			p = append(p, q)
		}
	}
	return p
}

func overlapsAny(p netip.Prefix, ps []netip.Prefix) bool {
	for _, q := range ps {
		if q.Overlaps(p) {
			return true
		}
	}
	return false
}

// Allowlisted sources are never banned, whatever the traffic, the config,
// and changes of the allowlist during the run; and every ban ends once the
// traffic stops.
func TestPropertyProtectedNeverBannedAndBansEnd(t *testing.T) {
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 7))
		cfg := randomConfig(r)
		prot := randomProtected(r)
		s := newSim(t, cfg, Options{Enforce: true, Protected: prot})
		addrs := pool(r)
		floodFor := 200 + r.IntN(200)
		for i := range floodFor {
			for _, a := range addrs {
				switch r.IntN(10) {
				case 0:
					s.send(a, web, uint64(50+r.IntN(500)), uint64(r.IntN(50)))
				case 1:
					s.send(a, web, uint64(r.IntN(20)), uint64(r.IntN(100)))
				}
			}
			if r.IntN(100) == 0 {
				prot = randomProtected(r)
				dec := s.d.SetProtected(s.now, prot)
				s.apply(dec)
				for p := range s.bans {
					if overlapsAny(p, prot) {
						t.Fatalf("seed %d: ban %v survives SetProtected(%v)", seed, p, prot)
					}
				}
			}
			if r.IntN(50) == 0 {
				sa := addrs[r.IntN(len(addrs))]
				s.apply(s.d.Suspect(s.now.Add(10*time.Millisecond), sa, 100+uint32(r.IntN(1000))))
			}
			dec := s.tick(time.Duration(500+r.IntN(1000)) * time.Millisecond)
			for _, b := range dec.Bans {
				if overlapsAny(b.Prefix, prot) {
					t.Fatalf("seed %d second %d: ban %v overlaps protected %v", seed, i, b.Prefix, prot)
				}
				if !b.Until.After(b.From) || b.Until.Sub(s.now) > cfg.BanMax {
					t.Fatalf("seed %d: ban %+v: want a finite expiry within ban_max %v of now", seed, b, cfg.BanMax)
				}
			}
			if len(s.bans) > cfg.MaxBans {
				t.Fatalf("seed %d: %d active bans, max_bans %d", seed, len(s.bans), cfg.MaxBans)
			}
		}
		// Quiet: every ban must end within ban_max + grace + a poll.
		quietFrom := s.now
		for s.now.Sub(quietFrom) < cfg.BanMax+cfg.BanGrace+3*time.Second {
			s.tick(time.Second)
		}
		if len(s.bans) != 0 || len(s.d.State().Bans) != 0 {
			t.Fatalf("seed %d: bans still active %v after %v of quiet", seed, s.bans, s.now.Sub(quietFrom))
		}
		for s.now.Sub(quietFrom) < cfg.BanMax+cfg.ResolveAfter+cfg.BanGrace+5*time.Second {
			s.tick(time.Second)
		}
		if open := s.d.Open(); len(open) != 0 {
			t.Fatalf("seed %d: incidents still open after quiet: %v", seed, open)
		}
	}
}

// Memory stays bounded under a flood of millions of distinct sources.
func TestPropertyMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("floods 3 million sources")
	}
	cfg := DefaultConfig()
	cfg.MaxSources = 1 << 16
	cfg.MaxServices = 64
	cfg.MaxIncidents = 500
	cfg.MaxBans = 1000
	cfg.AggregateSources = 0
	d := New(cfg, Options{Enforce: true})
	now := t0
	d.Observe(Snapshot{Time: now})
	r := rand.New(rand.NewPCG(1, 2))
	snap := Snapshot{Complete: true}
	var heapAt1M uint64
	total := 0
	for round := 0; total < 3_000_000; round++ {
		now = now.Add(time.Second)
		snap.Time = now
		snap.Sources = snap.Sources[:0]
		snap.Services = snap.Services[:0]
		for range 50_000 {
			a := netip.AddrFrom4([4]byte{byte(r.UintN(224)), byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256))})
			snap.Sources = append(snap.Sources, SourceCounters{Addr: a, SYN: 1})
		}
		// A few hundred real flooders too, to fill incidents and bans.
		for j := range 300 {
			a := netip.AddrFrom4([4]byte{100, byte(round), byte(j >> 8), byte(j)})
			snap.Sources = append(snap.Sources, SourceCounters{Addr: a, SYN: 500})
		}
		for p := range 200 {
			snap.Services = append(snap.Services, ServiceCounters{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 1}), uint16(1000+round*200+p)), SYN: 10})
		}
		total += len(snap.Sources)
		d.Observe(snap)
		if n := d.sources.len(); n > cfg.MaxSources || d.sources.s.len() > cfg.MaxSources {
			t.Fatalf("after %d sources: %d tracked, slab %d, max_sources %d", total, n, d.sources.s.len(), cfg.MaxSources)
		}
		if d.open > cfg.MaxIncidents || len(d.bans) > cfg.MaxBans || len(d.offences) > 4*cfg.MaxBans || len(d.svcs) > cfg.MaxServices {
			t.Fatalf("after %d sources: %d incidents, %d bans, %d offences, %d services", total, d.open, len(d.bans), len(d.offences), len(d.svcs))
		}
		if heapAt1M == 0 && total >= 1_000_000 {
			heapAt1M = heap()
		}
	}
	if h := heap(); h > heapAt1M*3/2+8<<20 {
		t.Errorf("heap grew from %d MiB at 1M sources to %d MiB at 3M", heapAt1M>>20, h>>20)
	}
}

func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
