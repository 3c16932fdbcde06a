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
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// fakeHost is a Runner over an in-memory set of sysctls; nft always works.
type fakeHost struct {
	mu      sync.Mutex
	sysctls map[string]string
	nft     []string // nft scripts applied, in order
	// readOnly makes every sysctl write fail (a sandbox without the right).
	readOnly bool
}

func newFakeHost() *fakeHost {
	return &fakeHost{sysctls: map[string]string{sysctlSyncookies: "0", sysctlLoose: "1"}}
}

func (h *fakeHost) run(_ context.Context, stdin string, name string, args ...string) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case name == "nft":
		h.nft = append(h.nft, stdin)
		return nil, nil
	case name == "sysctl" && len(args) == 2 && args[0] == "-n":
		v, ok := h.sysctls[args[1]]
		if !ok {
			return nil, fmt.Errorf("sysctl: cannot stat %s", args[1])
		}
		return []byte(v + "\n"), nil
	case name == "sysctl" && len(args) == 2 && args[0] == "-qw":
		if h.readOnly {
			return nil, fmt.Errorf("sysctl: permission denied on key %q", args[1])
		}
		k, v, _ := strings.Cut(args[1], "=")
		h.sysctls[k] = v
		return nil, nil
	}
	return nil, fmt.Errorf("unexpected command %s %v", name, args)
}

func (h *fakeHost) get(k string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sysctls[k]
}

func readSaved(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("saved file: %v", err)
	}
	var m map[string]string
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("saved file %q: %v", data, err)
	}
	return m
}

// A Manager that dies with a service enabled leaves the original values in
// SavedFile; the next Manager on that file restores them (not the values
// it finds) when its last service goes, and removes the file.
func TestSavedSysctlsOutliveTheProcess(t *testing.T) {
	host := newFakeHost()
	path := filepath.Join(t.TempDir(), "sysctl-restore.json")
	ctx := context.Background()
	svc := netip.MustParseAddrPort("10.0.0.1:80")

	first, err := New(Options{Run: host.run, SavedFile: path})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Enable(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if host.get(sysctlSyncookies) != "1" || host.get(sysctlLoose) != "0" {
		t.Fatalf("sysctls while enabled: %v", host.sysctls)
	}
	want := map[string]string{sysctlSyncookies: "0", sysctlLoose: "1"}
	if got := readSaved(t, path); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("saved file %v, want %v", got, want)
	}
	// first dies here: no Disable, no Close.

	var logs bytes.Buffer
	second, err := New(Options{Run: host.run, SavedFile: path, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "a previous run left sysctls changed") {
		t.Errorf("log %q: want a warning about the leftover values", logs.String())
	}
	// The new process protects the service again, finds the values already
	// set, and must still put back the originals.
	if _, err := second.Enable(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if err := second.Disable(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if host.get(sysctlSyncookies) != "0" || host.get(sysctlLoose) != "1" {
		t.Errorf("sysctls after the last Disable: %v, want the originals %v", host.sysctls, want)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("saved file after everything was restored: %v, want it gone", err)
	}

	// Restore alone (synguard cleanup) puts back what a dead process left.
	third, _ := New(Options{Run: host.run, SavedFile: path})
	if _, err := third.Enable(ctx, svc); err != nil {
		t.Fatal(err)
	}
	fourth, _ := New(Options{Run: host.run, SavedFile: path})
	restored, err := fourth.Restore(ctx)
	if err != nil || fmt.Sprint(restored) != fmt.Sprint(want) {
		t.Errorf("restore: %v %v, want %v", restored, err, want)
	}
	if host.get(sysctlSyncookies) != "0" || host.get(sysctlLoose) != "1" {
		t.Errorf("sysctls after Restore: %v", host.sysctls)
	}
	if restored, err := fourth.Restore(ctx); err != nil || len(restored) != 0 {
		t.Errorf("second restore: %v %v, want nothing", restored, err)
	}
}

// A SavedFile that cannot be used is moved aside and logged; protection
// still works. One that cannot be written does not stop protection either.
func TestBadSavedFile(t *testing.T) {
	ctx := context.Background()
	svc := netip.MustParseAddrPort("10.0.0.1:80")
	for name, content := range map[string]string{
		"not json":      "{",
		"unknown key":   `{"kernel.panic":"0"}`,
		"not a number":  `{"net.ipv4.tcp_syncookies":"0; reboot"}`,
		"null is empty": "null",
	} {
		t.Run(name, func(t *testing.T) {
			host := newFakeHost()
			path := filepath.Join(t.TempDir(), "sysctl-restore.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			m, err := New(Options{Run: host.run, SavedFile: path, Log: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			_, statErr := os.Stat(path + ".bad")
			if name == "null is empty" {
				if statErr == nil || logs.Len() != 0 {
					t.Errorf("null file treated as bad: %q", logs.String())
				}
			} else if statErr != nil || !strings.Contains(logs.String(), "unreadable") {
				t.Errorf("bad file not moved aside (%v) or not logged: %q", statErr, logs.String())
			}
			if _, err := m.Enable(ctx, svc); err != nil {
				t.Fatal(err)
			}
			if err := m.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if host.get(sysctlSyncookies) != "0" || host.get(sysctlLoose) != "1" {
				t.Errorf("sysctls after Close: %v", host.sysctls)
			}
		})
	}

	t.Run("unwritable", func(t *testing.T) {
		host := newFakeHost()
		var logs bytes.Buffer
		path := filepath.Join(t.TempDir(), "missing-dir", "sysctl-restore.json")
		m, _ := New(Options{Run: host.run, SavedFile: path, Log: slog.New(slog.NewTextHandler(&logs, nil))})
		if _, err := m.Enable(ctx, svc); err != nil {
			t.Fatalf("enable with an unwritable saved file: %v, want protection anyway", err)
		}
		if host.get(sysctlSyncookies) != "1" || !strings.Contains(logs.String(), "not recorded") {
			t.Errorf("sysctls %v, log %q: want cookies on and the failure logged", host.sysctls, logs.String())
		}
		// Still restored from memory.
		if err := m.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
		if host.get(sysctlSyncookies) != "0" {
			t.Errorf("tcp_syncookies after Close: %s, want 0", host.get(sysctlSyncookies))
		}
	})
}

// When kernel cookies cannot be turned on, Enable fails without installing
// SYNPROXY rules or registering the service, so a retry really retries.
func TestEnableFailsCleanly(t *testing.T) {
	host := newFakeHost()
	host.readOnly = true
	ctx := context.Background()
	svc := netip.MustParseAddrPort("10.0.0.1:80")
	m, err := New(Options{Run: host.run})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Enable(ctx, svc); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("enable with read-only sysctls: %v, want the sysctl error", err)
	}
	if len(host.nft) != 0 {
		t.Errorf("nft scripts applied by a failed enable: %q", host.nft)
	}
	host.readOnly = false
	res, err := m.Enable(ctx, svc)
	if err != nil || res.Path != PathSynproxy || res.Reason == "already enabled" {
		t.Errorf("retry: %+v %v, want a real synproxy enable", res, err)
	}
	if host.get(sysctlSyncookies) != "1" {
		t.Errorf("tcp_syncookies %s after the retry, want 1", host.get(sysctlSyncookies))
	}
}
