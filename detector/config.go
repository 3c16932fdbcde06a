package detector

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Config holds every threshold and window of the detector. It is the
// `detector:` section of the daemon's configuration file, so that `synguard
// replay --config` tries exactly the values the daemon would use.
type Config struct {
	// Window is the time constant of the short EWMA that smooths each
	// source's and service's SYN rate and half-open share.
	Window time.Duration `yaml:"window"`

	// SourceSYNRate is the per-source floor in SYN/s: below it a source is
	// never flagged, whatever its half-open share (a browser opening 30
	// connections at once stays below it).
	SourceSYNRate float64 `yaml:"source_syn_rate"`
	// SourceHalfOpen is the share of a source's SYNs not matched by ACKs
	// above which it is flagged (with the rate above the floor).
	SourceHalfOpen float64 `yaml:"source_half_open"`
	// SuspectSYNs is the run of SYNs without an ACK that makes an early
	// warning from the data plane count as evidence on its own.
	SuspectSYNs uint32 `yaml:"suspect_syns"`

	// ServiceSYNRate is the per-service floor in SYN/s for a distributed
	// flood: a departure from the baseline below it is not reported.
	ServiceSYNRate float64 `yaml:"service_syn_rate"`
	// ServiceHalfOpen is the half-open share a service must reach.
	ServiceHalfOpen float64 `yaml:"service_half_open"`
	// ServiceBaseline is the time constant of the slow EWMA that learns a
	// service's normal SYN rate and its spread.
	ServiceBaseline time.Duration `yaml:"service_baseline"`
	// ServiceDeviations (CUSUM k) is how many standard deviations above the
	// baseline a rate must be before it accumulates evidence.
	ServiceDeviations float64 `yaml:"service_deviations"`
	// ServiceCUSUM (CUSUM h) is how much evidence, in standard deviations x
	// seconds, flags the service.
	ServiceCUSUM float64 `yaml:"service_cusum"`
	// ServiceBanAfter: while a service incident is open in enforce mode, a
	// source that has sent half-open SYNs through it for this long (at
	// ServiceBanSYNRate or more) and completed no handshake is banned,
	// even below the per-source bar: a slow botnet.
	ServiceBanAfter time.Duration `yaml:"service_ban_after"`
	// ServiceBanSYNRate is the average SYN/s such a source must keep up.
	ServiceBanSYNRate float64 `yaml:"service_ban_syn_rate"`
	// TopSources is how many sources a service incident lists.
	TopSources int `yaml:"top_sources"`

	// ResolveAfter is how long an incident must stay below its thresholds
	// (or quiet) before it is resolved.
	ResolveAfter time.Duration `yaml:"resolve_after"`
	// UpdateEvery is how often an open incident reports fresh figures.
	UpdateEvery time.Duration `yaml:"update_every"`
	// KernelWindow is the period the kernel-impact summary talks about
	// ("in the last minute").
	KernelWindow time.Duration `yaml:"kernel_window"`

	// BanBase is a first offender's ban length.
	BanBase time.Duration `yaml:"ban_base"`
	// BanFactor multiplies the length for every repeat offence.
	BanFactor float64 `yaml:"ban_factor"`
	// BanMax caps the escalated length.
	BanMax time.Duration `yaml:"ban_max"`
	// BanGrace is how long a banned prefix must be quiet before its ban is
	// allowed to end; while it keeps sending the ban is renewed.
	BanGrace time.Duration `yaml:"ban_grace"`
	// OffenceMemory is how long a lifted ban still counts as an offence for
	// escalation.
	OffenceMemory time.Duration `yaml:"offence_memory"`
	// MaxBans caps the number of active bans (the kernel blocklist size).
	MaxBans int `yaml:"max_bans"`
	// AggregateSources flagged sources in one /24 (IPv4) or /64 (IPv6) are
	// replaced by one prefix ban; 0 disables aggregation.
	AggregateSources int `yaml:"aggregate_sources"`
	// AggregateV4Bits and AggregateV6Bits are the aggregation prefix lengths.
	AggregateV4Bits int `yaml:"aggregate_v4_bits"`
	AggregateV6Bits int `yaml:"aggregate_v6_bits"`

	// MaxSources caps the tracked sources, so that memory stays bounded
	// under a random-source flood; the quietest are forgotten first.
	MaxSources int `yaml:"max_sources"`
	// MaxServices caps the tracked services.
	MaxServices int `yaml:"max_services"`
	// MaxIncidents caps the open incidents; beyond it flagged sources are
	// still banned but share no incident of their own.
	MaxIncidents int `yaml:"max_incidents"`
	// SourceIdle forgets a source not seen for this long (its escalation
	// history is kept separately).
	SourceIdle time.Duration `yaml:"source_idle"`
}

// DefaultConfig returns thresholds that flag a source sending 100 SYN/s
// without ACKs within a second and leave browsers, NAT gateways and lossy
// links alone.
func DefaultConfig() Config {
	return Config{
		Window:            2 * time.Second,
		SourceSYNRate:     50,
		SourceHalfOpen:    0.7,
		SuspectSYNs:       100,
		ServiceSYNRate:    100,
		ServiceHalfOpen:   0.5,
		ServiceBaseline:   5 * time.Minute,
		ServiceDeviations: 3,
		ServiceCUSUM:      5,
		ServiceBanAfter:   5 * time.Second,
		ServiceBanSYNRate: 10,
		TopSources:        10,
		ResolveAfter:      30 * time.Second,
		UpdateEvery:       time.Minute,
		KernelWindow:      time.Minute,
		BanBase:           10 * time.Minute,
		BanFactor:         4,
		BanMax:            24 * time.Hour,
		BanGrace:          2 * time.Minute,
		OffenceMemory:     7 * 24 * time.Hour,
		MaxBans:           65536,
		AggregateSources:  8,
		AggregateV4Bits:   24,
		AggregateV6Bits:   64,
		MaxSources:        1 << 20,
		MaxServices:       65536,
		MaxIncidents:      10000,
		SourceIdle:        10 * time.Minute,
	}
}

// ConfigError is an invalid detector setting. Key is the dotted path in the
// daemon's file ("detector.window"), so a sysadmin can find it.
type ConfigError struct {
	Key     string
	Value   string
	Allowed string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("config key %s: invalid value %q: allowed: %s", e.Key, e.Value, e.Allowed)
}

// Validate checks every value and names the key, the value and what is
// allowed in its error.
func (c Config) Validate() error {
	dur := func(key string, v, lo, hi time.Duration) error {
		if v < lo || v > hi {
			return &ConfigError{Key: "detector." + key, Value: v.String(), Allowed: fmt.Sprintf("a duration from %v to %v", lo, hi)}
		}
		return nil
	}
	num := func(key string, v, lo, hi float64) error {
		if math.IsNaN(v) || v < lo || v > hi {
			f := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
			return &ConfigError{Key: "detector." + key, Value: f(v), Allowed: fmt.Sprintf("a number from %s to %s", f(lo), f(hi))}
		}
		return nil
	}
	integer := func(key string, v, lo, hi int) error {
		if v < lo || v > hi {
			return &ConfigError{Key: "detector." + key, Value: fmt.Sprint(v), Allowed: fmt.Sprintf("an integer from %d to %d", lo, hi)}
		}
		return nil
	}
	checks := []error{
		dur("window", c.Window, 100*time.Millisecond, time.Minute),
		num("source_syn_rate", c.SourceSYNRate, 1, 1e9),
		num("source_half_open", c.SourceHalfOpen, 0.05, 1),
		integer("suspect_syns", int(c.SuspectSYNs), 1, 1<<20),
		num("service_syn_rate", c.ServiceSYNRate, 1, 1e9),
		num("service_half_open", c.ServiceHalfOpen, 0.05, 1),
		dur("service_baseline", c.ServiceBaseline, 10*time.Second, 24*time.Hour),
		num("service_deviations", c.ServiceDeviations, 0, 100),
		num("service_cusum", c.ServiceCUSUM, 0.1, 1000),
		dur("service_ban_after", c.ServiceBanAfter, time.Second, time.Hour),
		num("service_ban_syn_rate", c.ServiceBanSYNRate, 0.1, 1e6),
		integer("top_sources", c.TopSources, 1, 100),
		dur("resolve_after", c.ResolveAfter, time.Second, 24*time.Hour),
		dur("update_every", c.UpdateEvery, time.Second, 24*time.Hour),
		dur("kernel_window", c.KernelWindow, time.Second, 24*time.Hour),
		dur("ban_base", c.BanBase, time.Second, 365*24*time.Hour),
		num("ban_factor", c.BanFactor, 1, 100),
		dur("ban_max", c.BanMax, c.BanBase, 365*24*time.Hour),
		dur("ban_grace", c.BanGrace, 0, 24*time.Hour),
		dur("offence_memory", c.OffenceMemory, 0, 365*24*time.Hour),
		integer("max_bans", c.MaxBans, 1, 1<<24),
		integer("aggregate_sources", c.AggregateSources, 0, 1<<16),
		integer("aggregate_v4_bits", c.AggregateV4Bits, 8, 31),
		integer("aggregate_v6_bits", c.AggregateV6Bits, 16, 127),
		integer("max_sources", c.MaxSources, 1024, 1<<26),
		integer("max_services", c.MaxServices, 16, 1<<22),
		integer("max_incidents", c.MaxIncidents, 1, 1<<22),
		dur("source_idle", c.SourceIdle, c.Window, 24*time.Hour),
	}
	for _, err := range checks {
		if err != nil {
			return err
		}
	}
	return nil
}
