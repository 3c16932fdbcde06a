package packaging_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/e2e"
	"github.com/synguard/synguard/internal/testbed"
)

// Live capability tests: the namespace prefix is "sgs", the subnet
// 10.200.40.0/24, pins live under /sys/fs/bpf/synguard-test-sv-*.
const (
	bedPrefix = "sgs"
	bedSubnet = 40
	pinGlob   = "/sys/fs/bpf/synguard-test-sv-*"
	// testGroup stands in for the unit's Group=synguard: an existing group,
	// so the test does not add one to the host. Like Group=, it becomes the
	// daemon's primary gid and its socket_group.
	testGroup = "nogroup"
)

// capBits are the capability numbers of linux/capability.h for the names a
// unit may use here.
var capBits = map[string]uint{"net_admin": 12, "sys_admin": 21, "sys_resource": 24, "perfmon": 38, "bpf": 39}

// cleanPins removes pin directories a killed run left behind.
func cleanPins() { _ = e2e.CleanPins(pinGlob) }

// newBed creates the namespaces (server + attacker) and a fresh pin dir.
func newBed(t *testing.T) (*testbed.Bed, string) {
	t.Helper()
	requireRoot(t)
	requireTool(t, "setpriv", "util-linux")
	requireTool(t, "nsenter", "util-linux")
	cleanPins()
	t.Cleanup(cleanPins)
	bed, err := testbed.New(t, testbed.Config{Prefix: bedPrefix, Subnet: bedSubnet, Hosts: []string{"atk"}})
	if err != nil {
		t.Fatal(err)
	}
	return bed, fmt.Sprintf("/sys/fs/bpf/synguard-test-sv-%d", os.Getpid())
}

// withCaps returns the command line that runs args the way the unit runs
// the daemon: uid 0, primary group testGroup and no supplementary groups,
// a capability bounding set of exactly caps (so uid 0 gets exactly caps at
// exec), nothing inheritable or ambient (AmbientCapabilities= is empty),
// no_new_privs, inside the server's network namespace only (nsenter --net
// keeps the host's mount namespace and so its bpffs).
func withCaps(ns *testbed.NS, caps []string, args ...string) []string {
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	return append([]string{"nsenter", "--net=/run/netns/" + ns.Name, "--",
		"setpriv", "--reuid=0", "--regid=" + testGroup, "--clear-groups",
		"--bounding-set=" + set, "--inh-caps=-all", "--no-new-privs", "--"}, args...)
}

func without(caps []string, c string) []string {
	return slices.DeleteFunc(slices.Clone(caps), func(x string) bool { return x == c })
}

func capMask(t *testing.T, caps []string) uint64 {
	t.Helper()
	var m uint64
	for _, c := range caps {
		b, ok := capBits[c]
		if !ok {
			t.Fatalf("capability %q: add its number to capBits", c)
		}
		m |= 1 << b
	}
	return m
}

// TestCapabilitiesEffective checks the harness itself: a process started by
// withCaps holds exactly the unit's capabilities, effective and bounding.
func TestCapabilitiesEffective(t *testing.T) {
	bed, _ := newBed(t)
	caps := unitCapabilities(t)
	args := withCaps(bed.Server, caps, "cat", "/proc/self/status")
	status := run(t, "", nil, args[0], args[1:]...)
	want := capMask(t, caps)
	for _, field := range []string{"CapEff", "CapPrm", "CapBnd"} {
		m := regexp.MustCompile(field + `:\s+([0-9a-f]+)`).FindStringSubmatch(status)
		if m == nil {
			t.Fatalf("no %s in:\n%s", field, status)
		}
		got, _ := strconv.ParseUint(m[1], 16, 64)
		if got != want {
			t.Errorf("%s = %#x, want exactly %v = %#x", field, got, caps, want)
		}
	}
	if !strings.Contains(status, "NoNewPrivs:\t1") {
		t.Error("no_new_privs not set")
	}
}

// TestCapabilitiesDataPlane proves, with the bpf package alone, that the
// unit's capabilities load, attach, pin, enforce a ban on real packets and
// re-open the pins after a restart, and that each one of them is needed.
func TestCapabilitiesDataPlane(t *testing.T) {
	bed, pin := newBed(t)
	requireTool(t, "hping3", "hping3")
	caps := unitCapabilities(t)
	probe := filepath.Join(t.TempDir(), "capprobe")
	run(t, repoRoot(t), []string{"CGO_ENABLED=0"}, "go", "build", "-o", probe, "./packaging/testdata/capprobe")
	atk := bed.Host("atk")

	probeRun := func(caps []string, args ...string) (string, error) {
		a := withCaps(bed.Server, caps, append([]string{probe}, args...)...)
		return runErr("", nil, a[0], a[1:]...)
	}
	decode := func(out string) (r struct {
		Attached string
		Bans     []string
		Dropped  uint64
		SYN      uint64
		Mode     string
	}) {
		t.Helper()
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("capprobe output %q: %v", out, err)
		}
		return r
	}

	// Each capability is necessary: without it loading or attaching fails.
	for _, c := range caps {
		out, err := probeRun(without(caps, c), "attach", "-pin", pin+"-no-"+c, "-iface", bed.Server.Iface)
		if err == nil {
			t.Errorf("without CAP_%s the probe still attached:\n%s", strings.ToUpper(c), out)
			continue
		}
		t.Logf("without CAP_%s: %s", strings.ToUpper(c), firstLine(lastError(out)))
	}

	// All of them together are sufficient.
	out, err := probeRun(caps, "attach", "-pin", pin, "-iface", bed.Server.Iface, "-block", atk.Addr4.String()+"/32")
	if err != nil {
		t.Fatalf("with %v: %v\n%s", caps, err, out)
	}
	r := decode(out)
	if r.Mode != "enforce" || !slices.Contains(r.Bans, atk.Addr4.String()+"/32") {
		t.Fatalf("after attach: %+v", r)
	}
	const syns = 50
	sent, err := atk.Flood(context.Background(), testbed.Flood{To: netip.AddrPortFrom(bed.Server.Addr4, 8080), Count: syns, Interval: time.Millisecond})
	if err != nil || sent != syns {
		t.Fatalf("flood: sent %d of %d: %v", sent, syns, err)
	}
	// A new process with the same capabilities re-opens the pins (what a
	// restart or an upgrade does) and sees the drops.
	out, err = probeRun(caps, "stats", "-pin", pin)
	if err != nil {
		t.Fatalf("stats: %v\n%s", err, out)
	}
	if r := decode(out); r.Dropped < syns || !slices.Contains(r.Bans, atk.Addr4.String()+"/32") {
		t.Errorf("after %d banned SYNs: %+v, want >= %d dropped and the ban kept", syns, r, syns)
	}
	if out, err := probeRun(caps, "remove", "-pin", pin); err != nil {
		t.Fatalf("remove: %v\n%s", err, out)
	}
	if link, _ := bed.Server.Run(context.Background(), "ip", "link", "show", bed.Server.Iface); strings.Contains(string(link), "xdp") {
		t.Errorf("xdp still attached after remove:\n%s", link)
	}
}

// lastError picks the line of a failed run that says why: the verifier's
// verdict, else the last error line.
func lastError(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, l := range lines {
		if strings.Contains(l, "prohibited") {
			return strings.TrimSpace(l)
		}
	}
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "capprobe:") || strings.Contains(lines[i], "synguard") || strings.Contains(lines[i], "error") {
			return lines[i]
		}
	}
	return lines[len(lines)-1]
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// daemon is `synguard run` started like the unit starts it.
type daemon struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs strings.Builder
	done chan struct{}
	err  error
}

func (d *daemon) Write(b []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.Write(b)
}

// kill ends the daemon's whole process group and waits for it.
func (d *daemon) kill() {
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.done
}

func (d *daemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.String()
}

// notifier is the NOTIFY_SOCKET systemd would listen on (Type=notify).
// One goroutine reads it, so that a wait abandoned with a dead daemon does
// not swallow the next daemon's READY=1.
type notifier struct {
	path string
	msgs chan string
}

func newNotifier(t *testing.T) *notifier {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifier{path: path, msgs: make(chan string, 64)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	t.Cleanup(func() { c.Close() })
	return n
}

// drain forgets messages from earlier daemons.
func (n *notifier) drain() {
	for {
		select {
		case <-n.msgs:
		default:
			return
		}
	}
}

type daemonEnv struct {
	bed                   *testbed.Bed
	bin, cfg, sock, bpffs string
	notify                *notifier
	strace                string // strace output file, "" without strace
	caps                  []string
	metricsAddr, stateDir string
}

func (e *daemonEnv) writeConfig(t *testing.T, mode string) {
	t.Helper()
	text := fmt.Sprintf(`interfaces: [%s]
mode: %s
socket: %s
socket_group: %s
state_dir: %s
bpffs: %s
metrics_addr: %q
protect: {default_gateways: false, ssh_ports: []}
`, e.bed.Server.Iface, mode, e.sock, testGroup, e.stateDir, e.bpffs, e.metricsAddr)
	if err := os.WriteFile(e.cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// start runs the daemon with caps; it returns once READY=1 arrives, or
// with ok=false when the daemon exits first.
func (e *daemonEnv) start(t *testing.T, caps []string) (d *daemon, ok bool) {
	t.Helper()
	args := []string{e.bin, "run", "--config", e.cfg}
	if e.strace != "" {
		// Inside setpriv, so that only the daemon's own system calls are
		// recorded (with -ff, one file per thread).
		args = append([]string{"strace", "-f", "-qq", "-o", e.strace}, args...)
	}
	a := withCaps(e.bed.Server, caps, args...)
	e.notify.drain()
	d = &daemon{done: make(chan struct{})}
	d.cmd = exec.Command(a[0], a[1:]...)
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+e.notify.path)
	d.cmd.Stdout, d.cmd.Stderr = d, d
	// Own process group: strace's tracee must die with it.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log())
		}
	})
	timeout := time.After(30 * time.Second)
	for {
		select {
		case m := <-e.notify.msgs:
			if strings.Contains(m, "READY=1") {
				return d, true
			}
		case <-d.done:
			return d, false
		case <-timeout:
			return d, false
		}
	}
}

// daemonPID finds the synguard process (below nsenter, setpriv, strace).
func (e *daemonEnv) daemonPID(t *testing.T) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		argv := strings.Split(string(b), "\x00")
		if len(argv) > 3 && argv[0] == e.bin && argv[1] == "run" && argv[3] == e.cfg {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatal("daemon process not found")
	return 0
}

type ban struct {
	Prefix  string
	Dropped uint64
}

func (e *daemonEnv) bans(t *testing.T) []ban {
	t.Helper()
	out, err := runErr("", nil, e.bin, "list", "bans", "--json", "--socket", e.sock, "--config", e.cfg)
	if err != nil {
		t.Fatalf("list bans: %v\n%s", err, out)
	}
	var bs []ban
	if i := strings.Index(out, "["); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &bs); err != nil && strings.TrimSpace(out) != "null" {
		t.Fatalf("list bans --json %q: %v", out, err)
	}
	return bs
}

func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

// TestCapabilitiesDaemon runs `synguard run` exactly as privileged as the
// unit makes it (see withCaps) and shows that it starts (READY=1), attaches,
// detects a SYN flood and bans its source, reloads on SIGHUP, keeps the
// bans over a restart, and is cleaned up; that without any one of the
// unit's capabilities it does not start; and (with strace) that every
// system call it made is allowed by the unit's SystemCallFilter=.
func TestCapabilitiesDaemon(t *testing.T) {
	bed, pin := newBed(t)
	requireTool(t, "hping3", "hping3")
	caps := unitCapabilities(t)
	bin := synguardBinary(t)
	dir := t.TempDir()
	e := &daemonEnv{bed: bed, bin: bin, cfg: filepath.Join(dir, "synguard.yaml"), sock: filepath.Join(dir, "synguard.sock"),
		bpffs: pin, notify: newNotifier(t), caps: caps, metricsAddr: "127.0.0.1:19740", stateDir: filepath.Join(dir, "state")}
	if _, err := exec.LookPath("strace"); err == nil {
		e.strace = filepath.Join(dir, "strace.out")
	} else {
		t.Log("strace not installed: system calls not checked against SystemCallFilter=")
	}
	e.writeConfig(t, "enforce")

	// ExecStartPre=: the config check runs with the same privileges.
	a := withCaps(bed.Server, caps, bin, "config", "check", "--config", e.cfg)
	run(t, "", nil, a[0], a[1:]...)

	// Each capability is necessary: the daemon does not get to READY=1.
	for _, c := range caps {
		d, ok := e.start(t, without(caps, c))
		d.kill()
		if ok {
			t.Errorf("without CAP_%s the daemon started", strings.ToUpper(c))
		} else {
			t.Logf("without CAP_%s: %s", strings.ToUpper(c), firstLine(lastError(d.log())))
		}
		cleanPins()
	}
	if e.strace != "" {
		os.Remove(e.strace) // only the successful run counts below
	}

	d, ok := e.start(t, caps)
	if !ok {
		t.Fatalf("daemon with %v did not report READY=1:\n%s", caps, d.log())
	}
	pid := e.daemonPID(t)
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if m := regexp.MustCompile(`CapEff:\s+([0-9a-f]+)`).FindSubmatch(status); m == nil || string(m[1]) != fmt.Sprintf("%016x", capMask(t, caps)) {
		t.Errorf("daemon CapEff %q, want %016x", m, capMask(t, caps))
	}
	if out, _ := bed.Server.Run(context.Background(), "ip", "link", "show", bed.Server.Iface); !strings.Contains(string(out), "xdp") {
		t.Fatalf("no XDP program on %s:\n%s", bed.Server.Iface, out)
	}
	// The control socket got the unit's group without CAP_CHOWN.
	if st, err := os.Stat(e.sock); err != nil {
		t.Errorf("control socket: %v", err)
	} else if g := st.Sys().(*syscall.Stat_t).Gid; g != 65534 || st.Mode().Perm() != 0o660 {
		t.Errorf("control socket gid %d mode %v, want %s (65534) 0660", g, st.Mode().Perm(), testGroup)
	}

	// Detect and ban a SYN flood (about 1000 SYN/s from one source).
	atk := bed.Host("atk")
	victim := atk.Addr4.String() + "/32"
	floodDone := make(chan error, 1)
	go func() {
		_, err := atk.Flood(context.Background(), testbed.Flood{To: netip.AddrPortFrom(bed.Server.Addr4, 80), Count: 8000, Interval: time.Millisecond, Timeout: 12 * time.Second})
		floodDone <- err
	}()
	took := waitUntil(t, 10*time.Second, "the flooding source banned", func() bool {
		return slices.ContainsFunc(e.bans(t), func(b ban) bool { return b.Prefix == victim })
	})
	t.Logf("flood banned %v after it started", took.Round(100*time.Millisecond))
	waitUntil(t, 10*time.Second, "banned SYNs dropped in the kernel", func() bool {
		return slices.ContainsFunc(e.bans(t), func(b ban) bool { return b.Prefix == victim && b.Dropped > 0 })
	})
	if err := <-floodDone; err != nil {
		t.Errorf("flood: %v", err)
	}

	// ExecReload=: SIGHUP re-reads the config within the same privileges.
	e.writeConfig(t, "observe")
	syscall.Kill(pid, syscall.SIGHUP)
	waitUntil(t, 10*time.Second, "observe mode after SIGHUP", func() bool {
		out, _ := runErr("", nil, bin, "status", "--json", "--socket", e.sock)
		return strings.Contains(out, `"observe"`) && !strings.Contains(out, `"enforce"`)
	})

	// Restart (what an upgrade does): the bans survive in the pins and the
	// restarted, equally limited daemon takes them over.
	syscall.Kill(pid, syscall.SIGTERM)
	<-d.done
	if d.err != nil {
		t.Errorf("daemon exit after SIGTERM: %v\n%s", d.err, d.log())
	}
	d, ok = e.start(t, caps)
	if !ok {
		t.Fatalf("restart with %v did not report READY=1:\n%s", caps, d.log())
	}
	if !slices.ContainsFunc(e.bans(t), func(b ban) bool { return b.Prefix == victim }) {
		t.Errorf("ban on %s lost over a restart: %+v", victim, e.bans(t))
	}
	syscall.Kill(e.daemonPID(t), syscall.SIGTERM)
	<-d.done

	if e.strace != "" {
		checkSyscalls(t, e.strace)
	}

	// cleanup under the same privileges detaches and unpins.
	a = withCaps(bed.Server, caps, bin, "cleanup", "--force", "--config", e.cfg, "--socket", e.sock)
	run(t, "", nil, a[0], a[1:]...)
	if out, _ := bed.Server.Run(context.Background(), "ip", "link", "show", bed.Server.Iface); strings.Contains(string(out), "xdp") {
		t.Errorf("XDP still attached after cleanup:\n%s", out)
	}
}

var (
	straceCall   = regexp.MustCompile(`^\d+\s+(?:<\.\.\. )?([a-z_0-9]+)[( ]`)
	straceSocket = regexp.MustCompile(`^\d+\s+socket\((AF_[A-Z0-9]+),`)
)

// checkSyscalls compares every system call in an strace log with what the
// unit's SystemCallFilter= allows, and every socket it opened with
// RestrictAddressFamilies=.
func checkSyscalls(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	allowed := unitAllowedSyscalls(t)
	families := strings.Fields(parseUnit(t, unitPath(t)).one(t, "Service", "RestrictAddressFamilies"))
	seen, opened := map[string]bool{}, map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	first := true
	for sc.Scan() {
		if m := straceSocket.FindStringSubmatch(sc.Text()); m != nil {
			opened[m[1]] = true
			if !slices.Contains(families, m[1]) {
				t.Errorf("the daemon opened an %s socket; RestrictAddressFamilies=%v refuses it", m[1], families)
			}
		}
		m := straceCall.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		if first && m[1] == "execve" {
			first = false
			continue // systemd's own execve of ExecStart, not filtered
		}
		first = false
		seen[m[1]] = true
	}
	var names, denied []string
	for s := range seen {
		names = append(names, s)
		if !allowed[s] && s != "exit" && s != "exit_group" && s != "restart_syscall" {
			denied = append(denied, s)
		}
	}
	slices.Sort(names)
	slices.Sort(denied)
	t.Logf("daemon made %d distinct system calls: %s", len(names), strings.Join(names, " "))
	if len(names) < 20 {
		t.Fatalf("strace recorded only %v: the log is not the daemon's", names)
	}
	if len(denied) > 0 {
		t.Errorf("SystemCallFilter= would refuse %v", denied)
	}
	t.Logf("socket families opened: %v", slices.Sorted(maps.Keys(opened)))
	if !opened["AF_UNIX"] || !opened["AF_NETLINK"] {
		t.Errorf("strace log shows no AF_UNIX or AF_NETLINK socket (%v): the parser missed them", opened)
	}
}
