package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// bin is the synguard binary built once for the process-level tests.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sgi-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "synguard")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func runBin(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := result{stdout: o.String(), stderr: e.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return r
}

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigCheckExitCodes(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, yaml string
		code       int
		stderr     []string
	}{
		{"valid", "mode: enforce\n", 0, []string{"configuration OK"}},
		{"invalid value", "mode: block\n", 2, []string{"mode", `"block"`, "observe, enforce"}},
		{"unknown key", "log:\n  colour: red\n", 2, []string{"log.colour", "unknown key", "line 2"}},
		{"bad duration", "poll_interval: fast\n", 2, []string{"poll_interval", `"fast"`, "duration"}},
		{"detector key", "detector:\n  ban_factor: 0\n", 2, []string{"detector.ban_factor"}},
		{"alert sink", "alerts:\n  - name: x\n    type: fax\n", 2, []string{"alerts[0].type"}},
		{"allow all", "allow: [0.0.0.0/0]\n", 2, []string{"allow[0]", "0.0.0.0/0"}},
		{"unknown interface", "interfaces: [sginosuch0]\n", 2, []string{"sginosuch0", "--iface"}},
		{"not yaml", "mode: [\n", 2, []string{"yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, dir, tc.name+".yaml", tc.yaml)
			r := runBin(t, "config", "check", "--config", p)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tc.code, r.stdout, r.stderr)
			}
			for _, s := range tc.stderr {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("stderr %q lacks %q", r.stderr, s)
				}
			}
			if tc.code == 0 && !strings.Contains(r.stdout, "mode: enforce") {
				t.Errorf("effective config not printed:\n%s", r.stdout)
			}
		})
	}
	r := runBin(t, "config", "check", "--config", filepath.Join(dir, "missing.yaml"))
	if r.code != 2 || !strings.Contains(r.stderr, "missing.yaml") {
		t.Errorf("missing explicit file: exit %d, %s", r.code, r.stderr)
	}
}

func TestRunRefusesBadFlags(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "c.yaml", "")
	common := []string{"run", "--config", cfg, "--socket", filepath.Join(dir, "s.sock"), "--state-dir", dir, "--bpffs", "/sys/fs/bpf/synguard-test-in-never"}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--mode", "block"}, []string{"--mode", "observe, enforce"}},
		{[]string{"--iface", "sginosuch0"}, []string{"sginosuch0", "--iface"}},
		{[]string{"--log-format", "xml"}, []string{"--log-format"}},
		{[]string{"--metrics-addr", "nowhere"}, []string{"--metrics-addr"}},
		{[]string{"--no-such-flag"}, []string{"unknown flag"}},
	} {
		r := runBin(t, append(append([]string{}, common...), tc.args...)...)
		if r.code != 2 {
			t.Errorf("run %v: exit %d, want 2 (%s)", tc.args, r.code, r.stderr)
		}
		for _, s := range tc.want {
			if !strings.Contains(r.stderr, s) {
				t.Errorf("run %v: stderr %q lacks %q", tc.args, r.stderr, s)
			}
		}
	}
	if _, err := os.Stat("/sys/fs/bpf/synguard-test-in-never"); err == nil {
		t.Error("a refused run pinned something")
	}
}

func TestClientBadInputAndUnreachableSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, args := range [][]string{
		{"block", "10.0.0.0/33"},
		{"block", "10.0.0.1/8"},
		{"block", "192.0.2.0/24", "--ttl", "0s"},
		{"block", "192.0.2.0/24", "--ttl", "soon"},
		{"allow", "0.0.0.0/0"},
		{"allow", "::/0"},
		{"unblock", "nonsense"},
		{"explain", "300.1.2.3"},
		{"list", "everything"},
		{"block"},
	} {
		r := runBin(t, append(args, "--socket", sock)...)
		if r.code != 2 || r.stderr == "" {
			t.Errorf("%v: exit %d stderr %q, want 2 with a message", args, r.code, r.stderr)
		}
	}
	r := runBin(t, "block", "192.0.2.0/24", "--socket", sock)
	if r.code != 1 || !strings.Contains(r.stderr, "none.sock") || !strings.Contains(r.stderr, "not reachable") {
		t.Errorf("unreachable socket: exit %d, %q", r.code, r.stderr)
	}
}

// notifyListener is a NOTIFY_SOCKET as systemd provides it.
type notifyListener struct {
	path string
	c    *net.UnixConn
}

func newNotifyListener(t *testing.T) *notifyListener {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &notifyListener{path: path, c: c}
}

// wait returns once a datagram contains want.
func (n *notifyListener) wait(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 4096)
	for {
		n.c.SetReadDeadline(deadline)
		k, err := n.c.Read(buf)
		if err != nil {
			t.Fatalf("no %q from sd_notify within %v: %v", want, timeout, err)
		}
		if strings.Contains(string(buf[:k]), want) {
			return
		}
	}
}

func decodeJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}

// Secret files are read by `config check` and `run` (exit 2 when broken),
// and no secret ever reaches the output.
func TestConfigCheckReadsSecretsAndNeverPrintsThem(t *testing.T) {
	dir := t.TempDir()
	const (
		signing = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTMyLWJ5dGVzISE=" // 32 bytes
		token   = "T0KEN-b7f3e9c1d2a4"
		hidden  = "https://hooks.example.com/services/" + token
	)
	good := writeFile(t, dir, "whsec", signing+"\n")
	urlFile := writeFile(t, dir, "url", "https://alerts.example.com/hook/FILETOKEN-8c1e2f\n")
	garbage := writeFile(t, dir, "garbage", "not-a-secret-but-private-9f8e7d\n")
	sinks := func(secretFile string) string {
		return fmt.Sprintf("alerts:\n  - name: hook\n    type: webhook\n    url_file: %s\n    secret_file: %s\n"+
			"  - name: chat\n    type: slack\n    url: %s\n", urlFile, secretFile, hidden)
	}
	for _, tc := range []struct {
		name, secretFile string
		code             int
		stderr           string
	}{
		{"valid", good, 0, "configuration OK"},
		{"missing", filepath.Join(dir, "nosuch"), 2, "alerts[0].secret_file"},
		{"unreadable", dir, 2, "alerts[0].secret_file"}, // a directory: read fails even as root
		{"malformed", garbage, 2, "whsec_"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, dir, tc.name+".yaml", sinks(tc.secretFile))
			r := runBin(t, "config", "check", "--config", p)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("exit %d, want %d with %q\nstdout: %s\nstderr: %s", r.code, tc.code, tc.stderr, r.stdout, r.stderr)
			}
			for _, secret := range []string{signing, strings.TrimPrefix(signing, "whsec_"), token, "FILETOKEN", "private-9f8e7d"} {
				if strings.Contains(r.stdout+r.stderr, secret) {
					t.Errorf("output reveals %q:\n%s%s", secret, r.stdout, r.stderr)
				}
			}
			if tc.code == 0 && !strings.Contains(r.stdout, "secret_file: "+good) {
				t.Errorf("effective configuration does not name the secret file:\n%s", r.stdout)
			}
		})
	}
	// run refuses a broken secret before it touches the data plane.
	p := writeFile(t, dir, "run.yaml", sinks(garbage))
	r := runBin(t, "run", "--config", p, "--socket", filepath.Join(dir, "s.sock"), "--state-dir", dir, "--bpffs", "/sys/fs/bpf/synguard-test-in-never")
	if r.code != 2 || !strings.Contains(r.stderr, "alerts[0].secret_file") || strings.Contains(r.stderr, "private-9f8e7d") {
		t.Errorf("run with a malformed secret file: exit %d, want 2 naming the key\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat("/sys/fs/bpf/synguard-test-in-never"); err == nil {
		t.Error("a refused run pinned something")
	}
}

// main prefixes every error with "synguard: "; the command is named once.
func TestErrorsNameTheCommandOnce(t *testing.T) {
	for _, args := range [][]string{{"replay"}, {"config", "check", "extra"}, {"list"}, {"block"}} {
		r := runBin(t, args...)
		want := "synguard: " + strings.Join(args[:min(len(args), 2)], " ")
		if args[0] == "config" {
			want = "synguard: config check: "
		}
		if r.code != 2 || !strings.HasPrefix(r.stderr, want) || strings.Contains(r.stderr, "synguard: synguard") {
			t.Errorf("%v: exit %d, stderr %q: want exit 2 and a message starting %q", args, r.code, r.stderr, want)
		}
	}
}

// A daemon that accepts but never answers is hung: status gives up after
// its timeout and shows what the pins say, instead of waiting forever.
func TestStatusFallsBackOnAHungDaemon(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "hung.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // read nothing, answer nothing
		}
	}()
	cfg := writeFile(t, dir, "c.yaml", fmt.Sprintf("socket: %s\nstate_dir: %s\nbpffs: /sys/fs/bpf/synguard-test-in-none\n", sock, filepath.Join(dir, "state")))
	start := time.Now()
	r := runBin(t, "status", "--json", "--config", cfg)
	took := time.Since(start)
	var st struct {
		Running bool
		Notes   []string
	}
	decodeJSON(t, r.stdout, &st)
	if r.code != 3 || st.Running || len(st.Notes) == 0 || !strings.Contains(st.Notes[0], "does not answer") {
		t.Errorf("status on a hung daemon: exit %d %+v %s", r.code, st, r.stderr)
	}
	if took > 10*time.Second {
		t.Errorf("status took %v on a hung daemon", took)
	}
}
