package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Address families in lpm_key.family (see synguard.c).
const (
	familyV4 = 4
	familyV6 = 6
	// familyBits is the width of lpm_key.family, counted in prefixlen.
	familyBits = 32
)

// normalizePrefix checks p and returns it masked, with IPv4-mapped IPv6
// prefixes (::ffff:a.b.c.d/96+n) turned into IPv4 ones.
func normalizePrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("invalid prefix")
	}
	a := p.Addr()
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("prefix with zone %q: zones are not allowed", a.Zone())
	}
	if a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// lpmKeyFor builds the blocklist/allowlist key of a normalized prefix.
func lpmKeyFor(p netip.Prefix) synguardLpmKey {
	var k synguardLpmKey
	k.Prefixlen = uint32(familyBits + p.Bits())
	if p.Addr().Is4() {
		k.Family = familyV4
		b := p.Addr().As4()
		copy(k.Addr[:], b[:])
	} else {
		k.Family = familyV6
		k.Addr = p.Addr().As16()
	}
	return k
}

// prefixOf is the inverse of lpmKeyFor.
func prefixOf(k synguardLpmKey) (netip.Prefix, error) {
	bits := int(k.Prefixlen) - familyBits
	switch k.Family {
	case familyV4:
		if bits < 0 || bits > 32 {
			break
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(k.Addr[:4])), bits), nil
	case familyV6:
		if bits < 0 || bits > 128 {
			break
		}
		return netip.PrefixFrom(netip.AddrFrom16(k.Addr), bits), nil
	}
	return netip.Prefix{}, fmt.Errorf("corrupt lpm key: family %d prefixlen %d", k.Family, k.Prefixlen)
}

// addrOf converts a kernel 16-byte address (IPv4 mapped) to netip, with IPv4
// unmapped, as the classification contract says.
func addrOf(b [16]byte) netip.Addr {
	return netip.AddrFrom16(b).Unmap()
}

// addrKey converts a netip address to the kernel's 16-byte form.
func addrKey(a netip.Addr) [16]byte {
	return a.Unmap().As16()
}

// ntohs converts a port the kernel stored in network order (read by Go in
// host order) to a number.
func ntohs(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

// htons is ntohs's inverse.
func htons(v uint16) uint16 { return ntohs(v) }
