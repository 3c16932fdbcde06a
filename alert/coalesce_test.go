package alert

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

// TestCoalescing10000 floods each sink type with 10,000 incidents (each
// opened, then half of them resolved) and counts the messages that reach
// the server, with the default rate limit (5 per minute).
func TestCoalescing10000(t *testing.T) {
	const n = 10000
	for _, typ := range []string{TypeWebhook, TypeSlack, TypePagerDuty, TypeAlertmanager} {
		t.Run(typ, func(t *testing.T) {
			srv := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) })
			log, _ := captureLogs()
			dir := t.TempDir()
			cfg := SinkConfig{Name: "c", Type: typ, GroupWait: 200 * time.Millisecond}
			switch typ {
			case TypeWebhook:
				cfg.URLFile, cfg.SecretFile = writeFile(t, dir, "u", srv.URL), writeFile(t, dir, "s", testSecret())
			case TypeSlack:
				cfg.URLFile = writeFile(t, dir, "u", srv.URL)
			case TypePagerDuty:
				cfg.URL, cfg.RoutingKeyFile = srv.URL, writeFile(t, dir, "k", "routingkey0123456789")
			case TypeAlertmanager:
				cfg.URL = srv.URL
			}
			d := mustDispatcher(t, []SinkConfig{cfg}, fastOptions(t, log))
			start := time.Now()
			for i := range n {
				d.Send(event(sourceIncident(fmt.Sprintf("inc-%05d", i), detector.StageOpened, detector.SeverityCritical), ModeEnforce))
			}
			sendTook := time.Since(start)
			st := waitStats(t, d, 90*time.Second, func(s SinkStats) bool { return s.Spooled == n && s.Pending == 0 })
			opened := len(srv.requests())
			for i := range n / 2 {
				d.Send(event(sourceIncident(fmt.Sprintf("inc-%05d", i), detector.StageResolved, detector.SeverityCritical), ModeEnforce))
			}
			st = waitStats(t, d, 90*time.Second, func(s SinkStats) bool { return s.Spooled == n+n/2 && s.Pending == 0 })
			reqs := srv.requests()
			if st.Dropped != 0 || st.Failed != 0 {
				t.Errorf("stats %+v", st)
			}
			if len(reqs) > 5 {
				t.Errorf("%d incidents became %d messages, want a handful (<= 5)", n, len(reqs))
			}
			// Every incident is accounted for in what was delivered.
			switch typ {
			case TypeWebhook:
				total := 0
				for _, r := range reqs {
					var p WebhookPayload
					json.Unmarshal(r.Body, &p)
					total += p.Data.Total
					if len(p.Data.Incidents)+p.Data.Omitted != p.Data.Total {
						t.Errorf("listed %d + omitted %d != total %d", len(p.Data.Incidents), p.Data.Omitted, p.Data.Total)
					}
				}
				if total != n+n/2 {
					t.Errorf("webhook messages cover %d events, want %d", total, n+n/2)
				}
			case TypeAlertmanager:
				seen := map[string]bool{}
				for _, r := range reqs {
					var as []amAlert
					json.Unmarshal(r.Body, &as)
					for _, a := range as {
						seen[a.Labels["incident_id"]] = true
					}
				}
				if len(seen) != n {
					t.Errorf("alertmanager saw %d distinct incidents, want %d", len(seen), n)
				}
			case TypePagerDuty:
				var last map[string]any
				json.Unmarshal(reqs[len(reqs)-1].Body, &last)
				if last["dedup_key"] != "synguard-storm-web-1" || last["event_action"] != "trigger" {
					t.Errorf("last PagerDuty event %s, want the storm alert still triggered (5,000 open)", reqs[len(reqs)-1].Body)
				}
				if cd := last["payload"].(map[string]any)["custom_details"].(map[string]any); cd["open_incidents"] != float64(n/2) {
					t.Errorf("storm open_incidents = %v, want %d", cd["open_incidents"], n/2)
				}
			}
			t.Logf("%s: %d opened + %d resolved -> %d messages (%d after the opens); %d Sends took %s",
				typ, n, n/2, len(reqs), opened, n, sendTook.Round(time.Microsecond))
		})
	}
}

func TestPagerDutyStormResolves(t *testing.T) {
	srv := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) })
	log, _ := captureLogs()
	cfg := SinkConfig{Name: "pd", Type: TypePagerDuty, URL: srv.URL, RoutingKeyFile: writeFile(t, t.TempDir(), "k", "routingkey0123456789"),
		GroupWait: 50 * time.Millisecond}
	d := mustDispatcher(t, []SinkConfig{cfg}, fastOptions(t, log))
	for i := range 20 {
		d.Send(event(sourceIncident(fmt.Sprintf("s-%d", i), detector.StageOpened, detector.SeverityCritical), ModeEnforce))
	}
	waitStats(t, d, 5*time.Second, func(s SinkStats) bool { return s.Spooled == 20 && s.Pending == 0 })
	for i := range 20 {
		d.Send(event(sourceIncident(fmt.Sprintf("s-%d", i), detector.StageResolved, detector.SeverityCritical), ModeEnforce))
	}
	waitStats(t, d, 5*time.Second, func(s SinkStats) bool { return s.Spooled == 40 && s.Pending == 0 })
	reqs := srv.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d PagerDuty events, want storm trigger + storm resolve", len(reqs))
	}
	var last map[string]any
	json.Unmarshal(reqs[1].Body, &last)
	if last["dedup_key"] != "synguard-storm-web-1" || last["event_action"] != "resolve" {
		t.Errorf("second event %s, want storm resolve", reqs[1].Body)
	}
}

func BenchmarkSend(b *testing.B) {
	srv := newServerB(b)
	log, _ := captureLogs()
	cfg := SinkConfig{Name: "c", Type: TypeAlertmanager, URL: srv, GroupWait: 200 * time.Millisecond}
	d, err := NewDispatcher([]SinkConfig{cfg}, Options{StateDir: b.TempDir(), Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	evs := make([]Event, 1024)
	for i := range evs {
		evs[i] = event(sourceIncident(fmt.Sprintf("inc-%d", i), detector.StageUpdated, detector.SeverityCritical), ModeEnforce)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		d.Send(evs[i%len(evs)])
	}
}

// BenchmarkChanSendBaseline is the cost of the simplest non-blocking hand-off
// (a select-send of the same Event into a buffered channel drained by a
// goroutine), as a baseline for BenchmarkSend.
func BenchmarkChanSendBaseline(b *testing.B) {
	ch := make(chan Event, 65536)
	done := make(chan struct{})
	go func() {
		for range ch {
		}
		close(done)
	}()
	evs := make([]Event, 1024)
	for i := range evs {
		evs[i] = event(sourceIncident(fmt.Sprintf("inc-%d", i), detector.StageUpdated, detector.SeverityCritical), ModeEnforce)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		select {
		case ch <- evs[i%len(evs)]:
		default:
		}
	}
	close(ch)
	<-done
}
