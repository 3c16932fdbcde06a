package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/e2e"
	"github.com/synguard/synguard/internal/synproxy"
	"github.com/synguard/synguard/internal/testbed"
)

// The kill test: prefix "sgk", 10.200.82.0/24, pins under
// /sys/fs/bpf/synguard-test-kill-*.
const (
	killPrefix  = "sgk"
	killSubnet  = 82
	killPinGlob = "/sys/fs/bpf/synguard-test-kill-*"
)

// TestKilledDaemonsProtectionIsUndone: service protection turns kernel SYN
// cookies on and starts nftables SYNPROXY. A daemon killed with SIGKILL
// cannot undo that; the next daemon must put the sysctls back to what they
// were before the first one changed them (not to what it finds) when
// protection ends, and `synguard cleanup` must undo it without a daemon.
func TestKilledDaemonsProtectionIsUndone(t *testing.T) {
	testbed.RequireRoot(t)
	_ = e2e.CleanPins(killPinGlob)
	t.Cleanup(func() { _ = e2e.CleanPins(killPinGlob) })
	bed, err := testbed.New(t, testbed.Config{Prefix: killPrefix, Subnet: killSubnet, Hosts: []string{"cli"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := bed.Server
	if err := srv.Sysctl("net.ipv4.tcp_syncookies=0"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sysctl := func(key string) string {
		out, err := srv.Run(ctx, "sysctl", "-n", key)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	hasTable := func(name string) bool {
		_, err := srv.Run(ctx, "nft", "list", "table", "inet", name)
		return err == nil
	}
	loose := sysctl("net.netfilter.nf_conntrack_tcp_loose")
	if loose == "0" {
		t.Fatal("nf_conntrack_tcp_loose is already 0 in a fresh namespace: the test could not tell a restore")
	}

	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	state := filepath.Join(dir, "state")
	cfg := writeFile(t, dir, "synguard.yaml", fmt.Sprintf(`interfaces: [%s]
mode: enforce
attach: generic
socket: %s
state_dir: %s
bpffs: /sys/fs/bpf/synguard-test-kill-%d
metrics_addr: ""
protect: {default_gateways: false, ssh_ports: []}
`, srv.Iface, sock, state, os.Getpid()))
	saved := filepath.Join(state, sysctlRestoreFile)
	svc := netip.AddrPortFrom(srv.Addr4, 8080).String()

	var daemons []*testbed.Proc
	t.Cleanup(func() {
		if t.Failed() {
			for i, p := range daemons {
				t.Logf("daemon %d log:\n%s", i+1, p.Output())
			}
		}
	})
	start := func() *testbed.Proc {
		t.Helper()
		p, err := srv.Start(bin, "run", "--config", cfg)
		if err != nil {
			t.Fatal(err)
		}
		daemons = append(daemons, p)
		waitFor(t, 15*time.Second, "daemon answering status", func() bool {
			return runBin(t, "status", "--json", "--socket", sock).code == 0
		})
		return p
	}
	protectedAndKilled := func() {
		t.Helper()
		p := start()
		if r := runBin(t, "protect", svc, "--socket", sock); r.code != 0 {
			t.Fatalf("protect: exit %d: %s%s", r.code, r.stdout, r.stderr)
		}
		if got := sysctl("net.ipv4.tcp_syncookies"); got != "1" {
			t.Fatalf("tcp_syncookies %s while protected, want 1", got)
		}
		if got := sysctl("net.netfilter.nf_conntrack_tcp_loose"); got != "0" {
			t.Fatalf("tcp_loose %s while protected through SYNPROXY, want 0", got)
		}
		data, err := os.ReadFile(saved)
		var values map[string]string
		if err == nil {
			err = json.Unmarshal(data, &values)
		}
		if err != nil || values["net.ipv4.tcp_syncookies"] != "0" || values["net.netfilter.nf_conntrack_tcp_loose"] != loose {
			t.Fatalf("%s: %v %q: want the original tcp_syncookies=0 and tcp_loose=%s", saved, err, data, loose)
		}
		p.Stop() // SIGKILL
		if sysctl("net.ipv4.tcp_syncookies") != "1" || !hasTable(synproxy.DefaultTable) {
			t.Fatal("the killed daemon's protection vanished by itself: the test proves nothing")
		}
	}

	// A restarted daemon keeps the manual protection, then restores the
	// original values when it ends.
	protectedAndKilled()
	p := start()
	if got := sysctl("net.ipv4.tcp_syncookies"); got != "1" {
		t.Errorf("tcp_syncookies %s after restart with the protection kept, want 1", got)
	}
	if r := runBin(t, "unprotect", svc, "--socket", sock); r.code != 0 {
		t.Fatalf("unprotect: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	if got := sysctl("net.ipv4.tcp_syncookies"); got != "0" {
		t.Errorf("tcp_syncookies %s after unprotect, want the original 0", got)
	}
	if got := sysctl("net.netfilter.nf_conntrack_tcp_loose"); got != loose {
		t.Errorf("tcp_loose %s after unprotect, want the original %s", got, loose)
	}
	if _, err := os.Stat(saved); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after everything was restored: %v, want it gone", saved, err)
	}
	p.Stop()

	// Without a daemon, cleanup undoes it.
	protectedAndKilled()
	out, err := srv.Run(ctx, bin, "cleanup", "--config", cfg, "--socket", sock)
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	for _, want := range []string{"removed nftables table inet " + synproxy.DefaultTable,
		"restored net.ipv4.tcp_syncookies=0", "restored net.netfilter.nf_conntrack_tcp_loose=" + loose} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cleanup said:\n%s\nwant %q", out, want)
		}
	}
	if sysctl("net.ipv4.tcp_syncookies") != "0" || sysctl("net.netfilter.nf_conntrack_tcp_loose") != loose {
		t.Errorf("sysctls after cleanup: tcp_syncookies %s, tcp_loose %s; want 0 and %s",
			sysctl("net.ipv4.tcp_syncookies"), sysctl("net.netfilter.nf_conntrack_tcp_loose"), loose)
	}
	for _, table := range []string{synproxy.DefaultTable, synproxy.DefaultTable + "_ct"} {
		if hasTable(table) {
			t.Errorf("nftables table inet %s still there after cleanup", table)
		}
	}
	if out, err := srv.Run(ctx, bin, "cleanup", "--config", cfg, "--socket", sock); err != nil ||
		strings.Contains(string(out), "restored") || strings.Contains(string(out), "removed nftables") {
		t.Errorf("second cleanup: %v\n%s\nwant nothing left to undo", err, out)
	}
}
