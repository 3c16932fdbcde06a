package bpf

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"github.com/synguard/synguard/internal/classify"
	"github.com/synguard/synguard/internal/frame"
)

// maxFuzzFrame bounds fuzz inputs: BPF_PROG_RUN accepts up to about 3.5 KB
// for a non-frags XDP program, but every header the contract reads fits in
// 1 KB except very long IPv6 extension headers, and long inputs make the
// fuzzer's minimization of each new input slow (each exec is a few
// syscalls). Longer inputs are ignored (and so never become interesting).
const maxFuzzFrame = 1024

// counterName is the name kindOf gives the counter of each classify.Kind.
var counterName = [classify.NumKinds]string{
	classify.Malformed: "NotParsed", classify.NonIP: "NonIP", classify.NonTCP: "NonTCP",
	classify.Fragment: "Fragment", classify.SYN: "SYN", classify.SYNACK: "SYNACK",
	classify.ACK: "ACK", classify.RST: "RST", classify.TCPOther: "TCPOther",
}

// FuzzClassify requires the XDP program (run with BPF_PROG_RUN) and the Go
// reference classifier to classify every frame the same way:
//   - kind: the one kind counter the frame incremented (with Frames);
//   - counted, source address and kind: the per-source entry the frame
//     created (SYN, ACK, RST only), read back and deleted after each frame;
//   - service: the per-service entry it created (SYN, ACK only);
//   - action: XDP_PASS, with empty block and allow lists, and nothing
//     dropped.
//
// The seeds cover every rule of the contract and run in plain `go test`;
// `make fuzz` explores from them.
func FuzzClassify(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	d := loadForTest(f, Options{SuspectSYNs: 1 << 30})
	if err := clearEntries(d); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxFuzzFrame {
			return
		}
		checkFrame(t, d, b)
	})
}

// checkFrame runs one frame through the kernel and the Go classifier and
// reports every disagreement on t.
func checkFrame(t testing.TB, d *Datapath, b []byte) {
	t.Helper()
	want := classify.Classify(b)
	if len(b) < 14 {
		// The kernel refuses to run XDP on less than an Ethernet
		// header; the contract calls such a frame Malformed.
		if want != (classify.Result{Kind: classify.Malformed}) {
			t.Fatalf("%d-byte frame: classify says %+v, want malformed", len(b), want)
		}
		return
	}
	act, delta := runCounted(t, d, b)
	srcs, svcs, err := takeEntries(d)
	if err != nil {
		t.Fatal(err)
	}
	failed := false
	fail := func(format string, args ...any) { t.Helper(); failed = true; t.Errorf(format, args...) }
	if got := kindOf(delta); got != counterName[want.Kind] {
		fail("kind: kernel %s, classify %v", got, want.Kind)
	}
	if act != xdpPass || delta.Dropped != 0 || delta.WouldDrop != 0 || delta.Allowlisted != 0 {
		fail("action %v, dropped %d, would-drop %d, allowlisted %d: want XDP_PASS and no ban hits",
			act, delta.Dropped, delta.WouldDrop, delta.Allowlisted)
	}
	var wantSrcs []Source
	if want.Counted() {
		s := Source{Addr: want.Src}
		switch want.Kind {
		case classify.SYN:
			s.SYN = 1
		case classify.ACK:
			s.ACK = 1
		case classify.RST:
			s.RST = 1
		}
		wantSrcs = append(wantSrcs, s)
	}
	if !sameSources(srcs, wantSrcs) {
		fail("per-source entries: kernel %+v, classify %+v (%v)", srcs, wantSrcs, want)
	}
	var wantSvcs []Service
	if want.CountsService() {
		s := Service{Addr: want.Dst, SYN: 1}
		if want.Kind == classify.ACK {
			s.SYN, s.ACK = 0, 1
		}
		wantSvcs = append(wantSvcs, s)
	}
	if len(svcs) != len(wantSvcs) || (len(svcs) == 1 && svcs[0] != wantSvcs[0]) {
		fail("per-service entries: kernel %+v, classify %+v", svcs, wantSvcs)
	}
	if failed {
		t.Logf("frame (%d bytes): % x", len(b), b)
	}
}

// BenchmarkFuzzCheck is the cost of one FuzzClassify execution (BPF_PROG_RUN,
// counter reads, map walks, the Go classifier) on a SYN; it bounds how many
// executions `make fuzz` can do.
func BenchmarkFuzzCheck(b *testing.B) {
	d := loadForTest(b, Options{SuspectSYNs: 1 << 30})
	syn := frame.SYN(netip.MustParseAddrPort("10.200.20.2:40000"), netip.MustParseAddrPort("10.200.20.1:80"))
	for b.Loop() {
		checkFrame(b, d, syn)
	}
}

func sameSources(got, want []Source) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Addr != w.Addr || g.SYN != w.SYN || g.ACK != w.ACK || g.RST != w.RST {
			return false
		}
	}
	return true
}

// takeEntries returns and deletes every per-source and per-service entry,
// so that after one frame they are exactly what that frame created.
func takeEntries(d *Datapath) ([]Source, []Service, error) {
	var (
		srcs []Source
		svcs []Service
	)
	var sk [16]byte
	var sv synguardSourceStats
	it := d.objs.Sources.Iterate()
	for it.Next(&sk, &sv) {
		srcs = append(srcs, sourceOf(sk, sv, readKernelClock()))
	}
	if err := it.Err(); err != nil {
		return nil, nil, err
	}
	var vk synguardServiceKey
	var vv synguardServiceStats
	it = d.objs.Services.Iterate()
	for it.Next(&vk, &vv) {
		svcs = append(svcs, Service{Addr: netip.AddrPortFrom(addrOf(vk.Addr), ntohs(vk.Port)), SYN: vv.Syn, ACK: vv.Ack})
	}
	if err := it.Err(); err != nil {
		return nil, nil, err
	}
	for _, s := range srcs {
		if err := d.objs.Sources.Delete(addrKey(s.Addr)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil, err
		}
	}
	for _, s := range svcs {
		k := synguardServiceKey{Addr: addrKey(s.Addr.Addr()), Port: htons(s.Addr.Port())}
		if err := d.objs.Services.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil, err
		}
	}
	return srcs, svcs, nil
}

func clearEntries(d *Datapath) error { _, _, err := takeEntries(d); return err }

// fuzzSeeds returns frames covering every rule of the classification
// contract, plus a few random ones.
func fuzzSeeds() [][]byte {
	var (
		c4 = netip.MustParseAddrPort("10.200.20.2:40000")
		s4 = netip.MustParseAddrPort("10.200.20.1:80")
		c6 = netip.MustParseAddrPort("[fd00:200:20::2]:40000")
		s6 = netip.MustParseAddrPort("[fd00:200:20::1]:443")
		m6 = netip.MustParseAddrPort("[::ffff:10.200.20.9]:1234")
		d6 = netip.MustParseAddrPort("[::ffff:10.200.20.1]:22")
	)
	const (
		hbh  = layers.IPProtocolIPv6HopByHop
		rt   = layers.IPProtocolIPv6Routing
		dst  = layers.IPProtocolIPv6Destination
		frag = layers.IPProtocolIPv6Fragment
	)
	mut := func(b []byte, f func(b []byte) []byte) []byte { return f(bytes.Clone(b)) }
	syn4, syn6 := frame.SYN(c4, s4), frame.SYN(c6, s6)
	ext := func(e ...layers.IPProtocol) frame.TCP {
		return frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagSYN, IPv6Ext: e}
	}
	seeds := [][]byte{
		// Ethernet and VLAN tags.
		syn4[:13], syn4[:14], frame.ARP(),
		mut(syn4, func(b []byte) []byte { b[12], b[13] = 0x00, 0x28; return b }),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagSYN, VLANs: []uint16{7}}.Build(),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagSYN, VLANs: []uint16{7}}.Build()[:17],
		frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagACK, VLANs: []uint16{7, 8}}.Build(),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagSYN, VLANs: []uint16{7, 8},
			VLANTPIDs: []layers.EthernetType{0x8100, 0x88a8}}.Build(),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagSYN, VLANs: []uint16{7, 8, 9}}.Build(),
		// IPv4.
		syn4, syn4[:33], syn4[:53],
		mut(syn4, func(b []byte) []byte { b[14] = 0x65; return b }),
		mut(syn4, func(b []byte) []byte { b[14] = 0x44; return b }),
		mut(syn4, func(b []byte) []byte { b[14] = 0x46; return b }),
		mut(syn4, func(b []byte) []byte { b[16], b[17] = 0, 0; return b }),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagSYN, IPOptions: true, Options: true, Pad: true}.Build(),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagSYN, FragOffset: 1}.Build(),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagSYN, MoreFragments: true}.Build(),
		frame.UDP(c4, s4),
		mut(frame.UDP(c4, s4), func(b []byte) []byte { b[21] = 2; return b }),
		// IPv6.
		syn6, syn6[:53],
		mut(syn6, func(b []byte) []byte { b[14] = 0x40; return b }),
		mut(syn6, func(b []byte) []byte { b[18], b[19] = 0, 0; return b }),
		ext(hbh, rt, dst, frag).Build(),
		ext(hbh, dst, rt, dst, frag, dst).Build(),
		ext(hbh, dst, rt, dst, rt, dst, dst).Build(),
		frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagSYN, FragOffset: 1}.Build(),
		frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagSYN, MoreFragments: true}.Build(),
		mut(frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagSYN, MoreFragments: true}.Build(), func(b []byte) []byte { b[55] = 0xff; return b }),
		ext(hbh).Build()[:54+7],
		mut(ext(hbh).Build(), func(b []byte) []byte { b[55] = 3; return b }),
		mut(ext(rt).Build(), func(b []byte) []byte { b[56] = 4; return b }),
		frame.UDP(c6, s6),
		mut(syn6, func(b []byte) []byte { b[20] = 59; return b }),
		frame.SYN(m6, d6),
		// TCP.
		mut(syn4, func(b []byte) []byte { b[46] = 0x40; return b }),
		mut(syn4, func(b []byte) []byte { b[46] = 0x60; return b }),
		frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagSYN, Options: true}.Build(),
		frame.ACK(c4, s4), frame.SYNACK(s6, c6), frame.RST(c6, s6),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagRST | frame.FlagACK}.Build(),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagPSH | frame.FlagACK, Payload: []byte("GET / HTTP/1.1\r\n")}.Build(),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagFIN}.Build(),
		frame.TCP{Src: c4, Dst: s4}.Build(),
		mut(syn4, func(b []byte) []byte { b[47] = 0xff; return b }),
		frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagSYN, Options: true, MoreFragments: true, VLANs: []uint16{1, 2},
			IPv6Ext: []layers.IPProtocol{hbh, rt, dst, frag, dst}}.Build(),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{14, 60, 100, 400} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		seeds = append(seeds, b)
	}
	return seeds
}
