package config

import (
	"bytes"
	"encoding"
	"fmt"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/synguard/synguard/alert"
)

// Marshal renders the effective configuration as YAML that Load accepts,
// with durations written as "1s" rather than nanoseconds so that `synguard
// config check` output can be read and pasted back.
func (c *Config) Marshal() ([]byte, error) {
	n, err := toNode(reflect.ValueOf(c))
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Redacted returns a copy safe to print or log: inline alert URLs (the
// credential of webhook and slack sinks) are redacted, as alert.SinkConfig
// does it. Secret files are named, never read.
func (c *Config) Redacted() *Config {
	r := *c
	r.Alerts = make([]alert.SinkConfig, len(c.Alerts))
	for i, s := range c.Alerts {
		r.Alerts[i] = s.Redacted()
	}
	return &r
}

// FormatDuration writes d as the config file does: 1h rather than 1h0m0s.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

var (
	typeOfMarshaler   = reflect.TypeOf((*yaml.Marshaler)(nil)).Elem()
	typeOfTextMarshal = reflect.TypeOf((*encoding.TextMarshaler)(nil)).Elem()
)

func toNode(v reflect.Value) (*yaml.Node, error) {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}, nil
		}
		v = v.Elem()
	}
	t := v.Type()
	if t == typeOfDuration {
		return &yaml.Node{Kind: yaml.ScalarNode, Value: FormatDuration(time.Duration(v.Int()))}, nil
	}
	if t.Implements(typeOfMarshaler) || t.Implements(typeOfTextMarshal) {
		n := &yaml.Node{}
		if err := n.Encode(v.Interface()); err != nil {
			return nil, fmt.Errorf("encode %s: %w", t, err)
		}
		return n, nil
	}
	switch t.Kind() {
	case reflect.Struct:
		m := &yaml.Node{Kind: yaml.MappingNode}
		if err := appendFields(m, v); err != nil {
			return nil, err
		}
		return m, nil
	case reflect.Slice, reflect.Array:
		s := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for i := 0; i < v.Len(); i++ {
			item, err := toNode(v.Index(i))
			if err != nil {
				return nil, err
			}
			if item.Kind != yaml.ScalarNode {
				s.Style = 0
			}
			s.Content = append(s.Content, item)
		}
		return s, nil
	case reflect.Map:
		m := &yaml.Node{Kind: yaml.MappingNode}
		iter := v.MapRange()
		for iter.Next() {
			val, err := toNode(iter.Value())
			if err != nil {
				return nil, err
			}
			m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: fmt.Sprint(iter.Key().Interface())}, val)
		}
		return m, nil
	}
	n := &yaml.Node{}
	if err := n.Encode(v.Interface()); err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return n, nil
}

func appendFields(m *yaml.Node, v reflect.Value) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		name, opts, skip := yamlField(t.Field(i))
		if skip {
			continue
		}
		fv := v.Field(i)
		if strings.Contains(opts, "inline") {
			for fv.Kind() == reflect.Pointer {
				if fv.IsNil() {
					break
				}
				fv = fv.Elem()
			}
			if fv.Kind() == reflect.Struct {
				if err := appendFields(m, fv); err != nil {
					return err
				}
			}
			continue
		}
		if strings.Contains(opts, "omitempty") && fv.IsZero() {
			continue
		}
		val, err := toNode(fv)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: name}, val)
	}
	return nil
}
