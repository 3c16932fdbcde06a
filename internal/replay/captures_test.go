package replay

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket/pcapgo"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/classify"
)

// capturesDir finds ../shared/captures relative to the repository root (the
// directory holding go.mod), or skips.
func capturesDir(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("repository root (go.mod) not found")
		}
		dir = parent
	}
	caps := filepath.Join(filepath.Dir(dir), "shared", "captures")
	if _, err := os.Stat(caps); err != nil {
		t.Skipf("recorded captures not available at %s: %v", caps, err)
	}
	return caps
}

// legit reports whether a is one of the captures' legitimate clients or the
// server.
func legit(a string) bool {
	ip, err := netip.ParseAddr(a)
	if err != nil {
		return false
	}
	lo, hi := netip.MustParseAddr("10.77.0.10"), netip.MustParseAddr("10.77.0.29")
	return ip == netip.MustParseAddr("10.77.0.1") || (ip.Compare(lo) >= 0 && ip.Compare(hi) <= 0)
}

// scanFirst returns the time of the first SYN whose source matches.
func scanFirst(t *testing.T, path string, match func(netip.Addr) bool) time.Time {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			t.Fatalf("%s: no SYN from the flood: %v", path, err)
		}
		if res := classify.Classify(data); res.Kind == classify.SYN && match(res.Src) {
			return ci.Timestamp
		}
	}
}

func TestRecordedSingleSourceFlood(t *testing.T) {
	path := filepath.Join(capturesDir(t), "flood-single-v4.pcap")
	rep, err := File(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	attacker := netip.MustParseAddr("10.77.0.66")
	start := scanFirst(t, path, func(a netip.Addr) bool { return a == attacker })
	var flagged *detector.Incident
	for i, inc := range rep.Incidents {
		switch {
		case inc.Kind == detector.KindSource && inc.Addr == attacker.String():
			flagged = &rep.Incidents[i]
		case legit(inc.Addr) || inc.Kind == detector.KindSource:
			t.Errorf("unexpected incident %s %s: %s", inc.Kind, inc.Addr, inc.Reason)
		}
	}
	if flagged == nil {
		t.Fatalf("10.77.0.66 not flagged; incidents: %+v", rep.Incidents)
	}
	lag := flagged.OpenedAt.Sub(start)
	t.Logf("%d packets; 10.77.0.66 flagged %v after its first SYN: %s", rep.Packets, lag, flagged.Reason)
	if lag > time.Second {
		t.Errorf("flagged %v after the flood started, want within 1s", lag)
	}
	var banned bool
	for _, b := range rep.Bans {
		if b.Prefix == netip.PrefixFrom(attacker, 32) {
			banned = true
		}
		for a := 10; a <= 29; a++ {
			if b.Prefix.Contains(netip.AddrFrom4([4]byte{10, 77, 0, byte(a)})) {
				t.Errorf("legitimate client banned: %+v", b)
			}
		}
	}
	if !banned {
		t.Errorf("attacker not banned: %+v", rep.Bans)
	}
}

func TestRecordedSpoofedFlood(t *testing.T) {
	path := filepath.Join(capturesDir(t), "flood-spoofed-v4.pcap")
	rep, err := File(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	notLocal := func(a netip.Addr) bool { return !netip.MustParsePrefix("10.77.0.0/24").Contains(a) }
	start := scanFirst(t, path, notLocal)
	var svc *detector.Incident
	for i, inc := range rep.Incidents {
		if inc.Kind == detector.KindService && inc.Addr == "10.77.0.1:80" {
			svc = &rep.Incidents[i]
			continue
		}
		t.Errorf("unexpected incident %s %s: %s", inc.Kind, inc.Addr, inc.Reason)
	}
	if svc == nil {
		t.Fatalf("service 10.77.0.1:80 not flagged; incidents: %+v", rep.Incidents)
	}
	lag := svc.OpenedAt.Sub(start)
	t.Logf("%d packets; 10.77.0.1:80 flagged %v after the first spoofed SYN, %d distinct sources: %s", rep.Packets, lag, svc.DistinctSources, svc.Reason)
	if lag > 2*time.Second {
		t.Errorf("service flagged %v after the flood started", lag)
	}
	if svc.DistinctSources < 1000 || len(svc.TopSources) == 0 {
		t.Errorf("distinct sources %d, top %v", svc.DistinctSources, svc.TopSources)
	}
	for _, b := range rep.Bans {
		if legit(b.Prefix.Addr().String()) || b.Prefix.Contains(netip.MustParseAddr("10.77.0.10")) {
			t.Errorf("legitimate client banned: %+v", b)
		}
	}
	if !strings.Contains(svc.Reason, "baseline") {
		t.Errorf("reason %q", svc.Reason)
	}
}
