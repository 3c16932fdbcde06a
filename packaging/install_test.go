package packaging_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// installedFiles is what `make install PREFIX=/usr` lays out besides the man
// pages (one per command, checked separately).
var installedFiles = []string{
	"/etc/synguard/synguard.yaml",
	"/usr/bin/synguard",
	"/usr/lib/systemd/system/synguard.service",
	"/usr/lib/sysusers.d/synguard.conf",
	"/usr/share/bash-completion/completions/synguard",
	"/usr/share/fish/vendor_completions.d/synguard.fish",
	"/usr/share/man/man1/synguard.1.gz",
	"/usr/share/zsh/vendor-completions/_synguard",
}

func TestMakeInstallUninstall(t *testing.T) {
	requireTool(t, "make", "make")
	src := copyRepo(t)
	dest := t.TempDir()
	mk := func(args ...string) string {
		t.Helper()
		return run(t, "", nil, "make", makeArgs(t, src, args...)...)
	}

	mk("install", "DESTDIR="+dest, "PREFIX=/usr")
	files := listFiles(t, dest)
	for _, f := range installedFiles {
		if !slices.Contains(files, f) {
			t.Errorf("make install did not install %s; installed: %v", f, files)
		}
	}
	for _, f := range files {
		if strings.HasPrefix(f, "/usr/share/man/man1/") && !strings.HasSuffix(f, ".1.gz") {
			t.Errorf("man page not gzipped: %s", f)
		}
	}
	st, err := os.Stat(filepath.Join(dest, "etc/synguard/credentials"))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("/etc/synguard/credentials: want mode 0700 dir, got %v %v", st, err)
	}
	bin := filepath.Join(dest, "usr/bin/synguard")
	if out := run(t, "", nil, bin, "--version"); !strings.Contains(out, "synguard") {
		t.Errorf("installed binary --version: %s", out)
	}
	conf := filepath.Join(dest, "etc/synguard/synguard.yaml")
	shipped, err := os.ReadFile(filepath.Join(src, "systemd/synguard.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(conf); string(got) != string(shipped) {
		t.Error("installed config differs from systemd/synguard.yaml")
	}

	// An admin's edit survives a reinstall; the new default lands beside it.
	edited := append(append([]byte(nil), shipped...), "\n# edited by the admin\n"...)
	if err := os.WriteFile(conf, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	out := mk("install", "DESTDIR="+dest, "PREFIX=/usr")
	if got, _ := os.ReadFile(conf); string(got) != string(edited) {
		t.Fatal("make install overwrote an edited /etc/synguard/synguard.yaml")
	}
	if got, _ := os.ReadFile(conf + ".new"); string(got) != string(shipped) {
		t.Error("make install did not leave the new default as synguard.yaml.new")
	}
	if !strings.Contains(out, "kept your edited") {
		t.Errorf("make install did not tell the admin the config was kept:\n%s", out)
	}

	// Uninstall removes everything but the edited config.
	mk("uninstall", "DESTDIR="+dest, "PREFIX=/usr")
	if left := listFiles(t, dest); !slices.Equal(left, []string{"/etc/synguard/synguard.yaml"}) {
		t.Errorf("after make uninstall with an edited config, left: %v", left)
	}
	// With the config untouched, uninstall leaves nothing at all.
	if err := os.WriteFile(conf, shipped, 0o644); err != nil {
		t.Fatal(err)
	}
	mk("uninstall", "DESTDIR="+dest, "PREFIX=/usr")
	if left := listFiles(t, dest); len(left) != 0 {
		t.Errorf("after make uninstall, left: %v", left)
	}
	if _, err := os.Stat(filepath.Join(dest, "etc/synguard")); !os.IsNotExist(err) {
		t.Errorf("/etc/synguard still there after uninstall: %v", err)
	}
}

// TestMakeInstallPrefix: PREFIX=/usr/local moves binary, unit, man pages and
// completions, and the unit's commands follow the binary; the config stays
// in /etc, where the unit reads it.
func TestMakeInstallPrefix(t *testing.T) {
	requireTool(t, "make", "make")
	src := copyRepo(t)
	dest := t.TempDir()
	run(t, "", nil, "make", makeArgs(t, src, "install", "DESTDIR="+dest, "PREFIX=/usr/local")...)
	files := listFiles(t, dest)
	for _, f := range []string{
		"/usr/local/bin/synguard",
		"/usr/local/lib/systemd/system/synguard.service",
		"/usr/local/share/man/man1/synguard.1.gz",
		"/usr/local/share/bash-completion/completions/synguard",
		"/usr/local/share/zsh/site-functions/_synguard",
		"/usr/local/share/fish/vendor_completions.d/synguard.fish",
		"/etc/synguard/synguard.yaml",
	} {
		if !slices.Contains(files, f) {
			t.Errorf("PREFIX=/usr/local: %s not installed; installed: %v", f, files)
		}
	}
	unit, err := os.ReadFile(filepath.Join(dest, "usr/local/lib/systemd/system/synguard.service"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(unit), "/usr/bin/synguard") || !strings.Contains(string(unit), "ExecStart=/usr/local/bin/synguard run") {
		t.Errorf("unit installed with PREFIX=/usr/local does not run /usr/local/bin/synguard:\n%s", unit)
	}
	run(t, "", nil, "make", makeArgs(t, src, "uninstall", "DESTDIR="+dest, "PREFIX=/usr/local")...)
	if left := listFiles(t, dest); len(left) != 0 {
		t.Errorf("after make uninstall PREFIX=/usr/local, left: %v", left)
	}
}
