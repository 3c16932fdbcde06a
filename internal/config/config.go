// Package config owns synguard's configuration file: its keys, their
// defaults, and validation with errors that name the key, the value and what
// is allowed, so that a sysadmin can fix a file without reading the code.
//
// The file is YAML; unknown keys are errors (a typo must not silently fall
// back to a default). The documented default file is systemd/synguard.yaml.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/synguard/synguard/alert"
	"github.com/synguard/synguard/detector"
)

// DefaultPath is where packages install the configuration file and where
// `synguard run` looks when --config is not given.
const DefaultPath = "/etc/synguard/synguard.yaml"

// Config is the whole configuration of the daemon. Every field has a yaml
// key; Default() returns the values used for keys that the file omits.
type Config struct {
	// Interfaces are the network interfaces to protect. Empty means the
	// interfaces that carry the host's default routes, resolved at start.
	Interfaces []string `yaml:"interfaces"`
	// Mode is observe (count what would be dropped) or enforce (drop).
	Mode string `yaml:"mode"`
	// Attach is the XDP attach mode: auto, native or generic.
	Attach string `yaml:"attach"`
	// PollInterval is how often the kernel counters are read.
	PollInterval time.Duration `yaml:"poll_interval"`
	// FullScanInterval is how often every per-source entry is read; between
	// scans only the sources named by suspect events or already tracked are.
	FullScanInterval time.Duration `yaml:"full_scan_interval"`
	// WatchMax caps the sources read one by one each poll.
	WatchMax int `yaml:"watch_max"`
	// Socket is the Unix socket of the control API.
	Socket string `yaml:"socket"`
	// SocketGroup may read and change state through the socket besides root.
	SocketGroup string `yaml:"socket_group"`
	// StateDir keeps ban reasons, escalation history, detector state, manual
	// protections and the sysctl values protection must put back.
	StateDir string `yaml:"state_dir"`
	// BPFFS is the bpffs directory for pinned maps and links, one
	// subdirectory per interface.
	BPFFS string `yaml:"bpffs"`
	// MetricsAddr is where Prometheus metrics are served; empty disables.
	MetricsAddr string `yaml:"metrics_addr"`
	// DetachOnExit removes XDP when the daemon stops (bans stop applying).
	DetachOnExit bool `yaml:"detach_on_exit"`
	// ManualBanTTL is the ban length of `synguard block` without --ttl.
	ManualBanTTL time.Duration `yaml:"manual_ban_ttl"`
	// Allow lists prefixes that are never dropped (kernel allowlist).
	Allow []string `yaml:"allow"`

	Log      Log      `yaml:"log"`
	Datapath Datapath `yaml:"datapath"`
	Protect  Protect  `yaml:"protect"`
	// Protection is service protection against spoofed floods.
	Protection Protection `yaml:"protection"`

	// Detector holds the detector's thresholds; its suspect_syns also sets
	// the data plane's early-warning threshold.
	Detector detector.Config `yaml:"detector"`
	// Alerts are the sinks incidents are sent to; empty means log only.
	Alerts []alert.SinkConfig `yaml:"alerts"`
}

// Log configures log/slog output on stderr.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text (journald-friendly) or json.
	Format string `yaml:"format"`
}

// Datapath sizes the kernel maps and tunes the early-warning events. A new
// map size applies at the next start: the data plane migrates the pinned
// maps, keeping bans and the allowlist (counters start afresh).
type Datapath struct {
	// MaxSources is the per-source LRU map size.
	MaxSources uint32 `yaml:"max_sources"`
	// MaxServices is the per-service map size.
	MaxServices uint32 `yaml:"max_services"`
	// MaxBans is the kernel blocklist size (detector and manual bans).
	MaxBans uint32 `yaml:"max_bans"`
	// SuspectInterval rate-limits early-warning events per source.
	SuspectInterval time.Duration `yaml:"suspect_interval"`
}

// Protect names sources the detector must never ban, so that an admin does
// not lock himself or the host's router out.
type Protect struct {
	// DefaultGateways protects the next hops of the host's default routes.
	DefaultGateways bool `yaml:"default_gateways"`
	// SSHPorts: peers with an ESTABLISHED connection to these local ports
	// are protected.
	SSHPorts []int `yaml:"ssh_ports"`
	// Prefixes are protected from detector bans (but not from manual ones
	// and not allowlisted in the kernel).
	Prefixes []string `yaml:"prefixes"`
}

// Default returns the configuration used for every key a file omits: observe
// mode, so that a first run never drops traffic.
func Default() *Config {
	return &Config{
		Mode:             "observe",
		Attach:           "auto",
		PollInterval:     time.Second,
		FullScanInterval: 10 * time.Second,
		WatchMax:         4096,
		Socket:           "/run/synguard/synguard.sock",
		SocketGroup:      "synguard",
		StateDir:         "/var/lib/synguard",
		BPFFS:            "/sys/fs/bpf/synguard",
		MetricsAddr:      "127.0.0.1:9717",
		ManualBanTTL:     time.Hour,
		Log:              Log{Level: "info", Format: "text"},
		Datapath: Datapath{
			MaxSources:      1 << 20,
			MaxServices:     65536,
			MaxBans:         65536,
			SuspectInterval: time.Second,
		},
		Protect:    Protect{DefaultGateways: true, SSHPorts: []int{22}},
		Protection: DefaultProtection(),
		Detector:   detector.DefaultConfig(),
	}
}

// Error is an invalid configuration value. Callers exit with code 2.
type Error struct {
	Key     string // dotted path, e.g. "log.level" or "allow[2]"
	Value   string // the offending value as written
	Allowed string // what would have been accepted
	Line    int    // line in the file, 0 when unknown (flags, defaults)
}

func (e *Error) Error() string {
	where := ""
	if e.Line > 0 {
		where = fmt.Sprintf(" (line %d)", e.Line)
	}
	return fmt.Sprintf("config key %s%s: invalid value %q: allowed: %s", e.Key, where, e.Value, e.Allowed)
}

// UnknownKeyError is a key that synguard does not know, usually a typo.
type UnknownKeyError struct {
	Key   string
	Line  int
	Known []string
}

func (e *UnknownKeyError) Error() string {
	return fmt.Sprintf("config key %s (line %d): unknown key: allowed keys here: %s", e.Key, e.Line, joinQuoted(e.Known))
}

// IsInvalid reports whether err is a configuration error (as opposed to an
// I/O error), which the CLI turns into exit code 2.
func IsInvalid(err error) bool {
	var e *Error
	var u *UnknownKeyError
	var s *SyntaxError
	var p *PartError
	return errors.As(err, &e) || errors.As(err, &u) || errors.As(err, &s) || errors.As(err, &p)
}

// SyntaxError is a file that is not valid YAML.
type SyntaxError struct {
	Path string
	Err  error
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("config %s: %v", e.Path, e.Err) }
func (e *SyntaxError) Unwrap() error { return e.Err }

// Load reads, decodes and validates the file at path. Keys the file omits
// keep their Default() values.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	cfg, err := Parse(data)
	if err != nil {
		var se *SyntaxError
		if errors.As(err, &se) {
			se.Path = path
		}
		return nil, err
	}
	return cfg, nil
}

// Parse decodes and validates a configuration from YAML text.
func Parse(data []byte) (*Config, error) {
	cfg := Default()
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &SyntaxError{Path: "<input>", Err: err}
	}
	if len(root.Content) > 0 {
		doc := root.Content[0]
		if doc.Kind != yaml.MappingNode && !(doc.Kind == yaml.ScalarNode && doc.Tag == "!!null") {
			return nil, &Error{Key: "(top level)", Value: doc.Value, Line: doc.Line, Allowed: "a mapping of keys to values"}
		}
		if err := checkNode(doc, typeOfConfig, ""); err != nil {
			return nil, err
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
			return nil, &SyntaxError{Path: "<input>", Err: err}
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Validate checks every key and returns the first invalid one as *Error.
func (c *Config) Validate() error {
	for i, name := range c.Interfaces {
		if name == "" || len(name) > 15 || bytes.ContainsAny([]byte(name), "/ \t\n") {
			return &Error{Key: fmt.Sprintf("interfaces[%d]", i), Value: name, Allowed: "an interface name of 1-15 characters without '/' or spaces"}
		}
		for _, prev := range c.Interfaces[:i] {
			if prev == name {
				return &Error{Key: fmt.Sprintf("interfaces[%d]", i), Value: name, Allowed: "each interface once"}
			}
		}
	}
	if err := oneOf("mode", c.Mode, "observe", "enforce"); err != nil {
		return err
	}
	if err := oneOf("attach", c.Attach, "auto", "native", "generic"); err != nil {
		return err
	}
	if err := durationIn("poll_interval", c.PollInterval, 100*time.Millisecond, time.Minute); err != nil {
		return err
	}
	if err := durationIn("full_scan_interval", c.FullScanInterval, c.PollInterval, time.Hour); err != nil {
		return err
	}
	if c.WatchMax < 16 || c.WatchMax > 1<<20 {
		return &Error{Key: "watch_max", Value: fmt.Sprint(c.WatchMax), Allowed: "an integer from 16 to 1048576"}
	}
	if c.Socket == "" || c.Socket[0] != '/' || len(c.Socket) > 107 {
		return &Error{Key: "socket", Value: c.Socket, Allowed: "an absolute path of at most 107 bytes"}
	}
	for _, k := range []struct{ key, val string }{{"state_dir", c.StateDir}, {"bpffs", c.BPFFS}} {
		if k.val == "" || k.val[0] != '/' {
			return &Error{Key: k.key, Value: k.val, Allowed: "an absolute directory path"}
		}
	}
	if c.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(c.MetricsAddr); err != nil || port == "" {
			return &Error{Key: "metrics_addr", Value: c.MetricsAddr, Allowed: "HOST:PORT (e.g. 127.0.0.1:9717), or empty to disable metrics"}
		}
	}
	if err := durationIn("manual_ban_ttl", c.ManualBanTTL, time.Second, 365*24*time.Hour); err != nil {
		return err
	}
	for i, s := range c.Allow {
		if _, err := ParseAllowPrefix(s); err != nil {
			return &Error{Key: fmt.Sprintf("allow[%d]", i), Value: s, Allowed: allowedPrefix + " other than 0.0.0.0/0 and ::/0 (" + err.Error() + ")"}
		}
	}
	if err := oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error"); err != nil {
		return err
	}
	if err := oneOf("log.format", c.Log.Format, "text", "json"); err != nil {
		return err
	}
	d := c.Datapath
	if d.MaxSources < 1024 || d.MaxSources > 1<<24 {
		return &Error{Key: "datapath.max_sources", Value: fmt.Sprint(d.MaxSources), Allowed: "an integer from 1024 to 16777216"}
	}
	if d.MaxServices < 16 || d.MaxServices > 1<<20 {
		return &Error{Key: "datapath.max_services", Value: fmt.Sprint(d.MaxServices), Allowed: "an integer from 16 to 1048576"}
	}
	if d.MaxBans < 16 || d.MaxBans > 1<<22 {
		return &Error{Key: "datapath.max_bans", Value: fmt.Sprint(d.MaxBans), Allowed: "an integer from 16 to 4194304"}
	}
	if err := durationIn("datapath.suspect_interval", d.SuspectInterval, 10*time.Millisecond, time.Minute); err != nil {
		return err
	}
	for i, p := range c.Protect.SSHPorts {
		if p < 1 || p > 65535 {
			return &Error{Key: fmt.Sprintf("protect.ssh_ports[%d]", i), Value: fmt.Sprint(p), Allowed: "a TCP port from 1 to 65535"}
		}
	}
	for i, s := range c.Protect.Prefixes {
		if _, err := ParsePrefix(s); err != nil {
			return &Error{Key: fmt.Sprintf("protect.prefixes[%d]", i), Value: s, Allowed: allowedPrefix + " (" + err.Error() + ")"}
		}
	}
	if err := c.Protection.validate(); err != nil {
		return err
	}
	return c.validateParts()
}

const allowedPrefix = "an address or CIDR prefix with no host bits set, e.g. 192.0.2.0/24, 2001:db8::/32 or 192.0.2.7"

// ParsePrefix parses "a.b.c.d/n", "v6/n" or a bare address (a host prefix).
// IPv4-mapped IPv6 is unmapped so that one address has one spelling. Host
// bits must be zero: "10.0.0.1/8" is more likely a typo than intent.
func ParsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return p, fmt.Errorf("%s: zones are not allowed", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%s: not an address or CIDR prefix", s)
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	if p.Masked() != p {
		return p, fmt.Errorf("%s: host bits set, did you mean %s", s, p.Masked())
	}
	return p, nil
}

// ParseAllowPrefix is ParsePrefix that also refuses prefixes covering every
// address: allowlisting the whole Internet switches protection off.
func ParseAllowPrefix(s string) (netip.Prefix, error) {
	p, err := ParsePrefix(s)
	if err != nil {
		return p, err
	}
	if p.Bits() == 0 {
		return p, fmt.Errorf("%s covers every address and would switch protection off", s)
	}
	return p, nil
}

func oneOf(key, val string, allowed ...string) error {
	for _, a := range allowed {
		if val == a {
			return nil
		}
	}
	return &Error{Key: key, Value: val, Allowed: joinQuoted(allowed)}
}

func durationIn(key string, d, lo, hi time.Duration) error {
	if d < lo || d > hi {
		return &Error{Key: key, Value: d.String(), Allowed: fmt.Sprintf("a duration from %s to %s (e.g. 1s, 500ms, 2m)", lo, hi)}
	}
	return nil
}

func joinQuoted(vals []string) string {
	var b bytes.Buffer
	for i, v := range vals {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(v)
	}
	return b.String()
}
