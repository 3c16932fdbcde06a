package daemon

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/synguard/synguard/internal/config"
	"github.com/synguard/synguard/internal/kstat"
)

// ProtectedPeers is Deps.Protected for this host: HostProtected with the
// protect section of the running configuration.
func ProtectedPeers(p config.Protect) ([]netip.Prefix, error) {
	return HostProtected(p.DefaultGateways, p.SSHPorts)()
}

// HostProtected returns a function listing what the detector must never
// ban on this host: the next hops of the default routes (banning the
// router cuts the host off) and the peers of ESTABLISHED connections to
// the given local ports (an admin's SSH session during a flood).
func HostProtected(gateways bool, sshPorts []int) func() ([]netip.Prefix, error) {
	return func() ([]netip.Prefix, error) {
		var out []netip.Prefix
		if gateways {
			gw, err := DefaultGateways()
			if err != nil {
				return nil, err
			}
			out = append(out, gw...)
		}
		if len(sshPorts) > 0 {
			ports := make([]uint16, len(sshPorts))
			for i, p := range sshPorts {
				ports[i] = uint16(p)
			}
			peers, err := kstat.EstablishedPeers(ports)
			if err != nil {
				return nil, err
			}
			for _, a := range peers {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		return out, nil
	}
}

// DefaultGateways lists the gateways of the host's default routes (IPv4
// and IPv6) as host prefixes.
func DefaultGateways() ([]netip.Prefix, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		isDefault := r.Dst == nil
		if r.Dst != nil {
			ones, _ := r.Dst.Mask.Size()
			isDefault = ones == 0
		}
		if !isDefault {
			continue
		}
		add := func(ip []byte) {
			if a, ok := netip.AddrFromSlice(ip); ok {
				a = a.Unmap()
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		if r.Gw != nil {
			add(r.Gw)
		}
		for _, nh := range r.MultiPath {
			if nh.Gw != nil {
				add(nh.Gw)
			}
		}
	}
	return out, nil
}
