package alert

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

// jumpClock is a virtual clock that jumps forward by every delay it is
// asked to wait, so an hour of retries and rate limiting runs in
// milliseconds while the HTTP traffic stays real.
type jumpClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *jumpClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *jumpClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func TestSinkDownForAnHour(t *testing.T) {
	var up atomic.Bool
	var firstOK atomic.Int64 // request number (from 1) of the first 200
	srv := newServer(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		firstOK.CompareAndSwap(0, int64(n))
		w.WriteHeader(http.StatusOK)
	})
	log, logs := captureLogs()
	clock := &jumpClock{now: t0}
	o := Options{StateDir: t.TempDir(), Logger: log, Clock: clock} // default retry policy: 1s doubling to 1m
	cfg := SinkConfig{Name: "oncall", Type: TypeAlertmanager, URL: srv.URL}
	d := mustDispatcher(t, []SinkConfig{cfg}, o)

	// Over the hour, 200 incidents open and update; then, still down, ten
	// more rounds resolve the even ones. Virtual time moves with each
	// retry, which runs as fast as the worker is scheduled, so the rounds
	// that resolve are counted, not placed in virtual time: on a busy
	// machine the hour can pass in fewer rounds than on an idle one.
	const incidents = 200
	sent := 0
	round := func(resolveEven bool) {
		before := len(srv.requests())
		for i := range 20 {
			id := (sent*20 + i) % incidents
			stage := detector.StageOpened
			if sent >= incidents/20 {
				stage = detector.StageUpdated
			}
			if resolveEven && id%2 == 0 {
				stage = detector.StageResolved
			}
			d.Send(event(sourceIncident(fmt.Sprintf("inc-%03d", id), stage, detector.SeverityCritical), ModeEnforce))
		}
		sent++
		srv.waitRequests(t, before+1, 5*time.Second) // virtual time moves with each retry
	}
	for sent < incidents/20 || clock.Now().Sub(t0) < time.Hour {
		round(false)
	}
	for range incidents / 20 {
		round(true)
	}
	down := d.Stats()[0]
	attempts := len(srv.requests())
	files := len(spoolFiles(t, o.StateDir, "oncall"))
	if files > compactSegments+1 {
		t.Errorf("%d spool files after an hour down", files)
	}
	downFor := clock.Now().Sub(t0)
	up.Store(true)
	st := waitStats(t, d, 10*time.Second, func(s SinkStats) bool { return s.Pending == 0 })
	if st.Dropped != 0 || st.Spooled != uint64(sent*20) {
		t.Errorf("stats after recovery %+v, want nothing dropped and %d events spooled", st, sent*20)
	}
	// The first message after recovery carries every incident in its latest
	// state: the even ones resolved, the odd ones firing.
	var alerts []amAlert
	if err := json.Unmarshal(srv.requests()[firstOK.Load()-1].Body, &alerts); err != nil {
		t.Fatal(err)
	}
	state := map[string]string{}
	for _, a := range alerts {
		// Firing alerts end 4 resend intervals after the message was built
		// (past the hour); resolved ones at ResolvedAt (t0+4m12s here).
		s := "firing"
		if !a.EndsAt.After(t0.Add(time.Hour)) {
			s = "resolved"
		}
		state[a.Labels["incident_id"]] = s
	}
	for i := range incidents {
		want := "firing"
		if i%2 == 0 {
			want = "resolved"
		}
		if got := state[fmt.Sprintf("inc-%03d", i)]; got != want {
			t.Errorf("inc-%03d: %q after recovery, want %q", i, got, want)
		}
	}
	t.Logf("virtual %s down: %d attempts (%d retries), %d events spooled, %d spool files; first message after recovery: %d alerts",
		downFor.Round(time.Minute), attempts, down.Retried, down.Spooled, files, len(alerts))
	if t.Failed() {
		t.Log(logs.String())
	}
}
