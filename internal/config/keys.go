package config

import (
	"encoding"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

var (
	typeOfConfig      = reflect.TypeOf(Config{})
	typeOfDuration    = reflect.TypeOf(time.Duration(0))
	typeOfUnmarshaler = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
	typeOfTextUnm     = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
)

// checkNode walks the YAML tree against the Go type it will decode into, so
// that unknown keys and ill-typed values are reported with their full dotted
// key and line (yaml.v3's own errors name only the Go type).
func checkNode(n *yaml.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // null keeps the default
	}
	// Types with their own decoding (sink configs, addresses) validate
	// themselves; their Validate errors name the key.
	if reflect.PointerTo(t).Implements(typeOfUnmarshaler) || reflect.PointerTo(t).Implements(typeOfTextUnm) {
		return nil
	}
	switch {
	case t == typeOfDuration:
		if n.Kind != yaml.ScalarNode {
			return &Error{Key: path, Value: nodeText(n), Line: n.Line, Allowed: "a duration such as 1s, 500ms or 2m"}
		}
		if _, err := time.ParseDuration(n.Value); err != nil {
			return &Error{Key: path, Value: n.Value, Line: n.Line, Allowed: "a duration such as 1s, 500ms or 2m"}
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return &Error{Key: path, Value: nodeText(n), Line: n.Line, Allowed: "a mapping with keys " + joinQuoted(structKeys(t))}
		}
		fields := structFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			key := join(path, k.Value)
			if k.Value == "<<" {
				continue // merge keys: yaml.v3 checks them when decoding
			}
			ft, ok := fields[k.Value]
			if !ok {
				return &UnknownKeyError{Key: key, Line: k.Line, Known: structKeys(t)}
			}
			if err := checkNode(v, ft, key); err != nil {
				return err
			}
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return &Error{Key: path, Value: nodeText(n), Line: n.Line, Allowed: "a list (e.g. [a, b] or one '- item' per line)"}
		}
		for i, item := range n.Content {
			if err := checkNode(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return &Error{Key: path, Value: nodeText(n), Line: n.Line, Allowed: "a mapping"}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := checkNode(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value)); err != nil {
				return err
			}
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return &Error{Key: path, Value: nodeText(n), Line: n.Line, Allowed: "true or false"}
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n.Kind != yaml.ScalarNode {
			return &Error{Key: path, Value: nodeText(n), Line: n.Line, Allowed: "an integer"}
		}
		if _, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, t.Bits()); err != nil {
			return &Error{Key: path, Value: n.Value, Line: n.Line, Allowed: fmt.Sprintf("an integer that fits %d bits", t.Bits())}
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind != yaml.ScalarNode {
			return &Error{Key: path, Value: nodeText(n), Line: n.Line, Allowed: "a non-negative integer"}
		}
		if _, err := strconv.ParseUint(strings.ReplaceAll(n.Value, "_", ""), 0, t.Bits()); err != nil {
			return &Error{Key: path, Value: n.Value, Line: n.Line, Allowed: fmt.Sprintf("a non-negative integer that fits %d bits", t.Bits())}
		}
	case reflect.Float32, reflect.Float64:
		if n.Kind != yaml.ScalarNode {
			return &Error{Key: path, Value: nodeText(n), Line: n.Line, Allowed: "a number"}
		}
		if _, err := strconv.ParseFloat(n.Value, 64); err != nil {
			return &Error{Key: path, Value: n.Value, Line: n.Line, Allowed: "a number"}
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			return &Error{Key: path, Value: nodeText(n), Line: n.Line, Allowed: "a string"}
		}
	}
	return nil
}

// yamlField reads a struct field's yaml tag as yaml.v3 does: its key
// (yaml.v3's default, the lower-cased field name, when the tag names none)
// and its options. skip is true for unexported and `yaml:"-"` fields, which
// are neither keys nor printed.
func yamlField(f reflect.StructField) (key, opts string, skip bool) {
	if !f.IsExported() {
		return "", "", true
	}
	key, opts, _ = strings.Cut(f.Tag.Get("yaml"), ",")
	if key == "-" {
		return "", "", true
	}
	if key == "" {
		key = strings.ToLower(f.Name)
	}
	return key, opts, false
}

// structFields maps yaml keys to field types, flattening ",inline" fields.
func structFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, skip := yamlField(f)
		if skip {
			continue
		}
		if strings.Contains(opts, "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range structFields(ft) {
					out[k] = v
				}
			}
			continue
		}
		out[name] = f.Type
	}
	return out
}

func structKeys(t reflect.Type) []string {
	var keys []string
	for k := range structFields(t) {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func nodeText(n *yaml.Node) string {
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Value
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	return "?"
}
