package packaging_test

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/synguard/synguard/internal/config"
)

// maxExposure is the highest `systemd-analyze security` score the issue
// accepts for the unit.
const maxExposure = 2.5

// unitPath is the unit as shipped.
func unitPath(t *testing.T) string { return filepath.Join(repoRoot(t), "systemd", "synguard.service") }

// unitFile is a parsed unit: section -> key -> values in file order
// (repeated keys such as ExecStartPre= and SystemCallFilter= accumulate).
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: cannot parse %q", path, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// one returns the single value of a key, failing when absent or repeated.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s=: want exactly one value, got %q", section, key, v)
	}
	return v[0]
}

// unitCapabilities returns the unit's CapabilityBoundingSet= as lower-case
// names without the CAP_ prefix (setpriv's spelling), sorted.
func unitCapabilities(t *testing.T) []string {
	t.Helper()
	u := parseUnit(t, unitPath(t))
	var caps []string
	for _, c := range strings.Fields(u.one(t, "Service", "CapabilityBoundingSet")) {
		caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	slices.Sort(caps)
	return caps
}

// verifiableUnit writes a copy of the unit whose ExecStart=/ExecStartPre=
// point at a freshly built binary (systemd-analyze verify insists that
// commands exist) and returns its path.
func verifiableUnit(t *testing.T, bin string) string {
	t.Helper()
	b, err := os.ReadFile(unitPath(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "synguard.service")
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "/usr/bin/synguard", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUnitVerify(t *testing.T) {
	requireTool(t, "systemd-analyze", "systemd")
	bin := synguardBinary(t)
	unit := verifiableUnit(t, bin)
	// --man=no here: the man: links are checked below against the pages
	// the binary generates.
	out, err := runErr("", nil, "systemd-analyze", "verify", "--man=no", unit)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify %s: err=%v\n%s", unit, err, out)
	}

	t.Run("documentation", func(t *testing.T) {
		requireTool(t, "man", "man-db")
		mandir := t.TempDir()
		run(t, "", nil, bin, "gendocs", "--man", filepath.Join(mandir, "man1"))
		out, err := runErr("", []string{"MANPATH=" + mandir}, "systemd-analyze", "verify", unit)
		if err != nil || strings.TrimSpace(out) != "" {
			t.Fatalf("systemd-analyze verify with MANPATH=%s: err=%v\n%s", mandir, err, out)
		}
	})
}

var exposureRE = regexp.MustCompile(`Overall exposure level for synguard\.service: ([0-9.]+)`)

// measuredExposure runs systemd-analyze security --offline=true on the unit.
func measuredExposure(t *testing.T) float64 {
	t.Helper()
	requireTool(t, "systemd-analyze", "systemd")
	out, err := runErr("", nil, "systemd-analyze", "security", "--offline=true", "--no-pager", unitPath(t))
	if err != nil {
		t.Fatalf("systemd-analyze security --offline=true: %v\n%s", err, out)
	}
	m := exposureRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	score, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return score
}

func TestUnitSecurityScore(t *testing.T) {
	score := measuredExposure(t)
	t.Logf("systemd-analyze security --offline=true: %.1f", score)
	if score > maxExposure {
		t.Fatalf("exposure %.1f > %.1f: the unit lost hardening", score, maxExposure)
	}
	// The README quotes the score; keep it honest.
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	want := "exposure level " + strconv.FormatFloat(score, 'f', 1, 64)
	if !strings.Contains(string(readme), want) {
		t.Errorf("README.md does not quote the measured %q", want)
	}
}

// TestUnitDirectives checks the properties the issue requires and that the
// unit's paths match the daemon's defaults (config.Default()), so that the
// sandbox leaves writable exactly what the daemon writes.
func TestUnitDirectives(t *testing.T) {
	u := parseUnit(t, unitPath(t))
	want := map[string]string{
		"Type":                   "notify",
		"Restart":                "on-failure",
		"NoNewPrivileges":        "yes",
		"ProtectSystem":          "strict",
		"ProtectHome":            "yes",
		"PrivateTmp":             "yes",
		"RuntimeDirectory":       "synguard",
		"StateDirectory":         "synguard",
		"ConfigurationDirectory": "synguard",
		"AmbientCapabilities":    "",
	}
	for k, v := range want {
		if got := u.one(t, "Service", k); got != v {
			t.Errorf("%s=%s, want %s", k, got, v)
		}
	}
	for _, k := range []string{"StartLimitIntervalSec", "StartLimitBurst"} {
		if u.one(t, "Unit", k) == "" {
			t.Errorf("[Unit] %s= is empty", k)
		}
	}
	if got := u.one(t, "Service", "ExecReload"); !strings.Contains(got, "kill -HUP $MAINPID") {
		t.Errorf("ExecReload=%s, want SIGHUP to the main process", got)
	}
	pre := strings.Join(u["Service"]["ExecStartPre"], "\n")
	if !strings.Contains(pre, "/usr/bin/synguard config check --config "+config.DefaultPath) {
		t.Errorf("ExecStartPre= does not run the config check on %s:\n%s", config.DefaultPath, pre)
	}
	if got := u.one(t, "Service", "ExecStart"); got != "/usr/bin/synguard run --config "+config.DefaultPath {
		t.Errorf("ExecStart=%s", got)
	}
	if got := u.one(t, "Service", "RestrictAddressFamilies"); got != "AF_UNIX AF_NETLINK AF_INET AF_INET6" {
		t.Errorf("RestrictAddressFamilies=%s", got)
	}
	if got := unitCapabilities(t); !slices.Equal(got, []string{"bpf", "net_admin", "perfmon"}) {
		t.Errorf("CapabilityBoundingSet=%v: the live test proves exactly bpf, net_admin, perfmon; change both together", got)
	}
	if cred := u.one(t, "Service", "LoadCredential"); !strings.HasPrefix(cred, "alert:/etc/synguard/") {
		t.Errorf("LoadCredential=%s", cred)
	}

	def := config.Default()
	if got := u.one(t, "Service", "Group"); got != def.SocketGroup {
		t.Errorf("Group=%s but the daemon's default socket_group is %s", got, def.SocketGroup)
	}
	if filepath.Dir(def.Socket) != "/run/"+u.one(t, "Service", "RuntimeDirectory") {
		t.Errorf("default socket %s is not in RuntimeDirectory=", def.Socket)
	}
	if def.StateDir != "/var/lib/"+u.one(t, "Service", "StateDirectory") {
		t.Errorf("default state_dir %s is not StateDirectory=", def.StateDir)
	}
	// Writable: the bpffs directory the daemon pins under, and exactly the
	// two sysctls spoofed-flood protection sets (internal/synproxy); all
	// else stays read-only.
	var rw []string
	for _, v := range u["Service"]["ReadWritePaths"] {
		rw = append(rw, strings.Fields(v)...)
	}
	slices.Sort(rw)
	wantRW := []string{"-/proc/sys/net/netfilter/nf_conntrack_tcp_loose", "/proc/sys/net/ipv4/tcp_syncookies", def.BPFFS}
	slices.Sort(wantRW)
	if !slices.Equal(rw, wantRW) {
		t.Errorf("ReadWritePaths= %q, want %q (the daemon pins under %s)", rw, wantRW, def.BPFFS)
	}
	if !strings.Contains(pre, "mkdir -p -m 0700 "+def.BPFFS) {
		t.Errorf("no ExecStartPre= creates %s before ReadWritePaths= binds it", def.BPFFS)
	}
}

// syscallGroups parses `systemd-analyze syscall-filter` (every group with
// its members, groups included by name).
func syscallGroups(t *testing.T) map[string][]string {
	t.Helper()
	requireTool(t, "systemd-analyze", "systemd")
	out := run(t, "", nil, "systemd-analyze", "syscall-filter", "--no-pager")
	groups := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(out, "\n") {
		f := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "@"):
			cur = strings.Fields(line)[0]
		case cur == "" || f == "" || strings.HasPrefix(f, "#"):
		default:
			groups[cur] = append(groups[cur], f)
		}
	}
	if len(groups["@system-service"]) == 0 {
		t.Fatalf("cannot parse systemd-analyze syscall-filter:\n%.2000s", out)
	}
	return groups
}

// unitAllowedSyscalls resolves the unit's SystemCallFilter= lines the way
// systemd does: the first line is an allow list, later "~" lines remove from
// it.
func unitAllowedSyscalls(t *testing.T) map[string]bool {
	t.Helper()
	groups := syscallGroups(t)
	var expand func(name string, into map[string]bool, seen map[string]bool)
	expand = func(name string, into map[string]bool, seen map[string]bool) {
		if !strings.HasPrefix(name, "@") {
			into[name] = true
			return
		}
		if seen[name] {
			return
		}
		seen[name] = true
		members, ok := groups[name]
		if !ok {
			t.Fatalf("unknown syscall group %s", name)
		}
		for _, m := range members {
			expand(m, into, seen)
		}
	}
	u := parseUnit(t, unitPath(t))
	lines := u["Service"]["SystemCallFilter"]
	if len(lines) == 0 || strings.HasPrefix(lines[0], "~") {
		t.Fatalf("SystemCallFilter= must start with an allow list, got %q", lines)
	}
	allowed := map[string]bool{}
	for _, l := range lines {
		set := map[string]bool{}
		for _, n := range strings.Fields(strings.TrimPrefix(l, "~")) {
			expand(n, set, map[string]bool{})
		}
		for s := range set {
			if strings.HasPrefix(l, "~") {
				delete(allowed, s)
			} else {
				allowed[s] = true
			}
		}
	}
	return allowed
}

func TestUnitSyscallFilter(t *testing.T) {
	allowed := unitAllowedSyscalls(t)
	// bpf for everything BPF; prlimit64 for cilium/ebpf's memlock probe;
	// fchownat to give the socket its group; the rest are the daemon's
	// sockets (API, netlink, webhooks, metrics) and sd_notify.
	for _, s := range []string{"bpf", "prlimit64", "fchownat", "socket", "bind", "listen", "accept4",
		"connect", "sendmsg", "recvmsg", "sendto", "recvfrom", "setsockopt", "getsockopt", "mmap", "munmap",
		"epoll_pwait", "rt_sigaction", "clone", "clone3", "unlinkat", "mkdirat", "openat", "fchmodat", "kill"} {
		if !allowed[s] {
			t.Errorf("SystemCallFilter= blocks %s", s)
		}
	}
	for _, s := range []string{"init_module", "mount", "reboot", "swapon", "ptrace", "perf_event_open", "setuid", "kexec_load"} {
		if allowed[s] {
			t.Errorf("SystemCallFilter= allows %s", s)
		}
	}
}
