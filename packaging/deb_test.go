package packaging_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// debootstrapTimeout bounds building the Debian 12 root (about a minute
// here; the first run downloads ~40 MB of packages).
const debootstrapTimeout = 15 * time.Minute

// debFiles must all be in the package and laid out by dpkg -i.
var debFiles = []string{
	"/usr/bin/synguard",
	"/lib/systemd/system/synguard.service",
	"/usr/lib/sysusers.d/synguard.conf",
	"/etc/synguard/synguard.yaml",
	"/usr/share/man/man1/synguard.1.gz",
	"/usr/share/bash-completion/completions/synguard",
	"/usr/share/zsh/vendor-completions/_synguard",
	"/usr/share/fish/vendor_completions.d/synguard.fish",
}

const wantsLink = "/etc/systemd/system/multi-user.target.wants/synguard.service"

// debianMirror returns the Debian mirror apt is configured with (one-line
// or deb822 sources), so that debootstrap uses the same one.
func debianMirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append([]string{"/etc/apt/sources.list"}, files...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var uri string
		for _, line := range strings.Split(string(b), "\n") {
			fields := strings.Fields(line)
			switch {
			case len(fields) >= 3 && fields[0] == "deb" && !strings.Contains(fields[1], "security"):
				// deb [options] URI suite components
				i := 1
				if strings.HasPrefix(fields[1], "[") {
					for i < len(fields) && !strings.HasSuffix(fields[i], "]") {
						i++
					}
					i++
				}
				if i+1 < len(fields) && fields[i+1] == "bookworm" {
					return strings.TrimSuffix(fields[i], "/")
				}
			case len(fields) >= 2 && fields[0] == "URIs:":
				uri = fields[1]
			case len(fields) >= 2 && fields[0] == "Suites:" && slices.Contains(fields[1:], "bookworm") &&
				uri != "" && !strings.Contains(uri, "security"):
				return strings.TrimSuffix(uri, "/")
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// bookwormRootfs returns a tarball of `debootstrap --variant=minbase
// bookworm`, built once and cached under $SYNGUARD_CACHE_DIR (default
// ~/.cache/synguard), or skips when debootstrap or the mirror is missing.
func bookwormRootfs(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	requireTool(t, "debootstrap", "debootstrap")
	dir := os.Getenv("SYNGUARD_CACHE_DIR")
	if dir == "" {
		c, err := os.UserCacheDir()
		if err != nil {
			t.Skipf("no cache dir: %v (set SYNGUARD_CACHE_DIR)", err)
		}
		dir = filepath.Join(c, "synguard")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(dir, "debootstrap-bookworm-minbase-"+runtime.GOARCH+".tar.gz")

	// Serialise concurrent test runs on the cache.
	lock, err := os.OpenFile(tarball+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(tarball); err == nil {
		return tarball
	}

	mirror := debianMirror()
	client := http.Client{Timeout: 15 * time.Second}
	resp, err := client.Get(mirror + "/dists/bookworm/Release")
	if err != nil {
		t.Skipf("Debian mirror %s unreachable: %v", mirror, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Skipf("Debian mirror %s: bookworm Release: %s", mirror, resp.Status)
	}

	start := time.Now()
	root := filepath.Join(t.TempDir(), "rootfs")
	ctx, cancel := context.WithTimeout(context.Background(), debootstrapTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "debootstrap", "--variant=minbase", "bookworm", root, mirror).CombinedOutput()
	if err != nil {
		t.Fatalf("debootstrap --variant=minbase bookworm %s %s (%v): %v\n%s", root, mirror, time.Since(start), err, tail(out, 3000))
	}
	tmp := tarball + ".tmp"
	run(t, "", nil, "tar", "-C", root, "-czf", tmp, ".")
	if err := os.Rename(tmp, tarball); err != nil {
		t.Fatal(err)
	}
	t.Logf("debootstrap bookworm from %s: %v, cached as %s", mirror, time.Since(start).Round(time.Second), tarball)
	return tarball
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// chrootEnv is a clean environment for maintainer scripts in the chroot.
var chrootEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"}

// inChroot runs a command in the Debian root.
func inChroot(t *testing.T, root string, args ...string) string {
	t.Helper()
	out, err := chrootErr(root, args...)
	if err != nil {
		t.Fatalf("chroot %s %s: %v\n%s", root, strings.Join(args, " "), err, out)
	}
	return out
}

func chrootErr(root string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "chroot", append([]string{root}, args...)...)
	cmd.Env = chrootEnv
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// buildDeb runs `make deb VERSION=version` in src and returns the package.
func buildDeb(t *testing.T, src, version string) string {
	t.Helper()
	dist := filepath.Join(t.TempDir(), "dist")
	run(t, "", nil, "make", makeArgs(t, src, "deb", "VERSION="+version, "DISTDIR="+dist)...)
	debs, _ := filepath.Glob(filepath.Join(dist, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb VERSION=%s: want one .deb in %s, got %v", version, dist, debs)
	}
	return debs[0]
}

// snapshot lists every path in the root except dpkg's and the logs'
// bookkeeping, which installing anything changes.
func snapshot(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	for _, p := range listAll(t, root) {
		if strings.HasPrefix(p, "/var/lib/dpkg/") || strings.HasPrefix(p, "/var/log/") ||
			strings.HasPrefix(p, "/var/cache/") || strings.HasPrefix(p, "/tmp/") {
			continue
		}
		out = append(out, p)
	}
	return out
}

func listAll(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		out = append(out, "/"+rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDebInstallUpgradePurge builds the .deb, installs it into a fresh
// Debian 12 root, checks the layout, the synguard group and the enabled
// unit, upgrades it over an edited config, and purges it.
func TestDebInstallUpgradePurge(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: debootstrap and two package builds take minutes")
	}
	requireTool(t, "make", "make")
	requireTool(t, "dpkg-deb", "dpkg")
	start := time.Now()
	src := copyRepo(t)
	tarball := bookwormRootfs(t)

	deb1 := buildDeb(t, src, "v0.1.0")
	// The control data and the conffile declaration.
	info := run(t, "", nil, "dpkg-deb", "--info", deb1)
	for _, want := range []string{"Package: synguard", "Version: 0.1.0-1", "postinst", "prerm", "postrm"} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}
	ctrl := t.TempDir()
	run(t, "", nil, "dpkg-deb", "--control", deb1, ctrl)
	if b, _ := os.ReadFile(filepath.Join(ctrl, "conffiles")); strings.TrimSpace(string(b)) != "/etc/synguard/synguard.yaml" {
		t.Errorf("conffiles = %q, want /etc/synguard/synguard.yaml", b)
	}

	root := filepath.Join(t.TempDir(), "bookworm")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "", nil, "tar", "-C", root, "-xzf", tarball)
	before := snapshot(t, root)

	copyInto := func(deb string) string {
		t.Helper()
		b, err := os.ReadFile(deb)
		if err != nil {
			t.Fatal(err)
		}
		p := "/tmp/" + filepath.Base(deb)
		if err := os.WriteFile(filepath.Join(root, p), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// Install.
	inChroot(t, root, "dpkg", "-i", copyInto(deb1))
	for _, f := range debFiles {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("after dpkg -i: %v", err)
		}
	}
	if st, err := os.Stat(filepath.Join(root, "etc/synguard/credentials")); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("/etc/synguard/credentials: want a 0700 directory: %v %v", st, err)
	}
	if out := inChroot(t, root, "getent", "group", "synguard"); !strings.HasPrefix(out, "synguard:") {
		t.Errorf("no synguard group: %q", out)
	}
	if l, err := os.Readlink(filepath.Join(root, wantsLink)); err != nil || l != "/lib/systemd/system/synguard.service" {
		t.Errorf("service not enabled: %s -> %q, %v", wantsLink, l, err)
	}
	// The shipped default config is valid on a clean system and observes.
	out := inChroot(t, root, "/usr/bin/synguard", "config", "check", "--config", "/etc/synguard/synguard.yaml")
	if !strings.Contains(out, "mode: observe") {
		t.Errorf("default config is not in observe mode:\n%s", out)
	}
	pkgFiles := inChroot(t, root, "dpkg", "-L", "synguard")
	for _, f := range debFiles {
		if !strings.Contains(pkgFiles, f+"\n") {
			t.Errorf("dpkg -L synguard lacks %s", f)
		}
	}

	// Upgrade over an admin's edit, with a changed default in the new
	// version: the edit stays (--force-confold, as unattended upgrades
	// do), the new default lands as .dpkg-dist, the unit stays enabled.
	conf := filepath.Join(root, "etc/synguard/synguard.yaml")
	orig, _ := os.ReadFile(conf)
	edited := append(append([]byte(nil), orig...), "\n# edited by the admin\n"...)
	if err := os.WriteFile(conf, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/synguard/credentials/slack-url"), []byte("https://hooks.example/x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	newDefault := append(append([]byte(nil), orig...), "\n# new in 0.2.0\n"...)
	if err := os.WriteFile(filepath.Join(src, "systemd/synguard.yaml"), newDefault, 0o644); err != nil {
		t.Fatal(err)
	}
	deb2 := buildDeb(t, src, "v0.2.0")
	inChroot(t, root, "dpkg", "--force-confold", "-i", copyInto(deb2))
	if got, _ := os.ReadFile(conf); string(got) != string(edited) {
		t.Error("upgrade replaced the admin's edited synguard.yaml")
	}
	if got, _ := os.ReadFile(conf + ".dpkg-dist"); string(got) != string(newDefault) {
		t.Error("upgrade did not leave the new default as synguard.yaml.dpkg-dist")
	}
	if v := inChroot(t, root, "dpkg-query", "-W", "-f", "${Version}", "synguard"); v != "0.2.0-1" {
		t.Errorf("installed version after upgrade: %q", v)
	}
	if _, err := os.Lstat(filepath.Join(root, wantsLink)); err != nil {
		t.Errorf("upgrade lost the enablement: %v", err)
	}

	// An admin's disable survives an upgrade (`systemctl disable` removes
	// the wants symlink; systemctl cannot run in this chroot).
	if err := os.Remove(filepath.Join(root, wantsLink)); err != nil {
		t.Fatal(err)
	}
	inChroot(t, root, "dpkg", "--force-confold", "-i", "/tmp/"+filepath.Base(deb2))
	if _, err := os.Lstat(filepath.Join(root, wantsLink)); err == nil {
		t.Error("reinstall re-enabled a service the admin disabled")
	}

	// Purge removes every file the package and its scripts created.
	inChroot(t, root, "dpkg", "--purge", "synguard")
	after := snapshot(t, root)
	var added, removed []string
	for _, p := range after {
		if !slices.Contains(before, p) && p != "/etc/gshadow-" && p != "/etc/group-" {
			added = append(added, p) // groupadd's backups are not ours
		}
	}
	for _, p := range before {
		if !slices.Contains(after, p) {
			removed = append(removed, p)
		}
	}
	if len(added) > 0 || len(removed) > 0 {
		t.Errorf("after purge: left behind %v, removed %v", added, removed)
	}
	t.Logf("deb build, install, upgrade and purge in a Debian 12 root: %v", time.Since(start).Round(time.Second))
}
