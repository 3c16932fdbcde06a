package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// visibleCommands asks the binary (cobra's __complete) for its top-level
// commands, so the test follows the CLI as DAEMON grows it.
func visibleCommands(t *testing.T, bin string) []string {
	t.Helper()
	out, err := exec.Command(bin, "__complete", "").Output()
	if err != nil {
		t.Fatalf("%s __complete: %v", bin, err)
	}
	var cmds []string
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(line, "\t")
		if name != "" && !strings.HasPrefix(name, ":") {
			cmds = append(cmds, name)
		}
	}
	if len(cmds) == 0 {
		t.Fatalf("%s __complete listed no commands:\n%s", bin, out)
	}
	return cmds
}

func TestGenDocsManPages(t *testing.T) {
	bin := synguardBinary(t)
	dir := filepath.Join(t.TempDir(), "man1")
	run(t, "", []string{"SOURCE_DATE_EPOCH=1700000000"}, bin, "gendocs", "--man", dir)

	pages := map[string]bool{}
	for _, f := range listFiles(t, dir) {
		pages[strings.TrimPrefix(f, "/")] = true
	}
	if !pages["synguard.1"] {
		t.Fatalf("no synguard.1 among %v", pages)
	}
	for _, c := range visibleCommands(t, bin) {
		if c == "help" {
			continue // cobra's help topic gets no page
		}
		if !pages["synguard-"+c+".1"] {
			t.Errorf("no man page for `synguard %s` among %v", c, pages)
		}
	}
	for p := range pages {
		if strings.Contains(p, "gendocs") {
			t.Errorf("hidden command documented: %s", p)
		}
	}

	root, err := os.ReadFile(filepath.Join(dir, "synguard.1"))
	if err != nil {
		t.Fatal(err)
	}
	// SOURCE_DATE_EPOCH 1700000000 is 2023-11-14: reproducible builds.
	if !strings.Contains(string(root), `.TH "SYNGUARD" "1" "Nov 2023"`) {
		t.Errorf("synguard.1 header does not carry SOURCE_DATE_EPOCH's date:\n%.300s", root)
	}
	if strings.Contains(string(root), "Auto generated") {
		t.Error("synguard.1 carries cobra's auto-generated timestamp line")
	}

	// Every page renders without groff warnings.
	if _, err := exec.LookPath("groff"); err == nil {
		for p := range pages {
			out, err := runErr("", nil, "groff", "-man", "-Tutf8", "-ww", "-z", filepath.Join(dir, p))
			if err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("groff %s: err=%v\n%s", p, err, out)
			}
		}
	}
}

func TestGenDocsUsage(t *testing.T) {
	bin := synguardBinary(t)
	out, err := runErr("", nil, bin, "gendocs")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("gendocs without flags: want exit 2, got %v\n%s", err, out)
	}
	if !strings.Contains(out, "--man") {
		t.Errorf("usage error does not name the flags: %s", out)
	}
	help, _ := runErr("", nil, bin, "--help")
	if strings.Contains(help, "gendocs") {
		t.Errorf("gendocs is listed in --help; it must stay hidden:\n%s", help)
	}
}

// TestGenDocsBashCompletion sources the generated bash completion and asks
// it to complete `synguard <TAB>`: it must offer every command.
func TestGenDocsBashCompletion(t *testing.T) {
	requireTool(t, "bash", "bash")
	const bashCompletion = "/usr/share/bash-completion/bash_completion"
	if _, err := os.Stat(bashCompletion); err != nil {
		t.Skipf("%v: apt-get install bash-completion (what users have)", err)
	}
	bin := synguardBinary(t)
	dir := t.TempDir()
	run(t, "", nil, bin, "gendocs", "--completions", dir)
	for _, f := range []string{"synguard.bash", "_synguard", "synguard.fish"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Fatalf("completion %s missing or empty: %v", f, err)
		}
	}
	script := `source ` + bashCompletion + `
source "$1"
COMP_WORDS=(synguard "")
COMP_CWORD=1
COMP_LINE="synguard "
COMP_POINT=${#COMP_LINE}
__start_synguard synguard "" synguard
printf '%s\n' "${COMPREPLY[@]}"`
	out := run(t, "", []string{"PATH=" + filepath.Dir(bin) + ":" + os.Getenv("PATH")},
		"bash", "-c", script, "bash", filepath.Join(dir, "synguard.bash"))
	got := strings.Fields(out)
	for _, c := range visibleCommands(t, bin) {
		if !slices.Contains(got, c) {
			t.Errorf("bash completion of `synguard ` lacks %q; got %q", c, got)
		}
	}

	for shell, file := range map[string]string{"zsh": "_synguard", "fish": "synguard.fish"} {
		if _, err := exec.LookPath(shell); err != nil {
			t.Logf("%s not installed: %s syntax not checked", shell, file)
			continue
		}
		run(t, "", nil, shell, "-n", filepath.Join(dir, file))
	}
}
