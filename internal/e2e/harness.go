// Package e2e drives the real synguard binary as a separate process on a
// throw-away network-namespace test bed (internal/testbed): it builds the
// binary, writes its config file, starts and kills the daemon, runs the CLI
// as an operator would, scrapes /metrics, receives and verifies signed
// webhook alerts, and runs a legitimate HTTP client next to a flood.
//
// The end-to-end test (e2e_test.go), `make demo` (internal/demo) and the
// resource benchmark (bench/resources) share it, so that what the demo
// shows and the benchmark measures is what the test proves.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/testbed"
)

// Build compiles ./cmd/synguard of the module the working directory is in
// into dir and returns the binary's path. The daemon under test is this
// binary, run as its own process, never the packages linked into the test.
func Build(ctx context.Context, dir string) (string, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if root == "." || root == "" {
		return "", errors.New("go env GOMOD: not inside the synguard module")
	}
	bin := filepath.Join(dir, "synguard")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/synguard")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/synguard in %s: %w: %s", root, err, bytes.TrimSpace(out))
	}
	return bin, nil
}

// CleanPins detaches and removes every synguard pin directory matching
// glob (e.g. "/sys/fs/bpf/synguard-test-e2e-*"): leftovers of a killed run.
func CleanPins(glob string) error {
	if !strings.HasPrefix(glob, "/sys/fs/bpf/synguard-") {
		return fmt.Errorf("clean pins %q: only /sys/fs/bpf/synguard-* directories are ours", glob)
	}
	dirs, err := filepath.Glob(glob)
	if err != nil {
		return fmt.Errorf("clean pins %q: %w", glob, err)
	}
	var errs []error
	for _, d := range dirs {
		subs, _ := filepath.Glob(filepath.Join(d, "*"))
		for _, s := range subs {
			if fi, err := os.Stat(s); err == nil && fi.IsDir() {
				if err := bpf.Remove(s); err != nil {
					errs = append(errs, err)
				}
			}
		}
		_ = bpf.Remove(d) // a pin directory of its own (a capability probe's); an error here leaves RemoveAll to try
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// Options describe one daemon set-up on a bed.
type Options struct {
	Bed *testbed.Bed
	// Bin is the synguard binary (see Build).
	Bin string
	// Dir holds the config file, control socket, state dir and secrets.
	Dir string
	// BPFFS is the daemon's pin directory, /sys/fs/bpf/synguard-test-...;
	// it is removed at cleanup.
	BPFFS string
	// Mode is observe or enforce.
	Mode string
	// PollInterval is the daemon's poll_interval (default 250ms).
	PollInterval time.Duration
	// MetricsPort is served on 127.0.0.1 inside the server namespace
	// (default 9717; the namespace is private, so no clash with the host).
	MetricsPort int
	// Extra is YAML appended to the config file (alerts:, detector:, ...).
	Extra string
}

// Env is a configured synguard for a bed's server namespace. The daemon
// and the CLI both run inside the server namespace, as they would on the
// protected host; the Unix socket and the pins are plain files.
type Env struct {
	Options
	ConfigPath string
	Socket     string
	StateDir   string
	t          testbed.T
}

// NewEnv writes the config file and registers the removal of the pins
// with t's cleanup (it runs after the daemon, started later, is killed).
func NewEnv(t testbed.T, o Options) (*Env, error) {
	if o.Bed == nil || o.Bin == "" || o.Dir == "" || !strings.HasPrefix(o.BPFFS, "/sys/fs/bpf/synguard-") {
		return nil, fmt.Errorf("e2e env: need a bed, a binary, a dir and a bpffs dir under /sys/fs/bpf/synguard-, got %+v", o)
	}
	if o.Mode == "" {
		o.Mode = "enforce"
	}
	if o.PollInterval == 0 {
		o.PollInterval = 250 * time.Millisecond
	}
	if o.MetricsPort == 0 {
		o.MetricsPort = 9717
	}
	e := &Env{Options: o, ConfigPath: filepath.Join(o.Dir, "synguard.yaml"), Socket: filepath.Join(o.Dir, "synguard.sock"),
		StateDir: filepath.Join(o.Dir, "state"), t: t}
	t.Cleanup(func() {
		if err := CleanPins(o.BPFFS); err != nil {
			t.Logf("e2e cleanup: %v", err)
		}
	})
	return e, e.WriteConfig()
}

// WriteConfig (re)writes the config file from the options.
func (e *Env) WriteConfig() error {
	cfg := fmt.Sprintf(`# written by internal/e2e
interfaces: [%s]
mode: %s
poll_interval: %s
socket: %s
socket_group: ""
state_dir: %s
bpffs: %s
metrics_addr: "127.0.0.1:%d"
log:
  level: info
`, e.Bed.Server.Iface, e.Mode, e.PollInterval, e.Socket, e.StateDir, e.BPFFS, e.MetricsPort) + e.Extra
	if err := os.WriteFile(e.ConfigPath, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write config %s: %w", e.ConfigPath, err)
	}
	return nil
}

// Daemon is a running `synguard run` process in the server namespace.
type Daemon struct {
	*testbed.Proc
	// PID is synguard's own pid (nsenter execs it in place).
	PID    int
	exited chan struct{}
}

// Exited reports whether the process has ended.
func (d *Daemon) Exited() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL (kill -9) and waits for the process to be gone.
func (d *Daemon) Kill() { d.Stop() }

// Start runs `synguard run --config FILE` in the server namespace and waits
// until it answers `synguard status` and serves /metrics.
func (e *Env) Start(ctx context.Context) (*Daemon, error) {
	p, err := e.Bed.Server.Start(e.Bin, "run", "--config", e.ConfigPath)
	if err != nil {
		return nil, err
	}
	d := &Daemon{Proc: p, PID: p.Cmd.Process.Pid, exited: make(chan struct{})}
	go func() { _ = p.Wait(); close(d.exited) }()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if d.Exited() {
			return nil, fmt.Errorf("synguard run exited during start: %v\n%s", p.Wait(), p.Output())
		}
		if st, err := e.Status(ctx); err == nil && st.Running {
			if _, err := e.Metrics(ctx); err == nil {
				return d, nil
			}
		}
		select {
		case <-ctx.Done():
			d.Stop()
			return nil, fmt.Errorf("synguard run not ready after 30s: %w\n%s", ctx.Err(), p.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Result is one CLI run.
type Result struct {
	Stdout, Stderr []byte
	Code           int
}

// CLI runs `synguard ARGS --socket SOCKET` in the server namespace. A
// non-zero exit is not an error (Code has it); failing to run is.
func (e *Env) CLI(ctx context.Context, args ...string) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := e.Bed.Server.Command(ctx, e.Bin, append(args, "--socket", e.Socket)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := Result{Stdout: out.Bytes(), Stderr: errb.Bytes()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
		return r, nil
	}
	if err != nil {
		return r, fmt.Errorf("synguard %s: %w", strings.Join(args, " "), err)
	}
	return r, nil
}

// CLIJSON runs a CLI command that must exit 0 and decodes its stdout.
func (e *Env) CLIJSON(ctx context.Context, v any, args ...string) error {
	r, err := e.CLI(ctx, args...)
	if err != nil {
		return err
	}
	if r.Code != 0 {
		return fmt.Errorf("synguard %s: exit %d: %s", strings.Join(args, " "), r.Code, bytes.TrimSpace(r.Stderr))
	}
	if err := json.Unmarshal(r.Stdout, v); err != nil {
		return fmt.Errorf("synguard %s: decode %q: %w", strings.Join(args, " "), r.Stdout, err)
	}
	return nil
}

// Status is `synguard status --json`.
func (e *Env) Status(ctx context.Context) (api.Status, error) {
	var st api.Status
	err := e.CLIJSON(ctx, &st, "status", "--json")
	return st, err
}

// Bans is `synguard list bans --json`, decoded and raw (to check the key
// set scripts rely on). With down, the CLI is pointed at the config file
// so that it reads the pins itself when the daemon does not answer.
func (e *Env) Bans(ctx context.Context, down bool) ([]api.Ban, []map[string]json.RawMessage, error) {
	args := []string{"list", "bans", "--json"}
	if down {
		args = append(args, "--config", e.ConfigPath)
	}
	var raw []map[string]json.RawMessage
	if err := e.CLIJSON(ctx, &raw, args...); err != nil {
		return nil, nil, err
	}
	bans := make([]api.Ban, len(raw))
	for i, m := range raw {
		b, _ := json.Marshal(m)
		if err := json.Unmarshal(b, &bans[i]); err != nil {
			return nil, nil, fmt.Errorf("list bans --json item %d: %w", i, err)
		}
	}
	return bans, raw, nil
}

// Explain is `synguard explain ADDR --json`.
func (e *Env) Explain(ctx context.Context, addr string) (api.Explanation, error) {
	var ex api.Explanation
	err := e.CLIJSON(ctx, &ex, "explain", addr, "--json")
	return ex, err
}

// Metrics scrapes http://127.0.0.1:PORT/metrics in the server namespace
// and returns every sample keyed by its series as written, e.g.
// `synguard_datapath_frames_total{kind="syn"}`.
func (e *Env) Metrics(ctx context.Context) (map[string]float64, error) {
	c := e.Bed.Server.HTTPClient(5 * time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", e.MetricsPort), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape metrics: %s", resp.Status)
	}
	return ParseMetrics(resp.Body)
}

// ParseMetrics reads the Prometheus text format into series -> value.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("metrics line %q: no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, s.Err()
}

// Kernel opens the daemon's pinned maps directly (bpf.Open: no program is
// loaded and the attachment is not touched), for counters that do not go
// through the daemon. Close it after use.
func (e *Env) Kernel() (*bpf.Datapath, error) {
	return bpf.Open(filepath.Join(e.BPFFS, e.Bed.Server.Iface))
}

// XDPAttached reports whether the server's interface has an XDP program.
func (e *Env) XDPAttached(ctx context.Context) (bool, error) {
	out, err := e.Bed.Server.Run(ctx, "ip", "link", "show", "dev", e.Bed.Server.Iface)
	if err != nil {
		return false, err
	}
	return strings.Contains(string(out), " xdp"), nil
}
