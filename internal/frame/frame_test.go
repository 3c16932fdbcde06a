package frame

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var (
	c4 = netip.MustParseAddrPort("10.200.20.2:40000")
	s4 = netip.MustParseAddrPort("10.200.20.1:80")
	c6 = netip.MustParseAddrPort("[fd00:200:20::2]:40000")
	s6 = netip.MustParseAddrPort("[fd00:200:20::1]:443")
)

func decode(t *testing.T, b []byte) gopacket.Packet {
	t.Helper()
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("decode % x: %v", b, el.Error())
	}
	return p
}

// sum16 is the Internet checksum's one's-complement sum; a header or
// pseudo-header with a correct checksum sums to 0xffff.
func sum16(parts ...[]byte) uint16 {
	var s uint32
	for _, b := range parts {
		for i := 0; i+1 < len(b); i += 2 {
			s += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			s += uint32(b[len(b)-1]) << 8
		}
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func checkTCPChecksum(t *testing.T, src, dst netip.Addr, seg []byte) {
	t.Helper()
	var ph []byte
	if src.Is4() {
		ph = append(src.AsSlice(), dst.AsSlice()...)
		ph = append(ph, 0, 6, byte(len(seg)>>8), byte(len(seg)))
	} else {
		ph = append(src.AsSlice(), dst.AsSlice()...)
		ph = binary.BigEndian.AppendUint32(ph, uint32(len(seg)))
		ph = append(ph, 0, 0, 0, 6)
	}
	if got := sum16(ph, seg); got != 0xffff {
		t.Errorf("tcp checksum: one's-complement sum %#04x, want 0xffff", got)
	}
}

func TestPad(t *testing.T) {
	b := TCP{Src: c4, Dst: s4, Flags: FlagSYN, Pad: true}.Build()
	if len(b) != 60 || !bytes.Equal(b[54:], make([]byte, 6)) || !bytes.Equal(b[:54], SYN(c4, s4)) {
		t.Errorf("padded SYN % x", b)
	}
}

func TestSYNv4(t *testing.T) {
	b := SYN(c4, s4)
	if len(b) != 14+20+20 {
		t.Fatalf("len %d, want 54", len(b))
	}
	p := decode(t, b)
	ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if ip.SrcIP.String() != "10.200.20.2" || ip.DstIP.String() != "10.200.20.1" || ip.Protocol != layers.IPProtocolTCP {
		t.Errorf("ip %v -> %v proto %v", ip.SrcIP, ip.DstIP, ip.Protocol)
	}
	if int(ip.Length) != len(b)-14 || ip.IHL != 5 {
		t.Errorf("ip length %d ihl %d", ip.Length, ip.IHL)
	}
	if sum16(b[14:34]) != 0xffff {
		t.Errorf("ipv4 header checksum wrong: % x", b[14:34])
	}
	if tcp.SrcPort != 40000 || tcp.DstPort != 80 || !tcp.SYN || tcp.ACK || tcp.RST || tcp.DataOffset != 5 {
		t.Errorf("tcp %v", tcp)
	}
	checkTCPChecksum(t, c4.Addr(), s4.Addr(), b[34:])
	if b[14+20+13] != byte(FlagSYN) {
		t.Errorf("flags byte %#x, want %#x", b[47], FlagSYN)
	}
}

func TestHelpersFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want Flags
	}{
		{"SYN", SYN(c6, s6), FlagSYN},
		{"SYNACK", SYNACK(s6, c6), FlagSYN | FlagACK},
		{"ACK", ACK(c4, s4), FlagACK},
		{"RST", RST(c4, s4), FlagRST},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := decode(t, tc.b)
			tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			f := tcp.Contents[13]
			if Flags(f) != tc.want {
				t.Errorf("flags %v, want %v", Flags(f), tc.want)
			}
		})
	}
}

func TestSYNv6Checksum(t *testing.T) {
	b := TCP{Src: c6, Dst: s6, Flags: FlagSYN, Options: true, Payload: []byte("x")}.Build()
	p := decode(t, b)
	ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	if ip.NextHeader != layers.IPProtocolTCP || int(ip.Length) != len(b)-54 {
		t.Errorf("ipv6 next %v length %d", ip.NextHeader, ip.Length)
	}
	checkTCPChecksum(t, c6.Addr(), s6.Addr(), b[54:])
}

func TestOptions(t *testing.T) {
	b := TCP{Src: c4, Dst: s4, Flags: FlagSYN, Options: true, IPOptions: true}.Build()
	p := decode(t, b)
	ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip.IHL != 6 || len(ip.Options) != 1 || ip.Options[0].OptionType != 148 {
		t.Errorf("ipv4 ihl %d options %v", ip.IHL, ip.Options)
	}
	if sum16(b[14:38]) != 0xffff {
		t.Errorf("ipv4 header checksum wrong with options")
	}
	tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tcp.DataOffset != 10 {
		t.Errorf("data offset %d, want 10", tcp.DataOffset)
	}
	var kinds []layers.TCPOptionKind
	for _, o := range tcp.Options {
		kinds = append(kinds, o.OptionType)
	}
	want := []layers.TCPOptionKind{2, 4, 8, 1, 3}
	if len(kinds) != len(want) {
		t.Fatalf("options %v, want kinds %v", tcp.Options, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Errorf("option %d kind %v, want %v", i, kinds[i], want[i])
		}
	}
	checkTCPChecksum(t, c4.Addr(), s4.Addr(), b[38:])
}

func TestVLANs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		vlans []uint16
		tpids []layers.EthernetType
		want  []uint16 // TPIDs on the wire, outer first
	}{
		{"single", []uint16{10}, nil, []uint16{0x8100}},
		{"qinq", []uint16{100, 200}, nil, []uint16{0x88a8, 0x8100}},
		{"reversed", []uint16{100, 200}, []layers.EthernetType{0x8100, 0x88a8}, []uint16{0x8100, 0x88a8}},
		{"three", []uint16{1, 2, 3}, nil, []uint16{0x88a8, 0x8100, 0x8100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := TCP{Src: c4, Dst: s4, Flags: FlagSYN, VLANs: tc.vlans, VLANTPIDs: tc.tpids}.Build()
			if len(b) != 54+4*len(tc.vlans) {
				t.Fatalf("len %d", len(b))
			}
			for i, tpid := range tc.want {
				if got := binary.BigEndian.Uint16(b[12+4*i:]); got != tpid {
					t.Errorf("tag %d tpid %#x, want %#x", i, got, tpid)
				}
				if got := binary.BigEndian.Uint16(b[14+4*i:]) & 0xfff; got != tc.vlans[i] {
					t.Errorf("tag %d vid %d, want %d", i, got, tc.vlans[i])
				}
			}
			if et := binary.BigEndian.Uint16(b[12+4*len(tc.vlans):]); et != 0x0800 {
				t.Errorf("inner ethertype %#x", et)
			}
			p := decode(t, b)
			if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); !ok || !tcp.SYN {
				t.Errorf("no SYN decoded behind tags: %v", p)
			}
		})
	}
}

func TestIPv6ExtChain(t *testing.T) {
	ext := []layers.IPProtocol{
		layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing,
		layers.IPProtocolIPv6Destination, layers.IPProtocolIPv6Fragment,
	}
	b := TCP{Src: c6, Dst: s6, Flags: FlagSYN, IPv6Ext: ext}.Build()
	if len(b) != 14+40+32+20 {
		t.Fatalf("len %d", len(b))
	}
	// gopacket hands everything after any fragment header to a Fragment
	// layer, so decode the chain by hand: next-header bytes form a chain.
	if b[14+6] != 0 {
		t.Errorf("ipv6 next header %d, want 0", b[20])
	}
	wantNext := []byte{43, 60, 44, 6}
	for i, n := range wantNext {
		if got := b[54+8*i]; got != n {
			t.Errorf("ext %d next %d, want %d", i, got, n)
		}
	}
	if got := binary.BigEndian.Uint16(b[14+4:]); int(got) != 32+20 {
		t.Errorf("payload length %d", got)
	}
	p := decode(t, b)
	for _, lt := range []gopacket.LayerType{layers.LayerTypeIPv6HopByHop, layers.LayerTypeIPv6Routing,
		layers.LayerTypeIPv6Destination, layers.LayerTypeIPv6Fragment} {
		if p.Layer(lt) == nil {
			t.Errorf("no %v layer", lt)
		}
	}
	checkTCPChecksum(t, c6.Addr(), s6.Addr(), b[14+40+32:])

	// Without a fragment header gopacket decodes through to TCP.
	b = TCP{Src: c6, Dst: s6, Flags: FlagACK, IPv6Ext: ext[:3]}.Build()
	p = decode(t, b)
	if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); !ok || !tcp.ACK {
		t.Errorf("no ACK behind hop-by-hop/routing/destination: %v", p)
	}
}

func TestFragments(t *testing.T) {
	t.Run("v4 non-first", func(t *testing.T) {
		b := TCP{Src: c4, Dst: s4, Flags: FlagSYN, FragOffset: 3}.Build()
		p := decode(t, b)
		ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if ip.FragOffset != 3 || ip.Flags&layers.IPv4MoreFragments != 0 {
			t.Errorf("frag offset %d flags %v", ip.FragOffset, ip.Flags)
		}
		if sum16(b[14:34]) != 0xffff {
			t.Errorf("ipv4 checksum wrong")
		}
	})
	t.Run("v4 first MF", func(t *testing.T) {
		b := TCP{Src: c4, Dst: s4, Flags: FlagSYN, MoreFragments: true}.Build()
		ip := decode(t, b).Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if ip.FragOffset != 0 || ip.Flags&layers.IPv4MoreFragments == 0 {
			t.Errorf("frag offset %d flags %v", ip.FragOffset, ip.Flags)
		}
	})
	t.Run("v6 appended header", func(t *testing.T) {
		b := TCP{Src: c6, Dst: s6, Flags: FlagSYN, FragOffset: 185, MoreFragments: true}.Build()
		if b[20] != 44 {
			t.Fatalf("next header %d, want 44", b[20])
		}
		f := decode(t, b).Layer(layers.LayerTypeIPv6Fragment).(*layers.IPv6Fragment)
		if f.FragmentOffset != 185 || !f.MoreFragments || f.NextHeader != layers.IPProtocolTCP {
			t.Errorf("fragment header %+v", f)
		}
	})
}

func TestNonTCP(t *testing.T) {
	p := decode(t, UDP(c4, s4))
	if p.Layer(layers.LayerTypeUDP) == nil {
		t.Errorf("no UDP layer: %v", p)
	}
	p = decode(t, UDP(c6, s6))
	if u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); !ok || u.DstPort != 443 {
		t.Errorf("no UDP/443 layer: %v", p)
	}
	p = decode(t, ARP())
	if p.Layer(layers.LayerTypeARP) == nil || p.NetworkLayer() != nil {
		t.Errorf("ARP frame decodes as %v", p)
	}
}

func TestPayloadAndMACs(t *testing.T) {
	dst := []byte{0x02, 1, 2, 3, 4, 5}
	b := TCP{Src: c4, Dst: s4, Flags: FlagPSH | FlagACK, Payload: []byte("hello"), DstMAC: dst}.Build()
	if !bytes.Equal(b[:6], dst) || !bytes.Equal(b[6:12], DefaultSrcMAC) {
		t.Errorf("macs % x", b[:12])
	}
	if !bytes.HasSuffix(b, []byte("hello")) {
		t.Errorf("payload missing")
	}
	checkTCPChecksum(t, c4.Addr(), s4.Addr(), b[34:])
}

func TestErrors(t *testing.T) {
	if _, err := (TCP{Src: c4, Dst: s6}).Serialize(); err == nil {
		t.Error("mixed families accepted")
	}
	if _, err := (TCP{Src: c4, Dst: s4, VLANs: []uint16{4096}}).Serialize(); err == nil {
		t.Error("VID 4096 accepted")
	}
	if _, err := (TCP{Dst: s4}).Serialize(); err == nil {
		t.Error("missing source accepted")
	}
}

func TestFlagsString(t *testing.T) {
	if s := (FlagSYN | FlagACK).String(); s != "SA" {
		t.Errorf("got %q", s)
	}
	if s := Flags(0).String(); s != "." {
		t.Errorf("got %q", s)
	}
}
