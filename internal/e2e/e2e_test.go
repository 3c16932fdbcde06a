package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/e2e"
	"github.com/synguard/synguard/internal/testbed"
)

// The test bed: prefix "sge", subnet 10.200.60.0/24, pins under
// /sys/fs/bpf/synguard-test-e2e-<pid>.
const (
	prefix  = "sge"
	subnet  = 60
	pinGlob = "/sys/fs/bpf/synguard-test-e2e-*"
)

// bin is the synguard binary TestMain builds (empty when not root: every
// test skips then).
var bin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "synguard-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		t0 := time.Now()
		if bin, err = e2e.Build(ctx, dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "e2e: built %s in %v\n", bin, time.Since(t0).Round(time.Millisecond))
	}
	return m.Run()
}

// TestFloodEndToEnd runs the real daemon, in enforce mode, against a real
// hping3 flood while a legitimate client keeps making HTTP requests, then
// kills it with SIGKILL and restarts it. See the package doc of e2e.
func TestFloodEndToEnd(t *testing.T) {
	testbed.RequireRoot(t)
	if bin == "" {
		t.Fatal("synguard binary not built")
	}
	testStart := time.Now()
	if err := e2e.CleanPins(pinGlob); err != nil {
		t.Fatal(err)
	}
	bed, err := testbed.New(t, testbed.Config{Prefix: prefix, Subnet: subnet, Hosts: []string{"cli", "atk"}})
	if err != nil {
		t.Fatal(err)
	}
	srv, cli, atk := bed.Server, bed.Host("cli"), bed.Host("atk")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	if _, err := srv.ServeHTTP(80, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s\n", r.RemoteAddr)
	})); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	hook, err := e2e.StartWebhook(t, srv, dir)
	if err != nil {
		t.Fatal(err)
	}
	env, err := e2e.NewEnv(t, e2e.Options{
		Bed: bed, Bin: bin, Dir: dir, Mode: "enforce",
		BPFFS:        fmt.Sprintf("/sys/fs/bpf/synguard-test-e2e-%d", os.Getpid()),
		PollInterval: 250 * time.Millisecond,
		Extra:        hook.SinkYAML(),
	})
	if err != nil {
		t.Fatal(err)
	}
	d, err := env.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.Output())
		}
	}()
	st, err := env.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != "enforce" || len(st.Interfaces) != 1 || st.Interfaces[0].Name != srv.Iface || st.Interfaces[0].Attach == "" || st.Interfaces[0].Mode != "enforce" {
		t.Fatalf("status after start: mode %s, interfaces %+v; want enforce, attached to %s", st.Mode, st.Interfaces, srv.Iface)
	}
	t.Logf("daemon pid %d up, xdp %s on %s", d.PID, st.Interfaces[0].Attach, srv.Iface)

	// A legitimate user, one new connection every 20 ms, before, during
	// and after the flood.
	url := fmt.Sprintf("http://%s:80/", srv.Addr4)
	client := e2e.StartClient(cli, url, 20*time.Millisecond, 3*time.Second)
	defer client.Stop()
	time.Sleep(time.Second)

	// The flood: hping3 from the attacker, whose stack must not reset the
	// server's SYN-ACKs (a raw flood tool's would not).
	if err := atk.DropOutgoingRST(); err != nil {
		t.Fatal(err)
	}
	const floodCount = 8000
	type floodResult struct {
		sent int
		err  error
	}
	floodDone := make(chan floodResult, 1)
	floodStart := time.Now()
	go func() {
		n, err := atk.Flood(ctx, testbed.Flood{To: netip.AddrPortFrom(srv.Addr4, 80), Count: floodCount, Interval: 250 * time.Microsecond, Timeout: 15 * time.Second})
		floodDone <- floodResult{n, err}
	}()
	atkPrefix := netip.PrefixFrom(atk.Addr4, 32)
	var banAfter time.Duration
	for deadline := floodStart.Add(6 * time.Second); banAfter == 0; time.Sleep(25 * time.Millisecond) {
		bans, _, err := env.Bans(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(bans, func(b api.Ban) bool { return b.Prefix == atkPrefix }) {
			banAfter = time.Since(floodStart)
		} else if time.Now().After(deadline) {
			t.Fatalf("attacker %s not banned 6 s after the flood started; bans %+v", atk.Addr4, bans)
		}
	}
	fr := <-floodDone
	floodEnd := time.Now()
	if fr.err != nil {
		t.Fatalf("flood: %v", fr.err)
	}
	t.Logf("flood: hping3 sent %d SYNs in %v; attacker banned %v after hping3 was started (listed by `synguard list bans`)",
		fr.sent, floodEnd.Sub(floodStart).Round(time.Millisecond), banAfter.Round(time.Millisecond))
	// banAfter includes nsenter, hping3's start-up and CLI polling, which
	// vary by machine; the 2 s target is checked on the daemon's own
	// figure below (first SYN in the kernel to the ban), with 5 s here
	// only as a bound on the whole chain.
	if banAfter > 5*time.Second {
		t.Errorf("attacker banned %v after the flood started, want within 5 s end to end", banAfter)
	}
	if fr.sent < floodCount*9/10 {
		t.Errorf("hping3 sent %d SYNs, want about %d", fr.sent, floodCount)
	}
	time.Sleep(500 * time.Millisecond)
	reqs := client.Stop()
	n, ok, errs := e2e.Tally(reqs, floodStart, floodEnd)
	all, allOK, _ := e2e.Tally(reqs, testStart, time.Now())
	rate := 100 * float64(ok) / float64(max(n, 1))
	t.Logf("legitimate client: %d/%d requests succeeded during the flood (%.2f%%), %d/%d overall", ok, n, rate, allOK, all)
	if n < 50 {
		t.Errorf("only %d legitimate requests during the flood: the client did not run", n)
	}
	if rate < 99 {
		t.Errorf("legitimate success rate during the flood %.2f%%, want >= 99%%; first errors: %v", rate, errs)
	}

	// Quiet now: wait for at least two polls, so that status and metrics
	// hold the final counters, then compare every view.
	time.Sleep(3 * env.PollInterval)
	st, err = env.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := env.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bans, raw, err := env.Bans(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	exAtk, err := env.Explain(ctx, atk.Addr4.String())
	if err != nil {
		t.Fatal(err)
	}
	exCli, err := env.Explain(ctx, cli.Addr4.String())
	if err != nil {
		t.Fatal(err)
	}
	checkBanJSON(t, raw)
	if len(bans) != 1 || bans[0].Prefix != atkPrefix {
		t.Fatalf("bans after the flood: %+v, want exactly %s (a legitimate client banned?)", bans, atkPrefix)
	}
	ban := bans[0]
	if exCli.Verdict == api.StateBanned || exCli.Ban != nil {
		t.Errorf("explain %s (legitimate): verdict %s, ban %+v", cli.Addr4, exCli.Verdict, exCli.Ban)
	}
	if exAtk.Verdict != api.StateBanned || exAtk.Kernel == nil || exCli.Kernel == nil {
		t.Fatalf("explain: attacker verdict %s kernel %+v, client kernel %+v", exAtk.Verdict, exAtk.Kernel, exCli.Kernel)
	}
	if ban.From.IsZero() {
		t.Errorf("ban %+v has no start time", ban)
	} else {
		// The daemon's own figure: from the attacker's first SYN in the
		// kernel to the ban (no hping3 start-up, no CLI polling).
		lat := ban.From.Sub(exAtk.Kernel.FirstSeen)
		t.Logf("attacker first seen by XDP %s, banned from %s: %v in the daemon",
			exAtk.Kernel.FirstSeen.Format("15:04:05.000"), ban.From.Format("15:04:05.000"), lat.Round(time.Millisecond))
		if lat > 2*time.Second {
			t.Errorf("banned %v after the attacker's first SYN reached XDP, want within 2 s", lat)
		}
	}
	if d := time.Until(ban.Until); d < 5*time.Minute {
		t.Errorf("ban until %v (%v from now), want the detector's ban_base (10m)", ban.Until, d)
	}
	if !strings.Contains(ban.Reason, "SYN") {
		t.Errorf("ban reason %q does not explain the ban", ban.Reason)
	}
	c := st.Counters
	mDropped := metrics["synguard_datapath_dropped_frames_total"]
	mSYN := metrics[`synguard_datapath_frames_total{kind="syn"}`]
	t.Logf("dropped: status %d, metrics %.0f, ban %d; SYN: status %d, metrics %.0f, attacker passed %d, client %d; sent %d",
		c.Dropped, mDropped, ban.Dropped, c.SYN, mSYN, exAtk.Kernel.SYN, exCli.Kernel.SYN, fr.sent)
	if c.Dropped == 0 || float64(c.Dropped) != mDropped || c.Dropped != ban.Dropped {
		t.Errorf("drops disagree: status %d, /metrics %.0f, list bans %d", c.Dropped, mDropped, ban.Dropped)
	}
	if float64(c.SYN) != mSYN {
		t.Errorf("SYN counts disagree: status %d, /metrics %.0f", c.SYN, mSYN)
	}
	// Every SYN the attacker sent was either counted for its source (before
	// the ban) or dropped by the ban; every SYN the XDP program saw came
	// from the client or the attacker.
	if got := exAtk.Kernel.SYN + ban.Dropped; !sameCount(got, fr.sent) {
		t.Errorf("attacker SYNs passed %d + dropped %d = %d, hping3 sent %d", exAtk.Kernel.SYN, ban.Dropped, got, fr.sent)
	}
	if got := exCli.Kernel.SYN + exAtk.Kernel.SYN + c.Dropped; got != c.SYN {
		t.Errorf("kernel SYN total %d != client %d + attacker passed %d + dropped %d", c.SYN, exCli.Kernel.SYN, exAtk.Kernel.SYN, c.Dropped)
	}
	if exCli.Kernel.SYN < uint64(allOK) {
		t.Errorf("client source counted %d SYNs, but %d requests succeeded (each needs one)", exCli.Kernel.SYN, allOK)
	}
	if ban.Dropped < uint64(fr.sent)/2 {
		t.Errorf("ban dropped %d of %d SYNs: banned too late", ban.Dropped, fr.sent)
	}
	if st.Bans != 1 {
		t.Errorf("status bans %d, want 1", st.Bans)
	}
	if v := metrics[`synguard_bans_active{origin="detector"}`]; v != 1 {
		t.Errorf(`synguard_bans_active{origin="detector"} = %v, want 1`, v)
	}

	// The webhook got the opened incident, signed.
	var hookIDs []string
	var incidentID string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if hookIDs, incidentID = hook.Opened(atk.Addr4.String()); len(hookIDs) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no webhook message with the attacker's opened incident after 10 s; got %d messages", len(hook.Messages()))
		}
	}
	for _, m := range hook.Messages() {
		if m.VerifyErr != nil {
			t.Errorf("webhook message %s: %v", m.ID, m.VerifyErr)
		}
		if m.Type != "synguard.incidents" {
			t.Errorf("webhook message %s: type %q", m.ID, m.Type)
		}
	}
	if ban.IncidentID != "" && ban.IncidentID != incidentID {
		t.Errorf("ban names incident %s, the alert %s", ban.IncidentID, incidentID)
	}
	t.Logf("webhook: %d message(s), opened incident %s in %v, signatures verified", len(hook.Messages()), incidentID, hookIDs)
	if len(hookIDs) != 1 {
		t.Errorf("incident %s opened alerted in %d distinct messages %v, want 1", incidentID, len(hookIDs), hookIDs)
	}

	// kill -9: the kernel keeps dropping the attacker.
	d.Kill()
	if up, err := env.XDPAttached(ctx); err != nil || !up {
		t.Fatalf("XDP attached after kill -9: %v %v", up, err)
	}
	kern, err := env.Kernel()
	if err != nil {
		t.Fatal(err)
	}
	defer kern.Close()
	kbans, err := kern.Bans()
	if err != nil || len(kbans) != 1 {
		t.Fatalf("kernel bans after kill -9: %+v %v", kbans, err)
	}
	before, err := srv.Counters()
	if err != nil {
		t.Fatal(err)
	}
	sent2, err := atk.Flood(ctx, testbed.Flood{To: netip.AddrPortFrom(srv.Addr4, 80), Count: 2000, Interval: 250 * time.Microsecond, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	after, err := srv.Counters()
	if err != nil {
		t.Fatal(err)
	}
	kbans2, err := kern.Bans()
	if err != nil || len(kbans2) != 1 {
		t.Fatalf("kernel bans after the second flood: %+v %v", kbans2, err)
	}
	inSegs := after["Tcp.InSegs"] - before["Tcp.InSegs"]
	dropped2 := kbans2[0].Dropped - kbans[0].Dropped
	t.Logf("daemon down: second flood of %d SYNs, kernel ban dropped %d more, server Tcp.InSegs +%d", sent2, dropped2, inSegs)
	if !sameCount(dropped2, sent2) {
		t.Errorf("with the daemon down the ban dropped %d of %d SYNs", dropped2, sent2)
	}
	if inSegs > 5 {
		t.Errorf("with the daemon down the server received %d TCP segments during a %d-SYN flood from a banned source", inSegs, sent2)
	}
	down, _, err := env.Bans(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(down) != 1 || down[0].Prefix != atkPrefix || down[0].Dropped != kbans2[0].Dropped {
		t.Errorf("list bans with the daemon down: %+v, want %s with %d dropped", down, atkPrefix, kbans2[0].Dropped)
	}

	// Restart: the same ban, the same expiry, no second alert.
	msgsBefore := len(hook.Messages())
	d2, err := env.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("restarted daemon log:\n%s", d2.Output())
		}
	}()
	// Long enough for polls, a full scan's worth of decisions and the
	// sink's group_wait.
	time.Sleep(2 * time.Second)
	again, raw2, err := env.Bans(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	checkBanJSON(t, raw2)
	if len(again) != 1 || again[0].Prefix != ban.Prefix {
		t.Fatalf("bans after restart: %+v, want %s", again, ban.Prefix)
	}
	skew := again[0].Until.Sub(ban.Until)
	t.Logf("ban after restart: until %s (was %s, difference %v), dropped %d, reason %q",
		again[0].Until.Format(time.RFC3339Nano), ban.Until.Format(time.RFC3339Nano), skew, again[0].Dropped, again[0].Reason)
	if skew.Abs() > 50*time.Millisecond {
		t.Errorf("ban expiry changed over the restart by %v: %s -> %s", skew, ban.Until, again[0].Until)
	}
	if again[0].Reason != ban.Reason || again[0].Dropped != kbans2[0].Dropped {
		t.Errorf("ban after restart %+v, want reason %q and %d dropped", again[0], ban.Reason, kbans2[0].Dropped)
	}
	if ids, _ := hook.Opened(atk.Addr4.String()); len(ids) != len(hookIDs) {
		t.Errorf("restart alerted the opened incident again: webhook-ids %v, before the restart %v", ids, hookIDs)
	}
	if strings.Contains(d2.Output(), "incident opened") {
		t.Errorf("restarted daemon logged an incident opening again")
	}
	t.Logf("webhook messages: %d before the restart, %d after", msgsBefore, len(hook.Messages()))
	t.Logf("end-to-end test took %v", time.Since(testStart).Round(time.Millisecond))
}

// checkBanJSON holds `synguard list bans --json` to its contract for
// scripts: prefix (a CIDR), until (RFC 3339), dropped (a count) and reason.
func checkBanJSON(t *testing.T, items []map[string]json.RawMessage) {
	t.Helper()
	var extra []string
	for i, it := range items {
		var (
			prefix, until, reason string
			dropped               uint64
		)
		for k, dst := range map[string]any{"prefix": &prefix, "until": &until, "dropped": &dropped, "reason": &reason} {
			v, ok := it[k]
			if !ok {
				t.Errorf("list bans --json item %d lacks %q: %s", i, k, mustJSON(it))
				continue
			}
			if err := json.Unmarshal(v, dst); err != nil {
				t.Errorf("list bans --json item %d: %q = %s: %v", i, k, v, err)
			}
		}
		if _, err := netip.ParsePrefix(prefix); err != nil {
			t.Errorf("list bans --json item %d: prefix %q: %v", i, prefix, err)
		}
		if _, err := time.Parse(time.RFC3339, until); err != nil {
			t.Errorf("list bans --json item %d: until %q is not RFC 3339: %v", i, until, err)
		}
		if reason == "" {
			t.Errorf("list bans --json item %d: empty reason", i)
		}
		for k := range it {
			if k != "prefix" && k != "until" && k != "dropped" && k != "reason" && !slices.Contains(extra, k) {
				extra = append(extra, k)
			}
		}
	}
	if len(extra) > 0 {
		slices.Sort(extra)
		t.Logf("note: list bans --json items also carry %v besides prefix, until, dropped, reason", extra)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestObserveModeNeverDrops runs the daemon in observe mode (on the second
// subnet, 10.200.61.0/24): a flood is detected and alerted as observe-only,
// and a ban (a manual one: in observe mode the detector bans nothing) drops
// nothing, but counts every frame it matches as would-drop.
func TestObserveModeNeverDrops(t *testing.T) {
	testbed.RequireRoot(t)
	if bin == "" {
		t.Fatal("synguard binary not built")
	}
	if err := e2e.CleanPins(pinGlob); err != nil {
		t.Fatal(err)
	}
	bed, err := testbed.New(t, testbed.Config{Prefix: prefix, Subnet: subnet + 1, Hosts: []string{"atk"}})
	if err != nil {
		t.Fatal(err)
	}
	srv, atk := bed.Server, bed.Host("atk")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := srv.ServeHTTP(80, http.NotFoundHandler()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	hook, err := e2e.StartWebhook(t, srv, dir)
	if err != nil {
		t.Fatal(err)
	}
	env, err := e2e.NewEnv(t, e2e.Options{Bed: bed, Bin: bin, Dir: dir, Mode: "observe",
		BPFFS: fmt.Sprintf("/sys/fs/bpf/synguard-test-e2e-obs-%d", os.Getpid()), Extra: hook.SinkYAML()})
	if err != nil {
		t.Fatal(err)
	}
	d, err := env.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.Output())
		}
	}()
	if err := atk.DropOutgoingRST(); err != nil {
		t.Fatal(err)
	}
	to := netip.AddrPortFrom(srv.Addr4, 80)
	sent1, err := atk.Flood(ctx, testbed.Flood{To: to, Count: 1500, Interval: 250 * time.Microsecond, Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if ids, _ := hook.Opened(atk.Addr4.String()); len(ids) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no opened alert for %s 10 s after a %d-SYN flood", atk.Addr4, sent1)
		}
	}
	for _, m := range hook.Messages() {
		if m.VerifyErr != nil {
			t.Errorf("webhook message %s: %v", m.ID, m.VerifyErr)
		}
		if m.Mode != "observe" {
			t.Errorf("webhook message %s: mode %q, want observe", m.ID, m.Mode)
		}
	}
	bans, _, err := env.Bans(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("observe mode, after a %d-SYN flood: detector bans %+v", sent1, bans)

	// A ban in observe mode: matched frames pass and count as would-drop.
	if r, err := env.CLI(ctx, "block", atk.Addr4.String(), "--ttl", "10m", "--reason", "e2e observe"); err != nil || r.Code != 0 {
		t.Fatalf("synguard block: exit %d %v: %s", r.Code, err, r.Stderr)
	}
	before, err := srv.Counters()
	if err != nil {
		t.Fatal(err)
	}
	ex1, err := env.Explain(ctx, atk.Addr4.String())
	if err != nil || ex1.Kernel == nil {
		t.Fatalf("explain %s: %+v %v", atk.Addr4, ex1, err)
	}
	sent2, err := atk.Flood(ctx, testbed.Flood{To: to, Count: 2000, Interval: 250 * time.Microsecond, Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	after, err := srv.Counters()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * env.PollInterval)
	st, err := env.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bans, _, err = env.Bans(ctx, false); err != nil {
		t.Fatal(err)
	}
	ex, err := env.Explain(ctx, atk.Addr4.String())
	if err != nil {
		t.Fatal(err)
	}
	inSegs := after["Tcp.InSegs"] - before["Tcp.InSegs"]
	t.Logf("observe mode with a ban: sent %d, server Tcp.InSegs +%d, status dropped %d / would-drop %d, bans %+v",
		sent2, inSegs, st.Counters.Dropped, st.Counters.WouldDrop, bans)
	if st.Mode != "observe" || len(st.Interfaces) != 1 || st.Interfaces[0].Mode != "observe" {
		t.Errorf("status mode %s, interfaces %+v: want observe", st.Mode, st.Interfaces)
	}
	if st.Counters.Dropped != 0 {
		t.Errorf("observe mode dropped %d frames", st.Counters.Dropped)
	}
	if inSegs < int64(sent2) {
		t.Errorf("server received %d TCP segments, fewer than the %d SYNs sent from a banned source: observe mode dropped", inSegs, sent2)
	}
	if ex.Kernel == nil {
		t.Fatalf("explain %s: no kernel counters", atk.Addr4)
	}
	// Every SYN of the second flood passed (counted for the source) and
	// matched the ban (would-drop).
	seen := ex.Kernel.SYN - ex1.Kernel.SYN
	if !sameCount(seen, sent2) {
		t.Errorf("attacker source counted %d SYNs during the second flood, hping3 sent %d", seen, sent2)
	}
	if len(bans) != 1 || bans[0].Prefix != netip.PrefixFrom(atk.Addr4, 32) || bans[0].Dropped != 0 || bans[0].WouldDrop != seen {
		t.Fatalf("bans: %+v, want %s with 0 dropped and %d would-drop", bans, atk.Addr4, seen)
	}
	if st.Counters.WouldDrop != seen {
		t.Errorf("status would-drop %d, want %d", st.Counters.WouldDrop, seen)
	}
}

// sameCount compares a kernel count with hping3's "packets transmitted":
// when the target answers, hping3 stops early and its statistics miss the
// last packets it sent (1-2 seen here), never the other way round.
func sameCount(kernel uint64, hping int) bool {
	return kernel >= uint64(hping) && kernel <= uint64(hping)+5
}
