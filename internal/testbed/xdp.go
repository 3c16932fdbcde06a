package testbed

import (
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// PassXDPOnServerPeer attaches an XDP_PASS program to the server veth's
// peer (the bridge port in the lan namespace). Native XDP_TX on a veth (the
// SYN-ACKs of XDP SYN cookies) hands the frame to the peer's receive path,
// which only runs while the peer has an XDP program or GRO on: without it
// the veth drops every XDP_TX frame silently. A real NIC needs nothing like
// it. detach removes the program; calling it twice is harmless.
func (b *Bed) PassXDPOnServerPeer() (detach func(), err error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("xdp_pass program: %w", err)
	}
	peer := b.Config.Prefix + "b-srv"
	var l link.Link
	err = b.LAN.Do(func() error {
		ifc, err := net.InterfaceByName(peer)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		prog.Close()
		return nil, fmt.Errorf("xdp_pass on %s: %w", peer, err)
	}
	return func() {
		l.Close()
		prog.Close()
	}, nil
}
