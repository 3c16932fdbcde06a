// Package packaging_test checks what synguard ships: the systemd unit
// (systemd-analyze verify and security score, syscall filter), the
// capability set (a live test with exactly the unit's capabilities),
// `make install`/`make uninstall`, and the .deb installed into a fresh
// Debian 12 root.
package packaging_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/e2e"
)

// repoRoot is the module root: tests run in packaging/.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repo root %s: %v", root, err)
	}
	return root
}

// requireRoot skips tests that need uid 0 (chroot, bpf, network namespaces).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CI runs as root)")
	}
}

// requireTool skips when a command-line tool is missing, naming the Debian
// package that provides it.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found: apt-get install %s", name, pkg)
	}
	return p
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	buildBin  string
)

// synguardBinary builds ./cmd/synguard once per test binary run.
func synguardBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "synguard-packaging-bin-")
		if buildErr == nil {
			buildBin, buildErr = e2e.Build(context.Background(), buildDir)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// run runs a command and fails the test with its output on error.
func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runErr(dir, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// runErr runs a command with a 20-minute ceiling and returns its combined
// output.
func runErr(dir string, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// copyRepo copies the working tree (without .git, build output and
// packages) into a temporary directory, so that make targets that write
// ./synguard, build/ and dist/ do not race other engineers' builds in the
// shared tree.
func copyRepo(t *testing.T) string {
	t.Helper()
	src := repoRoot(t)
	dst := filepath.Join(t.TempDir(), "src")
	skip := map[string]bool{".git": true, "build": true, "dist": true}
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() && skip[rel] {
			return filepath.SkipDir
		}
		if rel == "synguard" && !d.IsDir() {
			return nil // a stale binary from `make build`
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case d.Type().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, b, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
	return dst
}

// makeArgs returns the make arguments that run args in dir (the top
// Makefile includes packaging/packaging.mk).
func makeArgs(t *testing.T, dir string, args ...string) []string {
	t.Helper()
	return append([]string{"-C", dir}, args...)
}

// listFiles returns every non-directory path under root, relative to it.
func listFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, path)
			out = append(out, "/"+rel)
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return out
}
