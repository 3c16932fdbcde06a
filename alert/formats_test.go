package alert

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return m
}

func TestSlackPayloadFieldByField(t *testing.T) {
	srv := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	log, _ := captureLogs()
	dir := t.TempDir()
	cfg := SinkConfig{Name: "oncall", Type: TypeSlack, URLFile: writeFile(t, dir, "u", srv.URL+"/services/T0/B0/XYZSECRET"), GroupWait: 10 * time.Millisecond}
	d := mustDispatcher(t, []SinkConfig{cfg}, fastOptions(t, log))
	d.Send(event(serviceIncident("svc-7", detector.StageOpened, detector.SeverityCritical), ModeObserve))
	r := srv.waitRequests(t, 1, 5*time.Second)[0]
	if r.Path != "/services/T0/B0/XYZSECRET" {
		t.Errorf("path %q", r.Path)
	}
	m := decode(t, r.Body)
	wantHead := "[CRITICAL] SYN flood opened on web-1 (eth0): service 192.0.2.10:443, 48,000 SYN/s from 4,812 distinct sources, likely spoofed"
	if m["text"] != wantHead {
		t.Errorf("text = %q\nwant   %q", m["text"], wantHead)
	}
	blocks := m["blocks"].([]any)
	if len(blocks) != 2 {
		t.Fatalf("%d blocks, want header + 1 section: %s", len(blocks), r.Body)
	}
	h := blocks[0].(map[string]any)
	if h["type"] != "header" || h["text"].(map[string]any)["type"] != "plain_text" {
		t.Errorf("block 0 = %v", h)
	}
	if got := h["text"].(map[string]any)["text"].(string); len(got) > 150 || !strings.HasPrefix(got, "[CRITICAL] SYN flood opened") {
		t.Errorf("header text %q (len %d, Slack max 150)", got, len(got))
	}
	sec := blocks[1].(map[string]any)
	if sec["type"] != "section" || sec["text"].(map[string]any)["type"] != "mrkdwn" {
		t.Errorf("block 1 = %v", sec)
	}
	text := sec["text"].(map[string]any)["text"].(string)
	for _, want := range []string{
		"*Target:* service 192.0.2.10:443 on web-1 (eth0)",
		"*From:* 4,812 distinct sources, likely spoofed (top: 203.0.113.5 90 SYN/s, 203.0.113.9 80 SYN/s)",
		"*Rate:* 48,000 SYN/s (peak 51,000), 100% half-open, 2,000,000 SYN vs 900 ACK so far",
		"*Kernel:* port 443: 8,800 handshakes dropped by the kernel in the last minute (8,800 handshakes dropped",
		"*Action:* observe mode only: nothing blocked",
		"*Look closer:* `synguard top`",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("section lacks %q:\n%s", want, text)
		}
	}
}

func TestPagerDutyTriggerResolveFieldByField(t *testing.T) {
	srv := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte(`{"status":"success","message":"Event processed"}`))
	})
	log, _ := captureLogs()
	dir := t.TempDir()
	cfg := SinkConfig{Name: "pd", Type: TypePagerDuty, URL: srv.URL + "/v2/enqueue",
		RoutingKeyFile: writeFile(t, dir, "rk", "R0UT1NGKEYabcdef0123456789abcdef\n"), GroupWait: 10 * time.Millisecond}
	d := mustDispatcher(t, []SinkConfig{cfg}, fastOptions(t, log))

	d.Send(event(sourceIncident("inc-9", detector.StageOpened, detector.SeverityWarning), ModeEnforce))
	r := srv.waitRequests(t, 1, 5*time.Second)[0]
	if r.Path != "/v2/enqueue" {
		t.Errorf("path %q", r.Path)
	}
	m := decode(t, r.Body)
	for k, want := range map[string]any{"routing_key": "R0UT1NGKEYabcdef0123456789abcdef", "event_action": "trigger", "dedup_key": "inc-9", "client": "synguard"} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
	p := m["payload"].(map[string]any)
	for k, want := range map[string]any{
		"summary":   "[WARNING] SYN flood opened on web-1 (eth0), 12,400 SYN/s from source 198.51.100.7",
		"source":    "web-1",
		"severity":  "warning",
		"timestamp": "2026-11-28T21:00:31Z",
		"component": "198.51.100.7",
		"class":     "syn-flood/source",
	} {
		if p[k] != want {
			t.Errorf("payload.%s = %v, want %v", k, p[k], want)
		}
	}
	cd := p["custom_details"].(map[string]any)
	if cd["action"] != "banned 198.51.100.7 until 2026-11-28 21:10:00 UTC (offence 2)" || cd["look_closer"] != "synguard explain 198.51.100.7" {
		t.Errorf("custom_details = %v", cd)
	}

	// Escalation re-triggers on the same dedup_key with the new severity.
	d.Send(event(sourceIncident("inc-9", detector.StageUpdated, detector.SeverityCritical), ModeEnforce))
	r = srv.waitRequests(t, 2, 5*time.Second)[1]
	m = decode(t, r.Body)
	if m["event_action"] != "trigger" || m["dedup_key"] != "inc-9" || m["payload"].(map[string]any)["severity"] != "critical" {
		t.Errorf("escalation: %s", r.Body)
	}

	d.Send(event(sourceIncident("inc-9", detector.StageResolved, detector.SeverityCritical), ModeEnforce))
	r = srv.waitRequests(t, 3, 5*time.Second)[2]
	m = decode(t, r.Body)
	if m["event_action"] != "resolve" || m["dedup_key"] != "inc-9" || m["routing_key"] != "R0UT1NGKEYabcdef0123456789abcdef" {
		t.Errorf("resolve: %s", r.Body)
	}
	if _, has := m["payload"]; has {
		t.Errorf("resolve carries a payload: %s", r.Body)
	}
}

func TestPagerDutySeverityMapping(t *testing.T) {
	for sev, want := range map[detector.Severity]string{
		detector.SeverityInfo: "info", detector.SeverityWarning: "warning", detector.SeverityCritical: "critical", "apocalyptic": "error",
	} {
		if got := pdSeverity(sev); got != want {
			t.Errorf("pdSeverity(%q) = %q, want %q", sev, got, want)
		}
	}
}

func TestPagerDutyDefaultURL(t *testing.T) {
	c := SinkConfig{Name: "pd", Type: TypePagerDuty, RoutingKeyFile: "/x"}.withDefaults()
	if c.URL != "https://events.pagerduty.com/v2/enqueue" {
		t.Errorf("default url %q", c.URL)
	}
}

func TestAlertmanagerFiringResendResolve(t *testing.T) {
	srv := newServer(t, nil)
	log, _ := captureLogs()
	cfg := SinkConfig{Name: "am", Type: TypeAlertmanager, URL: srv.URL + "/", GroupWait: 10 * time.Millisecond,
		ResendInterval: 300 * time.Millisecond}
	d := mustDispatcher(t, []SinkConfig{cfg}, fastOptions(t, log))
	sent := time.Now()
	d.Send(event(serviceIncident("svc-3", detector.StageOpened, detector.SeverityCritical), ModeEnforce))
	r := srv.waitRequests(t, 1, 5*time.Second)[0]
	if r.Path != "/api/v2/alerts" {
		t.Errorf("path %q, want /api/v2/alerts", r.Path)
	}
	var alerts []map[string]any
	if err := json.Unmarshal(r.Body, &alerts); err != nil || len(alerts) != 1 {
		t.Fatalf("body %s: %v", r.Body, err)
	}
	a := alerts[0]
	labels := a["labels"].(map[string]any)
	for k, want := range map[string]string{"alertname": "SYNFlood", "instance": "web-1", "incident_id": "svc-3", "kind": "service",
		"target": "192.0.2.10:443", "severity": "critical", "job": "synguard"} {
		if labels[k] != want {
			t.Errorf("labels.%s = %v, want %s", k, labels[k], want)
		}
	}
	ann := a["annotations"].(map[string]any)
	if !strings.HasPrefix(ann["summary"].(string), "[CRITICAL] SYN flood opened on web-1 (eth0): service 192.0.2.10:443") ||
		ann["command"] != "synguard top" || ann["action"] != "enforce mode, no ban issued for this incident" {
		t.Errorf("annotations = %v", ann)
	}
	if a["startsAt"] != "2026-11-28T21:00:00Z" {
		t.Errorf("startsAt %v", a["startsAt"])
	}
	ends, _ := time.Parse(time.RFC3339Nano, a["endsAt"].(string))
	if ends.Before(sent.Add(time.Second)) || ends.After(time.Now().Add(2*time.Second)) {
		t.Errorf("firing endsAt %v, want about now+4*resend (1.2s)", ends)
	}

	// Re-sent while firing, with endsAt moved forward.
	reqs := srv.waitRequests(t, 3, 5*time.Second)
	gap := reqs[2].At.Sub(reqs[1].At)
	if gap < 250*time.Millisecond {
		t.Errorf("re-sends %s apart, want ~300ms", gap)
	}
	var again []map[string]any
	json.Unmarshal(reqs[2].Body, &again)
	ends2, _ := time.Parse(time.RFC3339Nano, again[0]["endsAt"].(string))
	if len(again) != 1 || !ends2.After(ends) {
		t.Errorf("re-send %s: endsAt %v not after %v", reqs[2].Body, ends2, ends)
	}
	t.Logf("alertmanager re-sends %s apart (resend_interval 300ms)", fmtDur(gap))

	res := serviceIncident("svc-3", detector.StageResolved, detector.SeverityCritical)
	end := t0.Add(9 * time.Minute)
	res.ResolvedAt = &end
	d.Send(event(res, ModeEnforce))
	deadline := time.Now().Add(5 * time.Second)
	for {
		rs := srv.requests()
		var last []map[string]any
		json.Unmarshal(rs[len(rs)-1].Body, &last)
		if len(last) == 1 && last[0]["endsAt"] == "2026-11-28T21:09:00Z" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no resolve with endsAt=ResolvedAt; last body %s", rs[len(rs)-1].Body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Resolved alerts are not re-sent.
	n := len(srv.requests())
	time.Sleep(700 * time.Millisecond)
	if m := len(srv.requests()); m != n {
		t.Errorf("%d requests after resolve, want none", m-n)
	}
}
