package e2e

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/testbed"
)

// Webhook is a real HTTP alert receiver in a namespace: it verifies every
// message's Standard Webhooks signature with its own code (not the alert
// package's), so a signing bug on the sender side shows up here.
type Webhook struct {
	// URL is what the daemon's config points at.
	URL string
	// SecretFile holds "whsec_<base64>", the daemon's secret_file.
	SecretFile string
	key        []byte

	mu   sync.Mutex
	msgs []Message
}

// Message is one delivery attempt the receiver accepted.
type Message struct {
	ID        string // webhook-id
	Timestamp int64  // webhook-timestamp
	Received  time.Time
	// VerifyErr is nil when the signature and timestamp check out.
	VerifyErr error
	Type      string
	// Summary is the message's one-line summary (data.summary).
	Summary string
	// Mode is the daemon's mode when it sent the message (data.mode).
	Mode      string
	Incidents []detector.Incident
	Body      []byte
}

// StartWebhook writes a fresh secret into dir and serves the receiver on
// 127.0.0.1 in ns (the daemon runs there too) until cleanup.
func StartWebhook(t testbed.T, ns *testbed.NS, dir string) (*Webhook, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	w := &Webhook{SecretFile: filepath.Join(dir, "webhook_secret"), key: key}
	if err := os.WriteFile(w.SecretFile, []byte("whsec_"+base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write webhook secret: %w", err)
	}
	l, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("webhook listener in %s: %w", ns.Name, err)
	}
	w.URL = "http://" + l.Addr().String() + "/hooks/synguard"
	srv := &http.Server{Handler: http.HandlerFunc(w.serve), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { _ = srv.Serve(l); close(done) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return w, nil
}

// SinkYAML is the alerts: section that sends to this receiver. group_wait
// is short so that the test does not wait for the default second.
func (w *Webhook) SinkYAML() string {
	return fmt.Sprintf(`alerts:
  - name: e2e-hook
    type: webhook
    url: %s
    secret_file: %s
    group_wait: 200ms
    timeout: 5s
`, w.URL, w.SecretFile)
}

func (w *Webhook) serve(rw http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	m := Message{ID: r.Header.Get("webhook-id"), Received: time.Now(), Body: body}
	m.Timestamp, _ = strconv.ParseInt(r.Header.Get("webhook-timestamp"), 10, 64)
	m.VerifyErr = w.verify(m.ID, r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body, m.Received)
	var p struct {
		Type string `json:"type"`
		ID   string `json:"id"`
		Data struct {
			Summary   string `json:"summary"`
			Mode      string `json:"mode"`
			Incidents []struct {
				Incident detector.Incident `json:"incident"`
			} `json:"incidents"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		m.VerifyErr = errors.Join(m.VerifyErr, fmt.Errorf("body is not JSON: %w", err))
	} else if p.ID != m.ID {
		m.VerifyErr = errors.Join(m.VerifyErr, fmt.Errorf("body id %q != webhook-id %q", p.ID, m.ID))
	}
	m.Type, m.Summary, m.Mode = p.Type, p.Data.Summary, p.Data.Mode
	for _, in := range p.Data.Incidents {
		m.Incidents = append(m.Incidents, in.Incident)
	}
	w.mu.Lock()
	w.msgs = append(w.msgs, m)
	w.mu.Unlock()
	rw.WriteHeader(http.StatusNoContent)
}

// verify checks a Standard Webhooks signature: v1,<base64 HMAC-SHA256(key,
// "id.timestamp.body")>, among space-separated candidates, and a timestamp
// within five minutes.
func (w *Webhook) verify(id, ts, sigs string, body []byte, now time.Time) error {
	if id == "" || ts == "" || sigs == "" {
		return fmt.Errorf("missing webhook-id %q, webhook-timestamp %q or webhook-signature %q", id, ts, sigs)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook-timestamp %q: %w", ts, err)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return fmt.Errorf("webhook-timestamp %s is %v away from now", ts, d)
	}
	mac := hmac.New(sha256.New, w.key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range strings.Fields(sigs) {
		v, b64, ok := strings.Cut(s, ",")
		if !ok || v != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return fmt.Errorf("webhook-signature %q does not match the secret", sigs)
}

// Messages returns a copy of what was received so far.
func (w *Webhook) Messages() []Message {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Message(nil), w.msgs...)
}

// Opened returns the distinct webhook-ids of messages that carry incident
// stage "opened" for a source incident from addr, and that incident's ID.
func (w *Webhook) Opened(addr string) (ids []string, incidentID string) {
	seen := map[string]bool{}
	for _, m := range w.Messages() {
		for _, in := range m.Incidents {
			if in.Kind == detector.KindSource && in.Addr == addr && in.Stage == detector.StageOpened && !seen[m.ID] {
				seen[m.ID] = true
				ids = append(ids, m.ID)
				incidentID = in.ID
			}
		}
	}
	return ids, incidentID
}
