package classify

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
	"github.com/synguard/synguard/internal/frame"
)

var (
	c4 = netip.MustParseAddrPort("10.200.20.2:40000")
	s4 = netip.MustParseAddrPort("10.200.20.1:80")
	c6 = netip.MustParseAddrPort("[fd00:200:20::2]:40000")
	s6 = netip.MustParseAddrPort("[fd00:200:20::1]:443")
)

const (
	hbh  = layers.IPProtocolIPv6HopByHop
	rt   = layers.IPProtocolIPv6Routing
	dst  = layers.IPProtocolIPv6Destination
	frag = layers.IPProtocolIPv6Fragment
)

// edit returns a copy of b with f applied, for frames the builder will not
// produce (broken versions, lengths, options).
func edit(b []byte, f func(b []byte) []byte) []byte {
	return f(append([]byte(nil), b...))
}

// v4/v6 build a TCP frame with the given flags and options.
func v4(fl frame.Flags) frame.TCP { return frame.TCP{Src: c4, Dst: s4, Flags: fl} }
func v6(fl frame.Flags) frame.TCP { return frame.TCP{Src: c6, Dst: s6, Flags: fl} }

func with(t frame.TCP, f func(*frame.TCP)) []byte { f(&t); return t.Build() }

// tcpRes is the expected result for a TCP frame from c to s.
func tcpRes(k Kind, c, s netip.AddrPort, flags uint8) Result {
	return Result{Kind: k, Src: c.Addr(), Dst: s, Flags: flags}
}

type tcase struct {
	name  string
	frame []byte
	want  Result
}

func contractCases() []tcase {
	syn4 := tcpRes(SYN, c4, s4, FlagSYN)
	syn6 := tcpRes(SYN, c6, s6, FlagSYN)
	ip4 := frame.SYN(c4, s4)
	ip6 := frame.SYN(c6, s6)
	mal := Result{Kind: Malformed}
	nonIP := Result{Kind: NonIP}
	return []tcase{
		// 1. Ethernet and VLAN tags.
		{"empty", nil, mal},
		{"13 bytes", ip4[:13], mal},
		{"14 bytes ipv4 ethertype", ip4[:14], mal},
		{"14 bytes arp ethertype", edit(ip4[:14], func(b []byte) []byte { b[12], b[13] = 0x08, 0x06; return b }), nonIP},
		{"arp", frame.ARP(), nonIP},
		{"802.3 length field", edit(ip4, func(b []byte) []byte { b[12], b[13] = 0x00, 0x28; return b }), nonIP},
		{"ethertype ipx", edit(ip4, func(b []byte) []byte { b[12], b[13] = 0x81, 0x37; return b }), nonIP},
		{"one tag", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.VLANs = []uint16{7} }), syn4},
		{"qinq", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.VLANs = []uint16{7, 8} }), syn4},
		{"qinq tpids reversed", with(v4(frame.FlagSYN), func(t *frame.TCP) {
			t.VLANs, t.VLANTPIDs = []uint16{7, 8}, []layers.EthernetType{0x8100, 0x88a8}
		}), syn4},
		{"two 0x88a8 tags", with(v6(frame.FlagSYN), func(t *frame.TCP) {
			t.VLANs, t.VLANTPIDs = []uint16{7, 8}, []layers.EthernetType{0x88a8, 0x88a8}
		}), syn6},
		{"three tags", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.VLANs = []uint16{7, 8, 9} }), mal},
		{"third tag 0x88a8", with(v4(frame.FlagSYN), func(t *frame.TCP) {
			t.VLANs, t.VLANTPIDs = []uint16{7, 8, 9}, []layers.EthernetType{0x8100, 0x8100, 0x88a8}
		}), mal},
		{"tag truncated", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.VLANs = []uint16{7} })[:17], mal},
		{"second tag truncated", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.VLANs = []uint16{7, 8} })[:21], mal},
		{"tagged arp", edit(with(v4(frame.FlagSYN), func(t *frame.TCP) { t.VLANs = []uint16{7} }),
			func(b []byte) []byte { b[16], b[17] = 0x08, 0x06; return b }), nonIP},
		{"two tags then ipv4 truncated", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.VLANs = []uint16{7, 8} })[:22+19], mal},

		// 2. IPv4.
		{"ipv4 syn", ip4, syn4},
		{"ipv4 version 6", edit(ip4, func(b []byte) []byte { b[14] = 0x65; return b }), mal},
		{"ipv4 version 0", edit(ip4, func(b []byte) []byte { b[14] = 0x05; return b }), mal},
		{"ipv4 ihl 4", edit(ip4, func(b []byte) []byte { b[14] = 0x44; return b }), mal},
		{"ipv4 ihl 0", edit(ip4, func(b []byte) []byte { b[14] = 0x40; return b }), mal},
		{"ipv4 ihl 15 short", edit(with(v4(frame.FlagSYN), func(t *frame.TCP) { t.Payload = make([]byte, 40) }),
			func(b []byte) []byte { b[14] = 0x4f; return b[:14+59] }), mal},
		{"ipv4 ihl 15 then tcp", edit(with(v4(frame.FlagSYN), func(t *frame.TCP) { t.Payload = make([]byte, 40) }),
			func(b []byte) []byte { b[14] = 0x4f; b[14+60+12] = 0x50; b[14+60+13] = 0x12; b[14+60+3] = 9; return b }),
			Result{Kind: SYNACK, Src: c4.Addr(), Dst: netip.AddrPortFrom(s4.Addr(), 9), Flags: FlagSYN | FlagACK}},
		{"ipv4 ihl 6 without options", edit(ip4, func(b []byte) []byte { b[14] = 0x46; return b }), mal},
		{"ipv4 options", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.IPOptions = true }), syn4},
		{"ipv4 broken option", edit(with(v4(frame.FlagSYN), func(t *frame.TCP) { t.IPOptions = true }),
			func(b []byte) []byte { b[35] = 1; return b }), syn4}, // option length 1: gopacket rejects
		{"ipv4 total length 0", edit(ip4, func(b []byte) []byte { b[16], b[17] = 0, 0; return b }), syn4},
		{"ipv4 total length 20", edit(ip4, func(b []byte) []byte { b[16], b[17] = 0, 20; return b }), syn4},
		{"ipv4 total length 4", edit(ip4, func(b []byte) []byte { b[16], b[17] = 0, 4; return b }), syn4},
		{"ipv4 total length 65535", edit(ip4, func(b []byte) []byte { b[16], b[17] = 0xff, 0xff; return b }), syn4},
		{"ipv4 padded", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.Pad = true }), syn4},
		{"ipv4 fragment", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.FragOffset = 1 }), Result{Kind: Fragment, Src: c4.Addr()}},
		{"ipv4 last fragment max offset", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.FragOffset = 0x1fff }), Result{Kind: Fragment, Src: c4.Addr()}},
		{"ipv4 fragment no tcp bytes", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.FragOffset = 1 })[:34], Result{Kind: Fragment, Src: c4.Addr()}},
		{"ipv4 first fragment", with(v4(frame.FlagSYN), func(t *frame.TCP) { t.MoreFragments = true }), syn4},
		{"ipv4 udp", frame.UDP(c4, s4), Result{Kind: NonTCP, Src: c4.Addr()}},
		{"ipv4 udp fragment", edit(frame.UDP(c4, s4), func(b []byte) []byte { b[21] = 2; return b }), Result{Kind: Fragment, Src: c4.Addr()}},
		{"ipv4 icmp header only", edit(ip4, func(b []byte) []byte { b[23] = 1; return b[:34] }), Result{Kind: NonTCP, Src: c4.Addr()}},

		// 3. IPv6.
		{"ipv6 syn", ip6, syn6},
		{"ipv6 39 bytes", ip6[:14+39], mal},
		{"ipv6 version 4", edit(ip6, func(b []byte) []byte { b[14] = 0x40; return b }), mal},
		{"ipv6 payload length 0", edit(ip6, func(b []byte) []byte { b[18], b[19] = 0, 0; return b }), syn6},
		{"ipv6 payload length huge", edit(ip6, func(b []byte) []byte { b[18], b[19] = 0xff, 0xff; return b }), syn6},
		{"ipv6 ext chain", with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{hbh, rt, dst, frag} }), syn6},
		{"ipv6 six ext", with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{hbh, dst, rt, dst, frag, dst} }), syn6},
		{"ipv6 seven ext", with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{hbh, dst, rt, dst, rt, dst, dst} }), mal},
		{"ipv6 seventh is fragment", with(v6(frame.FlagSYN), func(t *frame.TCP) {
			t.IPv6Ext, t.FragOffset = []layers.IPProtocol{hbh, dst, rt, dst, rt, dst, frag}, 5
		}), mal},
		{"ipv6 six ext then udp", edit(with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{hbh, dst, rt, dst, rt, dst} }),
			func(b []byte) []byte { b[54+40] = 17; return b }), Result{Kind: NonTCP, Src: c6.Addr()}},
		{"ipv6 fragment", with(v6(frame.FlagSYN), func(t *frame.TCP) { t.FragOffset = 1 }), Result{Kind: Fragment, Src: c6.Addr()}},
		{"ipv6 fragment after chain", with(v6(frame.FlagSYN), func(t *frame.TCP) {
			t.IPv6Ext, t.FragOffset = []layers.IPProtocol{hbh, rt, frag, dst}, 100
		}), Result{Kind: Fragment, Src: c6.Addr()}},
		{"ipv6 first fragment", with(v6(frame.FlagSYN), func(t *frame.TCP) { t.MoreFragments = true }), syn6},
		{"ipv6 fragment reserved byte", edit(with(v6(frame.FlagSYN), func(t *frame.TCP) { t.MoreFragments = true }),
			func(b []byte) []byte { b[55] = 0xff; return b }), syn6}, // gopacket's skipper would read 0xff as a length
		{"ipv6 fragment truncated", with(v6(frame.FlagSYN), func(t *frame.TCP) { t.FragOffset = 1 })[:54+7], mal},
		{"ipv6 hbh truncated", with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{hbh} })[:54+7], mal},
		{"ipv6 hbh 1 byte", with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{hbh} })[:54+1], mal},
		{"ipv6 hbh length past end", edit(with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{hbh} }),
			func(b []byte) []byte { b[55] = 3; return b }), mal}, // 32 bytes claimed, 28 present
		{"ipv6 hbh long", edit(with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{hbh} }),
			func(b []byte) []byte { b[55] = 2; return b }), Result{Kind: Malformed}}, // skips into the TCP header: 4 bytes left
		{"ipv6 hbh bad tlv", edit(with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{hbh} }),
			func(b []byte) []byte { b[57] = 200; return b }), syn6}, // gopacket rejects the option
		{"ipv6 routing type 4", edit(with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{rt} }),
			func(b []byte) []byte { b[56] = 4; return b }), syn6}, // gopacket rejects routing types != 0
		{"ipv6 routing type 0 odd length", edit(with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{rt, dst} }),
			func(b []byte) []byte { b[55] = 1; b[54] = 6; return b }), syn6}, // routing header swallows the dst header
		{"ipv6 udp", frame.UDP(c6, s6), Result{Kind: NonTCP, Src: c6.Addr()}},
		{"ipv6 no next header", edit(ip6, func(b []byte) []byte { b[20] = 59; return b }), Result{Kind: NonTCP, Src: c6.Addr()}},
		{"ipv6 esp after hbh", edit(with(v6(frame.FlagSYN), func(t *frame.TCP) { t.IPv6Ext = []layers.IPProtocol{hbh} }),
			func(b []byte) []byte { b[54] = 50; return b }), Result{Kind: NonTCP, Src: c6.Addr()}},
		{"ipv6 mapped source", with(frame.TCP{Flags: frame.FlagSYN}, func(t *frame.TCP) {
			t.Src = netip.MustParseAddrPort("[::ffff:10.200.20.9]:1234")
			t.Dst = netip.MustParseAddrPort("[::ffff:10.200.20.1]:22")
		}), tcpRes(SYN, netip.MustParseAddrPort("10.200.20.9:1234"), netip.MustParseAddrPort("10.200.20.1:22"), FlagSYN)},

		// 4. TCP.
		{"tcp 19 bytes", ip4[:14+20+19], mal},
		{"tcp doff 4", edit(ip4, func(b []byte) []byte { b[46] = 0x40; return b }), mal},
		{"tcp doff 0", edit(ip4, func(b []byte) []byte { b[46] = 0x00; return b }), mal},
		{"tcp doff 6 short", edit(ip4, func(b []byte) []byte { b[46] = 0x60; return b }), mal},
		{"tcp options", with(v6(frame.FlagSYN), func(t *frame.TCP) { t.Options = true }), syn6},
		{"tcp options truncated", with(v6(frame.FlagSYN), func(t *frame.TCP) { t.Options = true })[:54+39], mal},
		{"tcp broken option", edit(with(v4(frame.FlagSYN), func(t *frame.TCP) { t.Options = true }),
			func(b []byte) []byte { b[55] = 0; return b }), syn4}, // MSS length 0: gopacket rejects
		{"tcp doff 15", edit(with(v4(frame.FlagSYN), func(t *frame.TCP) { t.Payload = make([]byte, 40) }),
			func(b []byte) []byte { b[46] = 0xf0; return b }), syn4},
		{"tcp ns bit", edit(ip4, func(b []byte) []byte { b[46] |= 1; return b }), syn4},
		{"ipv4 ack", frame.ACK(c4, s4), tcpRes(ACK, c4, s4, FlagACK)},
		{"ipv6 synack", frame.SYNACK(s6, c6), tcpRes(SYNACK, s6, c6, FlagSYN|FlagACK)},
		{"ipv6 rst", frame.RST(c6, s6), tcpRes(RST, c6, s6, FlagRST)},
		{"rst syn", v4(frame.FlagRST | frame.FlagSYN).Build(), tcpRes(RST, c4, s4, FlagRST|FlagSYN)},
		{"rst ack", v4(frame.FlagRST | frame.FlagACK).Build(), tcpRes(RST, c4, s4, FlagRST|FlagACK)},
		{"syn ece cwr", edit(ip4, func(b []byte) []byte { b[47] |= FlagECE | FlagCWR; return b }), tcpRes(SYN, c4, s4, FlagSYN|FlagECE|FlagCWR)},
		{"syn fin", v4(frame.FlagSYN | frame.FlagFIN).Build(), tcpRes(SYN, c4, s4, FlagSYN|FlagFIN)},
		{"psh ack", v4(frame.FlagPSH | frame.FlagACK).Build(), tcpRes(ACK, c4, s4, FlagPSH|FlagACK)},
		{"fin ack", v6(frame.FlagFIN | frame.FlagACK).Build(), tcpRes(ACK, c6, s6, FlagFIN|FlagACK)},
		{"fin", v4(frame.FlagFIN).Build(), tcpRes(TCPOther, c4, s4, FlagFIN)},
		{"null", v4(0).Build(), tcpRes(TCPOther, c4, s4, 0)},
		{"xmas", v4(frame.FlagFIN | frame.FlagPSH | frame.FlagURG).Build(), tcpRes(TCPOther, c4, s4, FlagFIN|FlagPSH|FlagURG)},
		{"all flags", edit(ip4, func(b []byte) []byte { b[47] = 0xff; return b }), tcpRes(RST, c4, s4, 0xff)},
		{"tcp behind everything", with(v6(frame.FlagSYN), func(t *frame.TCP) {
			t.VLANs, t.IPv6Ext, t.MoreFragments, t.Options = []uint16{1, 2}, []layers.IPProtocol{hbh, rt, dst, frag, dst}, true, true
		}), syn6},
	}
}

func TestContract(t *testing.T) {
	var c Classifier // reused across cases, as replay does
	for _, tc := range contractCases() {
		t.Run(tc.name, func(t *testing.T) {
			if got := c.Classify(tc.frame); got != tc.want {
				t.Errorf("Classify(% x)\n got %+v\nwant %+v", tc.frame, got, tc.want)
			}
			if got := Classify(tc.frame); got != tc.want {
				t.Errorf("pooled Classify got %+v, want %+v", got, tc.want)
			}
			if got := reference(tc.frame); got != tc.want {
				t.Errorf("reference got %+v, want %+v (test bug)", got, tc.want)
			}
		})
	}
}

// TestFlagsExhaustive checks rule 4 for every value of the flags byte.
func TestFlagsExhaustive(t *testing.T) {
	base := frame.SYN(c4, s4)
	for f := 0; f < 256; f++ {
		b := edit(base, func(b []byte) []byte { b[47] = byte(f); return b })
		want := TCPOther
		switch {
		case f&0x04 != 0:
			want = RST
		case f&0x02 != 0 && f&0x10 == 0:
			want = SYN
		case f&0x02 != 0:
			want = SYNACK
		case f&0x10 != 0:
			want = ACK
		}
		if got := Classify(b); got.Kind != want || got.Flags != uint8(f) {
			t.Errorf("flags %#02x: got %v flags %#02x, want %v", f, got.Kind, got.Flags, want)
		}
	}
}

// TestTruncatedSYN cuts SYNs at every byte offset: every prefix shorter than
// the headers is Malformed, the whole frame is a SYN.
func TestTruncatedSYN(t *testing.T) {
	for _, tc := range []struct {
		name string
		t    frame.TCP
	}{
		{"ipv4", v4(frame.FlagSYN)},
		{"ipv4 options vlan", frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagSYN, Options: true, IPOptions: true, VLANs: []uint16{5}}},
		{"ipv6", v6(frame.FlagSYN)},
		{"ipv6 qinq ext options", frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagSYN, Options: true, VLANs: []uint16{5, 6},
			IPv6Ext: []layers.IPProtocol{hbh, rt, dst, frag}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.t.Build()
			for n := 0; n < len(b); n++ {
				if got := Classify(b[:n]); got != (Result{Kind: Malformed}) {
					t.Errorf("%d of %d bytes: got %+v, want malformed", n, len(b), got)
				}
			}
			if got := Classify(b); got.Kind != SYN || got.Src != tc.t.Src.Addr() || got.Dst != tc.t.Dst {
				t.Errorf("whole frame: got %+v", got)
			}
		})
	}
}

func TestCounted(t *testing.T) {
	for k := Kind(0); int(k) < NumKinds; k++ {
		r := Result{Kind: k}
		wantSrc := k == SYN || k == ACK || k == RST
		wantSvc := k == SYN || k == ACK
		if r.Counted() != wantSrc || r.CountsService() != wantSvc {
			t.Errorf("%v: Counted %v CountsService %v", k, r.Counted(), r.CountsService())
		}
		wantTCP := k == SYN || k == SYNACK || k == ACK || k == RST || k == TCPOther
		if k.IsTCP() != wantTCP {
			t.Errorf("%v: IsTCP %v", k, k.IsTCP())
		}
	}
}

func TestKindString(t *testing.T) {
	want := []string{"malformed", "non-ip", "non-tcp", "fragment", "syn", "synack", "ack", "rst", "tcp-other"}
	for i, w := range want {
		if got := Kind(i).String(); got != w {
			t.Errorf("Kind(%d) = %q, want %q", i, got, w)
		}
	}
	if got := Kind(42).String(); got != "kind(42)" {
		t.Errorf("Kind(42) = %q", got)
	}
}

func TestResultString(t *testing.T) {
	for _, tc := range []struct {
		r    Result
		want string
	}{
		{Classify(frame.SYN(c4, s4)), "syn 10.200.20.2 -> 10.200.20.1:80 [S]"},
		{Classify(frame.SYNACK(s6, c6)), "synack fd00:200:20::1 -> [fd00:200:20::2]:40000 [SA]"},
		{Classify(v4(0).Build()), "tcp-other 10.200.20.2 -> 10.200.20.1:80 [.]"},
		{Classify(frame.UDP(c4, s4)), "non-tcp 10.200.20.2"},
		{Classify(nil), "malformed"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

func TestNoAllocs(t *testing.T) {
	frames := [][]byte{
		frame.SYN(c4, s4),
		frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagSYN, Options: true, VLANs: []uint16{1, 2},
			IPv6Ext: []layers.IPProtocol{hbh, rt, dst, frag}}.Build(),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagSYN, IPOptions: true, Options: true}.Build(),
	}
	var c Classifier
	for _, f := range frames {
		c.Classify(f) // first use may size option slices
	}
	n := testing.AllocsPerRun(1000, func() {
		for _, f := range frames {
			c.Classify(f)
		}
	})
	if n != 0 {
		t.Errorf("%v allocations per run, want 0", n)
	}
}

// reference is an independent, byte-offset transcription of the contract,
// written without gopacket, so that the gopacket-based classifier is checked
// against a second reading of the rules (in TestContract and FuzzReference).
func reference(b []byte) Result {
	if len(b) < 14 {
		return Result{}
	}
	off := 12
	et := binary.BigEndian.Uint16(b[off:])
	for tags := 0; et == 0x8100 || et == 0x88a8; tags++ {
		if tags == 2 || len(b) < off+6 {
			return Result{}
		}
		off += 4
		et = binary.BigEndian.Uint16(b[off:])
	}
	off += 2
	var src, dstA netip.Addr
	var proto byte
	switch et {
	case 0x0800:
		if len(b) < off+20 || b[off]>>4 != 4 || b[off]&15 < 5 || len(b) < off+int(b[off]&15)*4 {
			return Result{}
		}
		src = netip.AddrFrom4([4]byte(b[off+12 : off+16]))
		dstA = netip.AddrFrom4([4]byte(b[off+16 : off+20]))
		if binary.BigEndian.Uint16(b[off+6:])&0x1fff != 0 {
			return Result{Kind: Fragment, Src: src}
		}
		proto = b[off+9]
		off += int(b[off]&15) * 4
	case 0x86dd:
		if len(b) < off+40 || b[off]>>4 != 6 {
			return Result{}
		}
		src = netip.AddrFrom16([16]byte(b[off+8 : off+24])).Unmap()
		dstA = netip.AddrFrom16([16]byte(b[off+24 : off+40])).Unmap()
		proto = b[off+6]
		off += 40
		for i := 0; proto == 0 || proto == 43 || proto == 60 || proto == 44; i++ {
			if i == 6 {
				return Result{}
			}
			n := 8
			if proto != 44 {
				if len(b) < off+2 {
					return Result{}
				}
				n = (int(b[off+1]) + 1) * 8
			}
			if len(b) < off+n {
				return Result{}
			}
			if proto == 44 && binary.BigEndian.Uint16(b[off+2:])>>3 != 0 {
				return Result{Kind: Fragment, Src: src}
			}
			proto = b[off]
			off += n
		}
	default:
		return Result{Kind: NonIP}
	}
	if proto != 6 {
		return Result{Kind: NonTCP, Src: src}
	}
	if len(b) < off+20 || b[off+12]>>4 < 5 || len(b) < off+int(b[off+12]>>4)*4 {
		return Result{}
	}
	f := b[off+13]
	r := Result{Src: src, Dst: netip.AddrPortFrom(dstA, binary.BigEndian.Uint16(b[off+2:])), Flags: f}
	switch {
	case f&0x04 != 0:
		r.Kind = RST
	case f&0x02 != 0 && f&0x10 == 0:
		r.Kind = SYN
	case f&0x02 != 0:
		r.Kind = SYNACK
	case f&0x10 != 0:
		r.Kind = ACK
	default:
		r.Kind = TCPOther
	}
	return r
}

// FuzzReference requires the gopacket-based classifier and the byte-offset
// reference to agree on every input; the seeds are the contract cases.
func FuzzReference(f *testing.F) {
	for _, tc := range contractCases() {
		f.Add(tc.frame)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, want := Classify(b), reference(b)
		if got != want {
			t.Fatalf("Classify(% x) = %+v, reference %+v", b, got, want)
		}
	})
}
