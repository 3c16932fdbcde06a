package bpf

// Benchmarks: ns per packet through the XDP program with BPF_PROG_RUN
// (prog.Benchmark: kernel-measured time per run), interleaved in one
// process with two baselines on the same frames:
//
//   - empty: an XDP program that only returns XDP_PASS (the floor);
//   - xdpfilter: xdp-filter's xdpfilt_dny_ip.o from Debian libxdp1, with
//     no rules (parses Ethernet/IP and looks the addresses up in hash maps).
//
// Each case reports ns/pkt (synguard) and the baselines' ns/pkt, plus the
// ratios x-empty and x-xdpfilter. The SYN and ACK cases also run floor: the
// least that counting per source and per service can cost (see floorXDP),
// reported as floor-ns/pkt and floor-x-xdpfilter. Run:
//
//	go test -run '^$' -bench . -count 6 ./bpf/
//
// and compare medians. Targets: banned-source drop <= 1.0x xdpfilter, SYN
// and ACK accounting <= 1.5x xdpfilter, non-TCP <= 2x empty.

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/synguard/synguard/internal/frame"
)

const xdpFilterObject = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_dny_ip.o"

// emptyXDP builds the floor baseline: r0 = XDP_PASS; exit.
func emptyXDP(tb testing.TB) *ebpf.Program {
	tb.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "empty_pass",
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, int32(xdpPass)),
			asm.Return(),
		},
	})
	if err != nil {
		tb.Fatalf("load empty xdp program: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// xdpFilter loads xdp-filter's deny-IP program with unpinned maps, or nil
// with the reason it is unavailable.
func xdpFilter(tb testing.TB) (*ebpf.Program, string) {
	tb.Helper()
	if _, err := os.Stat(xdpFilterObject); err != nil {
		return nil, xdpFilterObject + " not found (apt-get install libxdp1)"
	}
	spec, err := ebpf.LoadCollectionSpec(xdpFilterObject)
	if err != nil {
		tb.Fatalf("parse %s: %v", xdpFilterObject, err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		tb.Fatalf("load %s: %v", xdpFilterObject, err)
	}
	tb.Cleanup(func() { coll.Close() })
	for _, p := range coll.Programs {
		if p.Type() == ebpf.XDP {
			return p, ""
		}
	}
	tb.Fatalf("%s: no XDP program", xdpFilterObject)
	return nil, ""
}

// floorXDP builds the floor of SYN and ACK accounting: what counting per
// source and per service needs at the very least, and nothing else. It
// checks the frame is IPv4/TCP without IP options, looks the source up in
// an LRU hash with synguard's 16-byte key (::ffff:a.b.c.d) and the service
// up in an LRU hash with synguard's 20-byte key (address, port, padding),
// and atomically adds 1 to a u64 in each. No VLANs, IPv6, global counters,
// clock, bans or suspects. Both entries must exist (see floorProg.prime).
func floorXDP(tb testing.TB) floorProg {
	tb.Helper()
	sources, err := ebpf.NewMap(&ebpf.MapSpec{Name: "floor_sources", Type: ebpf.LRUHash,
		KeySize: 16, ValueSize: 8, MaxEntries: DefaultMaxSources})
	if err != nil {
		tb.Fatalf("floor sources map: %v", err)
	}
	tb.Cleanup(func() { sources.Close() })
	services, err := ebpf.NewMap(&ebpf.MapSpec{Name: "floor_services", Type: ebpf.LRUHash,
		KeySize: 20, ValueSize: 8, MaxEntries: DefaultMaxServices})
	if err != nil {
		tb.Fatalf("floor services map: %v", err)
	}
	tb.Cleanup(func() { services.Close() })

	const (
		ethIPv4LE = 0x0008 // EtherType 0x0800 as a little-endian load sees it
		mappedLE  = -65536 // bytes 00 00 ff ff (the ::ffff: prefix's last word)
	)
	// Frame offsets: Ethernet 14, IPv4 20 (protocol at 23, source at 26,
	// destination at 30), TCP destination port at 36.
	insns := asm.Instructions{
		asm.LoadMem(asm.R6, asm.R1, 0, asm.Word), // data
		asm.LoadMem(asm.R7, asm.R1, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 14+20+20),
		asm.JGT.Reg(asm.R2, asm.R7, "pass"),
		asm.LoadMem(asm.R2, asm.R6, 12, asm.Half),
		asm.JNE.Imm(asm.R2, ethIPv4LE, "pass"),
		asm.LoadMem(asm.R2, asm.R6, 14, asm.Byte),
		asm.JNE.Imm(asm.R2, 0x45, "pass"),
		asm.LoadMem(asm.R2, asm.R6, 23, asm.Byte),
		asm.JNE.Imm(asm.R2, 6, "pass"),
		// Source key at fp-16.
		asm.StoreImm(asm.RFP, -16, 0, asm.Word),
		asm.StoreImm(asm.RFP, -12, 0, asm.Word),
		asm.StoreImm(asm.RFP, -8, mappedLE, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 26, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		// Service key at fp-40.
		asm.StoreImm(asm.RFP, -40, 0, asm.Word),
		asm.StoreImm(asm.RFP, -36, 0, asm.Word),
		asm.StoreImm(asm.RFP, -32, mappedLE, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 30, asm.Word),
		asm.StoreMem(asm.RFP, -28, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 36, asm.Half),
		asm.StoreMem(asm.RFP, -24, asm.R2, asm.Half),
		asm.StoreImm(asm.RFP, -22, 0, asm.Half),

		asm.LoadMapPtr(asm.R1, sources.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),

		asm.LoadMapPtr(asm.R1, services.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -40),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),

		asm.Mov.Imm(asm.R0, int32(xdpPass)).WithSymbol("pass"),
		asm.Return(),
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "floor_count", Type: ebpf.XDP,
		License: "GPL", Instructions: insns})
	if err != nil {
		tb.Fatalf("load floor program: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return floorProg{prog: p, sources: sources, services: services}
}

// floorProg is the floor program with its two maps.
type floorProg struct {
	prog              *ebpf.Program
	sources, services *ebpf.Map
}

// floorServiceKey is synguard's service key for dst.
func floorServiceKey(dst netip.AddrPort) [20]byte {
	var svc [20]byte
	a := addrKey(dst.Addr())
	copy(svc[:16], a[:])
	binary.BigEndian.PutUint16(svc[16:], dst.Port())
	return svc
}

// prime creates the entries a frame from src to dst counts into.
func (f floorProg) prime(tb testing.TB, src, dst netip.AddrPort) {
	tb.Helper()
	if err := f.sources.Put(addrKey(src.Addr()), uint64(0)); err != nil {
		tb.Fatal(err)
	}
	if err := f.services.Put(floorServiceKey(dst), uint64(0)); err != nil {
		tb.Fatal(err)
	}
}

// counts reads the two counters a primed frame from src to dst adds to.
func (f floorProg) counts(tb testing.TB, src, dst netip.AddrPort) (source, service uint64) {
	tb.Helper()
	if err := f.sources.Lookup(addrKey(src.Addr()), &source); err != nil {
		tb.Fatal(err)
	}
	if err := f.services.Lookup(floorServiceKey(dst), &service); err != nil {
		tb.Fatal(err)
	}
	return source, service
}

// benchProgs are the programs measured side by side.
type benchProgs struct {
	d      *Datapath
	empty  *ebpf.Program
	filter *ebpf.Program // nil when xdp-filter is not installed
	floor  *ebpf.Program // nil except in the accounting cases
}

// rounds of a repeated-frame measurement: programs alternate every round,
// so drift (frequency, noisy neighbours) hits all of them alike.
const benchRounds = 8

// measureRepeat runs frame b.N times through each program, interleaved,
// with the kernel's repeat loop, and reports per-packet times.
func (p benchProgs) measureRepeat(b *testing.B, f []byte, want xdpAction) {
	progs := p.list()
	totals := make([]time.Duration, len(progs))
	for i, prog := range progs {
		// Warm-up: creates map entries and caches verdicts.
		if ret, _, err := prog.Benchmark(f, 1, nil); err != nil {
			b.Fatal(err)
		} else if i == 0 && xdpAction(ret) != want {
			b.Fatalf("synguard returned %v, want %v", xdpAction(ret), want)
		}
	}
	b.ResetTimer()
	left := b.N
	for r := 0; left > 0; r++ {
		n := (b.N + benchRounds - 1) / benchRounds
		if n > left {
			n = left
		}
		for i, prog := range progs {
			_, per, err := prog.Benchmark(f, n, nil)
			if err != nil {
				b.Fatal(err)
			}
			totals[i] += per * time.Duration(n)
		}
		left -= n
	}
	b.StopTimer()
	p.report(b, totals, b.N)
}

// measureDistinct runs b.N different frames (next(i) builds frame i) once
// each through every program, interleaved frame by frame: the only way to
// time first-packet work such as inserting a new source.
func (p benchProgs) measureDistinct(b *testing.B, next func(i int) []byte) {
	progs := p.list()
	totals := make([]time.Duration, len(progs))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := next(i)
		for j, prog := range progs {
			_, per, err := prog.Benchmark(f, 1, nil)
			if err != nil {
				b.Fatal(err)
			}
			totals[j] += per
		}
	}
	b.StopTimer()
	p.report(b, totals, b.N)
}

func (p benchProgs) list() []*ebpf.Program {
	l := []*ebpf.Program{p.d.program(), p.empty}
	if p.filter != nil {
		l = append(l, p.filter)
	}
	if p.floor != nil {
		l = append(l, p.floor)
	}
	return l
}

func (p benchProgs) report(b *testing.B, totals []time.Duration, n int) {
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(n) }
	sg, empty := per(totals[0]), per(totals[1])
	b.ReportMetric(sg, "ns/op")
	b.ReportMetric(sg, "ns/pkt")
	b.ReportMetric(empty, "empty-ns/pkt")
	if empty > 0 {
		b.ReportMetric(sg/empty, "x-empty")
	}
	next := 2
	filter := 0.0
	if p.filter != nil {
		filter = per(totals[next])
		next++
		b.ReportMetric(filter, "xdpfilter-ns/pkt")
		if filter > 0 {
			b.ReportMetric(sg/filter, "x-xdpfilter")
		}
	}
	if p.floor != nil {
		floor := per(totals[next])
		b.ReportMetric(floor, "floor-ns/pkt")
		if filter > 0 {
			b.ReportMetric(floor/filter, "floor-x-xdpfilter")
		}
	}
}

// newSourceCounter keeps "new source" frames new across the benchmark
// framework's repeated calls with growing b.N.
var newSourceCounter uint32

func BenchmarkXDP(b *testing.B) {
	requireRoot(b)
	// Production map sizes: the LRU's size shapes its hash table.
	d := loadForTest(b, Options{MaxSources: DefaultMaxSources, MaxServices: DefaultMaxServices,
		MaxBans: DefaultMaxBans, MaxAllows: DefaultMaxAllows})
	filter, why := xdpFilter(b)
	if filter == nil {
		b.Logf("xdp-filter baseline skipped: %s", why)
	}
	p := benchProgs{d: d, empty: emptyXDP(b), filter: filter}

	known := netip.MustParseAddrPort("10.200.10.2:40000")
	banned := netip.MustParseAddrPort("10.200.10.66:40000")
	server := netip.MustParseAddrPort("10.200.10.1:80")
	if err := d.SetMode(ModeEnforce); err != nil {
		b.Fatal(err)
	}
	// A realistic blocklist: many bans, one of them ours.
	for i := 0; i < 1000; i++ {
		pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32)
		if err := d.Block(pfx, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	if err := d.Block(netip.PrefixFrom(banned.Addr(), 32), time.Hour); err != nil {
		b.Fatal(err)
	}

	floor := floorXDP(b)
	floor.prime(b, known, server)
	withFloor := p
	withFloor.floor = floor.prog
	// measureFloored measures f with the floor and checks the floor really
	// counted every run of it (its lookups hit).
	measureFloored := func(b *testing.B, f []byte) {
		src0, _ := floor.counts(b, known, server)
		withFloor.measureRepeat(b, f, xdpPass)
		if src, svc := floor.counts(b, known, server); src-src0 < uint64(b.N) || src != svc {
			b.Fatalf("floor program counted %d per source (%d per service) in %d runs: its lookups missed", src-src0, svc, b.N)
		}
	}
	b.Run("syn-known-source", func(b *testing.B) {
		measureFloored(b, frame.TCP{Src: known, Dst: server, Flags: frame.FlagSYN, Options: true}.Build())
	})
	b.Run("syn-new-sources", func(b *testing.B) {
		tmpl := frame.TCP{Src: known, Dst: server, Flags: frame.FlagSYN, Options: true}.Build()
		p.measureDistinct(b, func(int) []byte {
			newSourceCounter++
			// A fresh source in 100.64.0.0/10 each time (patched in place;
			// checksums do not matter to any of the programs).
			binary.BigEndian.PutUint32(tmpl[26:], 0x64400000|newSourceCounter&0x3fffff)
			return tmpl
		})
	})
	b.Run("ack-known-source", func(b *testing.B) {
		measureFloored(b, frame.ACK(known, server))
	})
	b.Run("syn-banned-source", func(b *testing.B) {
		p.measureRepeat(b, frame.TCP{Src: banned, Dst: server, Flags: frame.FlagSYN, Options: true}.Build(), xdpDrop)
	})
	b.Run("udp-non-tcp", func(b *testing.B) {
		p.measureRepeat(b, frame.UDP(known, server), xdpPass)
	})
}

// The benchmark's baselines must really be what they claim.
func TestBenchBaselines(t *testing.T) {
	requireRoot(t)
	if ret, err := emptyXDP(t).Run(&ebpf.RunOptions{Data: frame.ARP()}); err != nil || xdpAction(ret) != xdpPass {
		t.Errorf("empty program: %v %v", xdpAction(ret), err)
	}

	// The floor counts every IPv4 SYN and ACK once per source and once
	// per service, in the entries prime made, and passes everything.
	floor := floorXDP(t)
	floor.prime(t, cli4, srv4)
	for _, f := range [][]byte{frame.SYN(cli4, srv4), frame.ACK(cli4, srv4), frame.SYN(cli4, srv4),
		frame.UDP(cli4, srv4), frame.SYN(cli6, srv6), frame.ARP()} {
		if ret, err := floor.prog.Run(&ebpf.RunOptions{Data: f}); err != nil || xdpAction(ret) != xdpPass {
			t.Errorf("floor: %v %v, want PASS", xdpAction(ret), err)
		}
	}
	if src, svc := floor.counts(t, cli4, srv4); src != 3 || svc != 3 {
		t.Errorf("floor counted %d per source and %d per service, want 3 and 3 (two SYNs, one ACK)", src, svc)
	}
	filter, why := xdpFilter(t)
	if filter == nil {
		t.Skip(why)
	}
	// "dny" is xdp-filter's default-deny policy: with no rules every IPv4
	// frame misses the allow table and is dropped after one lookup. That
	// is the work the baseline measures, on every case's frame.
	ret, err := filter.Run(&ebpf.RunOptions{Data: frame.SYN(cli4, srv4)})
	if err != nil || xdpAction(ret) != xdpDrop {
		t.Errorf("xdp-filter (default deny, no rules) on a SYN: %v %v, want DROP", xdpAction(ret), err)
	}
}
