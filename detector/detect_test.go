package detector

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// clients sends normal traffic: n clients, conns connections per second
// each, five ACK-carrying packets per connection.
func clients(s *sim, n int, conns uint64) {
	for i := range n {
		s.send(netip.AddrFrom4([4]byte{10, 1, 0, byte(10 + i)}), web, conns, 5*conns)
	}
}

func TestDetectionTable(t *testing.T) {
	attacker := addr("203.0.113.66")
	cases := []struct {
		name string
		cfg  func(*Config)
		// second is called once per simulated second (tick i from 0).
		second      func(s *sim, i int)
		ticks       int
		tick        time.Duration
		wantSources []string // flagged sources
		wantService bool
		flaggedBy   time.Duration // the attacker must be flagged by then
	}{
		{
			name: "single source 100 SYN/s without ACK",
			second: func(s *sim, i int) {
				clients(s, 20, 10)
				s.send(attacker, web, 100, 0)
			},
			ticks: 10, wantSources: []string{"203.0.113.66"}, flaggedBy: time.Second,
		},
		{
			name: "existing client turns flooder",
			second: func(s *sim, i int) {
				clients(s, 20, 10)
				if i < 5 {
					s.send(attacker, web, 2, 10)
				} else {
					s.send(attacker, web, 200, 0)
				}
			},
			ticks: 10, wantSources: []string{"203.0.113.66"}, flaggedBy: 7 * time.Second,
		},
		{
			name: "browser opens 30 connections at once, ACKs in the next snapshot",
			second: func(s *sim, i int) {
				clients(s, 5, 10)
				switch i {
				case 2:
					s.send(attacker, web, 30, 0)
				case 3:
					s.send(attacker, web, 0, 30*6)
				}
			},
			ticks: 10,
		},
		{
			name: "SYN retransmissions on a lossy link",
			second: func(s *sim, i int) {
				clients(s, 5, 10)
				// every connection needs three SYNs, then completes
				s.send(attacker, web, 3*4, 4*5)
			},
			ticks: 30,
		},
		{
			name: "SYN retransmissions to an unresponsive service",
			second: func(s *sim, i int) {
				clients(s, 5, 10)
				s.send(attacker, web, 7, 0) // 7 connection attempts/s never complete
			},
			ticks: 30,
		},
		{
			name: "NAT gateway with hundreds of users completing handshakes",
			second: func(s *sim, i int) {
				clients(s, 5, 10)
				s.send(attacker, web, 800, 800*4)
			},
			ticks: 30,
		},
		{
			name: "NAT gateway where some handshakes fall across snapshots",
			second: func(s *sim, i int) {
				clients(s, 5, 10)
				s.send(attacker, web, 600+uint64(i%3)*100, 600)
			},
			ticks: 30,
		},
		{
			name: "download and speed test",
			second: func(s *sim, i int) {
				clients(s, 5, 10)
				s.send(attacker, web, 8, 80000)
			},
			ticks: 30,
		},
		{
			name: "slow flood just below the SYN-rate floor",
			second: func(s *sim, i int) {
				clients(s, 20, 10)
				s.send(attacker, web, 45, 0)
			},
			ticks: 30,
		},
		{
			name: "slow flood just above the SYN-rate floor",
			second: func(s *sim, i int) {
				clients(s, 20, 10)
				s.send(attacker, web, 55, 0)
			},
			ticks: 30, wantSources: []string{"203.0.113.66"}, flaggedBy: time.Second,
		},
		{
			name: "half-open share just below the threshold",
			second: func(s *sim, i int) {
				clients(s, 20, 10)
				s.send(attacker, web, 200, 65) // 67.5% half-open
			},
			ticks: 30,
		},
		{
			name: "half-open share just above the threshold",
			second: func(s *sim, i int) {
				clients(s, 20, 10)
				s.send(attacker, web, 200, 55) // 72.5% half-open
			},
			ticks: 30, wantSources: []string{"203.0.113.66"}, flaggedBy: time.Second,
		},
		{
			name: "IPv6 flooder",
			second: func(s *sim, i int) {
				clients(s, 20, 10)
				s.send(addr("2001:db8::66"), addrPort("[2001:db8::1]:443"), 150, 0)
			},
			ticks: 5, wantSources: []string{"2001:db8::66"}, flaggedBy: time.Second,
		},
		{
			name: "spoofed random-source flood",
			second: func(s *sim, i int) {
				clients(s, 20, 10)
				if i >= 20 {
					for j := range 3000 {
						s.send(netip.AddrFrom4([4]byte{198, byte(i), byte(j >> 8), byte(j)}), web, 1, 0)
					}
				}
			},
			ticks: 25, wantService: true,
		},
		{
			name: "flash crowd: ten times the baseline, all completing",
			second: func(s *sim, i int) {
				clients(s, 20, 10)
				if i >= 20 {
					for j := range 2000 {
						s.send(netip.AddrFrom4([4]byte{198, byte(i), byte(j >> 8), byte(j)}), web, 1, 5)
					}
				}
			},
			ticks: 30,
		},
		{
			name: "distributed slow flood below the service floor",
			cfg:  func(c *Config) { c.ServiceSYNRate = 1000 },
			second: func(s *sim, i int) {
				clients(s, 20, 10)
				if i >= 20 {
					for j := range 300 {
						s.send(netip.AddrFrom4([4]byte{198, byte(i), byte(j >> 8), byte(j)}), web, 1, 0)
					}
				}
			},
			ticks: 30,
		},
		{
			name: "half-second polling",
			tick: 500 * time.Millisecond,
			second: func(s *sim, i int) {
				clients(s, 20, 5)
				s.send(attacker, web, 50, 0)
			},
			ticks: 20, wantSources: []string{"203.0.113.66"}, flaggedBy: time.Second,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			s := newSim(t, cfg, Options{})
			tick := tc.tick
			if tick == 0 {
				tick = time.Second
			}
			var flaggedAt time.Duration = -1
			for i := range tc.ticks {
				tc.second(s, i)
				dec := s.tick(tick)
				for _, inc := range dec.Incidents {
					if inc.Kind == KindSource && inc.Stage == StageOpened && flaggedAt < 0 {
						flaggedAt = s.now.Sub(t0)
					}
				}
			}
			var got []string
			for a := range s.opened(KindSource) {
				got = append(got, a)
			}
			if fmt.Sprint(sorted(got)) != fmt.Sprint(sorted(tc.wantSources)) {
				t.Errorf("flagged sources = %v, want %v", got, tc.wantSources)
			}
			svc := s.opened(KindService)
			if tc.wantService != (len(svc) > 0) {
				t.Errorf("service incidents = %v, want flagged=%v", svc, tc.wantService)
			}
			if tc.flaggedBy > 0 && (flaggedAt < 0 || flaggedAt > tc.flaggedBy) {
				t.Errorf("source flagged after %v, want within %v", flaggedAt, tc.flaggedBy)
			}
			for _, inc := range s.opened(KindSource) {
				if inc.Reason == "" || !strings.Contains(inc.Reason, "threshold") || inc.SYNPerSecond < cfg.SourceSYNRate ||
					inc.SYNThreshold != cfg.SourceSYNRate || inc.HalfOpenThreshold != cfg.SourceHalfOpen || inc.HalfOpenShare < cfg.SourceHalfOpen {
					t.Errorf("incident %s does not say why: %+v", inc.ID, inc)
				}
			}
		})
	}
}

func sorted(v []string) []string {
	for i := range v {
		for j := i + 1; j < len(v); j++ {
			if v[j] < v[i] {
				v[i], v[j] = v[j], v[i]
			}
		}
	}
	return v
}

func TestServiceIncidentFigures(t *testing.T) {
	s := newSim(t, DefaultConfig(), Options{})
	heavy := addr("198.51.100.7")
	for i := range 70 {
		clients(s, 20, 10)
		if i >= 20 && i < 25 {
			for j := range 3000 {
				s.send(netip.AddrFrom4([4]byte{198, byte(i), byte(j >> 8), byte(j)}), web, 1, 0)
			}
			s.send(heavy, web, 30, 0) // below the per-source bar, but the top sender
			s.kernel.SyncookiesSent += 2500
			s.kernel.ListenDrops += 248
		}
		s.kernel.Listeners = []Listener{{Addr: addrPort("0.0.0.0:443"), Backlog: 128, MaxBacklog: 128}}
		s.kernel.PassiveOpens += 200
		s.tick(time.Second)
		if i == 20 && !s.d.UnderFlood(web) {
			t.Fatalf("service not under flood in the first second of the flood")
		}
	}
	var opened, resolved *Incident
	var updates int
	for _, dec := range s.all {
		for _, inc := range dec.Incidents {
			if inc.Kind != KindService {
				continue
			}
			switch inc.Stage {
			case StageOpened:
				opened = &inc
			case StageResolved:
				resolved = &inc
			case StageUpdated:
				updates++
			}
		}
	}
	if opened == nil || resolved == nil {
		t.Fatalf("want an opened and a resolved service incident, got %+v / %+v", opened, resolved)
	}
	if opened.ID != resolved.ID || opened.Addr != "10.0.0.1:443" {
		t.Errorf("ids %q/%q, addr %q", opened.ID, resolved.ID, opened.Addr)
	}
	if resolved.DistinctSources < 5*3000 || len(resolved.TopSources) != 10 || resolved.TopSources[0].Addr != heavy {
		t.Errorf("distinct sources %d (want ≥ 15000), top %v (want %v first)", resolved.DistinctSources, resolved.TopSources, heavy)
	}
	if resolved.SYN < 5*3000 || resolved.ResolvedAt == nil || resolved.ResolvedAt.Sub(t0) < 50*time.Second {
		t.Errorf("resolved incident: syn %d, resolved at %v", resolved.SYN, resolved.ResolvedAt)
	}
	want := "port 443: 248 handshakes dropped by the kernel in the last minute"
	if !strings.Contains(opened.Kernel.Summary, want) || !strings.Contains(opened.Kernel.Summary, "accept queue 128/128") {
		t.Errorf("kernel summary %q, want it to contain %q and the accept queue", opened.Kernel.Summary, want)
	}
	if opened.Severity != SeverityCritical {
		t.Errorf("severity %s with kernel drops, want critical", opened.Severity)
	}
	if resolved.Kernel.ListenDrops < 4*248 || !strings.Contains(resolved.Kernel.Summary, "1,240 handshakes dropped") {
		t.Errorf("resolved kernel impact %+v", resolved.Kernel)
	}
	if opened.BaselineSYNPerSecond < 190 || opened.BaselineSYNPerSecond > 210 || opened.SYNThreshold < opened.BaselineSYNPerSecond ||
		opened.SYNPerSecond < opened.SYNThreshold || opened.HalfOpenThreshold != 0.5 {
		t.Errorf("figures in fields: baseline %v threshold %v rate %v half-open bar %v", opened.BaselineSYNPerSecond, opened.SYNThreshold, opened.SYNPerSecond, opened.HalfOpenThreshold)
	}
	if !strings.Contains(opened.Reason, "baseline") || !strings.Contains(opened.Reason, "half-open") {
		t.Errorf("reason %q does not say why", opened.Reason)
	}
	if s.d.UnderFlood(web) || len(s.d.ServicesUnderFlood()) != 0 {
		t.Errorf("still under flood after resolution")
	}
	if len(s.opened(KindSource)) != 0 {
		t.Errorf("spoofed sources flagged individually: %v", s.opened(KindSource))
	}
}

// A source missing from snapshots has no new data: its next appearance is
// compared with its last one, not taken as a burst.
func TestMissingSourceIsNoNewData(t *testing.T) {
	s := newSim(t, DefaultConfig(), Options{})
	s.partial = true
	slow := addr("192.0.2.9")
	for i := range 30 {
		s.send(slow, web, 30, 0) // 30 SYN/s: below the floor
		if i > 0 && i%5 != 0 {
			// after its first appearance, the daemon reads it only
			// every fifth second (full scans)
			delete(s.moved, slow)
		}
		s.tick(time.Second)
	}
	if got := s.opened(KindSource); len(got) != 0 {
		t.Errorf("slow source seen every 5 s flagged: %v", got)
	}
	e := s.d.Explain(slow)
	if e.SYNPerSecond < 25 || e.SYNPerSecond > 35 {
		t.Errorf("rate %v, want about 30 SYN/s: %s", e.SYNPerSecond, e.Text)
	}
}

// An evicted and re-created kernel entry starts from zero again.
func TestCounterDecreaseIsRecreation(t *testing.T) {
	d := New(DefaultConfig(), Options{})
	a := addr("192.0.2.1")
	d.Observe(Snapshot{Time: t0, Sources: []SourceCounters{{Addr: a, SYN: 1_000_000, ACK: 5_000_000}}})
	d.Observe(Snapshot{Time: t0.Add(time.Second), Sources: []SourceCounters{{Addr: a, SYN: 1_000_010, ACK: 5_000_050}}})
	dec := d.Observe(Snapshot{Time: t0.Add(2 * time.Second), Sources: []SourceCounters{{Addr: a, SYN: 20, ACK: 100}}})
	if len(dec.Incidents) != 0 {
		t.Fatalf("re-created entry flagged: %+v", dec.Incidents)
	}
	if e := d.Explain(a); e.SYNPerSecond > 20 {
		t.Errorf("rate %v after re-creation, want ≤ 20", e.SYNPerSecond)
	}
}

func TestSuspectFlagsWithinMilliseconds(t *testing.T) {
	d := New(DefaultConfig(), Options{Enforce: true})
	d.Observe(Snapshot{Time: t0})
	d.Observe(Snapshot{Time: t0.Add(time.Second)})
	// The snapshots are partial: a source they never listed is rated
	// from its kernel first-seen time, which the daemon always passes.
	a := addr("203.0.113.5")
	dec := d.SuspectSince(t0.Add(time.Second+25*time.Millisecond), a, 100, t0.Add(time.Second))
	if len(dec.Incidents) != 1 || dec.Incidents[0].Stage != StageOpened || len(dec.Bans) != 1 {
		t.Fatalf("unknown source with 100 SYNs in 25 ms: %+v", dec)
	}
	// Without it (or first seen before the detector started) nothing
	// bounds the run: it may predate the detector, as after a restart.
	if dec := d.Suspect(t0.Add(time.Second+30*time.Millisecond), addr("203.0.113.6"), 5000); !dec.Empty() {
		t.Errorf("run of unknown age flagged: %+v", dec)
	}
	if dec := d.SuspectSince(t0.Add(time.Second+30*time.Millisecond), addr("203.0.113.6"), 5000, t0.Add(-time.Minute)); !dec.Empty() {
		t.Errorf("run of a source first seen before the detector started flagged: %+v", dec)
	}
	if !strings.Contains(dec.Incidents[0].Reason, "early warning") {
		t.Errorf("reason %q", dec.Incidents[0].Reason)
	}
	if dec.Bans[0].Prefix != netip.MustParsePrefix("203.0.113.5/32") {
		t.Errorf("ban %v", dec.Bans[0])
	}
	// A source the detector has fresh figures for is judged on them: a
	// slow flood (30 SYN/s) that piled up 100 SYNs does not get flagged.
	slow := addr("203.0.113.6")
	d.Observe(Snapshot{Time: t0.Add(2 * time.Second), Sources: []SourceCounters{{Addr: slow, SYN: 30}}})
	d.Observe(Snapshot{Time: t0.Add(3 * time.Second), Sources: []SourceCounters{{Addr: slow, SYN: 60}}})
	if dec := d.Suspect(t0.Add(3*time.Second+300*time.Millisecond), slow, 100); !dec.Empty() {
		t.Errorf("slow source flagged by a suspect event: %+v", dec)
	}
	// With partial snapshots, an unknown source is only known to be newer
	// than the last complete snapshot: 100 SYNs over up to 10 s is 10 SYN/s.
	d2 := New(DefaultConfig(), Options{})
	d2.Observe(Snapshot{Time: t0, Complete: true})
	for i := 1; i <= 10; i++ {
		d2.Observe(Snapshot{Time: t0.Add(time.Duration(i) * time.Second)})
	}
	if dec := d2.Suspect(t0.Add(10*time.Second+time.Millisecond), addr("203.0.113.8"), 100); !dec.Empty() {
		t.Errorf("suspect 10 s after the last full scan flagged: %+v", dec)
	}
	if dec := d2.Suspect(t0.Add(10*time.Second+2*time.Millisecond), addr("203.0.113.9"), 1000); len(dec.Incidents) != 1 {
		t.Errorf("1000 SYNs within 10 s not flagged: %+v", dec)
	}
	// Below the configured run length it is not evidence.
	if dec := d.Suspect(t0.Add(3*time.Second+400*time.Millisecond), addr("203.0.113.7"), 99); !dec.Empty() {
		t.Errorf("99 SYNs flagged: %+v", dec)
	}
}

func TestDeterministic(t *testing.T) {
	run := func() string {
		s := newSim(t, DefaultConfig(), Options{Enforce: true, Host: "h"})
		for i := range 60 {
			clients(s, 10, 10)
			if i > 10 && i < 30 {
				for j := range 20 {
					s.send(netip.AddrFrom4([4]byte{203, 0, 113, byte(j)}), web, 120, 0)
				}
			}
			s.tick(time.Second)
		}
		return fmt.Sprintf("%+v", s.all)
	}
	if a, b := run(), run(); a != b {
		t.Errorf("same input, different decisions")
	}
}

// A source first listed long after its kernel entry was created is rated
// over its whole life when the snapshot says when that was.
func TestFirstSeenSpreadsTheCount(t *testing.T) {
	d := New(DefaultConfig(), Options{})
	d.Observe(Snapshot{Time: t0})
	a := addr("192.0.2.10")
	dec := d.Observe(Snapshot{Time: t0.Add(10 * time.Second), Sources: []SourceCounters{{Addr: a, SYN: 300, FirstSeen: t0}}})
	if len(dec.Incidents) != 0 {
		t.Fatalf("300 SYNs over 10 s flagged: %+v", dec.Incidents)
	}
	dec = d.Observe(Snapshot{Time: t0.Add(11 * time.Second), Sources: []SourceCounters{{Addr: addr("192.0.2.11"), SYN: 300}}})
	if len(dec.Incidents) != 1 {
		t.Fatalf("300 SYNs new within 1 s not flagged: %+v", dec)
	}
}

// TestSuspectSinceRatesNewSourceOverItsLife: with partial snapshots, 100
// SYNs from a source unknown for 10 s rate as 10 SYN/s (TestSuspectFlags...
// above, not flagged); the kernel's first-seen time shows the run took 50 ms,
// so the same event flags the source at its real rate of about 2,000 SYN/s,
// and the incident says so.
func TestSuspectSinceRatesNewSourceOverItsLife(t *testing.T) {
	d := New(DefaultConfig(), Options{Enforce: true})
	d.Observe(Snapshot{Time: t0, Complete: true})
	for i := 1; i <= 10; i++ {
		d.Observe(Snapshot{Time: t0.Add(time.Duration(i) * time.Second)})
	}
	now := t0.Add(10*time.Second + 500*time.Millisecond)
	a := addr("203.0.113.20")
	dec := d.SuspectSince(now, a, 100, now.Add(-50*time.Millisecond))
	if len(dec.Incidents) != 1 || len(dec.Bans) != 1 {
		t.Fatalf("100 SYNs in the 50 ms since first seen: %+v", dec)
	}
	inc := dec.Incidents[0]
	if inc.SYNPerSecond < 1900 || inc.SYNPerSecond > 2100 {
		t.Errorf("rate %.0f SYN/s, want about 2000", inc.SYNPerSecond)
	}
	if !strings.Contains(inc.Reason, "since it was first seen") {
		t.Errorf("reason %q does not say what the rate is measured over", inc.Reason)
	}
	// A burst inside one kernel clock tick rates over the 10 ms floor, not
	// as infinite.
	b := addr("203.0.113.21")
	dec = d.SuspectSince(now, b, 100, now)
	if len(dec.Incidents) != 1 || dec.Incidents[0].SYNPerSecond > 10_001 {
		t.Fatalf("burst within one tick: %+v", dec)
	}
	// A first-seen time older than the last reading changes nothing.
	c := addr("203.0.113.22")
	if dec := d.SuspectSince(now, c, 100, t0.Add(-time.Hour)); !dec.Empty() {
		t.Errorf("old source flagged on a run spread over 10 s: %+v", dec)
	}
}
