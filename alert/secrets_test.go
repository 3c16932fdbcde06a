package alert

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/synguard/synguard/detector"
)

const (
	slackToken = "T0SECRETX/B0SECRETY/ZZslackTOKENzz"
	routingKey = "R0UTINGkeySECRET0123456789abcdef"
)

// echoServer fails with 500 and echoes the request body and path, as a
// careless proxy might, so secrets in requests would reach error strings.
func echoServer(t *testing.T) *server {
	return newServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, "boom at %s", r.URL.Path)
	})
}

func deadURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // connection refused from now on
	return "http://" + addr
}

func TestSecretsNeverLogged(t *testing.T) {
	echo := echoServer(t)
	dead := deadURL(t)
	dir := t.TempDir()
	cfgs := []SinkConfig{
		{Name: "slack-file", Type: TypeSlack, URLFile: writeFile(t, dir, "s1", echo.URL+"/services/"+slackToken)},
		{Name: "slack-inline-dead", Type: TypeSlack, URL: dead + "/services/" + slackToken},
		{Name: "hook", Type: TypeWebhook, URL: echo.URL + "/h?token=" + slackToken, SecretFile: writeFile(t, dir, "sec", testSecret())},
		{Name: "pd", Type: TypePagerDuty, URL: echo.URL, RoutingKeyFile: writeFile(t, dir, "rk", routingKey)},
		{Name: "pd-dead", Type: TypePagerDuty, URL: dead, RoutingKeyFile: writeFile(t, dir, "rk2", routingKey)},
		{Name: "am", Type: TypeAlertmanager, URL: strings.Replace(echo.URL, "http://", "http://user:"+routingKey+"@", 1)},
	}
	for i := range cfgs {
		cfgs[i].GroupWait = 5 * time.Millisecond
		cfgs[i].Timeout = 500 * time.Millisecond
	}
	log, logs := captureLogs()
	o := fastOptions(t, log)
	o.Retry.Attempts = 2
	d := mustDispatcher(t, cfgs, o)
	d.Send(event(sourceIncident("inc-s", detector.StageOpened, detector.SeverityCritical), ModeEnforce))

	var out strings.Builder
	for _, c := range cfgs {
		_, err := SendTest(context.Background(), cfgs, c.Name, Options{Logger: log, Retry: o.Retry})
		if err == nil {
			t.Errorf("%s: test message delivered to a failing server", c.Name)
			continue
		}
		fmt.Fprintln(&out, err.Error())
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		all := true
		for _, s := range d.Stats() {
			all = all && s.Retried >= 2
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every sink retried: %+v", d.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.Close()

	// Every way a config is printed.
	for _, c := range cfgs {
		y, _ := yaml.Marshal(c)
		j, _ := json.Marshal(c)
		fmt.Fprintf(&out, "%v\n%+v\n%#v\n%s\n%s\n%s\n", c, c, c, c.String(), y, j)
		slog.New(slog.NewTextHandler(&out, nil)).Info("cfg", "sink", c)
	}
	y, _ := yaml.Marshal(struct {
		Alerts []SinkConfig `yaml:"alerts"`
	}{cfgs})
	out.Write(y)

	text := logs.String() + out.String()
	for _, secret := range []string{slackToken, routingKey, testSecret(), strings.TrimPrefix(testSecret(), "whsec_"), "ZZslackTOKENzz"} {
		if strings.Contains(text, secret) {
			t.Errorf("secret %q leaked:\n%s", secret, text)
		}
	}
	// The output is still useful: it names sinks, status and the cause.
	for _, want := range []string{"sink=slack-file", "HTTP 500", "connection refused", "[redacted]"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	t.Logf("sample error: %s", strings.SplitN(out.String(), "\n", 2)[0])
}

func TestCheckSecretsErrorsOmitContent(t *testing.T) {
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad", "notwhsec_"+routingKey)
	err := CheckSecrets([]SinkConfig{
		{Name: "h", Type: TypeWebhook, URL: "https://example.com/x", SecretFile: bad},
		{Name: "p", Type: TypePagerDuty, RoutingKeyFile: dir + "/missing"},
		{Name: "s", Type: TypeSlack, URLFile: writeFile(t, dir, "u", "not a url "+slackToken)},
	})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		"alerts[0].secret_file: " + bad + " must hold a Standard Webhooks secret whsec_<base64>",
		"alerts[1].routing_key_file: open " + dir + "/missing: no such file or directory",
		"alerts[2].url_file: " + dir + "/u does not hold an absolute http:// or https:// URL",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, routingKey) || strings.Contains(msg, slackToken) {
		t.Errorf("error reveals file content:\n%s", msg)
	}
}
