// Package synproxy lets the kernel complete the handshakes that synguard's
// XDP program answers with SYN cookies while a service is under protection,
// and falls back to the kernel's own SYN cookies where it cannot.
//
// When the XDP program answers a SYN with a cookie SYN-ACK, the kernel never
// saw the SYN: no socket exists when the client's ACK arrives. The netfilter
// SYNPROXY (the same pairing as the kernel's xdp_synproxy selftest) takes
// that ACK, checks the cookie (same kernel secret as the XDP helpers), opens
// the real connection to the local listener and splices the two. It needs:
//
//   - a raw-priority prerouting rule that marks SYNs to the service
//     notrack, so conntrack keeps no state for a flood;
//   - a filter-priority input rule that hands packets to the service whose
//     conntrack state is invalid or untracked to `synproxy mss M wscale W
//     sack-perm` (M and W must be what the XDP SYN-ACK advertises: see
//     bpf.Protection; "timestamp" only with Options.Timestamps);
//   - net.netfilter.nf_conntrack_tcp_loose=0, so conntrack marks the
//     cookie ACK invalid instead of picking it up as a mid-stream flow;
//   - net.ipv4.tcp_syncookies on: protection usually starts seconds into
//     a flood, when the listen queue is already full of half-open spoofed
//     requests that linger for a minute of SYN-ACK retries. SYNPROXY's own
//     SYN to the listener would be dropped there without cookies; with
//     them the listener answers it with a cookie and the connection opens.
//
// Loopback is excluded: SYNPROXY's own SYN to the listener comes in on lo.
//
// Where the nftables rules cannot be installed (no nft binary, a kernel
// without NF_SYNPROXY, or Mode KernelCookies), Enable instead makes sure
// net.ipv4.tcp_syncookies is on for as long as any service is protected, and
// restores the old value afterwards: the XDP program must then run the
// service's protection without cookies (budget only), and the kernel answers
// what the budget admits with its own cookies once the listen queue is full.
//
// Enable reports which path it took; the caller (the daemon) must set the
// XDP protection's Cookies flag to match (true only for PathSynproxy).
//
// The sysctls Enable changes are put back by the last Disable or Close. With
// Options.SavedFile they are also written down before they are changed, so
// that a daemon killed before it could put them back (SIGKILL, OOM, power
// loss) finds them on its next start: New reads the file, and the next
// Close or last Disable restores the values it holds. Restore does only
// that, for `synguard cleanup`.
//
// Caveat of the synproxy path: enabling it starts conntrack in the
// namespace. Packets of a connection to the service established before
// conntrack ran are invalid when conntrack first sees them, and SYNPROXY
// drops them as ACKs with a bad cookie. Call Prepare at daemon start to
// start conntrack early, so that only connections older than the daemon are
// affected.
package synproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/synguard/synguard/bpf"
)

// Path says how a protected service's unverified clients get validated.
type Path string

const (
	// PathSynproxy: XDP answers with SYN cookies, nftables SYNPROXY
	// completes the connection. SYNs from spoofed sources never reach the
	// kernel.
	PathSynproxy Path = "xdp-cookies+nft-synproxy"
	// PathKernelCookies: the fallback. XDP admits unverified SYNs within
	// the service's budget and net.ipv4.tcp_syncookies is kept on, so the
	// kernel answers with its own cookies when the listen queue is full.
	PathKernelCookies Path = "kernel-syncookies"
)

// Mode chooses which path Enable tries.
type Mode string

const (
	// ModeAuto tries nftables SYNPROXY and falls back to kernel cookies.
	ModeAuto Mode = "auto"
	// ModeKernelCookies skips nftables: for hosts that must not run
	// conntrack.
	ModeKernelCookies Mode = "kernel-cookies"
)

// Defaults for Options: what the XDP program's cookie SYN-ACKs advertise by
// default, which SYNPROXY must advertise too.
const (
	DefaultMSS4   = bpf.DefaultCookieMSS4
	DefaultMSS6   = bpf.DefaultCookieMSS6
	DefaultWScale = bpf.DefaultCookieWScale
	DefaultTable  = "synguard_synproxy"
)

// Runner runs a command and returns its combined output; the error must
// include the output. Tests run commands in a network namespace with it.
type Runner func(ctx context.Context, stdin string, name string, args ...string) ([]byte, error)

// Options configure a Manager. Zero fields take the defaults.
type Options struct {
	Mode Mode
	// MSS4, MSS6 and WScale are what SYNPROXY advertises; they must equal
	// the XDP program's (bpf.Protection) and suit the real listener (its
	// window scale is what the client will be told).
	MSS4, MSS6 uint16
	WScale     uint8
	// Timestamps adds "timestamp" to the SYNPROXY rule: the only way a
	// SYN cookie keeps the client's window scale and SACK permission.
	// Must equal bpf.Protection.Timestamps. Off by default: on Linux 6.18
	// the listener rejects SYNPROXY's timestamped ACK
	// (TcpExtTSEcrRejected), so each connection waits a second for the
	// listener's SYN-ACK retransmission.
	Timestamps bool
	// Table is the nftables table (family inet) the Manager owns.
	Table string
	// Run runs nft and sysctl; nil runs them in the caller's namespace.
	Run Runner
	// SavedFile records the sysctl values to put back (JSON object, key to
	// value) for a later process when this one dies before restoring them;
	// see the package doc. Empty: kept in memory only.
	SavedFile string
	// Log receives what cannot be returned: a SavedFile that could not be
	// read or written. nil: slog.Default().
	Log *slog.Logger
}

// Result says what Enable did.
type Result struct {
	Path Path
	// Reason explains the path in words for logs, status and alerts,
	// e.g. why the fallback was taken.
	Reason string
}

// Manager owns the nftables table and the sysctls it changes. It is safe
// for concurrent use.
type Manager struct {
	opts Options

	mu       sync.Mutex
	services map[netip.AddrPort]Path
	// saved holds sysctl values to restore when the last service goes,
	// mirrored in opts.SavedFile.
	saved map[string]string
}

// New returns a Manager; it changes nothing until Enable or Prepare.
func New(opts Options) (*Manager, error) {
	switch opts.Mode {
	case "":
		opts.Mode = ModeAuto
	case ModeAuto, ModeKernelCookies:
	default:
		return nil, fmt.Errorf("synproxy mode %q: want auto or kernel-cookies", opts.Mode)
	}
	if opts.MSS4 == 0 {
		opts.MSS4 = DefaultMSS4
	}
	if opts.MSS6 == 0 {
		opts.MSS6 = DefaultMSS6
	}
	if opts.WScale == 0 {
		opts.WScale = DefaultWScale
	}
	if opts.WScale > 14 {
		return nil, fmt.Errorf("synproxy wscale %d: want 0..14", opts.WScale)
	}
	if opts.Table == "" {
		opts.Table = DefaultTable
	}
	if opts.Run == nil {
		opts.Run = runLocal
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	m := &Manager{opts: opts, services: map[netip.AddrPort]Path{}, saved: map[string]string{}}
	m.loadSaved()
	return m, nil
}

// restorable are the sysctls a Manager changes, so the only keys a
// SavedFile may hold.
var restorable = []string{sysctlSyncookies, sysctlLoose}

// loadSaved takes over the values a previous process recorded and did not
// restore. A file it cannot parse is moved aside (".bad") and logged: the
// values are lost, but protection must not be.
func (m *Manager) loadSaved() {
	path := m.opts.SavedFile
	if path == "" {
		return
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		m.opts.Log.Error("sysctl values a previous run left to restore cannot be read", "file", path, "err", err)
		return
	}
	var saved map[string]string
	err = json.Unmarshal(data, &saved)
	for k, v := range saved {
		if err != nil {
			break
		}
		if !slices.Contains(restorable, k) {
			err = fmt.Errorf("unknown sysctl %q", k)
		} else if _, perr := strconv.ParseUint(v, 10, 32); perr != nil {
			err = fmt.Errorf("%s: value %q is not a number", k, v)
		}
	}
	if err != nil {
		bad := path + ".bad"
		if rerr := os.Rename(path, bad); rerr != nil {
			err = errors.Join(err, rerr)
		}
		m.opts.Log.Error("sysctl values a previous run left to restore are unreadable; check "+
			strings.Join(restorable, " and ")+" by hand", "file", path, "moved_to", bad, "err", err)
		return
	}
	if saved == nil { // the file said null
		saved = map[string]string{}
	}
	m.saved = saved
	if len(saved) > 0 {
		m.opts.Log.Warn("a previous run left sysctls changed; they are restored when protection ends", "file", path, "values", saved)
	}
}

// storeSavedLocked writes m.saved to SavedFile (atomically: a crash leaves
// the old or the new file), or removes the file when nothing is left to
// restore.
func (m *Manager) storeSavedLocked() error {
	path := m.opts.SavedFile
	if path == "" {
		return nil
	}
	if len(m.saved) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	data, err := json.Marshal(m.saved)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

func runLocal(ctx context.Context, stdin string, name string, args ...string) ([]byte, error) {
	c := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	out, err := c.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

const (
	sysctlLoose      = "net.netfilter.nf_conntrack_tcp_loose"
	sysctlSyncookies = "net.ipv4.tcp_syncookies"
)

// Enable validates unverified clients of svc from now on: with SYNPROXY
// rules when possible, else with kernel SYN cookies forced on. svc's port
// must be set; an unspecified address (0.0.0.0 or ::) covers every local
// address of its family, the zero netip.Addr both families.
// Enabling an enabled service returns its path again.
func (m *Manager) Enable(ctx context.Context, svc netip.AddrPort) (Result, error) {
	if svc.Port() == 0 {
		return Result{}, fmt.Errorf("synproxy enable %v: port must be set", svc)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.services[svc]; ok {
		return Result{Path: p, Reason: "already enabled"}, nil
	}
	// Both paths need kernel cookies (see the package doc): turn them on
	// first, so a failure leaves nothing registered or installed.
	was, err := m.ensureSysctl(ctx, sysctlSyncookies, "1", func(v string) bool { return v != "0" })
	if err != nil {
		return Result{}, fmt.Errorf("synproxy enable %v: %w", svc, err)
	}
	var nftErr error
	if m.opts.Mode == ModeAuto {
		m.services[svc] = PathSynproxy
		if nftErr = m.applySynproxy(ctx); nftErr == nil {
			return Result{Path: PathSynproxy, Reason: fmt.Sprintf("nftables table inet %s: SYNs to %v notrack, synproxy mss %d/%d wscale %d (timestamps %v); kernel syn cookies %s",
				m.opts.Table, svc, m.opts.MSS4, m.opts.MSS6, m.opts.WScale, m.opts.Timestamps, cookieState(was))}, nil
		}
		delete(m.services, svc)
		// Put the table back as it was for the other services.
		if err := m.applySynproxy(ctx); err != nil {
			nftErr = errors.Join(nftErr, err)
		}
	}
	m.services[svc] = PathKernelCookies
	why := "mode kernel-cookies"
	if nftErr != nil {
		why = "nftables synproxy unavailable: " + firstLine(nftErr.Error())
	}
	return Result{Path: PathKernelCookies, Reason: why + "; XDP cookies off, budget only; kernel syn cookies " + cookieState(was)}, nil
}

func cookieState(was string) string {
	if was == "0" {
		return "turned on (" + sysctlSyncookies + " was 0, restored when protection ends)"
	}
	return "already on (" + sysctlSyncookies + "=" + was + ")"
}

// Disable stops validating svc's clients; the last Disable removes the
// table and restores the sysctls Enable changed. Disabling a service that
// is not enabled is not an error.
func (m *Manager) Disable(ctx context.Context, svc netip.AddrPort) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.services[svc]
	if !ok {
		return nil
	}
	delete(m.services, svc)
	var errs []error
	if p == PathSynproxy {
		errs = append(errs, m.applySynproxy(ctx))
	}
	if len(m.services) == 0 {
		errs = append(errs, m.restoreLocked(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("synproxy disable %v: %w", svc, err)
	}
	return nil
}

// Close disables everything: the table is deleted and sysctls restored.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.services)
	err := m.applySynproxy(ctx)
	return errors.Join(err, m.restoreLocked(ctx))
}

// Tables are the nftables tables (family inet) a Manager creates: the
// SYNPROXY rules and Prepare's conntrack table.
func (m *Manager) Tables() []string { return []string{m.opts.Table, m.ctTable()} }

func (m *Manager) ctTable() string { return m.opts.Table + "_ct" }

// Prepare starts conntrack in the namespace (a table <Table>_ct with one
// conntrack rule that accepts everything), so connections are tracked from
// their start and survive a later Enable; see the package doc. Close does
// not remove it; Unprepare does.
func (m *Manager) Prepare(ctx context.Context) error {
	t := m.ctTable()
	script := fmt.Sprintf("table inet %[1]s\ndelete table inet %[1]s\ntable inet %[1]s {\n"+
		"\tchain pre {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tct state established accept\n\t}\n}\n", t)
	if _, err := m.opts.Run(ctx, script, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("synproxy prepare conntrack: %w", err)
	}
	return nil
}

// Unprepare removes Prepare's table.
func (m *Manager) Unprepare(ctx context.Context) error {
	t := m.ctTable()
	if _, err := m.opts.Run(ctx, fmt.Sprintf("table inet %[1]s\ndelete table inet %[1]s\n", t), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("synproxy unprepare: %w", err)
	}
	return nil
}

// Script returns the nftables script that installs the rules for the
// enabled SYNPROXY services (or deletes the table when there are none). It
// replaces the table atomically: nft applies a script as one transaction.
func (m *Manager) Script() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.scriptLocked()
}

func (m *Manager) scriptLocked() string {
	t := m.opts.Table
	var svcs []netip.AddrPort
	for s, p := range m.services {
		if p == PathSynproxy {
			svcs = append(svcs, s)
		}
	}
	// "table X" first creates it if missing, so the delete never fails.
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", t, t)
	if len(svcs) == 0 {
		return b.String()
	}
	slices.SortFunc(svcs, func(a, b netip.AddrPort) int { return a.Compare(b) })
	fmt.Fprintf(&b, "table inet %s {\n", t)
	b.WriteString("\tchain pre {\n\t\ttype filter hook prerouting priority raw; policy accept;\n")
	for _, s := range svcs {
		for _, m := range matches(s) {
			fmt.Fprintf(&b, "\t\tiifname != \"lo\" %s tcp flags & (fin|syn|rst|ack) == syn notrack\n", m.match)
		}
	}
	b.WriteString("\t}\n\tchain in {\n\t\ttype filter hook input priority filter; policy accept;\n")
	for _, s := range svcs {
		for _, mt := range matches(s) {
			mss := m.opts.MSS4
			if mt.v6 {
				mss = m.opts.MSS6
			}
			ts := ""
			if m.opts.Timestamps {
				ts = " timestamp"
			}
			fmt.Fprintf(&b, "\t\tiifname != \"lo\" %s ct state invalid,untracked counter synproxy mss %d wscale %d%s sack-perm\n",
				mt.match, mss, m.opts.WScale, ts)
		}
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

type match struct {
	match string
	v6    bool
}

// matches returns the nft match expressions (one per address family) for
// a service.
func matches(s netip.AddrPort) []match {
	port := "tcp dport " + strconv.Itoa(int(s.Port()))
	a := s.Addr().Unmap()
	switch {
	case !a.IsValid():
		return []match{{"meta nfproto ipv4 " + port, false}, {"meta nfproto ipv6 " + port, true}}
	case a.Is4() && a.IsUnspecified():
		return []match{{"meta nfproto ipv4 " + port, false}}
	case a.Is4():
		return []match{{"ip daddr " + a.String() + " " + port, false}}
	case a.IsUnspecified():
		return []match{{"meta nfproto ipv6 " + port, true}}
	default:
		return []match{{"ip6 daddr " + a.String() + " " + port, true}}
	}
}

// applySynproxy installs the current table and keeps tcp_loose at 0 while
// any SYNPROXY service exists.
func (m *Manager) applySynproxy(ctx context.Context) error {
	active := false
	for _, p := range m.services {
		active = active || p == PathSynproxy
	}
	if active {
		// The sysctl exists once conntrack is built in or loaded; set it
		// before the rules so no cookie ACK is picked up mid-stream.
		if _, err := m.ensureSysctl(ctx, sysctlLoose, "0", func(v string) bool { return v == "0" }); err != nil {
			return err
		}
	}
	if _, err := m.opts.Run(ctx, m.scriptLocked(), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("nft table inet %s: %w", m.opts.Table, err)
	}
	if !active {
		return m.restoreOne(ctx, sysctlLoose)
	}
	return nil
}

// ensureSysctl sets key to want unless ok(current) holds, remembering the
// first old value for restore. It returns the value found.
func (m *Manager) ensureSysctl(ctx context.Context, key, want string, ok func(string) bool) (string, error) {
	out, err := m.opts.Run(ctx, "", "sysctl", "-n", key)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", key, err)
	}
	cur := strings.TrimSpace(string(out))
	if ok(cur) {
		return cur, nil
	}
	if _, saved := m.saved[key]; !saved {
		// Written down before the change, so a crash in between leaves a
		// value to restore that is merely still current.
		m.saved[key] = cur
		if err := m.storeSavedLocked(); err != nil {
			// Protection comes first: change it anyway, and say that a
			// crash would leave it changed.
			m.opts.Log.Error("sysctl value to restore not recorded: if synguard dies before protection ends, restore it by hand",
				"file", m.opts.SavedFile, "sysctl", key, "value", cur, "err", err)
		}
	}
	if _, err := m.opts.Run(ctx, "", "sysctl", "-qw", key+"="+want); err != nil {
		return cur, fmt.Errorf("set %s=%s: %w", key, want, err)
	}
	return cur, nil
}

func (m *Manager) restoreOne(ctx context.Context, key string) error {
	old, ok := m.saved[key]
	if !ok {
		return nil
	}
	if _, err := m.opts.Run(ctx, "", "sysctl", "-qw", key+"="+old); err != nil {
		return fmt.Errorf("restore %s=%s: %w", key, old, err)
	}
	delete(m.saved, key)
	if err := m.storeSavedLocked(); err != nil {
		// Harmless: the next start would restore the same value again.
		m.opts.Log.Warn("sysctl restored, but the file of values to restore still lists it",
			"file", m.opts.SavedFile, "sysctl", key, "value", old, "err", err)
	}
	return nil
}

func (m *Manager) restoreLocked(ctx context.Context) error {
	var errs []error
	for _, k := range restorable {
		errs = append(errs, m.restoreOne(ctx, k))
	}
	return errors.Join(errs...)
}

// Restore puts back every sysctl value this Manager (or, through
// SavedFile, a process before it) changed and returns them, key to value.
// It leaves nftables alone: for cleaning up after a daemon that is gone.
func (m *Manager) Restore(ctx context.Context) (map[string]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	restored := map[string]string{}
	for k, v := range m.saved {
		restored[k] = v
	}
	err := m.restoreLocked(ctx)
	for k := range m.saved {
		delete(restored, k)
	}
	return restored, err
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Counter returns how many packets the SYNPROXY rules handed to SYNPROXY
// (client SYNs the kernel answered and client ACKs it checked), summed over
// services, from the rules' counters.
func (m *Manager) Counter(ctx context.Context) (uint64, error) {
	out, err := m.opts.Run(ctx, "", "nft", "list", "chain", "inet", m.opts.Table, "in")
	if err != nil {
		return 0, fmt.Errorf("synproxy counter: %w", err)
	}
	var n uint64
	f := strings.Fields(string(out))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "packets" {
			v, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("synproxy counter: parse %q: %w", f[i+1], err)
			}
			n += v
		}
	}
	return n, nil
}
