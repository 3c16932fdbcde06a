package replay

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/frame"
)

var (
	capStart = time.Date(2026, 11, 28, 20, 0, 0, 0, time.UTC)
	server4  = netip.MustParseAddrPort("10.0.0.1:443")
	server6  = netip.MustParseAddrPort("[2001:db8::1]:443")
)

type pkt struct {
	t    time.Duration
	data []byte
}

// capture builds a synthetic capture, seen on the server's link (both
// directions, like the recorded ones).
type capture struct {
	pkts  []pkt
	ports uint16
}

func (c *capture) add(t time.Duration, src, dst netip.AddrPort, fl frame.Flags) {
	c.pkts = append(c.pkts, pkt{t, frame.TCP{Src: src, Dst: dst, Flags: fl}.Build()})
}

func (c *capture) port() uint16 { c.ports++; return 20000 + c.ports%40000 }

// conn is a complete short connection: handshake, request, response, close.
func (c *capture) conn(t time.Duration, client netip.Addr, server netip.AddrPort) {
	cl := netip.AddrPortFrom(client, c.port())
	ms := time.Millisecond
	c.add(t, cl, server, frame.FlagSYN)
	c.add(t+ms, server, cl, frame.FlagSYN|frame.FlagACK)
	c.add(t+2*ms, cl, server, frame.FlagACK)
	c.add(t+3*ms, cl, server, frame.FlagPSH|frame.FlagACK)
	c.add(t+4*ms, server, cl, frame.FlagPSH|frame.FlagACK)
	c.add(t+5*ms, cl, server, frame.FlagACK)
	c.add(t+6*ms, cl, server, frame.FlagFIN|frame.FlagACK)
	c.add(t+7*ms, server, cl, frame.FlagACK)
}

// clients: n addresses in base's /24 from .10, conns connections/s each,
// for the whole duration.
func (c *capture) clients(base netip.Addr, n int, conns int, dur time.Duration, server netip.AddrPort) {
	step := time.Second / time.Duration(conns)
	for i := range n {
		a := base
		for range 10 + i {
			a = a.Next()
		}
		for t := time.Duration(i) * time.Millisecond; t < dur; t += step {
			c.conn(t, a, server)
		}
	}
}

// flood sends rate SYN/s from src between from and to, never answered.
func (c *capture) flood(src netip.Addr, server netip.AddrPort, rate int, from, to time.Duration) {
	step := time.Second / time.Duration(rate)
	for t := from; t < to; t += step {
		c.add(t, netip.AddrPortFrom(src, c.port()), server, frame.FlagSYN)
	}
}

func (c *capture) write(t *testing.T, ng bool) string {
	t.Helper()
	sort.SliceStable(c.pkts, func(i, j int) bool { return c.pkts[i].t < c.pkts[j].t })
	path := filepath.Join(t.TempDir(), "synthetic.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type writer interface {
		WritePacket(gopacket.CaptureInfo, []byte) error
	}
	var w writer
	if ng {
		nw, err := pcapgo.NewNgWriter(f, layers.LinkTypeEthernet)
		if err != nil {
			t.Fatal(err)
		}
		defer nw.Flush()
		w = nw
	} else {
		pw := pcapgo.NewWriterNanos(f)
		if err := pw.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
			t.Fatal(err)
		}
		w = pw
	}
	for _, p := range c.pkts {
		ci := gopacket.CaptureInfo{Timestamp: capStart.Add(p.t), CaptureLength: len(p.data), Length: len(p.data)}
		if err := w.WritePacket(ci, p.data); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func incidentAddrs(rep *Report, k detector.Kind) []string {
	var r []string
	for _, inc := range rep.Incidents {
		if inc.Kind == k {
			r = append(r, inc.Addr)
		}
	}
	slices.Sort(r)
	return r
}

func TestSyntheticCaptures(t *testing.T) {
	clientNet := netip.MustParseAddr("10.1.0.0")
	cases := []struct {
		name         string
		build        func(c *capture)
		wantSources  []string
		wantServices []string
		// flaggedBy: the first incident must open this soon after start.
		start, flaggedBy time.Duration
	}{
		{
			name: "single-source flood among normal clients",
			build: func(c *capture) {
				c.clients(clientNet, 20, 5, 10*time.Second, server4)
				c.flood(netip.MustParseAddr("203.0.113.66"), server4, 2000, 3*time.Second, 6*time.Second)
			},
			wantSources: []string{"203.0.113.66"}, start: 3 * time.Second, flaggedBy: time.Second,
		},
		{
			name: "spoofed random-source flood",
			build: func(c *capture) {
				c.clients(clientNet, 20, 5, 15*time.Second, server4)
				r := rand.New(rand.NewPCG(1, 2))
				for t := 5 * time.Second; t < 9*time.Second; t += time.Second / 3000 {
					src := netip.AddrFrom4([4]byte{byte(1 + r.IntN(222)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
					c.add(t, netip.AddrPortFrom(src, c.port()), server4, frame.FlagSYN)
				}
			},
			wantServices: []string{"10.0.0.1:443"}, start: 5 * time.Second, flaggedBy: 2 * time.Second,
		},
		{
			// Launch day: the capture starts with the flood; the service
			// has no history, and real users keep booking through it.
			name: "service flooded from its first second",
			build: func(c *capture) {
				r := rand.New(rand.NewPCG(7, 8))
				for t := time.Duration(0); t < 6*time.Second; t += time.Second / 5000 {
					src := netip.AddrFrom4([4]byte{byte(1 + r.IntN(222)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
					c.add(t, netip.AddrPortFrom(src, c.port()), server4, frame.FlagSYN)
				}
				c.clients(clientNet, 5, 2, 6*time.Second, server4)
			},
			wantServices: []string{"10.0.0.1:443"}, start: 0, flaggedBy: 2 * time.Second,
		},
		{
			// 160 new clients arrive within a second after a quiet
			// minute; each fetches a page twice, and the listen queue's
			// overflow makes a third of them retransmit their first SYN.
			name: "flash crowd of new clients completing their handshakes",
			build: func(c *capture) {
				c.clients(clientNet, 5, 1, 80*time.Second, server4)
				for i := range 160 {
					a := netip.AddrFrom4([4]byte{100, 64, byte(i / 200), byte(1 + i%200)})
					t := 60*time.Second + time.Duration(i)*6*time.Millisecond
					if i%3 == 0 {
						c.add(t, netip.AddrPortFrom(a, c.port()), server4, frame.FlagSYN)
						t += time.Second
					}
					c.conn(t, a, server4)
					c.conn(t+300*time.Millisecond, a, server4)
				}
			},
		},
		{
			name: "NAT gateway with heavy legitimate traffic",
			build: func(c *capture) {
				c.clients(clientNet, 20, 5, 10*time.Second, server4)
				c.clients(netip.MustParseAddr("192.0.2.0"), 1, 400, 10*time.Second, server4)
			},
		},
		{
			name: "SYN retransmissions",
			build: func(c *capture) {
				c.clients(clientNet, 20, 5, 10*time.Second, server4)
				// lossy clients: every connection's SYN is sent three times
				for i := range 10 {
					a := netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)})
					for t := time.Duration(i) * 10 * time.Millisecond; t < 10*time.Second; t += 200 * time.Millisecond {
						cl := netip.AddrPortFrom(a, c.port())
						c.add(t, cl, server4, frame.FlagSYN)
						c.add(t+time.Second, cl, server4, frame.FlagSYN)
						c.add(t+3*time.Second, cl, server4, frame.FlagSYN)
						c.conn(t+3*time.Second+time.Millisecond, a, server4)
					}
				}
				// and a client retrying a port nobody answers on
				c.flood(netip.MustParseAddr("198.51.100.99"), netip.MustParseAddrPort("10.0.0.1:8443"), 8, 0, 10*time.Second)
			},
		},
		{
			name: "slow flood just below the threshold",
			build: func(c *capture) {
				c.clients(clientNet, 20, 5, 20*time.Second, server4)
				c.flood(netip.MustParseAddr("203.0.113.40"), server4, 40, 0, 20*time.Second)
			},
		},
		{
			name: "slow flood just above the threshold",
			build: func(c *capture) {
				c.clients(clientNet, 20, 5, 20*time.Second, server4)
				c.flood(netip.MustParseAddr("203.0.113.70"), server4, 70, 0, 20*time.Second)
			},
			wantSources: []string{"203.0.113.70"}, start: 0, flaggedBy: 3 * time.Second,
		},
		{
			name: "IPv6 single source and spoofed floods",
			build: func(c *capture) {
				c.clients(netip.MustParseAddr("2001:db8:1::"), 20, 5, 15*time.Second, server6)
				c.flood(netip.MustParseAddr("2001:db8:66::1"), server6, 1000, 2*time.Second, 4*time.Second)
				r := rand.New(rand.NewPCG(3, 4))
				for t := 8 * time.Second; t < 11*time.Second; t += time.Second / 2000 {
					var a [16]byte
					a[0], a[1] = 0x20, 0x01
					for i := 2; i < 16; i++ {
						a[i] = byte(r.IntN(256))
					}
					c.add(t, netip.AddrPortFrom(netip.AddrFrom16(a), c.port()), server6, frame.FlagSYN)
				}
			},
			wantSources: []string{"2001:db8:66::1"}, wantServices: []string{"[2001:db8::1]:443"}, start: 2 * time.Second, flaggedBy: time.Second,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &capture{}
			tc.build(c)
			path := c.write(t, false)
			rep, err := File(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Packets != len(c.pkts) {
				t.Errorf("packets %d, want %d", rep.Packets, len(c.pkts))
			}
			if got := incidentAddrs(rep, detector.KindSource); !slices.Equal(got, tc.wantSources) {
				t.Errorf("source incidents %v, want %v", got, tc.wantSources)
			}
			if got := incidentAddrs(rep, detector.KindService); !slices.Equal(got, tc.wantServices) {
				t.Errorf("service incidents %v, want %v", got, tc.wantServices)
			}
			if tc.flaggedBy > 0 && len(rep.Incidents) > 0 {
				if lag := rep.Incidents[0].OpenedAt.Sub(capStart.Add(tc.start)); lag > tc.flaggedBy {
					t.Errorf("first incident opened %v after the flood started, want within %v", lag, tc.flaggedBy)
				}
			}
			for _, b := range rep.Bans {
				if b.Prefix.Contains(netip.MustParseAddr("10.1.0.20")) || b.Prefix.Contains(netip.MustParseAddr("192.0.2.10")) {
					t.Errorf("legitimate client banned: %v", b)
				}
			}
		})
	}
}

// pcapng gives the same result as pcap.
func TestPcapngEqualsPcap(t *testing.T) {
	c := &capture{}
	c.clients(netip.MustParseAddr("10.1.0.0"), 5, 5, 5*time.Second, server4)
	c.flood(netip.MustParseAddr("203.0.113.66"), server4, 1000, time.Second, 3*time.Second)
	a, err := File(c.write(t, false), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := File(c.write(t, true), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(a.JSON())
	jb, _ := json.Marshal(b.JSON())
	if !bytes.Equal(ja, jb) || len(a.Incidents) != 1 {
		t.Errorf("pcap %s\npcapng %s", ja, jb)
	}
}

// The --json schema: exactly these keys, RFC 3339 nanosecond times, null
// for an incident still open.
func TestJSONSchema(t *testing.T) {
	c := &capture{}
	c.clients(netip.MustParseAddr("10.1.0.0"), 5, 5, 60*time.Second, server4)
	c.flood(netip.MustParseAddr("203.0.113.66"), server4, 1000, time.Second, 3*time.Second)
	c.flood(netip.MustParseAddr("203.0.113.67"), server4, 1000, 55*time.Second, 57*time.Second)
	rep, err := File(c.write(t, false), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]any) []string {
		var k []string
		for s := range m {
			k = append(k, s)
		}
		slices.Sort(k)
		return k
	}
	if k := keys(got); !slices.Equal(k, []string{"bans", "incidents", "packets"}) || got["packets"] != float64(len(c.pkts)) {
		t.Fatalf("top level %v packets %v", k, got["packets"])
	}
	incs := got["incidents"].([]any)
	if len(incs) != 2 {
		t.Fatalf("incidents %v", incs)
	}
	want := []string{"ack", "addr", "id", "kind", "opened_at", "reason", "resolved_at", "syn", "verdict"}
	for _, x := range incs {
		m := x.(map[string]any)
		if k := keys(m); !slices.Equal(k, want) {
			t.Errorf("incident keys %v, want %v", k, want)
		}
		ts, err := time.Parse(time.RFC3339Nano, m["opened_at"].(string))
		if err != nil || !strings.Contains(m["opened_at"].(string), ".") || ts.Before(capStart) {
			t.Errorf("opened_at %v: %v", m["opened_at"], err)
		}
	}
	first, last := incs[0].(map[string]any), incs[1].(map[string]any)
	if first["resolved_at"] == nil || last["resolved_at"] != nil {
		t.Errorf("resolved_at: first %v (want a time), last %v (want null: open at the end)", first["resolved_at"], last["resolved_at"])
	}
	if first["kind"] != "source" || first["addr"] != "203.0.113.66" || first["syn"].(float64) < 100 {
		t.Errorf("first incident %v", first)
	}
	bans := got["bans"].([]any)
	if len(bans) != 2 {
		t.Fatalf("bans %v", bans)
	}
	for _, x := range bans {
		m := x.(map[string]any)
		if k := keys(m); !slices.Equal(k, []string{"from", "prefix", "until"}) {
			t.Errorf("ban keys %v", k)
		}
		if _, err := netip.ParsePrefix(m["prefix"].(string)); err != nil {
			t.Errorf("ban prefix %v: %v", m["prefix"], err)
		}
	}
}

// A truncated capture: the report of what could be read, and an error
// naming the file and the position.
func TestTruncatedCapture(t *testing.T) {
	c := &capture{}
	c.clients(netip.MustParseAddr("10.1.0.0"), 5, 5, 5*time.Second, server4)
	c.flood(netip.MustParseAddr("203.0.113.66"), server4, 1000, time.Second, 3*time.Second)
	path := c.write(t, false)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.pcap")
	os.WriteFile(cut, data[:len(data)*3/4+7], 0o644)
	rep, err := File(cut, Options{})
	if err == nil {
		t.Fatal("truncated capture: no error")
	}
	if rep == nil || rep.Packets == 0 || rep.Packets >= len(c.pkts) || len(rep.Incidents) != 1 {
		t.Fatalf("partial report %+v", rep)
	}
	for _, want := range []string{cut, "packet", "byte offset", "unexpected EOF"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	garbage := filepath.Join(t.TempDir(), "garbage.pcap")
	os.WriteFile(garbage, []byte("this is not a capture at all"), 0o644)
	if _, err := File(garbage, Options{}); err == nil || !strings.Contains(err.Error(), garbage) || !strings.Contains(err.Error(), "byte offset 0") {
		t.Errorf("garbage: %v", err)
	}
}

// Observe mode makes no bans and sees the whole flood in the counters;
// the protected flooder is reported but never banned.
func TestObserveAndProtected(t *testing.T) {
	c := &capture{}
	c.clients(netip.MustParseAddr("10.1.0.0"), 5, 5, 5*time.Second, server4)
	c.flood(netip.MustParseAddr("203.0.113.66"), server4, 1000, time.Second, 3*time.Second)
	c.flood(netip.MustParseAddr("198.51.100.1"), server4, 1000, time.Second, 3*time.Second)
	path := c.write(t, false)
	rep, err := File(path, Options{Observe: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bans) != 0 || len(rep.Incidents) != 2 || rep.Incidents[0].SYN < 1900 {
		t.Errorf("observe: bans %v, incidents %+v", rep.Bans, rep.Incidents)
	}
	rep, err = File(path, Options{Protected: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bans) != 1 || rep.Bans[0].Prefix != netip.MustParsePrefix("203.0.113.66/32") || len(rep.Incidents) != 2 {
		t.Errorf("protected: bans %v, incidents %d", rep.Bans, len(rep.Incidents))
	}
	var text bytes.Buffer
	rep.WriteText(&text)
	for _, want := range []string{"INCIDENTS", "BANS", "203.0.113.66/32", "protected by 198.51.100.0/24"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, text.String())
		}
	}
}

// Every incident says what it is: a single source, spoofed random sources
// (most sent one SYN), or a distributed flood from real sources that never
// complete their handshakes (40 slow bots at 25 SYN/s each, none over the
// per-source bar). The verdict is in --json and stated with its figure.
func TestVerdicts(t *testing.T) {
	clientNet := netip.MustParseAddr("10.1.0.0")
	cases := []struct {
		name  string
		build func(c *capture)
		want  detector.Verdict
		words string
	}{
		{"single source", func(c *capture) {
			c.clients(clientNet, 10, 5, 8*time.Second, server4)
			c.flood(netip.MustParseAddr("203.0.113.66"), server4, 2000, 2*time.Second, 5*time.Second)
		}, detector.VerdictSingleSource, "one address, 203.0.113.66"},
		{"spoofed", func(c *capture) {
			c.clients(clientNet, 10, 5, 12*time.Second, server4)
			r := rand.New(rand.NewPCG(9, 10))
			for t := 4 * time.Second; t < 8*time.Second; t += time.Second / 3000 {
				src := netip.AddrFrom4([4]byte{byte(1 + r.IntN(222)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
				c.add(t, netip.AddrPortFrom(src, c.port()), server4, frame.FlagSYN)
			}
		}, detector.VerdictSpoofed, "sent a single SYN and were never seen again"},
		{"40 slow bots", func(c *capture) {
			c.clients(clientNet, 10, 5, 14*time.Second, server4)
			for i := range 40 {
				c.flood(netip.AddrFrom4([4]byte{198, 18, 0, byte(1 + i)}), server4, 25, 4*time.Second, 9*time.Second)
			}
		}, detector.VerdictDistributed, "40 distinct sources"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &capture{}
			tc.build(c)
			rep, err := File(c.write(t, false), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Incidents) != 1 {
				t.Fatalf("%d incidents, want 1: %+v", len(rep.Incidents), rep.Incidents)
			}
			inc := rep.Incidents[0]
			if inc.Verdict != tc.want || !strings.Contains(inc.VerdictText(), tc.words) {
				t.Errorf("verdict %q (%s), want %q saying %q", inc.Verdict, inc.VerdictText(), tc.want, tc.words)
			}
			if j := rep.JSON(); j.Incidents[0].Verdict != string(tc.want) {
				t.Errorf("--json verdict %q, want %q", j.Incidents[0].Verdict, tc.want)
			}
		})
	}
}
