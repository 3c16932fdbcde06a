package main

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/synguard/synguard/internal/frame"
)

// fill runs the daemon's own attached XDP program (found through its
// pinned link) with BPF_PROG_RUN on n SYN frames from distinct sources
// 100.64.0.0 + i, each run syns times, so that
// the kernel's per-source map holds n sources that each pass the daemon's
// full-scan bar (5 SYNs in a life): the daemon scans and tracks them all.
// A live flood of n*syns SYNs would take minutes on this machine; the map
// ends up the same, and the daemon cannot tell the difference.
func fill(pinDir string, dst netip.Addr, n, syns int) error {
	lp := filepath.Join(pinDir, "link")
	l, err := link.LoadPinnedLink(lp, nil)
	if err != nil {
		return fmt.Errorf("open pinned link %s: %w", lp, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("link %s info: %w", lp, err)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return fmt.Errorf("program %d of link %s: %w", info.Program, lp, err)
	}
	defer prog.Close()
	f := frame.TCP{
		Src:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, 0, 0}), 40000),
		Dst:     netip.AddrPortFrom(dst, 80),
		Flags:   frame.FlagSYN,
		Options: true,
	}.Build()
	for i := 0; i < n; i++ {
		v := uint32(100)<<24 | uint32(64)<<16 + uint32(i)
		setSource(f, [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		if _, err := prog.Run(&ebpf.RunOptions{Data: f, Repeat: uint32(syns)}); err != nil {
			return fmt.Errorf("bpf_prog_run frame %d: %w", i, err)
		}
	}
	return nil
}
