package daemon

import (
	"io"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
)

// scrape returns the /metrics page after a few polls with a ban and an
// incident, so that every metric family has data.
func scrape(t *testing.T) string {
	t.Helper()
	h := newHarness(t, "enforce")
	for range 3 {
		h.second(0)
	}
	for range 3 {
		h.second(500)
	}
	srv := httptest.NewServer(h.d.deps.Metrics.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

func TestMetricsContent(t *testing.T) {
	page := scrape(t)
	for _, want := range []string{
		`synguard_datapath_frames_total{kind="syn"}`,
		`synguard_datapath_frames_total{kind="ack"}`,
		"synguard_datapath_dropped_frames_total",
		"synguard_datapath_would_drop_frames_total",
		`synguard_bans_active{origin="detector"} 1`,
		`synguard_incidents_open{kind="source"} 1`,
		"synguard_poll_duration_seconds_bucket",
		"synguard_detection_duration_seconds_bucket",
		"synguard_alert_deliveries_total 0",
		"synguard_alert_failures_total 0",
		`synguard_bans_applied_total{origin="detector"} 1`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(page, "203.0.113.66") || strings.Contains(page, "198.51.100.10") {
		t.Error("/metrics carries per-IP labels")
	}
}

func TestMetricsPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus)")
	}
	page := scrape(t)
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(page)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
