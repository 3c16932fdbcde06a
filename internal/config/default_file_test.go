package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// The shipped default file must parse, must equal the built-in defaults
// (so that documentation and code cannot drift), and must list every key.
func TestShippedDefaultFile(t *testing.T) {
	data, err := os.ReadFile("../../systemd/synguard.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(data)
	if err != nil {
		t.Fatalf("systemd/synguard.yaml: %v", err)
	}
	if c.Mode != "observe" {
		t.Errorf("shipped mode %q: a first run must observe", c.Mode)
	}
	got, _ := c.Marshal()
	want, _ := Default().Marshal()
	if string(got) != string(want) {
		t.Errorf("systemd/synguard.yaml differs from Default():\n--- file\n%s\n--- Default()\n%s", got, want)
	}
	for _, key := range keyPaths(reflect.TypeOf(Config{}), "") {
		parts := strings.Split(key, ".")
		leaf := parts[len(parts)-1]
		indent := strings.Repeat("  ", len(parts)-1)
		re := regexp.MustCompile(`(?m)^` + indent + regexp.QuoteMeta(leaf) + `:`)
		if !re.Match(data) {
			t.Errorf("key %s is not listed in systemd/synguard.yaml", key)
		}
	}
}

func keyPaths(t reflect.Type, prefix string) []string {
	var out []string
	for k, ft := range structFields(t) {
		path := join(prefix, k)
		out = append(out, path)
		if ft.Kind() == reflect.Struct && ft != typeOfDuration {
			out = append(out, keyPaths(ft, path)...)
		}
	}
	return out
}
