package detector

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func banConfig() Config {
	c := DefaultConfig()
	c.BanBase = time.Minute
	c.BanFactor = 3
	c.BanMax = 5 * time.Minute
	c.BanGrace = 20 * time.Second
	c.ResolveAfter = 10 * time.Second
	return c
}

// run simulates seconds of traffic: flood(i) says whether the attacker
// floods in second i.
func run(s *sim, from, to int, flood func(i int) bool, attackers ...netip.Addr) {
	for i := from; i < to; i++ {
		clients(s, 5, 10)
		if flood(i) {
			for _, a := range attackers {
				s.send(a, web, 300, 0)
			}
		}
		s.tick(time.Second)
	}
}

func bansOf(s *sim) []Ban {
	var r []Ban
	for _, dec := range s.all {
		r = append(r, dec.Bans...)
	}
	return r
}

func TestObserveModeBansNothing(t *testing.T) {
	s := newSim(t, banConfig(), Options{Enforce: false})
	run(s, 0, 30, func(int) bool { return true }, addr("203.0.113.1"))
	if len(s.opened(KindSource)) != 1 || len(bansOf(s)) != 0 {
		t.Errorf("observe mode: %d incidents, bans %v; want 1 incident, no bans", len(s.opened(KindSource)), bansOf(s))
	}
	if e := s.d.Explain(addr("203.0.113.1")); !e.Flagged || e.Ban != nil || !strings.Contains(e.Text, "observe mode") {
		t.Errorf("explain: %+v", e)
	}
}

func TestBanRenewedWhileSendingLiftedAfterGrace(t *testing.T) {
	cfg := banConfig()
	s := newSim(t, cfg, Options{Enforce: true})
	a := addr("203.0.113.1")
	// Floods for 150 s: the 1-minute ban must be renewed twice, the kernel
	// drop counters being the only sign of life while it is banned.
	run(s, 0, 150, func(i int) bool { return true }, a)
	bans := bansOf(s)
	if len(bans) < 3 || bans[0].Prefix != netip.MustParsePrefix("203.0.113.1/32") || bans[0].Offence != 1 {
		t.Fatalf("bans %+v, want a /32 ban renewed at least twice", bans)
	}
	for _, b := range bans[1:] {
		if b.Offence != 1 || !b.Until.After(bans[0].Until) {
			t.Errorf("renewal %+v: want same offence, later expiry", b)
		}
	}
	if _, ok := s.bans[netip.MustParsePrefix("203.0.113.1/32")]; !ok {
		t.Fatalf("ban lapsed while the source was still sending")
	}
	if len(s.opened(KindSource)) != 1 {
		t.Errorf("incidents %v, want one that stays open while banned and sending", s.opened(KindSource))
	}
	// Quiet: lifted once expired and quiet for the grace period.
	stop := s.now
	run(s, 150, 400, func(int) bool { return false }, a)
	var lifted time.Time
	for i, dec := range s.all {
		for _, p := range dec.Unbans {
			if p == netip.MustParsePrefix("203.0.113.1/32") {
				lifted = t0.Add(time.Duration(i) * time.Second)
			}
		}
	}
	if lifted.IsZero() {
		t.Fatalf("ban never lifted")
	}
	if lifted.Sub(stop) < cfg.BanGrace || lifted.Sub(stop) > cfg.BanMax+cfg.BanGrace {
		t.Errorf("lifted %v after the flood stopped, want between grace %v and %v", lifted.Sub(stop), cfg.BanGrace, cfg.BanMax+cfg.BanGrace)
	}
	var resolved bool
	for _, dec := range s.all {
		for _, inc := range dec.Incidents {
			resolved = resolved || inc.Stage == StageResolved
		}
	}
	if !resolved {
		t.Errorf("incident not resolved after the flood stopped")
	}
}

// Once banned, a source's packets are dropped before they are counted, so
// its SYN figures stop moving; the incident's drop rate, from the kernel's
// per-ban counters, says how hard it still pushes, and falls to 0 when it
// stops.
func TestBannedIncidentReportsDropRate(t *testing.T) {
	s := newSim(t, banConfig(), Options{Enforce: true})
	a := addr("203.0.113.1")
	sourceIncident := func() Incident {
		t.Helper()
		for _, inc := range s.d.Open() {
			if inc.Kind == KindSource && inc.Source == a {
				return inc
			}
		}
		t.Fatalf("no open incident for %s", a)
		return Incident{}
	}
	run(s, 0, 10, func(int) bool { return true }, a)
	if len(bansOf(s)) == 0 {
		t.Fatal("never banned")
	}
	// dropsFor is the figures a decision reports for the incident.
	dropsFor := func(dec Decisions, id string) (IncidentDrops, bool) {
		for _, x := range dec.Drops {
			if x.ID == id {
				return x, true
			}
		}
		return IncidentDrops{}, false
	}
	// 300 SYN/s and 2 s ticks: 600 drops per tick.
	var dec Decisions
	for range 3 {
		s.send(a, web, 600, 0)
		dec = s.tick(2 * time.Second)
	}
	inc := sourceIncident()
	if inc.DroppedPerSecond != 300 {
		t.Errorf("dropped_per_second %v while banned and flooding at 300/s, want 300", inc.DroppedPerSecond)
	}
	if inc.Dropped < 3*600 {
		t.Errorf("dropped %d, want at least %d", inc.Dropped, 3*600)
	}
	if x, ok := dropsFor(dec, inc.ID); !ok || x.PerSecond != 300 || x.Dropped != inc.Dropped {
		t.Errorf("decision drops %+v (reported %v), want %d at 300/s", x, ok, inc.Dropped)
	}
	if x, ok := dropsFor(s.tick(time.Second), inc.ID); !ok || x.PerSecond != 0 {
		t.Errorf("decision drops %+v (reported %v) after the source went quiet, want a report of 0/s", x, ok)
	}
	if inc := sourceIncident(); inc.DroppedPerSecond != 0 {
		t.Errorf("dropped_per_second %v after the source went quiet, want 0", inc.DroppedPerSecond)
	}
	if _, ok := dropsFor(s.tick(time.Second), inc.ID); ok {
		t.Error("drops reported again while nothing changed")
	}
}

func TestBanEscalatesForRepeatOffenders(t *testing.T) {
	cfg := banConfig()
	cfg.BanGrace = 0
	s := newSim(t, cfg, Options{Enforce: true})
	a := addr("203.0.113.1")
	var lengths []time.Duration
	for round := range 4 {
		start := round * 600
		run(s, start, start+600, func(i int) bool { return i < start+3 }, a)
	}
	for _, b := range bansOf(s) {
		lengths = append(lengths, b.Until.Sub(b.From))
		if b.Offence != len(lengths) {
			t.Errorf("ban %d has offence %d", len(lengths), b.Offence)
		}
	}
	want := []time.Duration{time.Minute, 3 * time.Minute, 5 * time.Minute, 5 * time.Minute}
	if len(lengths) != len(want) {
		t.Fatalf("ban lengths %v, want %v", lengths, want)
	}
	for i := range want {
		if lengths[i] != want[i] {
			t.Errorf("ban lengths %v, want %v (base 1m, factor 3, max 5m)", lengths, want)
			break
		}
	}
}

func TestProtectedNeverBanned(t *testing.T) {
	gw := addr("10.1.0.1")
	ssh := addr("198.51.100.22")
	s := newSim(t, banConfig(), Options{Enforce: true, Protected: []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/24"), netip.PrefixFrom(ssh, 32)}})
	run(s, 0, 20, func(int) bool { return true }, gw, ssh, addr("203.0.113.9"))
	for _, b := range bansOf(s) {
		if b.Prefix.Contains(gw) || b.Prefix.Contains(ssh) {
			t.Errorf("protected address banned: %+v", b)
		}
	}
	inc := s.opened(KindSource)["10.1.0.1"]
	if !strings.Contains(inc.Reason, "not banned: 10.1.0.1 is protected by 10.1.0.0/24") {
		t.Errorf("incident for a protected source does not say why it is not banned: %q", inc.Reason)
	}
	if e := s.d.Explain(ssh); e.ProtectedBy == nil || e.Ban != nil {
		t.Errorf("explain %+v", e)
	}
	// Protecting a banned address later lifts its ban at once.
	dec := s.d.SetProtected(s.now, []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")})
	if len(dec.Unbans) != 1 || dec.Unbans[0] != netip.MustParsePrefix("203.0.113.9/32") {
		t.Errorf("SetProtected: %+v, want the ban of 203.0.113.9 lifted", dec)
	}
}

func TestPrefixAggregationAndCap(t *testing.T) {
	cfg := banConfig()
	cfg.AggregateSources = 4
	cfg.MaxBans = 6
	s := newSim(t, cfg, Options{Enforce: true})
	var attackers []netip.Addr
	for i := range 6 {
		attackers = append(attackers, netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)}))
	}
	for i := range 8 {
		attackers = append(attackers, netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}))
	}
	for i := range 4 {
		attackers = append(attackers, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, byte(i + 1)}))
	}
	run(s, 0, 5, func(int) bool { return true }, attackers...)
	want := map[string]bool{"203.0.113.0/24": true, "192.0.2.0/24": true, "2001:db8:0:7::/64": true}
	for p := range s.bans {
		if !want[p.String()] {
			t.Errorf("active ban %v, want only the aggregated prefixes %v", p, want)
		}
	}
	if len(s.bans) != 3 {
		t.Errorf("active bans %v", s.bans)
	}
	// Cap: with MaxBans 1 and no aggregation, the second source is not banned.
	cfg.AggregateSources = 0
	cfg.MaxBans = 1
	s = newSim(t, cfg, Options{Enforce: true})
	run(s, 0, 5, func(int) bool { return true }, attackers[0], attackers[6])
	if len(s.bans) != 1 {
		t.Errorf("bans %v beyond max_bans 1", s.bans)
	}
	capped := 0
	for _, inc := range s.opened(KindSource) {
		if strings.Contains(inc.Reason, "not banned: the ban cap (max_bans 1) is reached") {
			capped++
		}
	}
	if capped != 1 {
		t.Errorf("%d incidents say the cap is reached, want 1: %v", capped, s.opened(KindSource))
	}
}

// An aggregate never covers a protected address: the sources are banned
// one by one instead.
func TestNoAggregateOverProtected(t *testing.T) {
	cfg := banConfig()
	cfg.AggregateSources = 2
	s := newSim(t, cfg, Options{Enforce: true, Protected: []netip.Prefix{netip.MustParsePrefix("203.0.113.1/32")}})
	run(s, 0, 5, func(int) bool { return true }, addr("203.0.113.10"), addr("203.0.113.11"), addr("203.0.113.12"))
	if len(s.bans) != 3 {
		t.Errorf("bans %v, want three /32", s.bans)
	}
	for p := range s.bans {
		if p.Bits() != 32 {
			t.Errorf("ban %v covers a protected address", p)
		}
	}
}

func TestIncidentLifecycleAndIDs(t *testing.T) {
	cfg := banConfig()
	cfg.UpdateEvery = 5 * time.Second
	s := newSim(t, cfg, Options{Host: "web1"})
	a := addr("203.0.113.1")
	run(s, 0, 60, func(i int) bool { return i >= 3 && i < 20 }, a)
	var stages []Stage
	ids := map[string]bool{}
	for _, dec := range s.all {
		for _, inc := range dec.Incidents {
			stages = append(stages, inc.Stage)
			ids[inc.ID] = true
		}
	}
	if len(ids) != 1 || stages[0] != StageOpened || stages[len(stages)-1] != StageResolved {
		t.Fatalf("stages %v ids %v: want one id, opened ... resolved", stages, ids)
	}
	updates := len(stages) - 2
	if updates < 2 || updates > 5 {
		t.Errorf("%d updates over a 17 s incident with update_every 5s", updates)
	}
	for id := range ids {
		if !strings.HasPrefix(id, "web1-") {
			t.Errorf("id %q does not name the host", id)
		}
	}
	if len(s.d.Open()) != 0 {
		t.Errorf("open incidents after resolution: %v", s.d.Open())
	}
	// Same flood again later: a new incident with a new id.
	run(s, 60, 100, func(i int) bool { return i >= 70 && i < 75 }, a)
	n := 0
	for _, dec := range s.all {
		for _, inc := range dec.Incidents {
			if inc.Stage == StageOpened {
				n++
				if n == 2 && ids[inc.ID] {
					t.Errorf("second incident reuses id %s", inc.ID)
				}
			}
		}
	}
	if n != 2 {
		t.Errorf("%d incidents opened, want 2: %v", n, stagesOf(s.all))
		for _, dec := range s.all {
			for _, inc := range dec.Incidents {
				t.Logf("%v %s %s %s", inc.UpdatedAt.Sub(t0), inc.Stage, inc.ID, inc.Reason)
			}
		}
	}
}

// A restart restores bans (with their expiry), escalation history and open
// incidents: a continuing flood neither re-opens the incident nor resets
// the ban timer, and the resolution keeps the id.
func TestStateSurvivesRestart(t *testing.T) {
	cfg := banConfig()
	s := newSim(t, cfg, Options{Enforce: true})
	a := addr("203.0.113.1")
	run(s, 0, 10, func(int) bool { return true }, a)
	open := s.d.Open()
	if len(open) != 1 {
		t.Fatalf("open %v", open)
	}
	raw, err := json.Marshal(s.d.State())
	if err != nil {
		t.Fatal(err)
	}
	var st State
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	d2 := New(cfg, Options{Enforce: true})
	if err := d2.Restore(st); err != nil {
		t.Fatal(err)
	}
	if got := d2.Open(); len(got) != 1 || got[0].ID != open[0].ID {
		t.Fatalf("restored open incidents %v, want %s", got, open[0].ID)
	}
	if e := d2.Explain(a); e.Ban == nil || !e.Ban.Until.Equal(s.bans[netip.PrefixFrom(a, 32)].Until) {
		t.Fatalf("restored ban %+v, want until %v", e.Ban, s.bans[netip.PrefixFrom(a, 32)].Until)
	}
	s.d = d2
	s.d.Observe(Snapshot{Time: s.now}) // the restarted daemon's first (baseline) snapshot
	run(s, 10, 200, func(i int) bool { return i < 40 }, a)
	for _, dec := range s.all[10:] {
		for _, inc := range dec.Incidents {
			if inc.ID != open[0].ID || inc.Stage == StageOpened {
				t.Errorf("after restart: %s %s, want only updates/resolution of %s", inc.Stage, inc.ID, open[0].ID)
			}
		}
	}
	if !strings.Contains(strings.Join(stagesOf(s.all[10:]), ","), "resolved") {
		t.Errorf("restored incident never resolved")
	}
	st.Version = 9
	if err := New(cfg, Options{}).Restore(st); err == nil {
		t.Errorf("unknown state version accepted")
	}
}

func stagesOf(all []Decisions) []string {
	var r []string
	for _, dec := range all {
		for _, inc := range dec.Incidents {
			r = append(r, string(inc.Stage))
		}
	}
	return r
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	cases := []struct {
		key string
		mod func(*Config)
	}{
		{"detector.window", func(c *Config) { c.Window = 0 }},
		{"detector.source_syn_rate", func(c *Config) { c.SourceSYNRate = -1 }},
		{"detector.source_half_open", func(c *Config) { c.SourceHalfOpen = 1.5 }},
		{"detector.ban_factor", func(c *Config) { c.BanFactor = 0.5 }},
		{"detector.ban_max", func(c *Config) { c.BanMax = c.BanBase - 1 }},
		{"detector.max_bans", func(c *Config) { c.MaxBans = 0 }},
		{"detector.aggregate_v4_bits", func(c *Config) { c.AggregateV4Bits = 33 }},
		{"detector.max_sources", func(c *Config) { c.MaxSources = 10 }},
		{"detector.suspect_syns", func(c *Config) { c.SuspectSYNs = 0 }},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		tc.mod(&c)
		err := c.Validate()
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Key != tc.key || !strings.Contains(err.Error(), "allowed") {
			t.Errorf("%s: got %v", tc.key, err)
		}
	}
}

// Beyond max_incidents a flagged source is still banned, without an
// incident of its own, and unflagged once quiet.
func TestIncidentCap(t *testing.T) {
	cfg := banConfig()
	cfg.MaxIncidents = 1
	s := newSim(t, cfg, Options{Enforce: true})
	a, b := addr("203.0.113.1"), addr("198.51.100.1")
	run(s, 0, 5, func(int) bool { return true }, a, b)
	if len(s.opened(KindSource)) != 1 || len(s.bans) != 2 {
		t.Fatalf("incidents %v bans %v: want 1 incident, 2 bans", s.opened(KindSource), s.bans)
	}
	run(s, 5, 400, func(int) bool { return false }, a, b)
	for _, x := range []netip.Addr{a, b} {
		if e := s.d.Explain(x); e.Flagged || e.Ban != nil {
			t.Errorf("%v still flagged or banned after quiet: %s", x, e.Text)
		}
	}
	if len(s.d.aggCount) != 0 {
		t.Errorf("aggregation counts leak: %v", s.d.aggCount)
	}
}

// A service incident restored from state keeps counting distinct senders:
// the restored flood epoch must differ from the one every source starts in.
func TestRestoredServiceIncidentCountsDistinctSources(t *testing.T) {
	cfg := DefaultConfig()
	s := newSim(t, cfg, Options{Enforce: true})
	spoof := func(i int) {
		for j := range 3000 {
			s.send(netip.AddrFrom4([4]byte{198, byte(i), byte(j >> 8), byte(j)}), web, 1, 0)
		}
	}
	for i := range 25 {
		clients(s, 20, 10)
		if i >= 20 {
			spoof(i)
		}
		s.tick(time.Second)
	}
	if len(s.opened(KindService)) != 1 {
		t.Fatalf("service incidents %v, want one", s.opened(KindService))
	}
	st := s.d.State()
	s.d = New(cfg, Options{Enforce: true})
	if err := s.d.Restore(st); err != nil {
		t.Fatal(err)
	}
	for i := 25; i < 28; i++ {
		clients(s, 20, 10)
		spoof(i)
		s.tick(time.Second)
	}
	found := false
	for _, inc := range s.d.Open() {
		if inc.Kind != KindService {
			continue
		}
		found = true
		if inc.DistinctSources < 3000 {
			t.Errorf("restored service incident counts %d distinct sources after 3 s of 3,000 new ones a second", inc.DistinctSources)
		}
	}
	if !found {
		t.Error("the service incident did not survive the restore")
	}
}

// Lift forgets an operator-lifted ban but keeps the offence: the next
// flood is banned again, as a second offence.
func TestLiftThenRenewedFloodBansAgain(t *testing.T) {
	s := newSim(t, DefaultConfig(), Options{Enforce: true})
	a := addr("203.0.113.9")
	host := netip.PrefixFrom(a, 32)
	for range 3 {
		s.send(a, web, 500, 0)
		s.tick(time.Second)
	}
	if _, ok := s.bans[host]; !ok {
		t.Fatal("not banned")
	}
	if !s.d.Lift(host) || s.d.Lift(host) {
		t.Fatal("Lift reports the ban once, then no more")
	}
	delete(s.bans, host) // the operator's unblock, in the kernel
	if ex := s.d.Explain(a); ex.Ban != nil {
		t.Fatalf("explain after Lift: %+v", ex.Ban)
	}
	// The flood has stopped: its smoothed rate, still above the bar for
	// seconds, does not ban the source again.
	for range 2 {
		s.send(a, web, 0, 0)
		if dec := s.tick(250 * time.Millisecond); len(dec.Bans) > 0 {
			t.Fatalf("re-banned on the old figures right after Lift: %+v", dec.Bans)
		}
	}
	var again *Ban
	for range 3 {
		s.send(a, web, 500, 0)
		for _, b := range s.tick(time.Second).Bans {
			if b.Prefix == host {
				again = &b
			}
		}
	}
	if again == nil || again.Offence != 2 {
		t.Fatalf("renewed flood after Lift: ban %+v, want a second offence", again)
	}
}
