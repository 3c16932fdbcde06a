package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/synguard/synguard/internal/frame"
)

// runOut runs frame through the program and returns the action and the
// frame as the program left it.
func runOut(t *testing.T, d *Datapath, f []byte) (xdpAction, []byte) {
	t.Helper()
	opts := &ebpf.RunOptions{Data: append([]byte(nil), f...), DataOut: make([]byte, 512)}
	ret, err := d.program().Run(opts)
	if err != nil {
		t.Fatalf("BPF_PROG_RUN: %v", err)
	}
	return xdpAction(ret), opts.DataOut
}

func protections(t *testing.T, d *Datapath) map[netip.AddrPort]ProtectionStatus {
	t.Helper()
	ps, err := d.Protections()
	if err != nil {
		t.Fatal(err)
	}
	m := map[netip.AddrPort]ProtectionStatus{}
	for _, p := range ps {
		m[p.Service] = p
	}
	return m
}

func mustProtect(t *testing.T, d *Datapath, svc netip.AddrPort, p Protection) {
	t.Helper()
	if err := d.Protect(svc, p); err != nil {
		t.Fatal(err)
	}
}

func isVerified(t *testing.T, d *Datapath, a netip.Addr) bool {
	t.Helper()
	ok, err := d.IsVerified(a)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// synack is a decoded SYN-ACK the program sent back.
type synack struct {
	eth  *layers.Ethernet
	ip4  *layers.IPv4
	ip6  *layers.IPv6
	tcp  *layers.TCP
	opts map[layers.TCPOptionKind][]byte
}

// decodeSYNACK decodes out with gopacket and checks that its IP and TCP
// checksums are right: re-serializing the decoded layers with computed
// checksums must give the same bytes.
func decodeSYNACK(t *testing.T, out []byte) synack {
	t.Helper()
	pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		t.Fatalf("decode SYN-ACK: %v", el.Error())
	}
	var s synack
	var ls []gopacket.SerializableLayer
	for _, l := range pkt.Layers() {
		switch v := l.(type) {
		case *layers.Ethernet:
			s.eth = v
			ls = append(ls, v)
		case *layers.Dot1Q:
			ls = append(ls, v)
		case *layers.IPv4:
			s.ip4 = v
			ls = append(ls, v)
		case *layers.IPv6:
			s.ip6 = v
			ls = append(ls, v)
		case *layers.TCP:
			s.tcp = v
			ls = append(ls, v)
		}
	}
	if s.eth == nil || s.tcp == nil || (s.ip4 == nil) == (s.ip6 == nil) {
		t.Fatalf("SYN-ACK layers: %v", pkt)
	}
	if len(s.tcp.Payload) != 0 {
		t.Errorf("SYN-ACK carries %d payload bytes", len(s.tcp.Payload))
	}
	var nl gopacket.NetworkLayer = s.ip6
	if s.ip4 != nil {
		nl = s.ip4
	}
	if err := s.tcp.SetNetworkLayerForChecksum(nl); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	// gopacket pads Ethernet frames to 60 bytes; the program does not.
	re := buf.Bytes()
	if len(re) > len(out) && len(re) == 60 && bytes.Count(re[len(out):], []byte{0}) == len(re)-len(out) {
		re = re[:len(out)]
	}
	if !bytes.Equal(re, out) {
		t.Errorf("checksums wrong: program sent\n% x\nrecomputed\n% x", out, buf.Bytes())
	}
	s.opts = map[layers.TCPOptionKind][]byte{}
	for _, o := range s.tcp.Options {
		if o.OptionType != layers.TCPOptionKindNop && o.OptionType != layers.TCPOptionKindEndList {
			s.opts[o.OptionType] = o.OptionData
		}
	}
	return s
}

// TestProtectCookie: a SYN from an unverified source to a service under
// cookie protection comes back as XDP_TX with a correct SYN-ACK, and the
// client's ACK to it verifies the client.
func TestProtectCookie(t *testing.T) {
	cliMAC := net.HardwareAddr{2, 0, 0, 0, 0, 0xc1}
	srvMAC := net.HardwareAddr{2, 0, 0, 0, 0, 0x51}
	for _, tc := range []struct {
		name     string
		cli, srv netip.AddrPort
		options  bool
		ts       bool // Protection.Timestamps
		vlans    []uint16
		mss      uint16
	}{
		{"ipv4 linux syn", cli4, srv4, true, true, nil, 1460},
		{"ipv4 linux syn, timestamps off", cli4, srv4, true, false, nil, 1460},
		{"ipv4 bare syn (hping3)", cli4, srv4, false, true, nil, 1460},
		{"ipv4 vlan", cli4, srv4, true, true, []uint16{7}, 1460},
		{"ipv4 qinq", cli4, srv4, false, false, []uint16{7, 8}, 1460},
		{"ipv6 linux syn", cli6, srv6, true, true, nil, 1440},
		{"ipv6 linux syn, timestamps off", cli6, srv6, true, false, nil, 1440},
		{"ipv6 bare syn", cli6, srv6, false, true, nil, 1440},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := loadForTest(t, Options{})
			mustProtect(t, d, tc.srv, Protection{Cookies: true, Timestamps: tc.ts})
			const seq = 0x11223344
			syn := frame.TCP{Src: tc.cli, Dst: tc.srv, Flags: frame.FlagSYN, Seq: seq, Options: tc.options,
				VLANs: tc.vlans, SrcMAC: cliMAC, DstMAC: srvMAC}.Build()
			before := counters(t, d)
			act, out := runOut(t, d, syn)
			if act != xdpTX {
				t.Fatalf("SYN: %v, want XDP_TX", act)
			}
			if delta := counters(t, d).sub(before); kindOf(delta) != "SYN" {
				t.Errorf("SYN counted as %s", kindOf(delta))
			}
			s := decodeSYNACK(t, out)
			if !bytes.Equal(s.eth.SrcMAC, srvMAC) || !bytes.Equal(s.eth.DstMAC, cliMAC) {
				t.Errorf("ethernet %v -> %v, want %v -> %v", s.eth.SrcMAC, s.eth.DstMAC, srvMAC, cliMAC)
			}
			var src, dst netip.Addr
			if s.ip4 != nil {
				src, dst = netip.AddrFrom4([4]byte(s.ip4.SrcIP.To4())), netip.AddrFrom4([4]byte(s.ip4.DstIP.To4()))
				if s.ip4.TTL != 64 || s.ip4.Flags != layers.IPv4DontFragment || s.ip4.IHL != 5 {
					t.Errorf("ipv4 ttl %d flags %v ihl %d", s.ip4.TTL, s.ip4.Flags, s.ip4.IHL)
				}
			} else {
				src, dst = netip.AddrFrom16([16]byte(s.ip6.SrcIP)), netip.AddrFrom16([16]byte(s.ip6.DstIP))
				if s.ip6.HopLimit != 64 || s.ip6.NextHeader != layers.IPProtocolTCP {
					t.Errorf("ipv6 hop limit %d next %v", s.ip6.HopLimit, s.ip6.NextHeader)
				}
			}
			got := [2]netip.AddrPort{netip.AddrPortFrom(src, uint16(s.tcp.SrcPort)), netip.AddrPortFrom(dst, uint16(s.tcp.DstPort))}
			if got != [2]netip.AddrPort{tc.srv, tc.cli} {
				t.Errorf("SYN-ACK %v -> %v, want %v -> %v", got[0], got[1], tc.srv, tc.cli)
			}
			if !s.tcp.SYN || !s.tcp.ACK || s.tcp.RST || s.tcp.FIN || s.tcp.Ack != seq+1 {
				t.Errorf("flags SYN %v ACK %v RST %v FIN %v, ack %#x (want SYN+ACK, ack %#x)", s.tcp.SYN, s.tcp.ACK, s.tcp.RST, s.tcp.FIN, s.tcp.Ack, seq+1)
			}
			if mss, ok := s.opts[layers.TCPOptionKindMSS]; !ok || binary.BigEndian.Uint16(mss) != tc.mss {
				t.Errorf("MSS option %v, want %d", mss, tc.mss)
			}
			ts, hasTS := s.opts[layers.TCPOptionKindTimestamps]
			if tc.options && tc.ts {
				// frame's Linux SYN: tsval 1, SACK-permitted, window scale 7.
				if !hasTS || len(ts) != 8 || binary.BigEndian.Uint32(ts[4:]) != 1 {
					t.Fatalf("timestamp option %v, want tsecr 1 (the client's tsval)", ts)
				}
				if tsval := binary.BigEndian.Uint32(ts[:4]); tsval&0x3f != 7|1<<4 {
					t.Errorf("tsval %#x: low bits %#x, want client window scale 7 | SACK bit 0x10", tsval, tsval&0x3f)
				}
				if _, ok := s.opts[layers.TCPOptionKindSACKPermitted]; !ok {
					t.Error("no SACK-permitted option")
				}
				if ws := s.opts[layers.TCPOptionKindWindowScale]; len(ws) != 1 || ws[0] != DefaultCookieWScale {
					t.Errorf("window scale option %v, want %d", ws, DefaultCookieWScale)
				}
			} else if len(s.opts) != 1 {
				t.Errorf("options %v (client options %v, timestamps %v), want MSS only", s.opts, tc.options, tc.ts)
			}
			if n := protections(t, d)[tc.srv].CookiesSent; n != 1 {
				t.Errorf("cookies sent %d, want 1", n)
			}
			if svc := serviceOf(t, d, tc.srv); svc.SYN != 1 {
				t.Errorf("service SYN count %d, want 1 (answered SYNs count for the detector)", svc.SYN)
			}
			if _, ok, _ := d.Source(tc.cli.Addr()); ok {
				t.Error("answered SYN created a per-source entry")
			}

			// A wrong cookie verifies nothing but passes (the kernel's
			// SYNPROXY drops it). (A cookie off by one can still be
			// valid: its low bits only index the MSS table.)
			ack := frame.TCP{Src: tc.cli, Dst: tc.srv, Flags: frame.FlagACK, Seq: seq + 1, Ack: (s.tcp.Seq + 1) ^ 0x00f00000,
				VLANs: tc.vlans, SrcMAC: cliMAC, DstMAC: srvMAC}
			if act := runFrame(t, d, ack.Build()); act != xdpPass {
				t.Errorf("ACK with a bad cookie: %v, want XDP_PASS", act)
			}
			if isVerified(t, d, tc.cli.Addr()) || protections(t, d)[tc.srv].CookiesValidated != 0 {
				t.Fatal("a bad cookie verified the client")
			}
			// The client's real ACK: the kernel's cookie check accepts it.
			ack.Ack = s.tcp.Seq + 1
			if act := runFrame(t, d, ack.Build()); act != xdpPass {
				t.Errorf("ACK: %v, want XDP_PASS", act)
			}
			if !isVerified(t, d, tc.cli.Addr()) {
				t.Fatal("valid cookie ACK did not verify the client")
			}
			if n := protections(t, d)[tc.srv].CookiesValidated; n != 1 {
				t.Errorf("cookies validated %d, want 1", n)
			}
			// Verified now: its next SYN goes to the kernel.
			if act := runFrame(t, d, syn); act != xdpPass {
				t.Errorf("SYN from the verified client: %v, want XDP_PASS", act)
			}
			if p := protections(t, d)[tc.srv]; p.Verified != 1 || p.CookiesSent != 1 {
				t.Errorf("after a verified SYN: %+v", p)
			}
			if n, err := d.VerifiedSources(); err != nil || n != 1 {
				t.Errorf("verified sources %d %v, want 1", n, err)
			}
		})
	}
}

// TestProtectBudget: without cookies, unverified SYNs pass within the
// budget and the excess is dropped, while verified sources always pass and
// other services are untouched.
func TestProtectBudget(t *testing.T) {
	d := loadForTest(t, Options{})
	// A user completes a handshake before the flood: verified.
	if runFrame(t, d, frame.SYN(cli4, srv4)) != xdpPass || runFrame(t, d, frame.ACK(cli4, srv4)) != xdpPass {
		t.Fatal("handshake before protection did not pass")
	}
	if !isVerified(t, d, cli4.Addr()) {
		t.Fatal("SYN then ACK did not verify the source")
	}
	// An ACK alone (no SYN before) verifies nothing.
	lone := netip.MustParseAddrPort("10.200.10.9:1234")
	runFrame(t, d, frame.ACK(lone, srv4))
	if isVerified(t, d, lone.Addr()) {
		t.Error("a lone ACK verified its source")
	}

	mustProtect(t, d, srv4, Protection{Budget: 3})
	spoofed := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 5000)
	}
	var pass, drop int
	for i := 0; i < 10; i++ {
		switch a := runFrame(t, d, frame.SYN(spoofed(i), srv4)); a {
		case xdpPass:
			pass++
		case xdpDrop:
			drop++
			if _, ok, _ := d.Source(spoofed(i).Addr()); ok {
				t.Errorf("dropped SYN from %v created a per-source entry", spoofed(i))
			}
		default:
			t.Fatalf("spoofed SYN: %v", a)
		}
	}
	if pass != 3 || drop != 7 {
		t.Errorf("budget 3: %d passed, %d dropped; want 3 and 7", pass, drop)
	}
	if a := runFrame(t, d, frame.SYN(cli4, srv4)); a != xdpPass {
		t.Errorf("verified source over budget: %v, want XDP_PASS", a)
	}
	// Allowlisted networks are never dropped, verified or not.
	if err := d.Allow(netip.MustParsePrefix("198.18.7.0/24")); err != nil {
		t.Fatal(err)
	}
	if a := runFrame(t, d, frame.SYN(netip.MustParseAddrPort("198.18.7.7:1"), srv4)); a != xdpPass {
		t.Errorf("allowlisted source over budget: %v, want XDP_PASS", a)
	}
	other := netip.AddrPortFrom(srv4.Addr(), 22)
	if a := runFrame(t, d, frame.SYN(spoofed(99), other)); a != xdpPass {
		t.Errorf("SYN to an unprotected service: %v", a)
	}
	p := protections(t, d)[srv4]
	if p.Admitted != 3 || p.Dropped != 7 || p.Verified != 2 || p.CookiesSent != 0 || p.Budget != 3 || p.Cookies {
		t.Errorf("status %+v", p)
	}
	if time.Since(p.Since) > time.Minute || time.Since(p.Since) < 0 {
		t.Errorf("since %v", p.Since)
	}
	if s := serviceOf(t, d, srv4); s.SYN != 1+10+2 {
		t.Errorf("service SYNs %d, want 13 (dropped ones included)", s.SYN)
	}
	// Changing the settings keeps the counters.
	mustProtect(t, d, srv4, Protection{Budget: 100})
	// Since is one kernel time converted twice: the conversion pairs two
	// clock reads, which a preemption can push apart.
	if p2 := protections(t, d)[srv4]; p2.Dropped != 7 || p2.Budget != 100 || p2.Since.Sub(p.Since).Abs() > 50*time.Millisecond {
		t.Errorf("after re-protect: %+v", p2)
	}

	if err := d.Unprotect(srv4); err != nil {
		t.Fatal(err)
	}
	if err := d.Unprotect(srv4); !errors.Is(err, ErrNotFound) {
		t.Errorf("second unprotect: %v, want ErrNotFound", err)
	}
	for i := 100; i < 110; i++ {
		if a := runFrame(t, d, frame.SYN(spoofed(i), srv4)); a != xdpPass {
			t.Fatalf("SYN after unprotect: %v", a)
		}
	}
	if len(protections(t, d)) != 0 {
		t.Error("protections left after unprotect")
	}
}

// TestProtectVerifiedExpiry: verification lapses after VerifiedTTL.
func TestProtectVerifiedExpiry(t *testing.T) {
	// 1 s: the verified SYN below must run within the TTL, also on a
	// loaded machine.
	d := loadForTest(t, Options{VerifiedTTL: time.Second})
	mustProtect(t, d, srv6, Protection{Budget: 1})
	if err := d.Verify(cli6.Addr()); err != nil {
		t.Fatal(err)
	}
	runFrame(t, d, frame.SYN(netip.MustParseAddrPort("[2001:db8:99::1]:1"), srv6)) // use the budget up
	if a := runFrame(t, d, frame.SYN(cli6, srv6)); a != xdpPass {
		t.Fatalf("verified SYN: %v", a)
	}
	time.Sleep(1200 * time.Millisecond)
	if isVerified(t, d, cli6.Addr()) {
		t.Error("still verified after the TTL")
	}
	runFrame(t, d, frame.SYN(netip.MustParseAddrPort("[2001:db8:99::2]:1"), srv6)) // the new window's budget
	if a := runFrame(t, d, frame.SYN(cli6, srv6)); a != xdpDrop {
		t.Errorf("SYN after the TTL, over budget: %v, want XDP_DROP", a)
	}
}

func TestProtectErrors(t *testing.T) {
	d := loadForTest(t, Options{})
	for _, tc := range []struct {
		svc netip.AddrPort
		p   Protection
	}{
		{netip.AddrPort{}, Protection{}},
		{netip.AddrPortFrom(srv4.Addr(), 0), Protection{}},
		{srv4, Protection{WScale: 15}},
		{srv4, Protection{MSS: 100}},
	} {
		if err := d.Protect(tc.svc, tc.p); err == nil {
			t.Errorf("Protect(%v, %+v) accepted", tc.svc, tc.p)
		}
	}
	mustProtect(t, d, netip.AddrPortFrom(netip.MustParseAddr("::ffff:10.200.10.1"), 80), Protection{})
	if p, ok := protections(t, d)[srv4]; !ok || p.MSS != DefaultCookieMSS4 || p.WScale != DefaultCookieWScale || p.TTL != DefaultCookieTTL {
		t.Errorf("mapped address / defaults: %+v", protections(t, d))
	}
}

// TestProtectPinned: protections and verified sources live in pinned maps,
// so the CLI (Open) sees them and a restarted daemon (Load) keeps them.
func TestProtectPinned(t *testing.T) {
	dir := testPinDir(t)
	d := loadForTest(t, Options{PinDir: dir})
	mustProtect(t, d, srv4, Protection{Cookies: true, Budget: 50})
	if err := d.Verify(cli4.Addr(), cli6.Addr()); err != nil {
		t.Fatal(err)
	}
	ro, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if p, ok := protections(t, ro)[srv4]; !ok || !p.Cookies || p.Budget != 50 {
		t.Errorf("Open sees protections %+v", protections(t, ro))
	}
	if n, err := ro.VerifiedSources(); err != nil || n != 2 {
		t.Errorf("Open sees %d verified sources (%v), want 2", n, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2 := loadForTest(t, Options{PinDir: dir})
	if _, ok := protections(t, d2)[srv4]; !ok {
		t.Error("protection lost across a reload")
	}
	// The reloaded program still applies it: an unverified SYN gets a cookie.
	if a, _ := runOut(t, d2, frame.TCP{Src: netip.MustParseAddrPort("10.200.10.77:999"), Dst: srv4, Flags: frame.FlagSYN}.Build()); a != xdpTX {
		t.Errorf("unverified SYN after reload: %v, want XDP_TX", a)
	}
}

// A source seen before protection that never completed a handshake (a slow
// bot): its SYNs that protection answers with cookies or drops over the
// budget still count in its own entry, so the detector keeps its history
// and can ban it; a source first seen under protection gets no entry.
func TestProtectedSYNsCountIntoKnownSources(t *testing.T) {
	for _, p := range []Protection{{Cookies: true}, {Budget: 1}} {
		d := loadForTest(t, Options{})
		bot := netip.MustParseAddrPort("198.51.100.77:4000")
		if a := runFrame(t, d, frame.SYN(bot, srv4)); a != xdpPass {
			t.Fatalf("SYN before protection: %v", a)
		}
		mustProtect(t, d, srv4, p)
		for range 20 {
			if a := runFrame(t, d, frame.SYN(bot, srv4)); a == xdpPass && p.Cookies {
				t.Fatalf("%+v: unverified SYN passed", p)
			}
		}
		if s, ok, _ := d.Source(bot.Addr()); !ok || s.SYN != 21 || s.ACK != 0 {
			t.Errorf("%+v: known unverified source under protection: entry %+v (%v), want 21 SYNs counted", p, s, ok)
		}
		// A source first seen under protection whose SYNs are answered
		// with cookies gets no entry. (Under a budget, a SYN the budget
		// admits creates one as usual; TestProtectBudget checks that
		// dropped ones do not.)
		if p.Cookies {
			fresh := netip.MustParseAddrPort("198.51.100.78:4000")
			runFrame(t, d, frame.SYN(fresh, srv4))
			runFrame(t, d, frame.SYN(fresh, srv4))
			if s, ok, _ := d.Source(fresh.Addr()); ok {
				t.Errorf("%+v: source first seen under protection: entry %+v, want none for answered SYNs", p, s)
			}
		}
	}
}
