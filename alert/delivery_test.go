package alert

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

func slackSink(t *testing.T, url string) SinkConfig {
	return SinkConfig{Name: "s", Type: TypeSlack, URLFile: writeFile(t, t.TempDir(), "u", url), GroupWait: 10 * time.Millisecond}
}

func TestRetryBackoffOnServerErrors(t *testing.T) {
	const fails = 4
	srv := newServer(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n <= fails {
			w.WriteHeader([]int{500, 502, 503, 504}[n-1])
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	log, logs := captureLogs()
	o := fastOptions(t, log) // base 50ms, doubling, cap 400ms, equal jitter
	d := mustDispatcher(t, []SinkConfig{slackSink(t, srv.URL)}, o)
	d.Send(event(sourceIncident("inc-r", detector.StageOpened, detector.SeverityCritical), ModeEnforce))
	reqs := srv.waitRequests(t, fails+1, 10*time.Second)
	var gaps []string
	for i := 1; i < len(reqs); i++ {
		gap := reqs[i].At.Sub(reqs[i-1].At)
		gaps = append(gaps, fmtDur(gap))
		nominal := o.Retry.Base << (i - 1)
		// Jitter is in [nominal/2, nominal]. The lower bound proves the
		// backoff and cannot be broken by a slow machine; the upper one
		// only bounds scheduling and HTTP latency, so it is generous.
		lo, hi := nominal/2, nominal+500*time.Millisecond
		if gap < lo || gap > hi {
			t.Errorf("gap before attempt %d = %s, want within [%s, %s]", i+1, gap, lo, hi)
		}
		if string(reqs[i].Body) != string(reqs[0].Body) {
			t.Errorf("attempt %d sent a different body", i+1)
		}
	}
	t.Logf("retry gaps after %d failures (base 50ms): %s", fails, strings.Join(gaps, ", "))
	st := waitStats(t, d, 2*time.Second, func(s SinkStats) bool { return s.Delivered == 1 && s.Pending == 0 })
	if st.Retried != fails || st.Failed != 0 || st.Pending != 0 {
		t.Errorf("stats %+v, want retried=%d failed=0 pending=0", st, fails)
	}
	if !strings.Contains(logs.String(), "alert delivered after retries") {
		t.Errorf("no recovery log:\n%s", logs)
	}
}

func TestBackoffDelayBounds(t *testing.T) {
	p := RetryPolicy{Base: time.Second, Max: 8 * time.Second}.withDefaults()
	for n, nominal := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 9: 8 * time.Second} {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := p.delay(n, outcome{})
			if d < nominal/2 || d > nominal {
				t.Fatalf("delay(%d) = %s outside [%s, %s]", n, d, nominal/2, nominal)
			}
			seen[d] = true
		}
		if len(seen) < 50 {
			t.Errorf("delay(%d): only %d distinct values in 200, jitter missing", n, len(seen))
		}
	}
	if d := p.delay(1, outcome{retryAfter: 3 * time.Second}); d != 3*time.Second {
		t.Errorf("Retry-After 3s -> %s", d)
	}
	if d := p.delay(1, outcome{retryAfter: time.Hour}); d != 10*time.Minute {
		t.Errorf("Retry-After 1h -> %s, want capped at 10m", d)
	}
}

func TestRetryAfterOn429(t *testing.T) {
	srv := newServer(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		if n == 2 {
			w.Header().Set("Retry-After", time.Now().Add(2*time.Second).UTC().Format(http.TimeFormat))
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	log, _ := captureLogs()
	d := mustDispatcher(t, []SinkConfig{slackSink(t, srv.URL)}, fastOptions(t, log))
	d.Send(event(sourceIncident("inc-429", detector.StageOpened, detector.SeverityCritical), ModeEnforce))
	reqs := srv.waitRequests(t, 3, 10*time.Second)
	g1, g2 := reqs[1].At.Sub(reqs[0].At), reqs[2].At.Sub(reqs[1].At)
	// Backoff alone would wait 25-50ms and 50-100ms.
	// Lower bounds prove Retry-After is obeyed; upper bounds only bound
	// scheduling on a loaded machine.
	if g1 < time.Second || g1 > 2*time.Second {
		t.Errorf("after Retry-After: 1 waited %s, want ~1s", g1)
	}
	if g2 < time.Second || g2 > 3*time.Second {
		t.Errorf("after Retry-After: <HTTP-date +2s> waited %s, want 1-2s (date has 1s resolution)", g2)
	}
	t.Logf("429 Retry-After: 1 -> waited %s; Retry-After: HTTP-date(+2s) -> waited %s", fmtDur(g1), fmtDur(g2))
	waitStats(t, d, 2*time.Second, func(s SinkStats) bool { return s.Delivered == 1 && s.Retried == 2 })
}

func TestNoRetryOnClientError(t *testing.T) {
	srv := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte("invalid_payload"))
	})
	log, logs := captureLogs()
	d := mustDispatcher(t, []SinkConfig{slackSink(t, srv.URL)}, fastOptions(t, log))
	d.Send(event(sourceIncident("inc-400", detector.StageOpened, detector.SeverityCritical), ModeEnforce))
	srv.waitRequests(t, 1, 5*time.Second)
	st := waitStats(t, d, 2*time.Second, func(s SinkStats) bool { return s.Failed == 1 && s.Pending == 0 })
	time.Sleep(300 * time.Millisecond) // a retry would come within 50ms
	if n := len(srv.requests()); n != 1 {
		t.Errorf("%d requests after a 400, want 1 (no retry)", n)
	}
	if st.Retried != 0 || st.Pending != 0 || st.SpoolBytes != 0 {
		t.Errorf("stats %+v: a rejected message must be neither retried nor kept", st)
	}
	if !strings.Contains(logs.String(), "HTTP 400: invalid_payload") || !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("rejection not logged as an error with the reason:\n%s", logs)
	}
}

func TestTimeoutOnHangingServer(t *testing.T) {
	release := make(chan struct{})
	srv := newServer(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n <= 2 {
			select { // hang until the client gives up
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	defer close(release)
	log, logs := captureLogs()
	cfg := slackSink(t, srv.URL)
	cfg.Timeout = 200 * time.Millisecond
	d := mustDispatcher(t, []SinkConfig{cfg}, fastOptions(t, log))

	start := time.Now()
	sendDone := make(chan struct{})
	go func() {
		d.Send(event(sourceIncident("inc-hang", detector.StageOpened, detector.SeverityCritical), ModeEnforce))
		for i := range 1000 { // Send must not block while the sink hangs
			d.Send(event(sourceIncident("inc-hang", detector.StageUpdated, detector.SeverityCritical), ModeEnforce))
			_ = i
		}
		close(sendDone)
	}()
	select {
	case <-sendDone:
	case <-time.After(2 * time.Second): // blocking would take >= 200 ms x 1001
		t.Fatal("Send blocked behind a hanging sink")
	}
	reqs := srv.waitRequests(t, 3, 10*time.Second)
	st := waitStats(t, d, 3*time.Second, func(s SinkStats) bool { return s.Delivered >= 1 && s.Pending == 0 })
	g := reqs[1].At.Sub(reqs[0].At)
	if g < 200*time.Millisecond || g > time.Second {
		t.Errorf("second attempt %s after the first, want timeout 200ms + backoff 25-50ms", g)
	}
	if st.Retried != 2 {
		t.Errorf("retried = %d, want 2 (two timeouts)", st.Retried)
	}
	if !strings.Contains(logs.String(), "no response within 200ms") {
		t.Errorf("timeout not logged:\n%s", logs)
	}
	t.Logf("hanging server: attempts at +0, +%s, +%s; delivered %s after first send",
		fmtDur(reqs[1].At.Sub(reqs[0].At)), fmtDur(reqs[2].At.Sub(reqs[0].At)), fmtDur(time.Since(start)))
}
