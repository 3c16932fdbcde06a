package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"

	"github.com/synguard/synguard/internal/frame"
)

// Test addresses: our 10.200.10.0/24 and documentation IPv6.
var (
	cli4 = netip.MustParseAddrPort("10.200.10.2:40000")
	srv4 = netip.MustParseAddrPort("10.200.10.1:80")
	cli6 = netip.MustParseAddrPort("[2001:db8:10::2]:40000")
	srv6 = netip.MustParseAddrPort("[2001:db8:10::1]:443")
)

const (
	hopByHop = layers.IPProtocolIPv6HopByHop
	routing  = layers.IPProtocolIPv6Routing
	destOpts = layers.IPProtocolIPv6Destination
	fragment = layers.IPProtocolIPv6Fragment
)

// mutate returns a copy of b with f applied.
func mutate(b []byte, f func(b []byte)) []byte {
	c := append([]byte(nil), b...)
	f(c)
	return c
}

func syn(t frame.TCP) frame.TCP { t.Flags = frame.FlagSYN; return t }

func TestClassifyFrames(t *testing.T) {
	d := loadForTest(t, Options{})
	v4 := frame.TCP{Src: cli4, Dst: srv4}
	v6 := frame.TCP{Src: cli6, Dst: srv6}
	withExt := func(t frame.TCP, ext ...layers.IPProtocol) frame.TCP { t.IPv6Ext = ext; return t }
	withVLANs := func(t frame.TCP, vids []uint16, tpids ...layers.EthernetType) frame.TCP {
		t.VLANs, t.VLANTPIDs = vids, tpids
		return t
	}
	flags := func(t frame.TCP, f frame.Flags) frame.TCP { t.Flags = f; return t }
	frag := func(t frame.TCP, off uint16, mf bool) frame.TCP { t.FragOffset, t.MoreFragments = off, mf; return t }
	const (
		q  = layers.EthernetTypeDot1Q
		ad = layers.EthernetTypeQinQ
	)
	sixExt := []layers.IPProtocol{hopByHop, destOpts, routing, fragment, destOpts, destOpts}
	sevenExt := append(append([]layers.IPProtocol(nil), sixExt...), destOpts)
	synV4 := syn(v4).Build()
	synV6 := syn(v6).Build()

	tests := []struct {
		name  string
		frame []byte
		kind  string
	}{
		{"ipv4 syn", synV4, "SYN"},
		{"ipv4 syn with options", frame.TCP{Src: cli4, Dst: srv4, Flags: frame.FlagSYN, Options: true}.Build(), "SYN"},
		{"ipv4 syn padded to 60 bytes", frame.TCP{Src: cli4, Dst: srv4, Flags: frame.FlagSYN, Pad: true}.Build(), "SYN"},
		{"ipv4 syn with ip options", frame.TCP{Src: cli4, Dst: srv4, Flags: frame.FlagSYN, IPOptions: true}.Build(), "SYN"},
		{"ipv4 synack", frame.SYNACK(cli4, srv4), "SYNACK"},
		{"ipv4 ack", frame.ACK(cli4, srv4), "ACK"},
		{"ipv4 ack with payload", frame.TCP{Src: cli4, Dst: srv4, Flags: frame.FlagACK | frame.FlagPSH, Payload: []byte("GET /")}.Build(), "ACK"},
		{"ipv4 rst", frame.RST(cli4, srv4), "RST"},
		{"ipv4 rst ack", flags(v4, frame.FlagRST|frame.FlagACK).Build(), "RST"},
		{"ipv4 syn rst", flags(v4, frame.FlagRST|frame.FlagSYN).Build(), "RST"},
		{"ipv4 fin", flags(v4, frame.FlagFIN).Build(), "TCPOther"},
		{"ipv4 no flags", flags(v4, 0).Build(), "TCPOther"},
		{"ipv4 udp", frame.UDP(cli4, srv4), "NonTCP"},
		{"ipv6 syn", synV6, "SYN"},
		{"ipv6 synack", frame.SYNACK(cli6, srv6), "SYNACK"},
		{"ipv6 ack", frame.ACK(cli6, srv6), "ACK"},
		{"ipv6 rst", frame.RST(cli6, srv6), "RST"},
		{"ipv6 udp", frame.UDP(cli6, srv6), "NonTCP"},
		{"arp", frame.ARP(), "NonIP"},
		{"lldp ethertype", mutate(synV4, func(b []byte) { binary.BigEndian.PutUint16(b[12:], 0x88cc) }), "NonIP"},

		{"one 802.1q tag", withVLANs(syn(v4), []uint16{10}).Build(), "SYN"},
		{"one 802.1ad tag", withVLANs(syn(v4), []uint16{10}, ad).Build(), "SYN"},
		{"qinq 88a8 outer", withVLANs(syn(v6), []uint16{10, 20}).Build(), "SYN"},
		{"qinq 8100 8100", withVLANs(syn(v4), []uint16{10, 20}, q, q).Build(), "SYN"},
		{"qinq 8100 outer 88a8 inner", withVLANs(syn(v4), []uint16{10, 20}, q, ad).Build(), "SYN"},
		{"three tags", withVLANs(syn(v4), []uint16{10, 20, 30}).Build(), "NotParsed"},
		{"vlan then arp", mutate(withVLANs(syn(v4), []uint16{10}).Build(), func(b []byte) { binary.BigEndian.PutUint16(b[16:], 0x0806) }), "NonIP"},
		{"vlan tag truncated", mutate(synV4[:16], func(b []byte) { binary.BigEndian.PutUint16(b[12:], 0x8100) }), "NotParsed"},

		{"ipv4 version 5", mutate(synV4, func(b []byte) { b[14] = 0x55 }), "NotParsed"},
		{"ipv4 ihl 4", mutate(synV4, func(b []byte) { b[14] = 0x44 }), "NotParsed"},
		{"ipv4 ihl 0", mutate(synV4, func(b []byte) { b[14] = 0x40 }), "NotParsed"},
		{"ipv4 ihl 15 beyond frame", mutate(synV4, func(b []byte) { b[14] = 0x4f }), "NotParsed"},
		{"ipv4 ihl 6 leaves 16 bytes of tcp", mutate(synV4, func(b []byte) { b[14] = 0x46 }), "NotParsed"},
		{"ipv4 total length ignored", mutate(synV4, func(b []byte) { binary.BigEndian.PutUint16(b[16:], 9000) }), "SYN"},
		{"ipv4 non-first fragment", frag(syn(v4), 100, true).Build(), "Fragment"},
		{"ipv4 last fragment", frag(syn(v4), 100, false).Build(), "Fragment"},
		{"ipv4 first fragment", frag(syn(v4), 0, true).Build(), "SYN"},
		{"ipv4 non-first fragment of udp", mutate(frag(syn(v4), 7, false).Build(), func(b []byte) { b[23] = 17 }), "Fragment"},
		{"ipv4 fragment with bad ihl", mutate(frag(syn(v4), 100, true).Build(), func(b []byte) { b[14] = 0x43 }), "NotParsed"},

		{"tcp doff 4", mutate(synV4, func(b []byte) { b[46] = 0x40 }), "NotParsed"},
		{"tcp doff 0", mutate(synV4, func(b []byte) { b[46] = 0x00 }), "NotParsed"},
		{"tcp doff 6 beyond frame", mutate(synV4, func(b []byte) { b[46] = 0x60 }), "NotParsed"},
		{"tcp doff 15 beyond frame", mutate(synV4, func(b []byte) { b[46] = 0xf0 }), "NotParsed"},

		{"ipv6 version 4", mutate(synV6, func(b []byte) { b[14] = 0x40 }), "NotParsed"},
		{"ipv6 hop-by-hop", withExt(syn(v6), hopByHop).Build(), "SYN"},
		{"ipv6 routing", withExt(syn(v6), routing).Build(), "SYN"},
		{"ipv6 destination options", withExt(syn(v6), destOpts).Build(), "SYN"},
		{"ipv6 hbh routing dst", withExt(syn(v6), hopByHop, routing, destOpts).Build(), "SYN"},
		{"ipv6 six ext headers", withExt(syn(v6), sixExt...).Build(), "SYN"},
		{"ipv6 seven ext headers", withExt(syn(v6), sevenExt...).Build(), "NotParsed"},
		{"ipv6 first fragment", frag(syn(v6), 0, true).Build(), "SYN"},
		{"ipv6 non-first fragment", frag(syn(v6), 100, false).Build(), "Fragment"},
		{"ipv6 non-first fragment after hbh", frag(withExt(syn(v6), hopByHop, fragment), 3, true).Build(), "Fragment"},
		{"ipv6 atomic fragment", withExt(syn(v6), fragment).Build(), "SYN"},
		{"ipv6 ah is not walked", withExt(syn(v6), layers.IPProtocolAH).Build(), "NonTCP"},
		{"ipv6 no next header", mutate(synV6, func(b []byte) { b[20] = 59 }), "NonTCP"},
		{"ipv6 ext header length beyond frame", mutate(withExt(syn(v6), destOpts).Build(), func(b []byte) { b[55] = 9 }), "NotParsed"},
		{"ipv6 ext header cut after 4 bytes", withExt(syn(v6), hopByHop).Build()[:54+4], "NotParsed"},
		{"ipv6 doff 3", mutate(synV6, func(b []byte) { b[66] = 0x30 }), "NotParsed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, delta := runCounted(t, d, tt.frame)
			if got := kindOf(delta); got != tt.kind {
				t.Errorf("kind %s, want %s (frame % x)", got, tt.kind, tt.frame)
			}
			if a != xdpPass {
				t.Errorf("action %v, want XDP_PASS (nothing is blocked)", a)
			}
		})
	}
}

// Every proper prefix (>= 14 bytes) of a SYN cuts into a header, so it is
// NotParsed, and passes; the kernel refuses shorter frames outright.
func TestTruncatedSYN(t *testing.T) {
	d := loadForTest(t, Options{})
	frames := map[string][]byte{
		"ipv4":              syn(frame.TCP{Src: cli4, Dst: srv4}).Build(),
		"ipv4 options":      frame.TCP{Src: cli4, Dst: srv4, Flags: frame.FlagSYN, Options: true, IPOptions: true}.Build(),
		"ipv4 qinq":         frame.TCP{Src: cli4, Dst: srv4, Flags: frame.FlagSYN, VLANs: []uint16{1, 2}}.Build(),
		"ipv6 ext chain":    frame.TCP{Src: cli6, Dst: srv6, Flags: frame.FlagSYN, IPv6Ext: []layers.IPProtocol{hopByHop, routing, fragment, destOpts}, Options: true}.Build(),
		"ipv6 vlan options": frame.TCP{Src: cli6, Dst: srv6, Flags: frame.FlagSYN, VLANs: []uint16{7}, Options: true}.Build(),
	}
	for name, f := range frames {
		t.Run(name, func(t *testing.T) {
			for n := 0; n < 14; n++ {
				if _, err := tryRunFrame(d, f[:n]); err == nil {
					t.Errorf("%d-byte frame: BPF_PROG_RUN accepted it, want EINVAL", n)
				}
			}
			for n := 14; n < len(f); n++ {
				a, delta := runCounted(t, d, f[:n])
				if got := kindOf(delta); got != "NotParsed" || a != xdpPass {
					t.Errorf("cut at %d of %d: %s %v, want NotParsed XDP_PASS", n, len(f), got, a)
				}
			}
			if _, delta := runCounted(t, d, f); kindOf(delta) != "SYN" {
				t.Errorf("whole frame: %s, want SYN", kindOf(delta))
			}
		})
	}
}

func TestCountersExact(t *testing.T) {
	d := loadForTest(t, Options{})
	send := func(f []byte, n int) {
		for i := 0; i < n; i++ {
			runFrame(t, d, f)
		}
	}
	send(frame.SYN(cli4, srv4), 7)
	send(frame.SYNACK(srv4, cli4), 2)
	send(frame.ACK(cli4, srv4), 5)
	send(frame.RST(cli6, srv6), 3)
	send(frame.TCP{Src: cli4, Dst: srv4, Flags: frame.FlagFIN}.Build(), 1)
	send(frame.UDP(cli4, srv4), 4)
	send(frame.ARP(), 6)
	send(frame.TCP{Src: cli4, Dst: srv4, Flags: frame.FlagSYN, FragOffset: 8}.Build(), 2)
	send(mutate(frame.SYN(cli4, srv4), func(b []byte) { b[14] = 0x44 }), 9)

	got := counters(t, d)
	want := Counters{
		Frames: 7 + 2 + 5 + 3 + 1 + 4 + 6 + 2 + 9, NonIP: 6, NonTCP: 4, Fragments: 2, NotParsed: 9,
		TCP: 7 + 2 + 5 + 3 + 1, SYN: 7, SYNACK: 2, ACK: 5, RST: 3, TCPOther: 1,
	}
	if got != want {
		t.Errorf("counters\n got %+v\nwant %+v", got, want)
	}
}

func TestSourceAndServiceEntries(t *testing.T) {
	d := loadForTest(t, Options{})
	start := time.Now()
	for i := 0; i < 5; i++ {
		runFrame(t, d, frame.SYN(cli4, srv4))
	}
	for i := 0; i < 3; i++ {
		runFrame(t, d, frame.ACK(cli4, srv4))
	}
	runFrame(t, d, frame.RST(cli4, srv4))
	runFrame(t, d, frame.SYN(cli6, srv6))
	runFrame(t, d, frame.ACK(cli6, srv6))
	// Not counted per source: SYN-ACK, other TCP, non-TCP, malformed.
	other := netip.MustParseAddrPort("10.200.10.99:5555")
	runFrame(t, d, frame.SYNACK(other, srv4))
	runFrame(t, d, frame.TCP{Src: other, Dst: srv4, Flags: frame.FlagFIN}.Build())
	runFrame(t, d, frame.UDP(other, srv4))
	runFrame(t, d, mutate(frame.SYN(other, srv4), func(b []byte) { b[46] = 0x40 }))
	end := time.Now()

	s, ok, err := d.Source(cli4.Addr())
	if err != nil || !ok {
		t.Fatalf("source %v: ok=%v err=%v", cli4.Addr(), ok, err)
	}
	if s.Addr != cli4.Addr() || s.SYN != 5 || s.ACK != 3 || s.RST != 1 {
		t.Errorf("source %+v, want %v SYN 5 ACK 3 RST 1", s, cli4.Addr())
	}
	// The kernel clock converted to wall time: allow for rounding.
	slack := 50 * time.Millisecond
	if s.FirstSeen.Before(start.Add(-slack)) || s.LastSeen.After(end.Add(slack)) || s.LastSeen.Before(s.FirstSeen) {
		t.Errorf("first %v last %v, want within [%v, %v]", s.FirstSeen, s.LastSeen, start, end)
	}
	if _, ok, _ := d.Source(other.Addr()); ok {
		t.Errorf("source %v has an entry; SYN-ACK/FIN/UDP/malformed must not create one", other.Addr())
	}

	srcs, err := d.Sources()
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.Addr][3]uint64{}
	for _, s := range srcs {
		got[s.Addr] = [3]uint64{s.SYN, s.ACK, s.RST}
	}
	want := map[netip.Addr][3]uint64{cli4.Addr(): {5, 3, 1}, cli6.Addr(): {1, 1, 0}}
	if len(got) != len(want) || got[cli4.Addr()] != want[cli4.Addr()] || got[cli6.Addr()] != want[cli6.Addr()] {
		t.Errorf("sources %v, want %v", got, want)
	}

	svcs, err := d.Services()
	if err != nil {
		t.Fatal(err)
	}
	gotSvc := map[netip.AddrPort][2]uint64{}
	for _, s := range svcs {
		gotSvc[s.Addr] = [2]uint64{s.SYN, s.ACK}
	}
	wantSvc := map[netip.AddrPort][2]uint64{srv4: {5, 3}, srv6: {1, 1}}
	if len(gotSvc) != 2 || gotSvc[srv4] != wantSvc[srv4] || gotSvc[srv6] != wantSvc[srv6] {
		t.Errorf("services %v, want %v", gotSvc, wantSvc)
	}
}

// readSuspect returns the next suspect event, or ok=false after wait.
func readSuspect(t *testing.T, r *SuspectReader, wait time.Duration) (Suspect, bool) {
	t.Helper()
	r.SetDeadline(time.Now().Add(wait))
	s, err := r.Read()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return Suspect{}, false
	}
	if err != nil {
		t.Fatalf("read suspect: %v", err)
	}
	return s, true
}

func TestSuspectEvents(t *testing.T) {
	const interval = 400 * time.Millisecond
	d := loadForTest(t, Options{SuspectSYNs: 5, SuspectInterval: interval})
	r, err := d.Suspects()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	synFrame := frame.SYN(cli4, srv4)

	for i := 0; i < 5; i++ {
		runFrame(t, d, synFrame)
	}
	if s, ok := readSuspect(t, r, 50*time.Millisecond); ok {
		t.Fatalf("event %+v after 5 SYNs; threshold is more than 5", s)
	}
	before := time.Now()
	runFrame(t, d, synFrame)
	s, ok := readSuspect(t, r, time.Second)
	if !ok {
		t.Fatal("no event after the 6th SYN")
	}
	if s.Addr != cli4.Addr() || s.SYNs != 6 || s.Time.Before(before.Add(-50*time.Millisecond)) || s.Time.After(time.Now().Add(50*time.Millisecond)) {
		t.Errorf("event %+v, want %v with 6 SYNs at about %v", s, cli4.Addr(), before)
	}
	// Within the interval: no second event for the same source (one
	// after the interval, on a machine slow enough to get there, is
	// allowed)...
	for i := 0; i < 20; i++ {
		runFrame(t, d, synFrame)
	}
	if s, ok := readSuspect(t, r, 50*time.Millisecond); ok && s.Time.Sub(before) < interval {
		t.Fatalf("second event %+v within the interval", s)
	}
	// ...but another source has its own budget.
	runFrame(t, d, frame.ACK(cli6, srv6))
	for i := 0; i < 6; i++ {
		runFrame(t, d, frame.SYN(cli6, srv6))
	}
	if s, ok := readSuspect(t, r, time.Second); !ok || s.Addr != cli6.Addr() || s.SYNs != 6 {
		t.Fatalf("event for %v: %+v ok=%v", cli6.Addr(), s, ok)
	}

	// An ACK resets the run of SYNs: after the interval, 5 SYNs are not
	// enough again, the 6th is.
	time.Sleep(interval + 50*time.Millisecond)
	runFrame(t, d, frame.ACK(cli4, srv4))
	for i := 0; i < 5; i++ {
		runFrame(t, d, synFrame)
	}
	if s, ok := readSuspect(t, r, 50*time.Millisecond); ok {
		t.Fatalf("event %+v after ACK + 5 SYNs", s)
	}
	runFrame(t, d, synFrame)
	if s, ok := readSuspect(t, r, time.Second); !ok || s.SYNs != 6 || s.Addr != cli4.Addr() {
		t.Fatalf("after ACK + 6 SYNs: %+v ok=%v, want 6 SYNs from %v", s, ok, cli4.Addr())
	}
	// Without an ACK the run keeps growing: the next interval reports it all.
	time.Sleep(interval + 50*time.Millisecond)
	runFrame(t, d, synFrame)
	if s, ok := readSuspect(t, r, time.Second); !ok || s.SYNs != 7 {
		t.Fatalf("next interval: %+v ok=%v, want 7 SYNs", s, ok)
	}
	if c := counters(t, d); c.SuspectsLost != 0 {
		t.Errorf("SuspectsLost %d", c.SuspectsLost)
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestBlockEnforceObserve(t *testing.T) {
	d := loadForTest(t, Options{})
	synFrame := frame.SYN(cli4, srv4)
	if m, err := d.Mode(); err != nil || m != ModeObserve {
		t.Fatalf("initial mode %v err %v, want observe", m, err)
	}
	if err := d.Block(mustPrefix("10.200.10.0/24"), time.Hour); err != nil {
		t.Fatal(err)
	}

	// Observe: would-drop, passed, counted per source and service.
	a, delta := runCounted(t, d, synFrame)
	if a != xdpPass || delta.WouldDrop != 1 || delta.Dropped != 0 || delta.SYN != 1 {
		t.Errorf("observe: %v %+v, want PASS WouldDrop 1", a, delta)
	}
	// Enforce, switched at run time: dropped, not counted per source.
	if err := d.SetMode(ModeEnforce); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		a, delta = runCounted(t, d, synFrame)
		if a != xdpDrop || delta.Dropped != 1 || delta.WouldDrop != 0 || delta.SYN != 1 || delta.Frames != 1 {
			t.Errorf("enforce: %v %+v, want DROP Dropped 1 SYN 1", a, delta)
		}
	}
	// Every TCP kind is dropped; non-TCP from the source is not.
	for name, f := range map[string][]byte{
		"synack": frame.SYNACK(cli4, srv4), "ack": frame.ACK(cli4, srv4), "rst": frame.RST(cli4, srv4),
		"fin": frame.TCP{Src: cli4, Dst: srv4, Flags: frame.FlagFIN}.Build(),
	} {
		if a := runFrame(t, d, f); a != xdpDrop {
			t.Errorf("enforce %s: %v, want DROP", name, a)
		}
	}
	if a := runFrame(t, d, frame.UDP(cli4, srv4)); a != xdpPass {
		t.Errorf("udp from banned source: %v, want PASS (bans apply to TCP)", a)
	}
	if a := runFrame(t, d, frame.SYN(cli6, srv6)); a != xdpPass {
		t.Errorf("unbanned ipv6 source: %v", a)
	}
	if err := d.SetMode(ModeObserve); err != nil {
		t.Fatal(err)
	}
	if a := runFrame(t, d, synFrame); a != xdpPass {
		t.Errorf("back to observe: %v, want PASS", a)
	}

	s, _, _ := d.Source(cli4.Addr())
	if s.SYN != 2 || s.ACK != 0 || s.RST != 0 {
		t.Errorf("source %+v: only the 2 observe-mode SYNs count", s)
	}
	bans, err := d.Bans()
	if err != nil || len(bans) != 1 {
		t.Fatalf("bans %+v err %v", bans, err)
	}
	if b := bans[0]; b.Prefix != mustPrefix("10.200.10.0/24") || b.Dropped != 7 || b.WouldDrop != 2 {
		t.Errorf("ban %+v, want Dropped 7 (3 SYN + 4 other TCP) WouldDrop 2", b)
	}
	if until := time.Until(bans[0].Until); until < 59*time.Minute || until > time.Hour+time.Second {
		t.Errorf("ban until %v (in %v), want about an hour from now", bans[0].Until, until)
	}
}

func TestBanExpiresInKernel(t *testing.T) {
	d := loadForTest(t, Options{})
	if err := d.SetMode(ModeEnforce); err != nil {
		t.Fatal(err)
	}
	ttl := 300 * time.Millisecond
	if err := d.Block(netip.PrefixFrom(cli4.Addr(), 32), ttl); err != nil {
		t.Fatal(err)
	}
	if a := runFrame(t, d, frame.SYN(cli4, srv4)); a != xdpDrop {
		t.Fatalf("before expiry: %v, want DROP", a)
	}
	time.Sleep(ttl + 100*time.Millisecond)
	if a := runFrame(t, d, frame.SYN(cli4, srv4)); a != xdpPass {
		t.Fatalf("after expiry: %v, want PASS (the kernel enforces expiry)", a)
	}
	if bans, err := d.Bans(); err != nil || len(bans) != 0 {
		t.Errorf("bans after expiry %+v err %v, want none", bans, err)
	}
	if n, err := d.Prune(); err != nil || n != 1 {
		t.Errorf("prune: %d %v, want 1 removed", n, err)
	}

	// A longer ban behind an expired more specific one still applies.
	if err := d.Block(mustPrefix("10.200.10.0/24"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := d.Block(netip.PrefixFrom(cli4.Addr(), 32), ttl); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl + 100*time.Millisecond)
	if a := runFrame(t, d, frame.SYN(cli4, srv4)); a != xdpDrop {
		t.Errorf("expired /32 under live /24: %v, want DROP", a)
	}
	bans, _ := d.Bans()
	if len(bans) != 1 || bans[0].Prefix != mustPrefix("10.200.10.0/24") || bans[0].Dropped != 1 {
		t.Errorf("bans %+v, want the /24 with 1 drop", bans)
	}

	// Re-blocking sets a new expiry and keeps the drop count.
	if err := d.Block(mustPrefix("10.200.10.0/24"), ttl); err != nil {
		t.Fatal(err)
	}
	bans, _ = d.Bans()
	if len(bans) != 1 || bans[0].Dropped != 1 || time.Until(bans[0].Until) > ttl {
		t.Errorf("re-block: %+v, want Dropped 1 and the short expiry", bans)
	}
	time.Sleep(ttl + 100*time.Millisecond)
	if a := runFrame(t, d, frame.SYN(cli4, srv4)); a != xdpPass {
		t.Errorf("after shortened ban expired: %v, want PASS", a)
	}
}

func TestAllowlistWins(t *testing.T) {
	d := loadForTest(t, Options{})
	if err := d.SetMode(ModeEnforce); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(d.Block(mustPrefix("10.200.0.0/16"), time.Hour))
	must(d.Allow(mustPrefix("10.200.10.0/24")))
	must(d.Block(netip.PrefixFrom(cli4.Addr(), 32), time.Hour)) // more specific ban, still allowlisted
	must(d.Allow(mustPrefix("2001:db8::/32")))
	must(d.Block(netip.PrefixFrom(cli6.Addr(), 128), time.Hour))

	tests := []struct {
		name        string
		frame       []byte
		action      xdpAction
		allowlisted uint64
	}{
		{"allowlisted /24 inside banned /16 and /32", frame.SYN(cli4, srv4), xdpPass, 1},
		{"banned /16 outside the allowlist", frame.SYN(netip.MustParseAddrPort("10.200.99.1:1"), srv4), xdpDrop, 0},
		{"ipv6 allowlisted /32 over banned /128", frame.SYN(cli6, srv6), xdpPass, 1},
		{"allowlisted but not banned", frame.SYN(netip.MustParseAddrPort("[2001:db8::7]:1"), srv6), xdpPass, 0},
	}
	for _, tt := range tests {
		a, delta := runCounted(t, d, tt.frame)
		if a != tt.action || delta.Allowlisted != tt.allowlisted {
			t.Errorf("%s: %v Allowlisted %d, want %v %d", tt.name, a, delta.Allowlisted, tt.action, tt.allowlisted)
		}
	}
	allows, err := d.Allows()
	if err != nil || len(allows) != 2 || allows[0] != mustPrefix("10.200.10.0/24") || allows[1] != mustPrefix("2001:db8::/32") {
		t.Errorf("allows %v err %v", allows, err)
	}
	// Removing the allow lets the ban apply at once (cache invalidated).
	must(d.Disallow(mustPrefix("10.200.10.0/24")))
	if a := runFrame(t, d, frame.SYN(cli4, srv4)); a != xdpDrop {
		t.Errorf("after disallow: %v, want DROP", a)
	}
}

// The families never cover each other: ::/0 is not IPv4, 0.0.0.0/0 not IPv6.
func TestFamiliesSeparate(t *testing.T) {
	d := loadForTest(t, Options{})
	if err := d.SetMode(ModeEnforce); err != nil {
		t.Fatal(err)
	}
	if err := d.Block(mustPrefix("::/0"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if a := runFrame(t, d, frame.SYN(cli4, srv4)); a != xdpPass {
		t.Errorf("ipv4 under ::/0 ban: %v, want PASS", a)
	}
	if a := runFrame(t, d, frame.SYN(cli6, srv6)); a != xdpDrop {
		t.Errorf("ipv6 under ::/0 ban: %v, want DROP", a)
	}
	if err := d.Block(mustPrefix("0.0.0.0/0"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := d.Unblock(mustPrefix("::/0")); err != nil {
		t.Fatal(err)
	}
	if a := runFrame(t, d, frame.SYN(cli4, srv4)); a != xdpDrop {
		t.Errorf("ipv4 under 0.0.0.0/0 ban: %v, want DROP", a)
	}
	if a := runFrame(t, d, frame.SYN(cli6, srv6)); a != xdpPass {
		t.Errorf("ipv6 under 0.0.0.0/0 ban: %v, want PASS", a)
	}
	// An IPv4-mapped prefix is the IPv4 prefix.
	if err := d.Block(mustPrefix("::ffff:10.200.10.0/120"), time.Hour); err != nil {
		t.Fatal(err)
	}
	bans, _ := d.Bans()
	if len(bans) != 2 || bans[0].Prefix != mustPrefix("0.0.0.0/0") || bans[1].Prefix != mustPrefix("10.200.10.0/24") {
		t.Errorf("bans %+v, want 0.0.0.0/0 and 10.200.10.0/24", bans)
	}
}

// A source whose pass verdict is cached must be dropped right after Block
// and pass right after Unblock: list changes invalidate the cache.
func TestVerdictCacheInvalidation(t *testing.T) {
	d := loadForTest(t, Options{})
	if err := d.SetMode(ModeEnforce); err != nil {
		t.Fatal(err)
	}
	synFrame := frame.SYN(cli4, srv4)
	for i := 0; i < 3; i++ {
		if a := runFrame(t, d, synFrame); a != xdpPass {
			t.Fatalf("before block: %v", a)
		}
	}
	p := netip.PrefixFrom(cli4.Addr(), 32)
	for round := 0; round < 3; round++ {
		if err := d.Block(p, time.Hour); err != nil {
			t.Fatal(err)
		}
		if a := runFrame(t, d, synFrame); a != xdpDrop {
			t.Fatalf("round %d right after block: %v, want DROP", round, a)
		}
		if a := runFrame(t, d, frame.ACK(cli4, srv4)); a != xdpDrop {
			t.Fatalf("round %d ack after block: %v, want DROP", round, a)
		}
		if err := d.Unblock(p); err != nil {
			t.Fatal(err)
		}
		if a := runFrame(t, d, synFrame); a != xdpPass {
			t.Fatalf("round %d right after unblock: %v, want PASS", round, a)
		}
	}
	// A cached drop turns into a pass right after Allow, and back after
	// Disallow.
	if err := d.Block(p, time.Hour); err != nil {
		t.Fatal(err)
	}
	if a := runFrame(t, d, synFrame); a != xdpDrop {
		t.Fatalf("blocked again: %v", a)
	}
	if err := d.Allow(p); err != nil {
		t.Fatal(err)
	}
	if a := runFrame(t, d, synFrame); a != xdpPass {
		t.Fatalf("right after allow: %v, want PASS", a)
	}
	if err := d.Disallow(p); err != nil {
		t.Fatal(err)
	}
	if a := runFrame(t, d, synFrame); a != xdpDrop {
		t.Fatalf("right after disallow: %v, want DROP", a)
	}
	if err := d.Unblock(p); err != nil {
		t.Fatal(err)
	}

	// A banned source first seen via a SYN-ACK is cached too, and the
	// cached drop is still undone by Unblock.
	other := netip.MustParseAddrPort("10.200.10.50:443")
	if err := d.Block(netip.PrefixFrom(other.Addr(), 32), time.Hour); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if a := runFrame(t, d, frame.SYNACK(other, srv4)); a != xdpDrop {
			t.Fatalf("synack from banned: %v", a)
		}
	}
	if s, ok, _ := d.Source(other.Addr()); !ok || s.SYN+s.ACK+s.RST != 0 {
		t.Errorf("banned synack source entry %+v ok=%v, want a cached entry with no counts", s, ok)
	}
	if err := d.Unblock(netip.PrefixFrom(other.Addr(), 32)); err != nil {
		t.Fatal(err)
	}
	if a := runFrame(t, d, frame.SYNACK(other, srv4)); a != xdpPass {
		t.Errorf("after unblock: %v", a)
	}
}

func TestDropCountsPerBan(t *testing.T) {
	d := loadForTest(t, Options{})
	if err := d.SetMode(ModeEnforce); err != nil {
		t.Fatal(err)
	}
	bans := map[string]int{"10.200.10.0/28": 3, "10.200.10.128/25": 5, "2001:db8:10::/48": 4}
	for p := range bans {
		if err := d.Block(mustPrefix(p), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	// Several sources per ban, one unbanned source in between.
	srcs := map[string][]string{
		"10.200.10.0/28":   {"10.200.10.1", "10.200.10.2", "10.200.10.15"},
		"10.200.10.128/25": {"10.200.10.200", "10.200.10.129", "10.200.10.129", "10.200.10.255", "10.200.10.128"},
		"2001:db8:10::/48": {"2001:db8:10::9", "2001:db8:10:ffff::1", "2001:db8:10::9", "2001:db8:10::9"},
	}
	for _, list := range srcs {
		for _, s := range list {
			a := netip.MustParseAddr(s)
			dst := srv4
			if a.Is6() {
				dst = srv6
			}
			if got := runFrame(t, d, frame.SYN(netip.AddrPortFrom(a, 1234), dst)); got != xdpDrop {
				t.Errorf("%s: %v, want DROP", s, got)
			}
		}
	}
	if a := runFrame(t, d, frame.SYN(netip.MustParseAddrPort("10.200.10.64:1"), srv4)); a != xdpPass {
		t.Errorf("10.200.10.64 (between bans): %v", a)
	}
	got, err := d.Bans()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(bans) {
		t.Fatalf("bans %+v", got)
	}
	for _, b := range got {
		if want := bans[b.Prefix.String()]; b.Dropped != uint64(want) {
			t.Errorf("%s dropped %d, want %d", b.Prefix, b.Dropped, want)
		}
	}
	if c := counters(t, d); c.Dropped != 12 {
		t.Errorf("global Dropped %d, want 12", c.Dropped)
	}
	// A new ban in a freed slot starts from zero.
	if err := d.Unblock(mustPrefix("10.200.10.0/28")); err != nil {
		t.Fatal(err)
	}
	if err := d.Block(mustPrefix("10.200.10.16/28"), time.Hour); err != nil {
		t.Fatal(err)
	}
	got, _ = d.Bans()
	for _, b := range got {
		if b.Prefix == mustPrefix("10.200.10.16/28") && b.Dropped != 0 {
			t.Errorf("new ban in a reused slot starts with %d drops", b.Dropped)
		}
	}
}

// Two CPUs hammer the same source and service at once: the counts must be
// exact (atomic adds) and the suspect event must fire exactly once per
// interval (compare-and-swap), however the CPUs interleave.
func TestConcurrentCounting(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs to race")
	}
	d := loadForTest(t, Options{SuspectSYNs: 10, SuspectInterval: time.Hour})
	r, err := d.Suspects()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const perCPU = 200000
	synFrame := frame.SYN(cli4, srv4)
	onEachCPU(t, 2, func(cpu int) {
		ret, err := d.program().Run(&ebpf.RunOptions{Data: synFrame, Repeat: perCPU})
		if err != nil || xdpAction(ret) != xdpPass {
			t.Errorf("cpu %d: %v %v", cpu, xdpAction(ret), err)
		}
	})
	s, ok, err := d.Source(cli4.Addr())
	if err != nil || !ok || s.SYN != 2*perCPU {
		t.Errorf("source SYN %d (ok=%v err=%v), want exactly %d", s.SYN, ok, err, 2*perCPU)
	}
	svcs, _ := d.Services()
	if len(svcs) != 1 || svcs[0].SYN != 2*perCPU {
		t.Errorf("services %+v, want one with %d SYNs", svcs, 2*perCPU)
	}
	if c := counters(t, d); c.SYN != 2*perCPU || c.Frames != 2*perCPU {
		t.Errorf("counters %+v", c)
	}
	if _, ok := readSuspect(t, r, time.Second); !ok {
		t.Fatal("no suspect event")
	}
	if ev, ok := readSuspect(t, r, 100*time.Millisecond); ok {
		t.Errorf("second suspect event %+v within the interval", ev)
	}
}
