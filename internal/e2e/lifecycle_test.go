package e2e_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/e2e"
	"github.com/synguard/synguard/internal/testbed"
)

// lifecycleBed is a bed (prefix "sge", 10.200.60.0/24, as the other e2e
// tests: they run one at a time) with an HTTP server, a webhook receiver
// and a configured daemon, not yet started.
func lifecycleBed(t *testing.T, mode, extra string) (*testbed.Bed, *e2e.Env, *e2e.Webhook) {
	t.Helper()
	testbed.RequireRoot(t)
	if bin == "" {
		t.Fatal("synguard binary not built")
	}
	if err := e2e.CleanPins(pinGlob); err != nil {
		t.Fatal(err)
	}
	bed, err := testbed.New(t, testbed.Config{Prefix: prefix, Subnet: subnet, Hosts: []string{"cli", "atk"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bed.Server.ServeHTTP(80, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "hello") })); err != nil {
		t.Fatal(err)
	}
	if err := bed.Host("atk").DropOutgoingRST(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	hook, err := e2e.StartWebhook(t, bed.Server, dir)
	if err != nil {
		t.Fatal(err)
	}
	env, err := e2e.NewEnv(t, e2e.Options{Bed: bed, Bin: bin, Dir: dir, Mode: mode,
		BPFFS: fmt.Sprintf("/sys/fs/bpf/synguard-test-e2e-%d", os.Getpid()), Extra: hook.SinkYAML() + extra})
	if err != nil {
		t.Fatal(err)
	}
	return bed, env, hook
}

// waitUntil polls ok every 100 ms until it holds or d passes.
func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !ok(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v", what, d)
		}
	}
}

// openIncidents lists the daemon's incidents that are not resolved.
func openIncidents(t *testing.T, ctx context.Context, env *e2e.Env) []detector.Incident {
	t.Helper()
	st, err := env.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var open []detector.Incident
	for _, in := range st.Incidents {
		if in.Stage != detector.StageResolved {
			open = append(open, in)
		}
	}
	return open
}

// Issue 12: `synguard unblock` of a detector ban lifts it everywhere, and a
// renewed flood from the same source is banned again.
func TestUnblockThenFloodAgainIsBannedAgain(t *testing.T) {
	bed, env, _ := lifecycleBed(t, "enforce", "")
	atk := bed.Host("atk")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	d, err := env.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.Output())
		}
	}()
	target := netip.AddrPortFrom(bed.Server.Addr4, 80)
	host := netip.PrefixFrom(atk.Addr4, 32)
	banned := func() *api.Ban {
		bans, _, err := env.Bans(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		for i := range bans {
			if bans[i].Prefix == host {
				return &bans[i]
			}
		}
		return nil
	}
	flood := func() {
		if _, err := atk.Flood(ctx, testbed.Flood{To: target, Count: 2000, Interval: 250 * time.Microsecond, Timeout: 15 * time.Second}); err != nil {
			t.Fatalf("flood: %v", err)
		}
	}
	flood()
	waitUntil(t, 6*time.Second, "first flood banned", func() bool { return banned() != nil })
	if r, err := env.CLI(ctx, "unblock", host.String()); err != nil || r.Code != 0 {
		t.Fatalf("unblock: %v %+v", err, r)
	}
	if b := banned(); b != nil {
		t.Fatalf("ban still listed after unblock: %+v", b)
	}
	ex, err := env.Explain(ctx, atk.Addr4.String())
	if err != nil {
		t.Fatal(err)
	}
	if ex.Ban != nil || strings.Contains(ex.Detector, "banned as") {
		t.Fatalf("explain after unblock still reports a ban: %+v / %s", ex.Ban, ex.Detector)
	}
	flood()
	waitUntil(t, 6*time.Second, "renewed flood banned again", func() bool { return banned() != nil })
	b := banned()
	if b.Origin != api.OriginDetector {
		t.Errorf("renewed ban %+v, want a detector ban", b)
	}
	t.Logf("banned again after unblock: %s", b.Reason)
}

// Issue 12: a restart after an incident resolved opens no incident and
// sends no alert. Observe mode, so the flood's SYNs all count in its
// kernel entry (4,000 in a second): rated over the entry's whole life after
// the restart, they looked like a live flood and the incident reopened.
func TestRestartAfterResolvedIncidentIsQuiet(t *testing.T) {
	bed, env, hook := lifecycleBed(t, "observe", "detector: {resolve_after: 3s}\n")
	atk := bed.Host("atk")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	d, err := env.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	target := netip.AddrPortFrom(bed.Server.Addr4, 80)
	if _, err := atk.Flood(ctx, testbed.Flood{To: target, Count: 4000, Interval: 250 * time.Microsecond, Timeout: 15 * time.Second}); err != nil {
		t.Fatalf("flood: %v", err)
	}
	waitUntil(t, 5*time.Second, "flood alerted", func() bool { ids, _ := hook.Opened(atk.Addr4.String()); return len(ids) == 1 })
	waitUntil(t, 20*time.Second, "incident resolved", func() bool { return len(openIncidents(t, ctx, env)) == 0 })
	time.Sleep(2 * time.Second) // the resolve's alert is delivered
	before := len(hook.Messages())

	for _, how := range []string{"clean stop", "kill -9"} {
		if how == "clean stop" {
			if err := syscall.Kill(d.PID, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, 10*time.Second, "clean exit after SIGTERM", d.Exited)
		} else {
			d.Kill()
		}
		time.Sleep(time.Second)
		if d, err = env.Start(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second) // a dozen polls, the first full scan among them
		if open := openIncidents(t, ctx, env); len(open) != 0 {
			t.Errorf("after a %s and restart: open incidents %+v", how, open)
		}
		if n := len(hook.Messages()); n != before {
			t.Errorf("after a %s and restart: %d new alert messages: %+v", how, n-before, hook.Messages()[before:])
		}
		if strings.Contains(d.Output(), "incident opened") {
			t.Errorf("after a %s and restart the daemon logged an incident:\n%s", how, d.Output())
		}
	}
}
