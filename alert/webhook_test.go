package alert

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

// verifyStandardWebhook checks a request as a receiver following the
// Standard Webhooks spec would, independently of the package's signer:
// the signed content is "<webhook-id>.<webhook-timestamp>.<body>", the key
// is the base64 part of "whsec_<base64>", the header is a space-separated
// list of "v1,<base64 HMAC-SHA256>", and the timestamp must be within five
// minutes of now.
func verifyStandardWebhook(secret string, h http.Header, body []byte, now time.Time) error {
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return errors.New("missing webhook-id, webhook-timestamp or webhook-signature")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("timestamp is not integer seconds")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return errors.New("timestamp outside tolerance")
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return err
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range strings.Split(sigs, " ") {
		version, b64, ok := strings.Cut(s, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return errors.New("no matching v1 signature")
}

func TestStandardWebhookVerifierRejectsTampering(t *testing.T) {
	// The verifier must be able to fail, or the signature test proves nothing.
	h := http.Header{}
	now := time.Now()
	body := []byte(`{"a":1}`)
	h.Set("webhook-id", "msg_x")
	h.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	h.Set("webhook-signature", signature(testSecretKey, "msg_x", now.Unix(), body))
	if err := verifyStandardWebhook(testSecret(), h, body, now); err != nil {
		t.Fatalf("valid signature rejected: %v", err)
	}
	if err := verifyStandardWebhook(testSecret(), h, []byte(`{"a":2}`), now); err == nil {
		t.Fatal("tampered body accepted")
	}
	if err := verifyStandardWebhook("whsec_"+base64.StdEncoding.EncodeToString([]byte("another-key-of-24-bytes!")), h, body, now); err == nil {
		t.Fatal("wrong key accepted")
	}
	if err := verifyStandardWebhook(testSecret(), h, body, now.Add(6*time.Minute)); err == nil {
		t.Fatal("stale timestamp accepted")
	}
}

func webhookSink(t *testing.T, url string) SinkConfig {
	dir := t.TempDir()
	return SinkConfig{
		Name: "hook", Type: TypeWebhook,
		URLFile:    writeFile(t, dir, "url", url+"\n"),
		SecretFile: writeFile(t, dir, "secret", testSecret()+"\n"),
		GroupWait:  10 * time.Millisecond,
	}
}

func TestWebhookSignedPayloadFieldByField(t *testing.T) {
	srv := newServer(t, nil)
	log, _ := captureLogs()
	d := mustDispatcher(t, []SinkConfig{webhookSink(t, srv.URL+"/hooks/synguard")}, fastOptions(t, log))
	d.Send(event(sourceIncident("inc-1", detector.StageOpened, detector.SeverityCritical), ModeEnforce))
	r := srv.waitRequests(t, 1, 5*time.Second)[0]

	if r.Path != "/hooks/synguard" {
		t.Errorf("path %q", r.Path)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if err := verifyStandardWebhook(testSecret(), r.Header, r.Body, time.Now()); err != nil {
		t.Fatalf("signature does not verify per Standard Webhooks: %v", err)
	}
	if !strings.HasPrefix(r.Header.Get("webhook-signature"), "v1,") {
		t.Errorf("signature header %q", r.Header.Get("webhook-signature"))
	}

	var p map[string]any
	if err := json.Unmarshal(r.Body, &p); err != nil {
		t.Fatal(err)
	}
	check := func(got any, want any, what string) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %#v, want %#v", what, got, want)
		}
	}
	check(p["version"], float64(1), "version")
	check(p["type"], "synguard.incidents", "type")
	check(p["id"], r.Header.Get("webhook-id"), "id (= webhook-id header)")
	if _, err := time.Parse(time.RFC3339, p["timestamp"].(string)); err != nil {
		t.Errorf("timestamp %v: %v", p["timestamp"], err)
	}
	data := p["data"].(map[string]any)
	check(data["host"], "web-1", "data.host")
	check(data["interfaces"].([]any)[0], "eth0", "data.interfaces[0]")
	check(data["mode"], "enforce", "data.mode")
	check(data["total"], float64(1), "data.total")
	check(data["omitted"], float64(0), "data.omitted")
	check(data["counts"].(map[string]any)["opened"], float64(1), "data.counts.opened")
	inc := data["incidents"].([]any)[0].(map[string]any)
	check(inc["headline"], "[CRITICAL] SYN flood opened on web-1 (eth0), 12,400 SYN/s from source 198.51.100.7", "headline")
	check(inc["target"], "web-1 (eth0)", "target")
	check(inc["from"], "source 198.51.100.7", "from")
	check(inc["rate"], "12,400 SYN/s (peak 15,020), 97% half-open, 372,000 SYN vs 12 ACK so far", "rate")
	check(inc["kernel"], "1,240 handshakes dropped (listen queue overflows 300, SYN queue full 0), syncookies sent 5,000, failed 0", "kernel")
	check(inc["action"], "banned 198.51.100.7 until 2026-11-28 21:10:00 UTC (offence 2)", "action")
	check(inc["command"], "synguard explain 198.51.100.7", "command")
	check(inc["event_time"], "2026-11-28T21:00:31Z", "event_time")
	in := inc["incident"].(map[string]any)
	check(in["id"], "inc-1", "incident.id")
	check(in["kind"], "source", "incident.kind")
	check(in["stage"], "opened", "incident.stage")
	check(in["severity"], "critical", "incident.severity")
	check(in["addr"], "198.51.100.7", "incident.addr")
	check(in["syn_per_second"], float64(12400), "incident.syn_per_second")
	check(in["half_open_share"], 0.97, "incident.half_open_share")
	check(in["kernel"].(map[string]any)["listen_drops"], float64(1240), "incident.kernel.listen_drops")
	check(in["bans"].([]any)[0].(map[string]any)["prefix"], "198.51.100.7/32", "incident.bans[0].prefix")
}

func TestWebhookRetrySameIDFreshSignature(t *testing.T) {
	// Standard Webhooks: a retry keeps webhook-id (for idempotency) and is
	// signed again; every attempt must verify.
	srv := newServer(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	log, _ := captureLogs()
	d := mustDispatcher(t, []SinkConfig{webhookSink(t, srv.URL)}, fastOptions(t, log))
	d.Send(event(serviceIncident("svc-1", detector.StageOpened, detector.SeverityWarning), ModeObserve))
	reqs := srv.waitRequests(t, 2, 5*time.Second)
	for i, r := range reqs {
		if err := verifyStandardWebhook(testSecret(), r.Header, r.Body, time.Now()); err != nil {
			t.Errorf("attempt %d: %v", i+1, err)
		}
	}
	if reqs[0].Header.Get("webhook-id") != reqs[1].Header.Get("webhook-id") {
		t.Errorf("retry changed webhook-id: %q vs %q", reqs[0].Header.Get("webhook-id"), reqs[1].Header.Get("webhook-id"))
	}
	waitStats(t, d, 2*time.Second, func(s SinkStats) bool { return s.Delivered == 1 && s.Retried == 1 && s.Pending == 0 })
}
