package replay

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

// The launch-day captures in testdata/ are recorded by testdata/record.sh
// with real tools (python3 http.server with its backlog of 5, curl, wrk,
// hping3, tcpdump) on a netns bed: server 10.200.90.1:80, regular clients
// 10.200.90.10-14, a flash crowd on 10.200.91.1-160, an attacker on
// 10.200.90.66 and 40 bots on 10.200.92.1-40.

var recordedService = netip.MustParseAddrPort("10.200.90.1:80")

// regularClient reports whether a is one of the five regular clients.
func regularClient(a netip.Addr) bool {
	return a.Compare(netip.MustParseAddr("10.200.90.10")) >= 0 && a.Compare(netip.MustParseAddr("10.200.90.14")) <= 0
}

// crowdClient reports whether a is one of the flash crowd.
func crowdClient(a netip.Addr) bool { return netip.MustParsePrefix("10.200.91.0/24").Contains(a) }

func replayRecorded(t *testing.T, name string) (*Report, string) {
	t.Helper()
	path := filepath.Join("testdata", name+".pcap")
	rep, err := File(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range rep.Bans {
		for _, a := range []string{"10.200.90.10", "10.200.90.14", "10.200.91.1", "10.200.91.160", "10.200.90.1"} {
			if b.Prefix.Contains(netip.MustParseAddr(a)) {
				t.Errorf("%s: legitimate %s banned by %v", name, a, b)
			}
		}
	}
	return rep, path
}

// serviceIncident returns the only incident, which must be the service's.
func serviceIncident(t *testing.T, rep *Report) detector.Incident {
	t.Helper()
	if len(rep.Incidents) != 1 || rep.Incidents[0].Kind != detector.KindService || rep.Incidents[0].Addr != recordedService.String() {
		t.Fatalf("incidents %+v, want exactly one for service %s", rep.Incidents, recordedService)
	}
	return rep.Incidents[0]
}

// The service has never had a SYN when the spoofed flood starts: flagged
// within 2 s of the flood's first SYN, against the floors, as spoofed.
func TestRecordedFloodFromFirstSecond(t *testing.T) {
	rep, path := replayRecorded(t, "flood-first-second")
	inc := serviceIncident(t, rep)
	first := scanFirst(t, path, func(a netip.Addr) bool { return !regularClient(a) })
	if lag := inc.OpenedAt.Sub(first); lag > 2*time.Second {
		t.Errorf("opened %v after the flood's first SYN, want within 2 s", lag)
	}
	if inc.Verdict != detector.VerdictSpoofed || !strings.Contains(inc.Reason, "judged against the floors") {
		t.Errorf("verdict %s, reason %q: want spoofed, judged against the floors", inc.Verdict, inc.Reason)
	}
}

// 160 new clients within a second on a backlog of 5, each completing its
// handshakes (some after retransmitting): no incident, no ban.
func TestRecordedFlashCrowd(t *testing.T) {
	rep, path := replayRecorded(t, "flash-crowd")
	if len(rep.Incidents) != 0 || len(rep.Bans) != 0 {
		t.Errorf("flash crowd: incidents %+v, bans %+v; want none", rep.Incidents, rep.Bans)
	}
	// The capture really holds the crowd (its SYNs start after the
	// regular clients').
	_ = scanFirst(t, path, crowdClient)
}

// 40 real hosts at 25 SYN/s each, never completing a handshake: a
// distributed flood, and every bot banned (service_ban_after).
func TestRecordedSlowBots(t *testing.T) {
	rep, _ := replayRecorded(t, "slow-bots")
	inc := serviceIncident(t, rep)
	if inc.Verdict != detector.VerdictDistributed {
		t.Errorf("verdict %s (%s), want distributed", inc.Verdict, inc.VerdictText())
	}
	for i := 1; i <= 40; i++ {
		bot := netip.AddrFrom4([4]byte{10, 200, 92, byte(i)})
		covered := false
		for _, b := range rep.Bans {
			covered = covered || b.Prefix.Contains(bot)
		}
		if !covered {
			t.Errorf("bot %s not banned", bot)
		}
	}
}

// After 70 s of normal traffic (curl, a wrk burst) the baseline is learned;
// a spoofed flood is still flagged within 2 s, against that baseline.
func TestRecordedSpoofedAfterNormalTraffic(t *testing.T) {
	rep, path := replayRecorded(t, "spoofed-after-normal")
	inc := serviceIncident(t, rep)
	first := scanFirst(t, path, func(a netip.Addr) bool { return !netip.MustParsePrefix("10.200.90.0/24").Contains(a) })
	if lag := inc.OpenedAt.Sub(first); lag > 2*time.Second {
		t.Errorf("opened %v after the flood's first SYN, want within 2 s", lag)
	}
	if inc.Verdict != detector.VerdictSpoofed || !strings.Contains(inc.Reason, "against a baseline of") {
		t.Errorf("verdict %s, reason %q: want spoofed, against the learned baseline", inc.Verdict, inc.Reason)
	}
}
