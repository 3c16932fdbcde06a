package detector

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// Launch day (issue 12): a service with no history is judged against the
// absolute floors, a flood is never learned as its baseline, and a surge of
// sources that complete their handshakes is not a flood.

// spoofed sends n SYNs to v from n random addresses, none of which answers.
func spoofed(s *sim, r *rand.Rand, v netip.AddrPort, n int) {
	for range n {
		s.send(netip.AddrFrom4([4]byte{byte(1 + r.IntN(223)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))}), v, 1, 0)
	}
}

// crowd sends one completed connection (a SYN, then the handshake ACK and
// a few data ACKs) from each of n new sources, numbered from first.
func crowd(s *sim, v netip.AddrPort, first, n int) {
	for i := range n {
		j := first + i
		s.send(netip.AddrFrom4([4]byte{100, 64 + byte(j>>16), byte(j >> 8), byte(j)}), v, 1, 3)
	}
}

// requireOpenedWithin fails t unless a service incident for v opened at
// most d after from, and returns it.
func requireOpenedWithin(t *testing.T, s *sim, v netip.AddrPort, from time.Time, d time.Duration) Incident {
	t.Helper()
	inc, ok := openedServiceAt(s, v)
	if !ok {
		t.Fatalf("no service incident for %v", v)
	}
	if lag := inc.OpenedAt.Sub(from); lag > d {
		t.Errorf("incident opened %v after %v, want within %v", lag, from, d)
	}
	return inc
}

// openedServiceAt returns the first service incident opened for v.
func openedServiceAt(s *sim, v netip.AddrPort) (Incident, bool) {
	for _, dec := range s.all {
		for _, inc := range dec.Incidents {
			if inc.Kind == KindService && inc.Stage == StageOpened && inc.Addr == v.String() {
				return inc, true
			}
		}
	}
	return Incident{}, false
}

// The launch-day portal: the daemon is running, the service has never had
// a SYN, and a spoofed flood hits it from its first second. The incident
// opens at the first snapshot that sees the flood, and the flood is not
// learned: once it stops, the service has no baseline built from it.
func TestNewServiceFloodedFromFirstSecond(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	s := newSim(t, DefaultConfig(), Options{Enforce: true})
	portal := addrPort("10.0.0.1:8443")
	start := s.now
	for range 8 {
		spoofed(s, r, portal, 5000)
		clients(s, 3, 1) // real users keep booking
		s.tick(time.Second)
	}
	inc := requireOpenedWithin(t, s, portal, start, 2*time.Second)
	if !strings.Contains(inc.Reason, "judged against the floors") {
		t.Errorf("reason %q should say the service has no learned baseline", inc.Reason)
	}
	if sv := s.d.svcs[portal]; sv == nil || sv.w != 0 {
		t.Errorf("the flood was learned as the baseline: %+v", sv)
	}
}

// A daemon (re)started in the middle of a flood, with no saved baseline:
// its first snapshot holds cumulative counts of unknown age (a baseline,
// see the package doc); the next one, a poll later, opens the incident.
func TestDaemonStartedMidFlood(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	s := newSim(t, DefaultConfig(), Options{Enforce: true})
	portal := addrPort("10.0.0.1:8443")
	for range 5 {
		spoofed(s, r, portal, 5000)
		s.tick(time.Second)
	}
	// Restart: a fresh detector whose first snapshot sees the counters as
	// they are, mid-flood.
	s.d = New(DefaultConfig(), Options{Enforce: true})
	s.all = nil
	spoofed(s, r, portal, 5000)
	started := s.now
	s.tick(time.Second) // the new detector's baseline snapshot
	for range 3 {
		spoofed(s, r, portal, 5000)
		s.tick(time.Second)
	}
	requireOpenedWithin(t, s, portal, started, 2*time.Second)
}

// Property: after any prefix of normal traffic (none, seconds, minutes),
// a flood at or above the floors with a high half-open share opens a
// service incident within 2 s of its first SYN.
func TestPropertyFloodAfterAnyPrefixOpensWithin2s(t *testing.T) {
	cfg := DefaultConfig()
	for seed := range uint64(60) {
		r := rand.New(rand.NewPCG(seed, 12))
		s := newSim(t, cfg, Options{})
		v := addrPort("10.0.0.1:443")
		normal := []int{0, 1, 2, 5, 10, 30, 59, 61, 120, 400}[r.IntN(10)]
		users := r.IntN(40)
		for range normal {
			clients(s, users, uint64(1+r.IntN(5)))
			s.tick(time.Second)
		}
		// At least the floor on top of the normal traffic, up to 100x it.
		rate := int(cfg.ServiceSYNRate) + users*5 + r.IntN(100*int(cfg.ServiceSYNRate))
		start := s.now
		for range 3 {
			clients(s, users, 1)
			spoofed(s, r, v, rate)
			s.tick(time.Second)
		}
		inc, ok := openedServiceAt(s, v)
		if !ok || inc.OpenedAt.Sub(start) > 2*time.Second {
			t.Fatalf("seed %d: %ds of normal traffic (%d users), then %d SYN/s spoofed: incident %v at %v, want within 2s of %v",
				seed, normal, users, rate, ok, inc.OpenedAt, start)
		}
	}
}

// Property: a surge of new sources whose handshakes all complete never
// opens a flood incident and bans nothing, whatever came before it and
// however large it is (up to 100x the floor).
func TestPropertyCompletedSurgeIsNoFlood(t *testing.T) {
	cfg := DefaultConfig()
	for seed := range uint64(60) {
		r := rand.New(rand.NewPCG(seed, 13))
		s := newSim(t, cfg, Options{Enforce: true})
		v := addrPort("10.0.0.1:443")
		normal := []int{0, 1, 3, 10, 61, 300}[r.IntN(6)]
		users := r.IntN(30)
		for range normal {
			clients(s, users, uint64(1+r.IntN(3)))
			s.tick(time.Second)
		}
		next := 0
		for range 1 + r.IntN(10) {
			n := r.IntN(100 * int(cfg.ServiceSYNRate))
			crowd(s, v, next, n)
			next += n
			clients(s, users, 1)
			s.tick(time.Duration(500+r.IntN(1000)) * time.Millisecond)
		}
		for range 40 {
			clients(s, users, 1)
			s.tick(time.Second)
		}
		for _, dec := range s.all {
			if len(dec.Bans) > 0 {
				t.Fatalf("seed %d: a surge of completed handshakes banned %v", seed, dec.Bans)
			}
			for _, inc := range dec.Incidents {
				t.Fatalf("seed %d: a surge of completed handshakes opened %s incident: %s", seed, inc.Kind, inc.Reason)
			}
		}
	}
}

// Property: no incident's reason contradicts its own figures. Whatever
// the traffic (normal, floods, crowds, mixed, on fresh and learned
// services), every opened incident's smoothed rate and half-open share are
// at or above the thresholds it reports, and the reason quotes them.
func TestPropertyReasonMatchesFigures(t *testing.T) {
	cfg := DefaultConfig()
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 14))
		s := newSim(t, cfg, Options{})
		v := addrPort("10.0.0.1:443")
		users := r.IntN(40)
		next := 0
		for range 200 {
			clients(s, users, uint64(1+r.IntN(5)))
			switch r.IntN(6) {
			case 0:
				spoofed(s, r, v, r.IntN(3000))
			case 1:
				n := r.IntN(3000)
				crowd(s, v, next, n)
				next += n
			}
			s.tick(time.Duration(500+r.IntN(1000)) * time.Millisecond)
		}
		for _, dec := range s.all {
			for _, inc := range dec.Incidents {
				if inc.Stage != StageOpened {
					continue
				}
				if inc.SYNPerSecond < inc.SYNThreshold || inc.HalfOpenShare < inc.HalfOpenThreshold {
					t.Fatalf("seed %d: %s incident opened below its own thresholds: %.1f SYN/s (bar %.1f), %.2f half-open (bar %.2f): %s",
						seed, inc.Kind, inc.SYNPerSecond, inc.SYNThreshold, inc.HalfOpenShare, inc.HalfOpenThreshold, inc.Reason)
				}
				for _, quoted := range []string{num(inc.SYNPerSecond) + " SYN/s", pct(inc.HalfOpenShare) + " of the", num(inc.SYNThreshold) + " SYN/s"} {
					if !strings.Contains(inc.Reason, quoted) {
						t.Fatalf("seed %d: reason %q does not quote %q", seed, inc.Reason, quoted)
					}
				}
			}
		}
	}
}

func ExampleIncident_launchDay() {
	s := &sim{d: New(DefaultConfig(), Options{}), now: t0,
		src: map[netip.Addr]*SourceCounters{}, svc: map[netip.AddrPort]*ServiceCounters{},
		moved: map[netip.Addr]bool{}, drops: map[netip.Prefix]uint64{}, bans: map[netip.Prefix]Ban{}}
	s.d.Observe(Snapshot{Time: s.now})
	r := rand.New(rand.NewPCG(5, 6))
	spoofed(s, r, addrPort("10.0.0.1:8443"), 4000)
	for _, inc := range s.tick(time.Second).Incidents {
		fmt.Println(inc.Kind, inc.Stage, inc.Addr)
	}
	// Output: service opened 10.0.0.1:8443
}

// Issue 12, slow botnets: 40 unspoofed bots at 25 SYN/s each (1,000 SYN/s
// together, every one below the 50 SYN/s per-source bar) never complete a
// handshake. The service incident opens, and in enforce mode each bot is
// banned once it has sent through the flood for service_ban_after (5 s):
// aggregated into prefix bans like other bans. A real client that keeps
// retransmitting unanswered SYNs meanwhile is not banned, and a spoofed
// flood fills no ban table.
func TestSlowBotnetBannedAfterServiceBanAfter(t *testing.T) {
	cfg := DefaultConfig()
	s := newSim(t, cfg, Options{Enforce: true})
	v := addrPort("10.0.0.1:443")
	bot := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i / 10), byte(1 + i%10)}) }
	patient := addr("192.0.2.50")
	for range 5 {
		clients(s, 10, 2)
		s.tick(time.Second)
	}
	start := s.now
	var firstBan time.Time
	for sec := range 12 {
		clients(s, 10, 2)
		for i := range 40 {
			s.send(bot(i), v, 25, 0)
		}
		if sec == 0 || sec == 1 || sec == 3 || sec == 7 { // a browser's retransmissions
			s.send(patient, v, 6, 0)
		}
		dec := s.tick(time.Second)
		if len(dec.Bans) > 0 && firstBan.IsZero() {
			firstBan = s.now
		}
		if sec == 3 { // flagged as a flood, no bot banned yet
			ex := s.d.Explain(bot(0))
			if ex.Verdict != VerdictDistributed || !strings.Contains(ex.Text, "during the flood on 10.0.0.1:443") ||
				!strings.Contains(ex.Text, "verdict distributed: 41 distinct sources") {
				t.Errorf("explain of a slow bot during the flood: %s (verdict %q)", ex.Text, ex.Verdict)
			}
		}
	}
	if _, ok := openedServiceAt(s, v); !ok {
		t.Fatal("no service incident for 40 slow bots")
	}
	for i := range 40 {
		banned := false
		for p := range s.bans {
			banned = banned || p.Contains(bot(i))
		}
		if !banned {
			t.Errorf("bot %v not banned after 12 s of half-open SYNs", bot(i))
		}
	}
	if d := firstBan.Sub(start); d < cfg.ServiceBanAfter || d > cfg.ServiceBanAfter+2*time.Second {
		t.Errorf("first ban %v after the bots started, want service_ban_after (%v) to +2 s", d, cfg.ServiceBanAfter)
	}
	for p, b := range s.bans {
		if p.Contains(patient) || p.Contains(addr("10.1.0.10")) {
			t.Errorf("legitimate client banned: %v", b)
		}
		if !strings.Contains(b.Reason, "completed no handshake") && !strings.Contains(b.Reason, "flagged or banned sources in") {
			t.Errorf("ban %v reason %q does not say why", p, b.Reason)
		}
	}
	// Ten bots per /24: aggregated into prefix bans like the others.
	for i := 0; i < 40; i += 10 {
		if p, _ := bot(i).Prefix(24); s.bans[p].Prefix != p {
			t.Errorf("the ten bots in %v were not aggregated into one ban: %v", p, s.bans)
		}
	}
	if len(s.bans) > cfg.MaxBans {
		t.Errorf("%d bans over max_bans", len(s.bans))
	}

	// A spoofed flood of the same length bans nothing.
	r := rand.New(rand.NewPCG(21, 22))
	s2 := newSim(t, cfg, Options{Enforce: true})
	for range 12 {
		clients(s2, 10, 2)
		spoofed(s2, r, v, 3000)
		s2.tick(time.Second)
	}
	if _, ok := openedServiceAt(s2, v); !ok {
		t.Fatal("no service incident for the spoofed flood")
	}
	for _, dec := range s2.all {
		if len(dec.Bans) > 0 {
			t.Fatalf("spoofed flood banned %v", dec.Bans)
		}
	}
}

// Issue 12: a flash crowd the server cannot take (its listen queue
// overflows, the kernel drops handshakes) is an overload, a capacity
// problem: an incident of kind overload that says so, with the completion
// share, the distinct and new sources and the kernel's drops, and no ban.
// It resolves once the kernel stops dropping.
func TestFlashCrowdOnSmallBacklogIsOverload(t *testing.T) {
	cfg := DefaultConfig()
	s := newSim(t, cfg, Options{Enforce: true})
	v := addrPort("10.0.0.1:443")
	for range 30 {
		clients(s, 5, 1)
		s.tick(time.Second)
	}
	next := 0
	for range 5 {
		clients(s, 5, 1)
		crowd(s, v, next, 600) // each completes its handshake
		next += 600
		s.kernel.ListenOverflows += 80
		s.kernel.ListenDrops += 80
		s.kernel.Listeners = []Listener{{Addr: addrPort("0.0.0.0:443"), Backlog: 64, MaxBacklog: 64}}
		s.tick(time.Second)
	}
	for range 40 {
		clients(s, 5, 1)
		s.tick(time.Second)
	}
	var opened, resolved *Incident
	for _, dec := range s.all {
		if len(dec.Bans) > 0 {
			t.Fatalf("overload banned %v", dec.Bans)
		}
		for _, inc := range dec.Incidents {
			if inc.Kind != KindOverload {
				t.Fatalf("%s incident for a flash crowd: %s", inc.Kind, inc.Reason)
			}
			switch inc.Stage {
			case StageOpened:
				opened = &inc
			case StageResolved:
				resolved = &inc
			}
		}
	}
	if opened == nil || resolved == nil || opened.ID != resolved.ID {
		t.Fatalf("want one overload incident opened and resolved, got %+v / %+v", opened, resolved)
	}
	if opened.Verdict != VerdictOverload || opened.Addr != v.String() || opened.CompletionShare < 0.9 ||
		opened.DistinctSources < 600 || opened.NewSources < 600 || opened.Kernel.ListenOverflows == 0 {
		t.Errorf("overload figures: verdict %s addr %s completion %.2f sources %d new %d kernel %+v",
			opened.Verdict, opened.Addr, opened.CompletionShare, opened.DistinctSources, opened.NewSources, opened.Kernel)
	}
	for _, want := range []string{"capacity, not an attack", "nothing banned", "listen backlog", "more workers"} {
		if !strings.Contains(opened.Reason, want) {
			t.Errorf("reason %q does not say %q", opened.Reason, want)
		}
	}
	if !strings.Contains(opened.Kernel.Summary, "accept queue 64/64") {
		t.Errorf("kernel summary %q lacks the listener's queue", opened.Kernel.Summary)
	}
	if !strings.Contains(opened.VerdictText(), "capacity, not an attack") {
		t.Errorf("verdict text %q", opened.VerdictText())
	}
	if s.d.UnderFlood(v) {
		t.Error("an overload switched on flood protection")
	}

	// The same kernel drops under a spoofed flood are a flood, not an
	// overload.
	r := rand.New(rand.NewPCG(31, 32))
	s2 := newSim(t, cfg, Options{Enforce: true})
	for range 5 {
		clients(s2, 5, 1)
		spoofed(s2, r, v, 3000)
		s2.kernel.ListenDrops += 300
		s2.tick(time.Second)
	}
	for _, dec := range s2.all {
		for _, inc := range dec.Incidents {
			if inc.Kind == KindOverload {
				t.Errorf("spoofed flood reported as overload: %s", inc.Reason)
			}
		}
	}
	if !s2.d.UnderFlood(v) {
		t.Error("spoofed flood with kernel drops not flagged as a flood")
	}
}

// With a million sources the daemon's full scans come about every 40 s,
// beyond resolve_after (30 s), and a source below the early-warning run is
// read only by them. Its incident must stay open between two scans while
// it keeps sending (no resolve, no second "opened"), and resolve at the
// first complete scan that shows it quiet.
func TestSourceIncidentSurvivesSparseFullScans(t *testing.T) {
	d := New(DefaultConfig(), Options{})
	a := addr("203.0.113.77")
	now := t0
	d.Observe(Snapshot{Time: now, Complete: true})
	syn := uint64(0)
	var decs []Decisions
	scan := func(sending bool) {
		if sending {
			syn += 40 * 60 // 60 SYN/s over the 40 s since the last scan
		}
		now = now.Add(time.Second)
		var srcs []SourceCounters
		if sending {
			srcs = []SourceCounters{{Addr: a, SYN: syn}}
		}
		decs = append(decs, d.Observe(Snapshot{Time: now, Complete: true, Sources: srcs}))
	}
	partial := func(n int) {
		for range n {
			now = now.Add(time.Second)
			decs = append(decs, d.Observe(Snapshot{Time: now}))
		}
	}
	// The first scan rates the source over the interval before it; later
	// ones over the 40 s in between.
	syn = 120
	now = now.Add(time.Second)
	decs = append(decs, d.Observe(Snapshot{Time: now, Complete: true, Sources: []SourceCounters{{Addr: a, SYN: syn}}}))
	for range 3 {
		partial(39)
		scan(true)
	}
	stages := func() (opened, resolved int) {
		for _, dec := range decs {
			for _, inc := range dec.Incidents {
				switch inc.Stage {
				case StageOpened:
					opened++
				case StageResolved:
					resolved++
				}
			}
		}
		return
	}
	if o, r := stages(); o != 1 || r != 0 {
		t.Fatalf("source still sending between sparse scans: %d opened, %d resolved; want 1 and 0", o, r)
	}
	partial(39)
	scan(false) // the scan shows it quiet
	if o, r := stages(); o != 1 || r != 1 {
		t.Errorf("after a quiet scan: %d opened, %d resolved; want 1 and 1", o, r)
	}
}

// Live, the daemon's scans leave out sources with a handful of SYNs, so a
// spoofed flood shows only in the service's counters: its verdict is
// spoofed on the untracked share. Once real senders are read (a later
// scan of slow bots), the verdict turns distributed, as an update at once.
func TestVerdictFromUntrackedSYNs(t *testing.T) {
	d := New(DefaultConfig(), Options{})
	v := addrPort("10.0.0.1:443")
	now := t0
	d.Observe(Snapshot{Time: now})
	syn := uint64(0)
	var opened *Incident
	for range 3 {
		now, syn = now.Add(time.Second), syn+50_000
		for _, inc := range d.Observe(Snapshot{Time: now, Services: []ServiceCounters{{Addr: v, SYN: syn}}}).Incidents {
			if inc.Stage == StageOpened {
				opened = &inc
			}
		}
	}
	if opened == nil || opened.Verdict != VerdictSpoofed || opened.UntrackedSYNShare < 0.99 ||
		!strings.Contains(opened.VerdictText(), "too few SYNs to be tracked") {
		t.Fatalf("spoofed flood seen in the service counters only: %+v", opened)
	}

	// Slow bots: the service incident opens before any scan reads them;
	// the first scan that does turns the verdict distributed at once.
	d2 := New(DefaultConfig(), Options{})
	now = t0
	d2.Observe(Snapshot{Time: now})
	bots := make([]SourceCounters, 40)
	for i := range bots {
		bots[i].Addr = netip.AddrFrom4([4]byte{198, 18, 0, byte(1 + i)})
		bots[i].FirstSeen = t0 // as the kernel entry says
	}
	syn = 0
	var verdicts []Verdict
	for sec := range 6 {
		now, syn = now.Add(time.Second), syn+1000
		snap := Snapshot{Time: now, Services: []ServiceCounters{{Addr: v, SYN: syn}}}
		for i := range bots {
			bots[i].SYN += 25
		}
		if sec >= 3 { // the first full scan
			snap.Sources, snap.Complete = bots, true
		}
		for _, inc := range d2.Observe(snap).Incidents {
			verdicts = append(verdicts, inc.Verdict)
		}
	}
	if len(verdicts) < 2 || verdicts[0] != VerdictSpoofed || verdicts[len(verdicts)-1] != VerdictDistributed {
		t.Errorf("slow bots' verdicts as emitted: %v, want spoofed at opening, then distributed once scanned", verdicts)
	}
}

// An open overload incident survives a restart (State, Restore): it keeps
// its id, opens no second time, and resolves once the drops have stopped.
func TestOverloadIncidentSurvivesRestore(t *testing.T) {
	s := newSim(t, DefaultConfig(), Options{Enforce: true})
	v := addrPort("10.0.0.1:443")
	for i := range 3 {
		crowd(s, v, i*600, 600)
		s.kernel.PassiveOpens += 550 // a real kernel's counters are never all zero
		s.kernel.ListenDrops += 50
		s.tick(time.Second)
	}
	inc, ok := func() (Incident, bool) {
		for _, dec := range s.all {
			for _, in := range dec.Incidents {
				if in.Kind == KindOverload && in.Stage == StageOpened {
					return in, true
				}
			}
		}
		return Incident{}, false
	}()
	if !ok {
		t.Fatal("no overload incident")
	}
	d := New(DefaultConfig(), Options{Enforce: true})
	if err := d.Restore(s.d.State()); err != nil {
		t.Fatal(err)
	}
	s.d, s.all = d, nil
	s.tick(time.Second) // the restored detector's baseline
	for range 40 {
		crowd(s, v, 10_000, 1)
		s.tick(time.Second)
	}
	var stages []Stage
	for _, dec := range s.all {
		for _, in := range dec.Incidents {
			if in.ID != inc.ID {
				t.Fatalf("after the restore: incident %s (%s, %s), want only %s", in.ID, in.Kind, in.Stage, inc.ID)
			}
			stages = append(stages, in.Stage)
		}
	}
	if len(stages) == 0 || stages[len(stages)-1] != StageResolved || slices.Contains(stages, StageOpened) {
		t.Errorf("restored overload incident's stages %v, want it to resolve without opening again", stages)
	}
}

// After a restart (State, Restore) in the middle of a slow botnet's
// flood, the bots are still banned once they have sent for
// service_ban_after: the restored flood epoch starts when time is known
// again, not at zero.
func TestSlowBotnetBannedAfterRestore(t *testing.T) {
	cfg := DefaultConfig()
	s := newSim(t, cfg, Options{Enforce: true})
	v := addrPort("10.0.0.1:443")
	bot := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i / 10), byte(1 + i%10)}) }
	send := func() {
		clients(s, 5, 2)
		for i := range 40 {
			s.send(bot(i), v, 25, 0)
		}
		s.tick(time.Second)
	}
	for range 3 {
		send()
	}
	if !s.d.UnderFlood(v) || len(s.bans) != 0 {
		t.Fatalf("before the restart: under flood %v, bans %v; want a flood and no ban yet", s.d.UnderFlood(v), s.bans)
	}
	d := New(cfg, Options{Enforce: true})
	if err := d.Restore(s.d.State()); err != nil {
		t.Fatal(err)
	}
	s.d = d
	for range 10 {
		send()
	}
	for i := range 40 {
		banned := false
		for p := range s.bans {
			banned = banned || p.Contains(bot(i))
		}
		if !banned {
			t.Fatalf("bot %v not banned 10 s after a restore mid-flood (bans %v)", bot(i), s.bans)
		}
	}
}

// The kernel's drops are the host's. A busy service at its normal rate
// with a stray drop now and then, or a busy service beside another one
// under a flood, is not an overload.
func TestNoOverloadFromStrayOrForeignDrops(t *testing.T) {
	cfg := DefaultConfig()
	s := newSim(t, cfg, Options{Enforce: true})
	busy := addrPort("10.0.0.1:443")
	for sec := range 120 {
		crowd(s, busy, sec*300, 300) // 300 new completing clients a second
		s.kernel.PassiveOpens += 300
		if sec%20 == 0 {
			s.kernel.ListenDrops++ // a stray drop
		}
		s.tick(time.Second)
	}
	// Another service is flooded; the kernel drops hundreds a second.
	r := rand.New(rand.NewPCG(41, 42))
	for sec := range 10 {
		crowd(s, busy, 40_000+sec*300, 300)
		spoofed(s, r, addrPort("10.0.0.1:8443"), 5000)
		s.kernel.PassiveOpens += 300
		s.kernel.ListenDrops += 500
		s.tick(time.Second)
	}
	for _, dec := range s.all {
		for _, inc := range dec.Incidents {
			if inc.Kind == KindOverload {
				t.Fatalf("overload incident for %s: %s", inc.Addr, inc.Reason)
			}
		}
	}
	if !s.d.UnderFlood(addrPort("10.0.0.1:8443")) {
		t.Error("the flooded service was not flagged")
	}
}
