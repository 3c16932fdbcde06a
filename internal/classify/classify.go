// Package classify is the Go reference for how synguard's XDP program
// classifies an Ethernet frame. Every frame gets exactly one Kind, plus the
// source address and the service (destination address and port) the XDP
// program would count it against.
//
// It has two users: the fuzz test in package bpf, which requires the XDP
// program and this package to agree on every frame, and `synguard replay`,
// which feeds captured frames through the detector as the kernel would have
// counted them. The rules are the team's classification contract; they are
// restated on Classify and each one is a table test.
//
// Decoding uses gopacket's layer decoders (Ethernet, Dot1Q, IPv4,
// IPv6ExtensionSkipper, TCP) called directly on reusable structs, so a frame
// costs no allocation. gopacket is stricter or more lenient than the
// contract in a few places; there the bytes are checked by hand and the
// comment says "gopacket differs". The full list:
//
//  1. VLAN tags: gopacket follows any number of tags; the contract allows
//     two, a third is Malformed (counted here).
//  2. IPv4 version: gopacket does not check it; the contract requires 4.
//  3. IPv4 total length: gopacket rejects a total length below 20 or below
//     IHL*4 and cuts the payload at the total length; the contract ignores
//     total length (Ethernet padding, snap length), so the TCP header is
//     looked for in the frame's bytes after IHL*4.
//  4. IPv4 options: gopacket rejects malformed options; the contract does not
//     parse them. Decode errors after the fixed header are ignored.
//  5. IPv6 version: not checked by gopacket; the contract requires 6.
//  6. IPv6 payload length: gopacket rejects payload length 0 (unless a
//     jumbogram) and cuts the payload at it; the contract ignores it.
//  7. IPv6 hop-by-hop: gopacket parses it inside the IPv6 layer and checks
//     its options (jumbogram rules); the contract only skips it by length.
//     Because of 5-7 the IPv6 fixed header (version, next header, addresses)
//     is read by hand; gopacket's IPv6 layer is not used.
//  8. IPv6 routing header: gopacket's full decoder rejects routing types
//     other than 0 and odd type-0 lengths; the contract skips any routing
//     header by length (IPv6ExtensionSkipper does, so it is used).
//  9. IPv6 fragment header: gopacket's skipper would read the reserved byte
//     as a length, and its full decoder stops at every fragment header, even
//     offset 0; the contract skips 8 bytes and parses a first fragment as
//     usual. The fragment header is read by hand.
//  10. IPv6 extension count: unlimited in gopacket; more than 6 is Malformed.
//  11. TCP options: gopacket rejects malformed options; the contract does not
//     parse them (errors after the fixed header and data offset are ignored).
//  12. IPv4-mapped IPv6 addresses: the kernel keys sources by 16 bytes with
//     IPv4 as ::ffff:a.b.c.d, so an IPv6 packet from ::ffff:a.b.c.d shares
//     the entry of IPv4 a.b.c.d. Src and Dst are unmapped in both cases.
package classify

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"sync"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Kind is the one class the XDP program gives a frame. Each Kind has its own
// global counter in the kernel.
type Kind uint8

// Kinds, in the order of the contract.
const (
	Malformed Kind = iota // a header the program needs is cut short or invalid (counter not_parsed)
	NonIP                 // final EtherType is neither IPv4 nor IPv6
	NonTCP                // IP, but not TCP
	Fragment              // non-first IP fragment: carries no TCP header
	SYN                   // SYN without ACK: a connection attempt
	SYNACK                // SYN with ACK
	ACK                   // ACK without SYN or RST: completes handshakes, carries data
	RST                   // any segment with RST
	TCPOther              // TCP without SYN, ACK or RST (FIN-only, bare PSH, null scan)
)

// NumKinds is the number of Kinds, for arrays indexed by Kind.
const NumKinds = int(TCPOther) + 1

var kindNames = [NumKinds]string{"malformed", "non-ip", "non-tcp", "fragment", "syn", "synack", "ack", "rst", "tcp-other"}

// String returns the kind's lower-case name as used in logs and replay output.
func (k Kind) String() string {
	if int(k) < NumKinds {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// IsTCP reports whether the frame carried a complete TCP header, so that Dst
// and Flags are set.
func (k Kind) IsTCP() bool { return k >= SYN }

// TCP flag bits as they appear in Result.Flags (byte 13 of the TCP header).
const (
	FlagFIN uint8 = 0x01
	FlagSYN uint8 = 0x02
	FlagRST uint8 = 0x04
	FlagPSH uint8 = 0x08
	FlagACK uint8 = 0x10
	FlagURG uint8 = 0x20
	FlagECE uint8 = 0x40
	FlagCWR uint8 = 0x80
)

// Result is the classification of one frame.
type Result struct {
	Kind Kind
	// Src is the IP source address for NonTCP, Fragment and the TCP kinds;
	// invalid (zero) for Malformed and NonIP. IPv4 (and IPv4-mapped IPv6)
	// sources are plain IPv4 addresses.
	Src netip.Addr
	// Dst is the service: destination address and TCP port, for the TCP
	// kinds only; zero otherwise. Unmapped like Src.
	Dst netip.AddrPort
	// Flags is the TCP flags byte (FlagFIN...FlagCWR) for the TCP kinds.
	Flags uint8
}

// String renders the result for logs: "syn 10.0.0.2 -> 10.0.0.1:80 [S]",
// "fragment 10.0.0.2", "malformed".
func (r Result) String() string {
	switch {
	case r.Kind.IsTCP():
		return r.Kind.String() + " " + r.Src.String() + " -> " + r.Dst.String() + " [" + flagString(r.Flags) + "]"
	case r.Src.IsValid():
		return r.Kind.String() + " " + r.Src.String()
	}
	return r.Kind.String()
}

func flagString(f uint8) string {
	s := ""
	for i, c := range "FSRPAUEC" {
		if f&(1<<i) != 0 {
			s += string(c)
		}
	}
	if s == "" {
		return "."
	}
	return s
}

// Counted reports whether the XDP program adds this frame to its per-source
// entry (SYN, ACK or RST count), unless the source is banned and dropped.
func (r Result) Counted() bool { return r.Kind == SYN || r.Kind == ACK || r.Kind == RST }

// CountsService reports whether the XDP program adds this frame to the
// per-service entry of Dst (SYN or ACK count).
func (r Result) CountsService() bool { return r.Kind == SYN || r.Kind == ACK }

// Classifier holds reusable gopacket decoding state so classifying a frame
// does not allocate. A Classifier is not safe for concurrent use; the zero
// value is ready. Classify (the function) uses a pool of them.
type Classifier struct {
	eth  layers.Ethernet
	vlan layers.Dot1Q
	ip4  layers.IPv4
	ext  layers.IPv6ExtensionSkipper
	tcp  layers.TCP
}

var pool = sync.Pool{New: func() any { return new(Classifier) }}

// Classify classifies one frame; see (*Classifier).Classify. Safe for
// concurrent use.
func Classify(frame []byte) Result {
	c := pool.Get().(*Classifier)
	r := c.Classify(frame)
	pool.Put(c)
	return r
}

// Contract limits.
const (
	maxVLANTags = 2
	maxIPv6Ext  = 6
)

// Classify classifies one Ethernet frame (starting at the destination MAC,
// no FCS) exactly as the XDP program does:
//
//  1. Ethernet: fewer than 14 bytes -> Malformed. Up to two VLAN tags (TPID
//     0x8100 or 0x88a8, in any order); a third tag or a truncated tag ->
//     Malformed. Final EtherType not IPv4/IPv6 -> NonIP.
//  2. IPv4: fewer than 20 bytes, version != 4, IHL < 5 or fewer than IHL*4
//     bytes -> Malformed. Total length is not checked. Fragment offset != 0
//     -> Fragment. Protocol != TCP -> NonTCP. A first fragment is parsed.
//  3. IPv6: fewer than 40 bytes or version != 6 -> Malformed. At most 6
//     extension headers among hop-by-hop, routing, destination options
//     ((hdrlen+1)*8 bytes) and fragment (8 bytes) are skipped; a truncated
//     one -> Malformed; a fragment header with offset != 0 -> Fragment; a
//     7th -> Malformed. Final next header TCP -> TCP, else NonTCP.
//  4. TCP: fewer than 20 bytes, data offset < 5 or fewer than doff*4 bytes
//     -> Malformed. RST -> RST; else SYN without ACK -> SYN; else SYN+ACK
//     -> SYNACK; else ACK -> ACK; else TCPOther.
func (c *Classifier) Classify(frame []byte) Result {
	df := gopacket.NilDecodeFeedback
	if c.eth.DecodeFromBytes(frame, df) != nil { // < 14 bytes
		return Result{Kind: Malformed}
	}
	// gopacket maps an 802.3 length (< 0x0600) to EthernetTypeLLC; either
	// way it is NonIP below, as in the contract.
	etype, rest := c.eth.EthernetType, c.eth.Payload
	// gopacket differs (1): it would follow any number of tags.
	for tags := 0; etype == layers.EthernetTypeDot1Q || etype == layers.EthernetTypeQinQ; tags++ {
		if tags == maxVLANTags {
			return Result{Kind: Malformed}
		}
		if c.vlan.DecodeFromBytes(rest, df) != nil { // truncated tag
			return Result{Kind: Malformed}
		}
		etype, rest = c.vlan.Type, c.vlan.Payload
	}
	switch etype {
	case layers.EthernetTypeIPv4:
		return c.ipv4(rest)
	case layers.EthernetTypeIPv6:
		return c.ipv6(rest)
	}
	return Result{Kind: NonIP}
}

func (c *Classifier) ipv4(b []byte) Result {
	// gopacket differs (2): the version is not checked by its decoder.
	if len(b) < 20 || b[0]>>4 != 4 {
		return Result{Kind: Malformed}
	}
	// gopacket differs (3, 4): its errors about total length and options
	// come after it has set every fixed-header field, so they are ignored;
	// the contract's own IHL rules are checked here instead.
	_ = c.ip4.DecodeFromBytes(b, gopacket.NilDecodeFeedback)
	hlen := int(c.ip4.IHL) * 4
	if c.ip4.IHL < 5 || len(b) < hlen {
		return Result{Kind: Malformed}
	}
	src := netip.AddrFrom4([4]byte(c.ip4.SrcIP))
	if c.ip4.FragOffset != 0 {
		return Result{Kind: Fragment, Src: src}
	}
	if c.ip4.Protocol != layers.IPProtocolTCP {
		return Result{Kind: NonTCP, Src: src}
	}
	// gopacket differs (3): ip4.Payload stops at the total length; the
	// contract looks at the frame's bytes.
	return c.tcpSeg(b[hlen:], src, netip.AddrFrom4([4]byte(c.ip4.DstIP)))
}

func (c *Classifier) ipv6(b []byte) Result {
	// gopacket differs (5): the version is not checked by its decoder.
	if len(b) < 40 || b[0]>>4 != 6 {
		return Result{Kind: Malformed}
	}
	// gopacket differs (6, 7): its IPv6 decoder checks the payload length
	// and parses hop-by-hop options in the same call (and allocates an error
	// when they do not suit it), so the three fixed fields the contract needs
	// are read by hand and the chain is walked from byte 40 of the frame.
	src := netip.AddrFrom16([16]byte(b[8:24])).Unmap()
	dst := netip.AddrFrom16([16]byte(b[24:40])).Unmap()
	next, rest := layers.IPProtocol(b[6]), b[40:]
	for n := 0; ; n++ {
		switch next {
		case layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing, layers.IPProtocolIPv6Destination:
			if n == maxIPv6Ext { // gopacket differs (10)
				return Result{Kind: Malformed}
			}
			// gopacket differs (7, 8): the skipper reads only next header
			// and length, like the contract; the full decoders are stricter.
			if c.ext.DecodeFromBytes(rest, gopacket.NilDecodeFeedback) != nil {
				return Result{Kind: Malformed}
			}
			next, rest = c.ext.NextHeader, c.ext.Payload
		case layers.IPProtocolIPv6Fragment:
			if n == maxIPv6Ext {
				return Result{Kind: Malformed}
			}
			// gopacket differs (9): fixed 8 bytes, read by hand.
			if len(rest) < 8 {
				return Result{Kind: Malformed}
			}
			if binary.BigEndian.Uint16(rest[2:4])>>3 != 0 {
				return Result{Kind: Fragment, Src: src}
			}
			next, rest = layers.IPProtocol(rest[0]), rest[8:]
		case layers.IPProtocolTCP:
			return c.tcpSeg(rest, src, dst)
		default:
			return Result{Kind: NonTCP, Src: src}
		}
	}
}

func (c *Classifier) tcpSeg(b []byte, src, dst netip.Addr) Result {
	if len(b) < 20 {
		return Result{Kind: Malformed}
	}
	// gopacket differs (11): an error about options comes after DataOffset
	// and the flags are set, so it is ignored; the contract's data offset
	// rules are checked here.
	_ = c.tcp.DecodeFromBytes(b, gopacket.NilDecodeFeedback)
	if c.tcp.DataOffset < 5 || len(b) < int(c.tcp.DataOffset)*4 {
		return Result{Kind: Malformed}
	}
	r := Result{Src: src, Dst: netip.AddrPortFrom(dst, uint16(c.tcp.DstPort)), Flags: b[13]}
	switch {
	case c.tcp.RST:
		r.Kind = RST
	case c.tcp.SYN && !c.tcp.ACK:
		r.Kind = SYN
	case c.tcp.SYN:
		r.Kind = SYNACK
	case c.tcp.ACK:
		r.Kind = ACK
	default:
		r.Kind = TCPOther
	}
	return r
}
