package classify

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/synguard/synguard/internal/frame"
)

// readPcap reads the frames of a little-endian microsecond pcap file (what
// tcpdump writes here); enough for tests without pulling in pcapgo.
func readPcap(tb testing.TB, path string) [][]byte {
	tb.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		tb.Skipf("capture %s not present", path)
	}
	if err != nil {
		tb.Fatal(err)
	}
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 || binary.LittleEndian.Uint32(b[20:]) != 1 {
		tb.Fatalf("%s: not a little-endian Ethernet pcap", path)
	}
	var frames [][]byte
	for off := 24; off+16 <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[off+8:]))
		off += 16
		if off+n > len(b) {
			tb.Fatalf("%s: truncated record at %d", path, off)
		}
		frames = append(frames, b[off:off+n])
		off += n
	}
	return frames
}

// TestCaptures classifies the team's real flood captures and checks what
// their README says: about 3,800 SYNs from the attacker, SYN cookies
// answered, and nothing the contract cannot parse.
func TestCaptures(t *testing.T) {
	frames := readPcap(t, "/work/shared/captures/flood-single-v4.pcap")
	var kinds [NumKinds]int
	attacker := netip.MustParseAddr("10.77.0.66")
	attackerSYN := 0
	for _, f := range frames {
		r := Classify(f)
		kinds[r.Kind]++
		if r.Kind == SYN && r.Src == attacker {
			attackerSYN++
			if r.Dst != netip.MustParseAddrPort("10.77.0.1:80") {
				t.Errorf("attacker SYN to %v", r.Dst)
			}
		}
		if r != reference(f) {
			t.Errorf("frame % x: classify %+v, reference %+v", f, r, reference(f))
		}
	}
	t.Logf("%d frames: %v", len(frames), kinds)
	if attackerSYN < 3500 || attackerSYN > 4200 {
		t.Errorf("%d SYNs from %v, README says about 3,800", attackerSYN, attacker)
	}
	if kinds[Malformed]+kinds[NonIP]+kinds[NonTCP] != 0 || kinds[SYNACK] == 0 || kinds[ACK] == 0 {
		t.Errorf("kinds %v: want only TCP with SYN-ACKs and ACKs", kinds)
	}
}

func benchFrames() [][]byte {
	return [][]byte{
		frame.SYN(c4, s4),
		frame.TCP{Src: c4, Dst: s4, Flags: frame.FlagSYN, Options: true, Pad: true}.Build(),
		frame.ACK(c4, s4),
		frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagSYN, Options: true}.Build(),
		frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagACK, VLANs: []uint16{3}, Payload: make([]byte, 100)}.Build(),
		frame.UDP(c4, s4),
		frame.ARP(),
		frame.TCP{Src: c6, Dst: s6, Flags: frame.FlagSYN, IPv6Ext: []layers.IPProtocol{hbh, dst, frag}}.Build(),
	}
}

// BenchmarkClassify is the cost per frame of Classifier.Classify over a mix
// of frames; compare with BenchmarkGopacketNewPacket (the naive baseline).
func BenchmarkClassify(b *testing.B) {
	frames := benchFrames()
	var c Classifier
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.Classify(frames[i%len(frames)])
	}
}

// BenchmarkClassifyPooled is the package-level Classify (sync.Pool).
func BenchmarkClassifyPooled(b *testing.B) {
	frames := benchFrames()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		Classify(frames[i%len(frames)])
	}
}

// BenchmarkGopacketNewPacket is the baseline: full gopacket decoding of the
// same frames, as a naive replay would do (lazy, no copy).
func BenchmarkGopacketNewPacket(b *testing.B) {
	frames := benchFrames()
	b.ReportAllocs()
	opts := gopacket.DecodeOptions{Lazy: true, NoCopy: true}
	for i := 0; b.Loop(); i++ {
		p := gopacket.NewPacket(frames[i%len(frames)], layers.LayerTypeEthernet, opts)
		_ = p.Layer(layers.LayerTypeTCP)
	}
}

// BenchmarkCapture classifies the real single-source flood capture; ns/op
// is per frame.
func BenchmarkCapture(b *testing.B) {
	frames := readPcap(b, "/work/shared/captures/flood-single-v4.pcap")
	var c Classifier
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.Classify(frames[i%len(frames)])
	}
}
