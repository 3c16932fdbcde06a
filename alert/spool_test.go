package alert

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

// webhookIncidentIDs returns the incident IDs listed in webhook bodies.
func webhookIncidentIDs(t *testing.T, reqs []received) map[string]string {
	t.Helper()
	ids := map[string]string{}
	for _, r := range reqs {
		var p WebhookPayload
		if err := json.Unmarshal(r.Body, &p); err != nil {
			t.Fatalf("%s: %v", r.Body, err)
		}
		for _, in := range p.Data.Incidents {
			ids[in.Incident.ID] = string(in.Incident.Stage)
		}
	}
	return ids
}

func spoolFiles(t *testing.T, stateDir, sink string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(stateDir, "alert-spool", sink, "*.jsonl"))
	return m
}

func TestRestartDeliversSpool(t *testing.T) {
	down := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	log, _ := captureLogs()
	o := fastOptions(t, log)
	dir := t.TempDir()
	urlFile := writeFile(t, dir, "url", down.URL)
	cfg := SinkConfig{Name: "hook", Type: TypeWebhook, URLFile: urlFile, SecretFile: writeFile(t, dir, "sec", testSecret()), GroupWait: 10 * time.Millisecond}

	d1, err := NewDispatcher([]SinkConfig{cfg}, o)
	if err != nil {
		t.Fatal(err)
	}
	d1.Send(event(sourceIncident("a", detector.StageOpened, detector.SeverityCritical), ModeEnforce))
	d1.Send(event(serviceIncident("b", detector.StageOpened, detector.SeverityWarning), ModeEnforce))
	d1.Send(event(sourceIncident("c", detector.StageResolved, detector.SeverityWarning), ModeEnforce))
	st := waitStats(t, d1, 5*time.Second, func(s SinkStats) bool { return s.Spooled == 3 && s.Retried >= 1 })
	// Durable before shutdown: the events are on disk once counted as spooled.
	if files := spoolFiles(t, o.StateDir, "hook"); len(files) == 0 {
		t.Fatal("no spool segment on disk while the sink is down")
	}
	d1.Close()
	if st.Delivered != 0 {
		t.Fatalf("delivered %d to a server that only says 503", st.Delivered)
	}

	up := newServer(t, nil)
	os.WriteFile(urlFile, []byte(up.URL), 0o600)
	d2 := mustDispatcher(t, []SinkConfig{cfg}, o)
	reqs := up.waitRequests(t, 1, 5*time.Second)
	got := webhookIncidentIDs(t, reqs)
	want := map[string]string{"a": "opened", "b": "opened", "c": "resolved"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after restart delivered %v, want %v", got, want)
	}
	if err := verifyStandardWebhook(testSecret(), reqs[0].Header, reqs[0].Body, time.Now()); err != nil {
		t.Errorf("spooled message signature: %v", err)
	}
	// The service incident's netip fields survive the spool round trip.
	var p WebhookPayload
	json.Unmarshal(reqs[0].Body, &p)
	for _, in := range p.Data.Incidents {
		if in.Incident.ID == "b" && in.Target != "service 192.0.2.10:443 on web-1 (eth0)" {
			t.Errorf("restored service incident target %q", in.Target)
		}
	}
	waitStats(t, d2, 2*time.Second, func(s SinkStats) bool { return s.Pending == 0 && s.SpoolBytes == 0 })
	if files := spoolFiles(t, o.StateDir, "hook"); len(files) != 0 {
		t.Errorf("spool not emptied after delivery: %v", files)
	}
}

func TestLongOutageLosesNothing(t *testing.T) {
	// Many spool writes during an outage (more than the compaction
	// threshold) must keep the file count bounded and every incident's
	// latest state.
	var up atomic.Bool
	srv := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		if !up.Load() {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	log, logs := captureLogs()
	o := fastOptions(t, log)
	cfg := webhookSink(t, srv.URL)
	cfg.GroupWait = time.Millisecond
	d := mustDispatcher(t, []SinkConfig{cfg}, o)
	const incidents, rounds = 50, 150
	for r := range rounds {
		for i := range incidents {
			stage := detector.StageUpdated
			if r == rounds-1 && i%2 == 0 {
				stage = detector.StageResolved
			}
			in := sourceIncident(fmt.Sprintf("inc-%02d", i), stage, detector.SeverityWarning)
			in.SYN = uint64(r)
			d.Send(event(in, ModeObserve))
		}
		want := uint64((r + 1) * incidents)
		waitStats(t, d, 2*time.Second, func(s SinkStats) bool { return s.Spooled == want })
		if n := len(spoolFiles(t, o.StateDir, "hook")); n > compactSegments+1 {
			t.Fatalf("round %d: %d spool files, want <= %d", r, n, compactSegments+1)
		}
	}
	up.Store(true)
	waitStats(t, d, 10*time.Second, func(s SinkStats) bool { return s.Pending == 0 })
	got := webhookIncidentIDs(t, srv.requests())
	for i := range incidents {
		id := fmt.Sprintf("inc-%02d", i)
		want := "updated"
		if i%2 == 0 {
			want = "resolved"
		}
		if got[id] != want {
			t.Errorf("%s: delivered stage %q, want latest %q", id, got[id], want)
		}
	}
	if strings.Contains(logs.String(), "ALERTS LOST") || d.Stats()[0].Dropped != 0 {
		t.Errorf("dropped during an outage within bounds:\n%s", logs)
	}
}

func TestSpoolBoundDropsOldestLoudly(t *testing.T) {
	var up atomic.Bool
	srv := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	log, logs := captureLogs()
	o := fastOptions(t, log)
	o.SpoolMaxEvents = 100
	cfg := webhookSink(t, srv.URL)
	d := mustDispatcher(t, []SinkConfig{cfg}, o)
	n := 0
	for wave := range 3 {
		for range 50 {
			d.Send(event(sourceIncident(fmt.Sprintf("inc-%03d", n), detector.StageOpened, detector.SeverityCritical), ModeEnforce))
			n++
		}
		want := uint64((wave + 1) * 50)
		waitStats(t, d, 2*time.Second, func(s SinkStats) bool { return s.Spooled == want })
	}
	st := d.Stats()[0]
	if st.Dropped != 50 || st.Pending != 100 {
		t.Errorf("stats %+v, want dropped=50 pending=100", st)
	}
	l := logs.String()
	// The drop may happen in more than one step (events are spooled in
	// whatever batches the goroutine picks up); each must be loud and name
	// a wave-1 incident as the oldest.
	if !strings.Contains(l, "level=ERROR msg=\"ALERTS LOST") || !regexp.MustCompile(`oldest_incident=inc-0[0-4][0-9] `).MatchString(l) {
		t.Errorf("drop not logged loudly with figures:\n%s", l)
	}
	up.Store(true)
	waitStats(t, d, 10*time.Second, func(s SinkStats) bool { return s.Pending == 0 })
	got := webhookIncidentIDs(t, srv.requests())
	for i := 50; i < 150; i++ {
		if _, ok := got[fmt.Sprintf("inc-%03d", i)]; !ok {
			t.Errorf("inc-%03d (within the bound) not delivered", i)
		}
	}
}

func TestCorruptSegmentSetAside(t *testing.T) {
	log, logs := captureLogs()
	o := fastOptions(t, log)
	dir := filepath.Join(o.StateDir, "alert-spool", "hook")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, segName(7)), []byte("{not json\n"), 0o600)
	srv := newServer(t, nil)
	mustDispatcher(t, []SinkConfig{webhookSink(t, srv.URL)}, o)
	if _, err := os.Stat(filepath.Join(dir, segName(7)+".corrupt")); err != nil {
		t.Errorf("corrupt segment not set aside: %v", err)
	}
	if !strings.Contains(logs.String(), "unreadable segment") {
		t.Errorf("corrupt segment not logged:\n%s", logs)
	}
}
