// Package frame builds Ethernet frames for tests: TCP segments over IPv4 or
// IPv6, optionally behind VLAN/QinQ tags, IPv6 extension headers, IP
// fragmentation and options, with every length and checksum set.
//
// It exists so that BPF_PROG_RUN tests, the fuzz seed corpus and live tests
// all describe packets the same way ("a SYN from A to B behind two VLAN
// tags") instead of hand-assembling bytes. Frames are serialized with
// gopacket; IPv6 extension headers are written by hand because gopacket
// cannot serialize all of them.
package frame

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Flags are TCP header flags, with the same bit values as on the wire
// (byte 13 of the TCP header), so a Flags value can be compared with a raw
// header byte.
type Flags uint8

// TCP flag bits.
const (
	FlagFIN Flags = 1 << iota
	FlagSYN
	FlagRST
	FlagPSH
	FlagACK
	FlagURG
)

// String renders flags like tcpdump does ("S", "SA", "R", "." for none).
func (f Flags) String() string {
	s := ""
	for _, b := range []struct {
		f Flags
		c string
	}{{FlagFIN, "F"}, {FlagSYN, "S"}, {FlagRST, "R"}, {FlagPSH, "P"}, {FlagACK, "A"}, {FlagURG, "U"}} {
		if f&b.f != 0 {
			s += b.c
		}
	}
	if s == "" {
		return "."
	}
	return s
}

// Default MAC addresses: locally administered, so they never collide with a
// real NIC. Live tests that replay frames set DstMAC to the receiving veth's.
var (
	DefaultSrcMAC = net.HardwareAddr{0x02, 0x00, 0x5e, 0x00, 0x00, 0x01}
	DefaultDstMAC = net.HardwareAddr{0x02, 0x00, 0x5e, 0x00, 0x00, 0x02}
)

// TCP describes one TCP segment in an Ethernet frame. The zero value of every
// optional field gives a plain untagged, unfragmented segment without
// options.
type TCP struct {
	// Src and Dst are both IPv4 or both IPv6; IPv4-mapped IPv6 addresses
	// (::ffff:a.b.c.d) give an IPv6 packet.
	Src, Dst netip.AddrPort
	Flags    Flags

	// VLANs are the VLAN IDs, outer first. With two or more tags the outer
	// TPID is 0x88a8 (802.1ad) and the inner ones 0x8100, unless VLANTPIDs
	// says otherwise.
	VLANs []uint16
	// VLANTPIDs, when set, gives each tag's TPID (outer first); it must be
	// as long as VLANs.
	VLANTPIDs []layers.EthernetType

	// IPv6Ext is the IPv6 extension header chain in order (HopByHop,
	// Routing, DestinationOptions, Fragment or any other protocol number,
	// which is written as a generic 8-byte header). Ignored for IPv4.
	IPv6Ext []layers.IPProtocol

	// FragOffset is the fragment offset in 8-byte units. With FragOffset or
	// MoreFragments set, IPv4 gets the fields in its header and IPv6 gets
	// them in its fragment header (one is appended to IPv6Ext when it has
	// none). The TCP header is still written after the IP headers: a
	// classifier must not look at it in a non-first fragment.
	FragOffset    uint16
	MoreFragments bool

	// Options adds the TCP options a Linux SYN carries (MSS 1460,
	// SACK-permitted, timestamps, NOP, window scale 7): data offset 10.
	Options bool
	// IPOptions adds one 4-byte IPv4 option (router alert): IHL 6.
	IPOptions bool

	Seq, Ack uint32
	Window   uint16 // 0 means 64240
	Payload  []byte

	SrcMAC, DstMAC net.HardwareAddr // nil means DefaultSrcMAC/DefaultDstMAC

	// Pad pads the frame with zeros to the 60-byte Ethernet minimum, as a
	// NIC does on the wire. Without it the frame ends where the IP packet
	// ends, so truncating it by one byte cuts into a header.
	Pad bool
}

// Build returns the full Ethernet frame with all lengths and checksums set.
// It panics on an impossible description (mixed address families, VID >
// 4095), which is always a bug in the calling test.
func (t TCP) Build() []byte {
	b, err := t.Serialize()
	if err != nil {
		panic(err)
	}
	return b
}

// Serialize is Build returning an error instead of panicking.
func (t TCP) Serialize() ([]byte, error) {
	if !t.Src.IsValid() || !t.Dst.IsValid() {
		return nil, fmt.Errorf("tcp %v -> %v: invalid address", t.Src, t.Dst)
	}
	win := t.Window
	if win == 0 {
		win = 64240
	}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(t.Src.Port()),
		DstPort: layers.TCPPort(t.Dst.Port()),
		Seq:     t.Seq,
		Ack:     t.Ack,
		Window:  win,
		FIN:     t.Flags&FlagFIN != 0,
		SYN:     t.Flags&FlagSYN != 0,
		RST:     t.Flags&FlagRST != 0,
		PSH:     t.Flags&FlagPSH != 0,
		ACK:     t.Flags&FlagACK != 0,
		URG:     t.Flags&FlagURG != 0,
	}
	if t.Options {
		tcp.Options = linuxSYNOptions()
	}
	l3 := ip{
		src: t.Src.Addr(), dst: t.Dst.Addr(), proto: layers.IPProtocolTCP,
		ext: t.IPv6Ext, fragOff: t.FragOffset, mf: t.MoreFragments, ipOpts: t.IPOptions,
	}
	b, err := serialize(t.SrcMAC, t.DstMAC, t.VLANs, t.VLANTPIDs, l3, tcp, gopacket.Payload(t.Payload))
	if err != nil || t.Pad {
		return b, err
	}
	return b[:ipEnd(b, len(t.VLANs), t.Src.Addr().Is4())], nil
}

// linuxSYNOptions mirrors the option block of a Linux 6.x SYN (20 bytes).
func linuxSYNOptions() []layers.TCPOption {
	return []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
		{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
		{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 1, 0, 0, 0, 0}},
		{OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
	}
}

// SYN returns a plain SYN from src to dst.
func SYN(src, dst netip.AddrPort) []byte { return TCP{Src: src, Dst: dst, Flags: FlagSYN}.Build() }

// SYNACK returns a plain SYN-ACK from src to dst.
func SYNACK(src, dst netip.AddrPort) []byte {
	return TCP{Src: src, Dst: dst, Flags: FlagSYN | FlagACK, Ack: 1}.Build()
}

// ACK returns a plain ACK from src to dst (the last step of a handshake).
func ACK(src, dst netip.AddrPort) []byte {
	return TCP{Src: src, Dst: dst, Flags: FlagACK, Seq: 1, Ack: 1}.Build()
}

// RST returns a plain RST from src to dst.
func RST(src, dst netip.AddrPort) []byte { return TCP{Src: src, Dst: dst, Flags: FlagRST}.Build() }

// UDP returns an 8-byte UDP datagram from src to dst in an untagged frame.
func UDP(src, dst netip.AddrPort) []byte {
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	l3 := ip{src: src.Addr(), dst: dst.Addr(), proto: layers.IPProtocolUDP}
	b, err := serialize(nil, nil, nil, nil, l3, udp, gopacket.Payload([]byte("synguard")))
	if err != nil {
		panic(err)
	}
	return b[:ipEnd(b, 0, src.Addr().Is4())]
}

// ipEnd is the offset just past the IP packet in frame b, which gopacket's
// Ethernet layer has padded to 60 bytes.
func ipEnd(b []byte, tags int, v4 bool) int {
	off := 14 + 4*tags
	if v4 {
		return off + int(binary.BigEndian.Uint16(b[off+2:]))
	}
	return off + 40 + int(binary.BigEndian.Uint16(b[off+4:]))
}

// ARP returns a broadcast ARP request (who-has 10.200.0.2 tell 10.200.0.1):
// the typical non-IP frame.
func ARP() []byte {
	eth := &layers.Ethernet{
		SrcMAC:       DefaultSrcMAC,
		DstMAC:       net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		EthernetType: layers.EthernetTypeARP,
	}
	arp := &layers.ARP{
		AddrType:          layers.LinkTypeEthernet,
		Protocol:          layers.EthernetTypeIPv4,
		HwAddressSize:     6,
		ProtAddressSize:   4,
		Operation:         layers.ARPRequest,
		SourceHwAddress:   DefaultSrcMAC,
		SourceProtAddress: []byte{10, 200, 0, 1},
		DstHwAddress:      make([]byte, 6),
		DstProtAddress:    []byte{10, 200, 0, 2},
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, eth, arp); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// ip describes the network layer of a frame under construction.
type ip struct {
	src, dst netip.Addr
	proto    layers.IPProtocol
	ext      []layers.IPProtocol
	fragOff  uint16
	mf       bool
	ipOpts   bool
}

// checksummer is a transport layer whose checksum needs the IP pseudo-header.
type checksummer interface {
	gopacket.SerializableLayer
	SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
}

func serialize(srcMAC, dstMAC net.HardwareAddr, vlans []uint16, tpids []layers.EthernetType,
	l3 ip, l4 checksummer, payload gopacket.Payload) ([]byte, error) {
	if l3.src.Is4() != l3.dst.Is4() {
		return nil, fmt.Errorf("%v -> %v: addresses must both be IPv4 or both IPv6", l3.src, l3.dst)
	}
	if tpids != nil && len(tpids) != len(vlans) {
		return nil, fmt.Errorf("vlans %v with tpids %v: need one tpid per tag", vlans, tpids)
	}
	if srcMAC == nil {
		srcMAC = DefaultSrcMAC
	}
	if dstMAC == nil {
		dstMAC = DefaultDstMAC
	}
	etherType := layers.EthernetTypeIPv4
	if l3.src.Is6() {
		etherType = layers.EthernetTypeIPv6
	}

	var ls []gopacket.SerializableLayer
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: etherType}
	ls = append(ls, eth)
	prev := &eth.EthernetType
	for i, vid := range vlans {
		if vid > 0x0fff {
			return nil, fmt.Errorf("vlan %d: VID must be 0-4095", vid)
		}
		tpid := layers.EthernetTypeDot1Q
		switch {
		case tpids != nil:
			tpid = tpids[i]
		case i == 0 && len(vlans) > 1:
			tpid = layers.EthernetTypeQinQ
		}
		*prev = tpid
		tag := &layers.Dot1Q{VLANIdentifier: vid, Type: etherType}
		ls = append(ls, tag)
		prev = &tag.Type
	}

	if l3.src.Is4() {
		v4 := &layers.IPv4{
			Version: 4, TTL: 64, Id: 0x5347, Protocol: l3.proto,
			SrcIP: l3.src.AsSlice(), DstIP: l3.dst.AsSlice(),
			FragOffset: l3.fragOff,
		}
		if l3.mf {
			v4.Flags = layers.IPv4MoreFragments
		} else if l3.fragOff == 0 {
			v4.Flags = layers.IPv4DontFragment
		}
		if l3.ipOpts {
			v4.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
		}
		if err := l4.SetNetworkLayerForChecksum(v4); err != nil {
			return nil, err
		}
		ls = append(ls, v4)
	} else {
		ext := l3.ext
		if (l3.fragOff != 0 || l3.mf) && !slices.Contains(ext, layers.IPProtocolIPv6Fragment) {
			ext = append(append([]layers.IPProtocol(nil), ext...), layers.IPProtocolIPv6Fragment)
		}
		next := l3.proto
		if len(ext) > 0 {
			next = ext[0]
		}
		v6 := &layers.IPv6{
			Version: 6, HopLimit: 64, NextHeader: next,
			SrcIP: l3.src.AsSlice(), DstIP: l3.dst.AsSlice(),
		}
		if err := l4.SetNetworkLayerForChecksum(v6); err != nil {
			return nil, err
		}
		ls = append(ls, v6)
		if len(ext) > 0 {
			ls = append(ls, gopacket.Payload(extChain(ext, l3.proto, l3.fragOff, l3.mf)))
		}
	}
	ls = append(ls, l4)
	if len(payload) > 0 {
		ls = append(ls, payload)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		return nil, fmt.Errorf("serialize %v -> %v: %w", l3.src, l3.dst, err)
	}
	return buf.Bytes(), nil
}

// extChain writes IPv6 extension headers, each pointing at the next and the
// last at final. Options headers carry one PadN option; the routing header is
// type 0 with no segments left (never processed, only skipped); the fragment
// header carries the fragment offset and M flag.
func extChain(ext []layers.IPProtocol, final layers.IPProtocol, fragOff uint16, mf bool) []byte {
	var out []byte
	for i, p := range ext {
		next := final
		if i+1 < len(ext) {
			next = ext[i+1]
		}
		h := make([]byte, 8)
		h[0] = byte(next)
		switch p {
		case layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination:
			h[2], h[3] = 1, 4 // PadN, 4 bytes of padding
		case layers.IPProtocolIPv6Routing:
			h[2] = 0 // routing type 0, segments left 0
		case layers.IPProtocolIPv6Fragment:
			fo := fragOff << 3
			if mf {
				fo |= 1
			}
			binary.BigEndian.PutUint16(h[2:], fo)
			binary.BigEndian.PutUint32(h[4:], 0x53474652)
		}
		out = append(out, h...)
	}
	return out
}
