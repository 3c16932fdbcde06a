package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultsAreValidAndObserve(t *testing.T) {
	c, err := Parse([]byte(""))
	if err != nil {
		t.Fatalf("empty file: %v", err)
	}
	if c.Mode != "observe" {
		t.Errorf("default mode = %q, want observe (a first run must not drop)", c.Mode)
	}
	if c.PollInterval != time.Second || c.Socket != "/run/synguard/synguard.sock" || c.MetricsAddr != "127.0.0.1:9717" ||
		c.StateDir != "/var/lib/synguard" || c.BPFFS != "/sys/fs/bpf/synguard" {
		t.Errorf("defaults differ from the documented ones: %+v", c)
	}
}

func TestParseValid(t *testing.T) {
	c, err := Parse([]byte(`
interfaces: [eth0, eth1]
mode: enforce
poll_interval: 500ms
full_scan_interval: 1m
metrics_addr: ""
allow: [192.0.2.0/24, "2001:db8::/32", 198.51.100.7]
log: {level: debug, format: json}
detector:
  suspect_syns: 50
  window: 3s
protect:
  ssh_ports: [22, 2222]
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != "enforce" || c.PollInterval != 500*time.Millisecond || c.FullScanInterval != time.Minute ||
		c.MetricsAddr != "" || len(c.Allow) != 3 || c.Log.Format != "json" || c.Detector.SuspectSYNs != 50 || c.Detector.Window != 3*time.Second || c.Detector.BanBase != 10*time.Minute ||
		c.Datapath.MaxBans != 65536 || len(c.Protect.SSHPorts) != 2 || !c.Protect.DefaultGateways {
		t.Errorf("parsed %+v", c)
	}
}

func TestInvalidKeys(t *testing.T) {
	for _, tc := range []struct {
		yaml, key, value string
	}{
		{"mode: block", "mode", "block"},
		{"attach: fast", "attach", "fast"},
		{"interfaces: [averyveryverylongname0]", "interfaces[0]", "averyveryverylongname0"},
		{"interfaces: [eth0, eth0]", "interfaces[1]", "eth0"},
		{"interfaces: eth0", "interfaces", "eth0"},
		{"poll_interval: 10ms", "poll_interval", "10ms"},
		{"poll_interval: 1", "poll_interval", "1"},
		{"poll_interval: soon", "poll_interval", "soon"},
		{"full_scan_interval: 100ms", "full_scan_interval", "100ms"},
		{"watch_max: 1", "watch_max", "1"},
		{"watch_max: lots", "watch_max", "lots"},
		{"socket: relative.sock", "socket", "relative.sock"},
		{"socket_group: [a]", "socket_group", "a list"},
		{"state_dir: var/lib", "state_dir", "var/lib"},
		{"bpffs: ''", "bpffs", ""},
		{"metrics_addr: localhost", "metrics_addr", "localhost"},
		{"detach_on_exit: maybe", "detach_on_exit", "maybe"},
		{"manual_ban_ttl: 0s", "manual_ban_ttl", "0s"},
		{"allow: [0.0.0.0/0]", "allow[0]", "0.0.0.0/0"},
		{"allow: ['::/0']", "allow[0]", "::/0"},
		{"allow: [10.0.0.1/8]", "allow[0]", "10.0.0.1/8"},
		{"allow: [10.0.0.0/33]", "allow[0]", "10.0.0.0/33"},
		{"log: {level: loud}", "log.level", "loud"},
		{"log: {format: xml}", "log.format", "xml"},
		{"log: text", "log", "text"},
		{"datapath: {max_sources: 10}", "datapath.max_sources", "10"},
		{"datapath: {max_sources: -1}", "datapath.max_sources", "-1"},
		{"datapath: {max_services: 1}", "datapath.max_services", "1"},
		{"datapath: {max_bans: 99999999}", "datapath.max_bans", "99999999"},
		{"datapath: {max_bans: 1024}", "detector.max_bans", "65536"},
		{"datapath: {suspect_interval: 1ms}", "datapath.suspect_interval", "1ms"},
		{"protect: {default_gateways: 1}", "protect.default_gateways", "1"},
		{"protect: {ssh_ports: [0]}", "protect.ssh_ports[0]", "0"},
		{"protect: {ssh_ports: [70000]}", "protect.ssh_ports[0]", "70000"},
		{"protect: {prefixes: [nonsense]}", "protect.prefixes[0]", "nonsense"},
		{"- a\n- b", "(top level)", ""},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Parse(%q) = %v, want *config.Error", tc.yaml, err)
			}
			if ce.Key != tc.key || ce.Value != tc.value || ce.Allowed == "" {
				t.Errorf("Parse(%q) = key %q value %q allowed %q; want key %q value %q", tc.yaml, ce.Key, ce.Value, ce.Allowed, tc.key, tc.value)
			}
			if !IsInvalid(err) {
				t.Errorf("IsInvalid(%v) = false", err)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.key) || !strings.Contains(msg, "allowed") {
				t.Errorf("message %q does not name the key and what is allowed", msg)
			}
		})
	}
}

func TestUnknownKeys(t *testing.T) {
	for _, tc := range []struct{ yaml, key string }{
		{"mdoe: enforce", "mdoe"},
		{"log:\n  level: info\n  colour: true", "log.colour"},
		{"datapath: {max_source: 5}", "datapath.max_source"},
		{"protect: {ssh_port: 22}", "protect.ssh_port"},
	} {
		_, err := Parse([]byte(tc.yaml))
		var ue *UnknownKeyError
		if !errors.As(err, &ue) || ue.Key != tc.key || ue.Line == 0 {
			t.Errorf("Parse(%q) = %v, want unknown key %s with its line", tc.yaml, err, tc.key)
			continue
		}
		if !IsInvalid(err) {
			t.Errorf("IsInvalid(%v) = false", err)
		}
	}
}

func TestPartsValidated(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"detector: {window: 1h}", "detector.window"},
		{"detector: {source_half_open: 2}", "detector.source_half_open"},
		{"alerts: [{name: x, type: carrier-pigeon}]", "alerts[0].type"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an invalid-config error naming %s", tc.yaml, err, tc.want)
		}
	}
	_, err := Parse([]byte("detector: {windw: 1s}"))
	var ue *UnknownKeyError
	if !errors.As(err, &ue) || ue.Key != "detector.windw" {
		t.Errorf("unknown detector key: %v", err)
	}
	_, err = Parse([]byte("alerts: [{name: x, type: slack, colour: red}]"))
	if !errors.As(err, &ue) || ue.Key != "alerts[0].colour" {
		t.Errorf("unknown alerts key: %v", err)
	}
}

func TestSyntaxErrorIsInvalid(t *testing.T) {
	_, err := Parse([]byte("mode: [observe"))
	if !IsInvalid(err) {
		t.Fatalf("Parse(bad yaml) = %v, want a config error", err)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	c := Default()
	c.Interfaces = []string{"sgd0"}
	c.Allow = []string{"192.0.2.0/24"}
	c.PollInterval = 250 * time.Millisecond
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "poll_interval: 250ms") {
		t.Errorf("durations must print as text:\n%s", out)
	}
	back, err := Parse(out)
	if err != nil {
		t.Fatalf("re-parse own output: %v\n%s", err, out)
	}
	out2, _ := back.Marshal()
	if string(out) != string(out2) {
		t.Errorf("round trip differs:\n%s\n---\n%s", out, out2)
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour: "1h", 2 * time.Minute: "2m", 90 * time.Second: "1m30s", 168 * time.Hour: "168h",
		500 * time.Millisecond: "500ms", 10 * time.Second: "10s", time.Hour + time.Second: "1h0m1s",
	} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(p, []byte("mode: enforce\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil || c.Mode != "enforce" {
		t.Fatalf("Load = %+v, %v", c, err)
	}
	_, err = Load(filepath.Join(dir, "missing.yaml"))
	if err == nil || IsInvalid(err) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want a not-exist I/O error", err)
	}
}

func TestParsePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":            "192.0.2.7/32",
		"192.0.2.0/24":         "192.0.2.0/24",
		"::ffff:192.0.2.0/120": "192.0.2.0/24",
		"2001:db8::1":          "2001:db8::1/128",
		"::ffff:198.51.100.1":  "198.51.100.1/32",
		"2001:db8:1::/48":      "2001:db8:1::/48",
	} {
		p, err := ParsePrefix(in)
		if err != nil || p.String() != want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, bad := range []string{"", "10.0.0.1/8", "10.0.0.0/33", "fe80::1%eth0", "host.example"} {
		if _, err := ParsePrefix(bad); err == nil {
			t.Errorf("ParsePrefix(%q) accepted", bad)
		}
	}
	if _, err := ParseAllowPrefix("0.0.0.0/0"); err == nil {
		t.Error("ParseAllowPrefix(0.0.0.0/0) accepted")
	}
}
