package detector

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 28, 20, 0, 0, 0, time.UTC)

// sim keeps cumulative counters like the data plane and feeds snapshots of
// the sources that moved (the partial-snapshot contract).
type sim struct {
	t      *testing.T
	d      *Detector
	now    time.Time
	src    map[netip.Addr]*SourceCounters
	svc    map[netip.AddrPort]*ServiceCounters
	moved  map[netip.Addr]bool
	kernel KernelCounters
	drops  map[netip.Prefix]uint64
	all    []Decisions
	bans   map[netip.Prefix]Ban // active, as the daemon would apply them
	// partial snapshots: the sim drops sources from some of them.
	partial bool
}

func newSim(t *testing.T, cfg Config, opt Options) *sim {
	s := &sim{t: t, d: New(cfg, opt), now: t0,
		src: map[netip.Addr]*SourceCounters{}, svc: map[netip.AddrPort]*ServiceCounters{},
		moved: map[netip.Addr]bool{}, drops: map[netip.Prefix]uint64{}, bans: map[netip.Prefix]Ban{}}
	s.d.Observe(Snapshot{Time: s.now}) // baseline: counters start at zero
	return s
}

// send adds traffic from a to service v. Banned sources are dropped and
// counted per ban, like the XDP program does.
func (s *sim) send(a netip.Addr, v netip.AddrPort, syn, ack uint64) {
	for p := range s.bans {
		if p.Contains(a) {
			s.drops[p] += syn + ack
			return
		}
	}
	c := s.src[a]
	if c == nil {
		c = &SourceCounters{Addr: a}
		s.src[a] = c
	}
	c.SYN += syn
	c.ACK += ack
	s.moved[a] = true
	sc := s.svc[v]
	if sc == nil {
		sc = &ServiceCounters{Addr: v}
		s.svc[v] = sc
	}
	sc.SYN += syn
	sc.ACK += ack
}

// tick advances time by dt and observes a snapshot of what moved.
func (s *sim) tick(dt time.Duration) Decisions {
	s.now = s.now.Add(dt)
	snap := Snapshot{Time: s.now, Kernel: s.kernel, Complete: !s.partial}
	for a := range s.moved {
		snap.Sources = append(snap.Sources, *s.src[a])
	}
	for _, c := range s.svc {
		snap.Services = append(snap.Services, *c)
	}
	for p, n := range s.drops {
		snap.Bans = append(snap.Bans, BanCounters{Prefix: p, Dropped: n})
	}
	clear(s.moved)
	slices.SortFunc(snap.Sources, func(a, b SourceCounters) int { return a.Addr.Compare(b.Addr) })
	slices.SortFunc(snap.Services, func(a, b ServiceCounters) int { return a.Addr.Compare(b.Addr) })
	slices.SortFunc(snap.Bans, func(a, b BanCounters) int { return comparePrefix(a.Prefix, b.Prefix) })
	dec := s.d.Observe(snap)
	s.apply(dec)
	return dec
}

func (s *sim) apply(dec Decisions) {
	for _, b := range dec.Bans {
		s.bans[b.Prefix] = b
	}
	for _, p := range dec.Unbans {
		delete(s.bans, p)
		delete(s.drops, p)
	}
	// The kernel expires bans by itself.
	for p, b := range s.bans {
		if !s.now.Before(b.Until) {
			delete(s.bans, p)
		}
	}
	s.all = append(s.all, dec)
}

// opened returns the addresses of every incident opened so far, by kind.
func (s *sim) opened(k Kind) map[string]Incident {
	r := map[string]Incident{}
	for _, dec := range s.all {
		for _, inc := range dec.Incidents {
			if inc.Kind == k && inc.Stage == StageOpened {
				r[inc.Addr] = inc
			}
		}
	}
	return r
}

func addr(s string) netip.Addr         { return netip.MustParseAddr(s) }
func addrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

var web = addrPort("10.0.0.1:443")
