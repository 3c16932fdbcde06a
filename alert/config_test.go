package alert

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/synguard/synguard/detector"
)

func TestValidate(t *testing.T) {
	ok := []SinkConfig{
		{Name: "hook", Type: TypeWebhook, URLFile: "hook-url", SecretFile: "/etc/synguard/hook.secret"},
		{Name: "slack", Type: TypeSlack, URL: "https://hooks.slack.com/services/x"},
		{Name: "pd", Type: TypePagerDuty, RoutingKeyFile: "/etc/synguard/pd.key", MinSeverity: "critical"},
		{Name: "am", Type: TypeAlertmanager, URL: "http://127.0.0.1:9093", Kinds: []string{"service"}},
	}
	if err := Validate(ok); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	for _, tc := range []struct {
		name string
		cfg  SinkConfig
		want string
	}{
		{"unknown type", SinkConfig{Name: "x", Type: "teams", URL: "https://a"}, `alerts[0].type: "teams" is not one of webhook, slack, pagerduty, alertmanager`},
		{"no type", SinkConfig{Name: "x"}, `alerts[0].type: is required, one of webhook, slack, pagerduty, alertmanager`},
		{"no name", SinkConfig{Type: TypeAlertmanager, URL: "http://a"}, `alerts[0].name: is required`},
		{"bad name", SinkConfig{Name: "../etc", Type: TypeAlertmanager, URL: "http://a"}, `alerts[0].name: "../etc" must be 1-64 of letters`},
		{"no url", SinkConfig{Name: "x", Type: TypeSlack}, `alerts[0].url: is required for type slack (or url_file`},
		{"both urls", SinkConfig{Name: "x", Type: TypeSlack, URL: "https://a", URLFile: "/f"}, `alerts[0].url: set either url or url_file, not both`},
		{"bad url", SinkConfig{Name: "x", Type: TypeSlack, URL: "ftp://hooks/SECRETTOKEN"}, `alerts[0].url: must be an absolute http:// or https:// URL`},
		{"webhook secret", SinkConfig{Name: "x", Type: TypeWebhook, URL: "https://a"}, `alerts[0].secret_file: is required for type webhook`},
		{"pd key", SinkConfig{Name: "x", Type: TypePagerDuty}, `alerts[0].routing_key_file: is required for type pagerduty`},
		{"stray key", SinkConfig{Name: "x", Type: TypeSlack, URL: "https://a", RoutingKeyFile: "/k"}, `alerts[0].routing_key_file: is only used by type pagerduty, not slack`},
		{"severity", SinkConfig{Name: "x", Type: TypeSlack, URL: "https://a", MinSeverity: "high"}, `alerts[0].min_severity: "high" is not one of info, warning, critical`},
		{"kinds", SinkConfig{Name: "x", Type: TypeSlack, URL: "https://a", Kinds: []string{"source", "ddos"}}, `alerts[0].kinds[1]: "ddos" is not one of source, service`},
		{"timeout", SinkConfig{Name: "x", Type: TypeSlack, URL: "https://a", Timeout: -time.Second}, `alerts[0].timeout: must not be negative`},
		{"rate", SinkConfig{Name: "x", Type: TypeSlack, URL: "https://a", RateLimit: RateLimit{Messages: -1}}, `alerts[0].rate_limit.messages: must not be negative`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate([]SinkConfig{tc.cfg})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v\nwant %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "SECRETTOKEN") {
				t.Errorf("error quotes the url: %v", err)
			}
		})
	}
	dup := append(ok, SinkConfig{Name: "pd", Type: TypeAlertmanager, URL: "http://a"})
	if err := Validate(dup); err == nil || !strings.Contains(err.Error(), `alerts[4].name: "pd" is already used by alerts[2]`) {
		t.Errorf("duplicate name: %v", err)
	}
	// All problems at once, not the first only.
	err := Validate([]SinkConfig{{Name: "a", Type: "teams"}, {Name: "b", Type: TypeSlack}})
	if err == nil || !strings.Contains(err.Error(), "alerts[0].type") || !strings.Contains(err.Error(), "alerts[1].url") {
		t.Errorf("not all errors reported: %v", err)
	}
}

func TestYAMLDecoding(t *testing.T) {
	var doc struct {
		Alerts []SinkConfig `yaml:"alerts"`
	}
	src := `
alerts:
  - name: oncall
    type: slack
    url_file: slack-url
    min_severity: warning
    kinds: [service]
    timeout: 5s
    group_wait: 2s
    rate_limit: {messages: 3, per: 30s}
`
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	c := doc.Alerts[0]
	if c.Name != "oncall" || c.URLFile != "slack-url" || c.Timeout != 5*time.Second || c.GroupWait != 2*time.Second ||
		c.RateLimit != (RateLimit{3, 30 * time.Second}) || c.MinSeverity != "warning" || c.Kinds[0] != "service" {
		t.Errorf("decoded %+v", c)
	}
}

func TestFilter(t *testing.T) {
	c := SinkConfig{MinSeverity: "warning", Kinds: []string{"service"}}
	for _, tc := range []struct {
		kind detector.Kind
		sev  detector.Severity
		want bool
	}{
		{detector.KindService, detector.SeverityCritical, true},
		{detector.KindService, detector.SeverityWarning, true},
		{detector.KindService, detector.SeverityInfo, false},
		{detector.KindSource, detector.SeverityCritical, false},
		{detector.KindService, "brand-new", true},
	} {
		if got := c.matches(detector.Incident{Kind: tc.kind, Severity: tc.sev}); got != tc.want {
			t.Errorf("%s/%s: %v, want %v", tc.kind, tc.sev, got, tc.want)
		}
	}
}

func TestFilterLetsResolveOfNotifiedIncidentThrough(t *testing.T) {
	// An incident that escalated past min_severity must also be resolved
	// at the sink, even if the resolve carries a lower severity.
	srv := newServer(t, nil)
	log, _ := captureLogs()
	cfg := webhookSink(t, srv.URL)
	cfg.MinSeverity = "critical"
	d := mustDispatcher(t, []SinkConfig{cfg}, fastOptions(t, log))
	d.Send(event(sourceIncident("low", detector.StageOpened, detector.SeverityWarning), ModeEnforce))
	d.Send(event(sourceIncident("esc", detector.StageUpdated, detector.SeverityCritical), ModeEnforce))
	srv.waitRequests(t, 1, 5*time.Second)
	d.Send(event(sourceIncident("esc", detector.StageResolved, detector.SeverityWarning), ModeEnforce))
	d.Send(event(sourceIncident("low", detector.StageResolved, detector.SeverityWarning), ModeEnforce))
	reqs := srv.waitRequests(t, 2, 5*time.Second)
	time.Sleep(50 * time.Millisecond)
	all := ""
	for _, r := range srv.requests() {
		all += string(r.Body)
	}
	if strings.Contains(all, `"id":"low"`) {
		t.Errorf("warning incident reached a critical-only sink: %s", all)
	}
	if !strings.Contains(string(reqs[0].Body), `"id":"esc"`) || !strings.Contains(string(reqs[1].Body), `"id":"esc","kind":"source","stage":"resolved"`) {
		t.Errorf("resolve of the escalated incident missing: %s", reqs[1].Body)
	}
}

func TestCredentialDirectory(t *testing.T) {
	srv := newServer(t, nil)
	dir := t.TempDir()
	writeFile(t, dir, "slack-url", srv.URL+"/services/"+slackToken+"\n")
	cfgs := []SinkConfig{{Name: "oncall", Type: TypeSlack, URLFile: "slack-url"}}

	t.Setenv("CREDENTIALS_DIRECTORY", "")
	_, err := SendTest(context.Background(), cfgs, "oncall", Options{})
	if err == nil || !strings.Contains(err.Error(), `alerts[0].url_file: "slack-url" is a credential name but $CREDENTIALS_DIRECTORY is not set`) {
		t.Errorf("without $CREDENTIALS_DIRECTORY: %v", err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	res, err := SendTest(context.Background(), cfgs, "oncall", Options{})
	if err != nil {
		t.Fatalf("with $CREDENTIALS_DIRECTORY: %v", err)
	}
	if r := srv.requests(); len(r) != 1 || r[0].Path != "/services/"+slackToken || res.Status != 200 {
		t.Errorf("test message: %+v, requests %v", res, r)
	}
}

func TestSendTest(t *testing.T) {
	srv := newServer(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	cfgs := []SinkConfig{webhookSink(t, srv.URL)}
	log, _ := captureLogs()
	o := Options{Logger: log, Retry: RetryPolicy{Base: 20 * time.Millisecond, Attempts: 3}}
	res, err := SendTest(context.Background(), cfgs, "hook", o)
	if err != nil {
		t.Fatalf("SendTest: %v", err)
	}
	if res.Attempts != 3 || res.Status != 200 || res.Requests != 1 {
		t.Errorf("result %+v, want 3 attempts ending in 200", res)
	}
	r := srv.requests()[2]
	if err := verifyStandardWebhook(testSecret(), r.Header, r.Body, time.Now()); err != nil {
		t.Error(err)
	}
	p := decode(t, r.Body)
	if p["type"] != "synguard.test" || !strings.Contains(p["data"].(map[string]any)["summary"].(string), "TEST message") {
		t.Errorf("test payload %s", r.Body)
	}

	// Gives up after Attempts on a sink that stays down, with an error.
	down := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	res, err = SendTest(context.Background(), []SinkConfig{webhookSink(t, down.URL)}, "hook", o)
	if err == nil || !strings.Contains(err.Error(), "alert sink hook (webhook) gave up after 3 attempts: HTTP 502") || res.Attempts != 3 {
		t.Errorf("down sink: %+v %v", res, err)
	}
	// A 4xx is final at once.
	gone := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNotFound) })
	res, err = SendTest(context.Background(), []SinkConfig{webhookSink(t, gone.URL)}, "hook", o)
	if err == nil || !strings.Contains(err.Error(), "rejected: HTTP 404") || res.Attempts != 1 {
		t.Errorf("404 sink: %+v %v", res, err)
	}
	_, err = SendTest(context.Background(), cfgs, "nope", o)
	if !errors.Is(err, ErrNoSuchSink) || !strings.Contains(err.Error(), `"nope" (configured: [hook])`) {
		t.Errorf("unknown sink: %v", err)
	}
}

func TestPagerDutyTestTriggersAndResolves(t *testing.T) {
	srv := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) })
	cfgs := []SinkConfig{{Name: "pd", Type: TypePagerDuty, URL: srv.URL, RoutingKeyFile: writeFile(t, t.TempDir(), "k", "routingkey0123456789")}}
	res, err := SendTest(context.Background(), cfgs, "pd", Options{})
	if err != nil || res.Requests != 2 {
		t.Fatalf("%+v %v", res, err)
	}
	r := srv.requests()
	a, b := decode(t, r[0].Body), decode(t, r[1].Body)
	if a["event_action"] != "trigger" || b["event_action"] != "resolve" || a["dedup_key"] != b["dedup_key"] {
		t.Errorf("test events %s / %s", r[0].Body, r[1].Body)
	}
}
