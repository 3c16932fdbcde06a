package alert

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

// received is one request as the test server saw it.
type received struct {
	At     time.Time
	Path   string
	Header http.Header
	Body   []byte
}

// server is a real HTTP server on loopback whose behaviour per request is
// chosen by the test.
type server struct {
	*httptest.Server
	mu       sync.Mutex
	reqs     []received
	respond  func(n int, w http.ResponseWriter, r *http.Request) // n counts from 1
	arrivals chan struct{}
}

func newServer(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request)) *server {
	t.Helper()
	s := &server{respond: respond, arrivals: make(chan struct{}, 1<<16)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.reqs = append(s.reqs, received{At: time.Now(), Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
		n := len(s.reqs)
		s.mu.Unlock()
		s.arrivals <- struct{}{}
		if s.respond != nil {
			s.respond(n, w, r)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) requests() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.reqs...)
}

// waitRequests waits until the server has seen n requests.
func (s *server) waitRequests(t *testing.T, n int, within time.Duration) []received {
	t.Helper()
	deadline := time.After(within)
	for {
		if r := s.requests(); len(r) >= n {
			return r
		}
		select {
		case <-s.arrivals:
		case <-deadline:
			t.Fatalf("server saw %d requests within %s, want %d", len(s.requests()), within, n)
		}
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func captureLogs() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// writeFile writes content to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testSecret is a Standard Webhooks secret (24 random-looking bytes).
var testSecretKey = []byte("synguard-test-key-24byte")

func testSecret() string { return "whsec_" + base64.StdEncoding.EncodeToString(testSecretKey) }

var t0 = time.Date(2026, 11, 28, 21, 0, 0, 0, time.UTC)

// sourceIncident is a realistic single-source incident.
func sourceIncident(id string, stage detector.Stage, sev detector.Severity) detector.Incident {
	src := netip.MustParseAddr("198.51.100.7")
	in := detector.Incident{
		ID: id, Kind: detector.KindSource, Stage: stage, Severity: sev,
		Addr: src.String(), Source: src,
		OpenedAt: t0, UpdatedAt: t0.Add(30 * time.Second),
		SYN: 372000, ACK: 12, SYNPerSecond: 12400, HalfOpenShare: 0.97, PeakSYNPerSecond: 15020,
		Kernel: detector.KernelImpact{ListenDrops: 1240, ListenOverflows: 300, SyncookiesSent: 5000},
		Reason: "12,400 SYN/s with 97% half-open over 10s (threshold 1,000 SYN/s, 80%)",
		Bans: []detector.Ban{{
			Prefix: netip.MustParsePrefix("198.51.100.7/32"), From: t0, Until: t0.Add(10 * time.Minute),
			Reason: "half-open flood", Offence: 2, IncidentID: id,
		}},
	}
	if stage == detector.StageResolved {
		end := t0.Add(4*time.Minute + 12*time.Second)
		in.ResolvedAt = &end
	}
	return in
}

// serviceIncident is a spoofed flood against one service.
func serviceIncident(id string, stage detector.Stage, sev detector.Severity) detector.Incident {
	svc := netip.MustParseAddrPort("192.0.2.10:443")
	return detector.Incident{
		ID: id, Kind: detector.KindService, Stage: stage, Severity: sev,
		Addr: svc.String(), Service: svc,
		OpenedAt: t0, UpdatedAt: t0.Add(5 * time.Second),
		SYN: 2_000_000, ACK: 900, SYNPerSecond: 48000, HalfOpenShare: 0.995, PeakSYNPerSecond: 51000,
		DistinctSources: 4812,
		TopSources: []detector.SourceFigure{
			{Addr: netip.MustParseAddr("203.0.113.5"), SYN: 900, SYNPPS: 90},
			{Addr: netip.MustParseAddr("203.0.113.9"), SYN: 800, SYNPPS: 80},
		},
		Kernel: detector.KernelImpact{ListenDrops: 8800, ListenOverflows: 8800, SyncookiesSent: 120000,
			Summary: "port 443: 8,800 handshakes dropped by the kernel in the last minute"},
		Reason: "48,000 SYN/s to 192.0.2.10:443 from 4,812 sources, 99.5% half-open",
	}
}

func event(in detector.Incident, mode string) Event {
	return Event{Incident: in, Host: "web-1", Interfaces: []string{"eth0"}, Mode: mode, Time: t0.Add(31 * time.Second)}
}

// fastOptions keeps real time but short delays, so timings are measurable
// and tests quick.
func fastOptions(t *testing.T, log *slog.Logger) Options {
	return Options{
		StateDir: t.TempDir(),
		Logger:   log,
		Retry:    RetryPolicy{Base: 50 * time.Millisecond, Max: 400 * time.Millisecond, Attempts: 6},
	}
}

func mustDispatcher(t *testing.T, cfgs []SinkConfig, o Options) *Dispatcher {
	t.Helper()
	d, err := NewDispatcher(cfgs, o)
	if err != nil {
		t.Fatalf("NewDispatcher: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// waitStats polls until cond holds for the named sink.
func waitStats(t *testing.T, d *Dispatcher, within time.Duration, cond func(SinkStats) bool) SinkStats {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := d.Stats()[0]
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats condition not met within %s: %+v", within, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond))
}

func newServerB(b *testing.B) string {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	b.Cleanup(s.Close)
	return s.URL
}
