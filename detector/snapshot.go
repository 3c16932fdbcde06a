package detector

import (
	"net/netip"
	"time"
)

// Snapshot is what the daemon read from the data plane and the kernel at
// one instant. See the package doc for which sources it must contain.
type Snapshot struct {
	Time     time.Time
	Sources  []SourceCounters
	Services []ServiceCounters
	Kernel   KernelCounters
	// Bans are the per-ban drop counters of the kernel blocklist; optional,
	// but without them a banned source looks quiet and its ban is lifted at
	// expiry even if it is still flooding (it is flagged again at once).
	Bans []BanCounters
	// Complete says Sources lists every source whose counters moved since
	// the previous snapshot (replay; a daemon that read every entry). A
	// source absent from a complete snapshot sent nothing in between, so
	// its rate decays and, when it comes back, its new SYNs belong to the
	// last interval only. Without Complete, absence means "no new data".
	Complete bool
}

// SourceCounters is one per-source entry of the data plane, cumulative.
type SourceCounters struct {
	Addr          netip.Addr
	SYN, ACK, RST uint64
	// FirstSeen is when the kernel entry was created, if known. It lets the
	// detector rate a source that a partial snapshot lists for the first
	// time long after it appeared; zero means "new since the previous
	// snapshot".
	FirstSeen time.Time
	// LastSeen is when the kernel last counted the source, if known. A
	// source read for the first time that has been quiet since before the
	// previous snapshot (a daemon restarted after its flood ended) is
	// rated over its active life, decayed over the quiet time since,
	// instead of over its whole life up to now.
	LastSeen time.Time
}

// ServiceCounters is one per-service entry (local address:port), cumulative.
type ServiceCounters struct {
	Addr     netip.AddrPort
	SYN, ACK uint64
}

// BanCounters is one kernel blocklist entry's cumulative drop count.
type BanCounters struct {
	Prefix  netip.Prefix
	Dropped uint64
}

// KernelCounters is the server TCP stack's own evidence: cumulative
// counters from /proc/net/netstat and /proc/net/snmp, and the listeners'
// queue state. Zero values mean "not available" (replay).
type KernelCounters struct {
	ListenOverflows  uint64
	ListenDrops      uint64
	ReqQFullDrop     uint64
	SyncookiesSent   uint64
	SyncookiesRecv   uint64
	SyncookiesFailed uint64
	// PassiveOpens counts handshakes the server accepted (Tcp: PassiveOpens).
	PassiveOpens uint64
	Listeners    []Listener
}

// Listener is one LISTEN socket's accept queue: Backlog connections wait
// for accept(), MaxBacklog is the listen() backlog. A full queue means the
// kernel drops completed handshakes.
type Listener struct {
	Addr       netip.AddrPort
	Backlog    uint32
	MaxBacklog uint32
}

// Decisions is what one call changed. Receivers apply bans and unbans to
// the kernel blocklist and send one alert per incident stage change.
type Decisions struct {
	// Incidents are stage changes (opened, updated, resolved), as copies.
	Incidents []Incident
	// Bans are new or renewed bans; a renewed ban has a later Until.
	Bans []Ban
	// Unbans are lifted bans (expired and quiet, replaced by a prefix ban,
	// or newly protected). Apply Bans first: when a prefix ban replaces
	// host bans, the hosts stay blocked throughout.
	Unbans []netip.Prefix
	// Drops are open incidents whose drop figures (Dropped,
	// DroppedPerSecond) changed without a stage change: a banned source
	// still flooding, or going quiet.
	Drops []IncidentDrops
}

// IncidentDrops is an open incident's latest drop figures.
type IncidentDrops struct {
	ID        string
	Dropped   uint64
	PerSecond float64
}

// Empty reports whether nothing changed.
func (d Decisions) Empty() bool {
	return len(d.Incidents) == 0 && len(d.Bans) == 0 && len(d.Unbans) == 0 && len(d.Drops) == 0
}

// Options are the detector's environment, as opposed to its thresholds.
type Options struct {
	// Enforce makes the detector ban; false is observe mode: incidents only.
	Enforce bool
	// Protected prefixes are never banned: the allowlist, the host's default
	// gateways, the peers of established management (SSH) sessions. Update
	// them with SetProtected.
	Protected []netip.Prefix
	// Host names this machine in incident ids, so ids from several hosts do
	// not collide in one alert sink. Empty means "synguard".
	Host string
	// NewID overrides the incident id scheme. The default is derived from
	// Host, kind, address and opening time, so it is stable over restarts and
	// replays and unique per incident.
	NewID func(k Kind, addr string, opened time.Time) string
}

// Explanation says why a source is or is not banned, with its figures.
type Explanation struct {
	Addr netip.Addr `json:"addr"`
	// Tracked is false when the detector holds no figures for the address.
	Tracked bool      `json:"tracked"`
	SeenAt  time.Time `json:"seen_at,omitzero"`
	// SYN and ACK are the last cumulative counters read.
	SYN           uint64  `json:"syn"`
	ACK           uint64  `json:"ack"`
	SYNPerSecond  float64 `json:"syn_per_second"`
	HalfOpenShare float64 `json:"half_open_share"`
	// SYNThreshold and HalfOpenThreshold are the configured bars.
	SYNThreshold      float64 `json:"syn_threshold"`
	HalfOpenThreshold float64 `json:"half_open_threshold"`
	Flagged           bool    `json:"flagged"`
	IncidentID        string  `json:"incident_id,omitempty"`
	// Verdict is the verdict of that incident (its words are in Text).
	Verdict Verdict `json:"verdict,omitempty"`
	// ProtectedBy is the protected prefix covering the address, if any.
	ProtectedBy *netip.Prefix `json:"protected_by,omitempty"`
	Ban         *Ban          `json:"ban,omitempty"`
	// Offences counts the bans of the address's prefix in memory.
	Offences int `json:"offences"`
	// Text is all of the above in one sentence for the CLI.
	Text string `json:"text"`
}
