package daemon

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
)

// recordSnapshots makes the harness's detector a snapEngine and returns a
// function giving the engine of the latest start.
func recordSnapshots(h *harness) func() *snapEngine {
	var rec *snapEngine
	h.engine = func(c detector.Config, o detector.Options) (Engine, error) {
		e, err := NewDetector(c, o)
		rec = &snapEngine{Engine: e}
		return rec, err
	}
	return func() *snapEngine { return rec }
}

func sourceIn(s detector.Snapshot, a netip.Addr) (detector.SourceCounters, bool) {
	for _, c := range s.Sources {
		if c.Addr == a {
			return c, true
		}
	}
	return detector.SourceCounters{}, false
}

// The detector rates a source first listed long after it appeared by its
// kernel FirstSeen, judges early warnings by Complete, and renews a ban
// while its drop counter moves: the daemon must pass all three.
func TestSnapshotCarriesFirstSeenCompleteAndBanCounters(t *testing.T) {
	h := newHarness(t, "enforce")
	rec := recordSnapshots(h)
	old := netip.MustParseAddr("198.51.100.77")
	born := h.clk.now()
	h.plane.send(old, 50, 0)
	h.clk.step(30 * time.Second)
	h.start() // a restart: the source predates the daemon by 30 s
	h.d.Poll(h.clk.now())
	snaps := rec().snaps
	full := snaps[len(snaps)-1]
	if !full.Complete {
		t.Error("first poll after start is a full scan but the snapshot is not Complete")
	}
	c, ok := sourceIn(full, old)
	if !ok {
		t.Fatalf("full scan snapshot lacks %s: %+v", old, full.Sources)
	}
	if !c.FirstSeen.Equal(born) {
		t.Errorf("SourceCounters.FirstSeen = %v, want the kernel entry's %v", c.FirstSeen, born)
	}

	// Between full scans the snapshot lists watched sources only: not Complete.
	h.clk.step(time.Second)
	h.d.Poll(h.clk.now())
	snaps = rec().snaps
	if snaps[len(snaps)-1].Complete {
		t.Error("a poll that read only watched sources says Complete")
	}

	// A banned source that keeps sending shows in the ban's drop counter.
	pfx := netip.MustParsePrefix("203.0.113.0/24")
	if _, err := h.d.Block(context.Background(), pfx, time.Hour, "test"); err != nil {
		t.Fatal(err)
	}
	h.clk.step(500 * time.Millisecond)
	h.plane.send(attacker, 40, 0) // dropped: the plane enforces
	h.clk.step(500 * time.Millisecond)
	h.d.Poll(h.clk.now())
	snaps = rec().snaps
	last := snaps[len(snaps)-1]
	i := slices.IndexFunc(last.Bans, func(b detector.BanCounters) bool { return b.Prefix == pfx })
	if i < 0 || last.Bans[i].Dropped != 40 {
		t.Errorf("Snapshot.Bans = %+v, want %s with 40 dropped", last.Bans, pfx)
	}
}

// Bans are applied before unbans: a host stays blocked while its /24
// replaces its /32, and keeps its /32 when the /24 cannot be applied.
func TestPrefixBanReplacesHostBanWithoutAGap(t *testing.T) {
	host := netip.PrefixFrom(attacker, 32)
	net24 := netip.MustParsePrefix("203.0.113.0/24")
	for _, fail := range []bool{false, true} {
		h := newHarness(t, "enforce")
		now := h.clk.now()
		ban := func(p netip.Prefix) detector.Ban {
			return detector.Ban{Prefix: p, From: now, Until: now.Add(10 * time.Minute), Reason: "flood", Offence: 1}
		}
		h.d.mu.Lock()
		h.d.applyLocked(now, detector.Decisions{Bans: []detector.Ban{ban(host)}})
		h.d.mu.Unlock()
		if fail {
			h.plane.failBlock = map[netip.Prefix]bool{net24: true}
		}
		h.plane.ops = nil
		h.d.mu.Lock()
		h.d.applyLocked(now, detector.Decisions{Unbans: []netip.Prefix{host}, Bans: []detector.Ban{ban(net24)}})
		h.d.mu.Unlock()
		got := strings.Join(h.plane.ops, ", ")
		if !fail {
			if want := "block 203.0.113.0/24, unblock 203.0.113.66/32"; got != want {
				t.Errorf("kernel operations: %s, want %s (the host unblocked before its /24 exists)", got, want)
			}
			continue
		}
		if strings.Contains(got, "unblock") {
			t.Errorf("the /24 failed but the /32 was lifted: %s", got)
		}
		if _, ok := h.plane.ban(host.String()); !ok {
			t.Error("host ban gone after a failed prefix ban")
		}
		var m dto.Metric
		if err := h.d.deps.Metrics.banErrors.Write(&m); err != nil || m.GetCounter().GetValue() != 1 {
			n := m.GetCounter().GetValue()
			t.Errorf("synguard_ban_errors_total = %v, want 1", n)
		}
	}
}

// Protected peers (default gateways, SSH peers) are re-read periodically
// with the running configuration's protect section, and a newly protected
// address that the detector had banned is unbanned.
func TestProtectedPeersRefreshedAndUnbanned(t *testing.T) {
	h := newHarness(t, "enforce")
	var calls []config.Protect
	var peers []netip.Prefix
	h.d.deps.Protected = func(p config.Protect) ([]netip.Prefix, error) {
		calls = append(calls, p)
		return peers, nil
	}
	for range 3 {
		h.second(0)
	}
	for range 3 {
		h.second(500)
	}
	if _, ok := h.plane.ban("203.0.113.66/32"); !ok {
		t.Fatal("flood not banned")
	}
	// The admin logs in over SSH from the banned address (through another
	// path): within the refresh interval it is protected and unbanned.
	peers = []netip.Prefix{netip.PrefixFrom(attacker, 32)}
	n := len(calls)
	for range int(protectRefresh/time.Second) + 1 {
		h.second(0)
	}
	if len(calls) == n {
		t.Fatal("protected peers not refreshed by the poll loop")
	}
	if _, ok := h.plane.ban("203.0.113.66/32"); ok {
		t.Error("ban on a newly protected SSH peer not lifted")
	}
	if e, _ := h.d.Explain(context.Background(), attacker); e.Verdict != api.StateProtected {
		t.Errorf("explain verdict = %s, want protected", e.Verdict)
	}

	// A reload's protect section is what the next refresh uses.
	next := *h.cfg
	next.Protect = config.Protect{DefaultGateways: true, SSHPorts: []int{2222}}
	if err := h.d.Reload(&next); err != nil {
		t.Fatal(err)
	}
	if last := calls[len(calls)-1]; !last.DefaultGateways || !slices.Equal(last.SSHPorts, []int{2222}) {
		t.Errorf("after reload the peers were read with %+v, want the new protect section", last)
	}
}

// A detector ban restored at start on an address that became protected
// while the daemon was down is lifted at start.
func TestRestartLiftsBanOnNewlyProtectedPeer(t *testing.T) {
	h := newHarness(t, "enforce")
	for range 3 {
		h.second(0)
	}
	for range 3 {
		h.second(500)
	}
	if _, ok := h.plane.ban("203.0.113.66/32"); !ok {
		t.Fatal("flood not banned")
	}
	h.d.Shutdown()
	h.clk.step(5 * time.Second)
	h.protected = func(config.Protect) ([]netip.Prefix, error) {
		return []netip.Prefix{netip.PrefixFrom(attacker, 32)}, nil
	}
	h.start()
	if _, ok := h.plane.ban("203.0.113.66/32"); ok {
		t.Error("ban on an SSH peer protected since the last run survived the restart")
	}
}

// `synguard status` probes the lock with a shared flock for an instant;
// a daemon starting at that moment must wait, not fail. A second daemon
// still fails.
func TestLockWaitsOutAProbe(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	first, err := s.Lock()
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	probe, err := os.Open(filepath.Join(s.Dir, LockFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(probe.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(200*time.Millisecond, func() { probe.Close() })
	f, err := s.Lock()
	if err != nil {
		t.Fatalf("daemon start failed on a CLI probe of the lock: %v", err)
	}
	defer f.Close()
	if !s.Locked() {
		t.Error("Locked() = false while the daemon holds the lock")
	}
	if _, err := s.Lock(); err == nil || !strings.Contains(err.Error(), "another synguard daemon") {
		t.Errorf("second daemon: %v, want refused", err)
	}
}
