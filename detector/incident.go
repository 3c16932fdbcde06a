package detector

import (
	"fmt"
	"net/netip"
	"time"
)

// Kind says what an incident is about: one flooding source, or one service
// flooded from many (possibly spoofed) sources.
type Kind string

const (
	// KindSource is a single source address with a half-open flood.
	KindSource Kind = "source"
	// KindService is a distributed or spoofed flood against one local
	// address:port, where no single source need cross the per-source bar.
	KindService Kind = "service"
	// KindOverload is a capacity problem, not an attack: a service's
	// clients complete their handshakes, but more arrive than the server
	// accepts, and the kernel drops handshakes. Nothing is banned or
	// protected for it.
	KindOverload Kind = "overload"
)

// Kinds lists every incident kind, for config checks and metric labels.
var Kinds = []Kind{KindSource, KindService, KindOverload}

// Verdict says what kind of event an incident is, in one word that
// operators, alert rules and scripts can act on.
type Verdict string

const (
	// VerdictSingleSource: one source floods (a KindSource incident).
	VerdictSingleSource Verdict = "single-source"
	// VerdictDistributed: many real sources send SYNs that do not complete
	// their handshakes (a botnet that does not spoof).
	VerdictDistributed Verdict = "distributed"
	// VerdictSpoofed: most sources sent one SYN and were never seen again,
	// the mark of random spoofed source addresses.
	VerdictSpoofed Verdict = "spoofed"
	// VerdictOverload: real clients completing handshakes, more of them
	// than the server accepts (a flash crowd on a small backlog).
	VerdictOverload Verdict = "overload"
)

// A service flood is spoofed when at least spoofedShare of the half-open
// sources the detector read sent a single SYN, or when at least
// untrackedShare of its SYNs came from sources it never read individually.
// The second is how a live daemon sees spoofing: its scans leave out
// sources too small to flood (a spoofed address sends one SYN), so their
// SYNs show up in the service's counters only.
const (
	spoofedShare   = 0.5
	untrackedShare = 0.9
)

// Severity ranks incidents so that alert sinks can filter and map them onto
// their own scales (PagerDuty, Alertmanager labels).
type Severity string

const (
	SeverityInfo     Severity = "info"
	SeverityWarning  Severity = "warning"
	SeverityCritical Severity = "critical"
)

// Stage is where an incident is in its lifecycle. Alerts are sent on every
// stage change and deduplicated on the incident ID.
type Stage string

const (
	StageOpened   Stage = "opened"
	StageUpdated  Stage = "updated"
	StageResolved Stage = "resolved"
)

// SourceFigure is one source's share of a service incident.
type SourceFigure struct {
	Addr   netip.Addr `json:"addr"`
	SYN    uint64     `json:"syn"`
	ACK    uint64     `json:"ack"`
	SYNPPS float64    `json:"syn_per_second"`
}

// KernelImpact is the server TCP stack's own view of the damage, taken from
// /proc/net/netstat and the listeners' queues, so that an incident carries
// evidence and not only synguard's opinion. Counts are deltas over the
// incident so far.
type KernelImpact struct {
	ListenOverflows uint64 `json:"listen_overflows"`
	ListenDrops     uint64 `json:"listen_drops"`
	ReqQFullDrop    uint64 `json:"req_q_full_drop"`
	SyncookiesSent  uint64 `json:"syncookies_sent"`
	SyncookiesRecv  uint64 `json:"syncookies_recv"`
	SyncookiesFail  uint64 `json:"syncookies_failed"`
	// Summary is the figures in words, e.g. "port 443: 1,240 handshakes
	// dropped by the kernel in the last minute".
	Summary string `json:"summary,omitempty"`
}

// Ban is a decision to drop a prefix until a time. The daemon applies it to
// the kernel blocklist; replay only reports it.
type Ban struct {
	Prefix netip.Prefix `json:"prefix"`
	From   time.Time    `json:"from"`
	Until  time.Time    `json:"until"`
	Reason string       `json:"reason"`
	// Offence counts this prefix's bans so far (1 for a first offender); ban
	// length escalates with it.
	Offence int `json:"offence"`
	// IncidentID links the ban to the incident that caused it.
	IncidentID string `json:"incident_id,omitempty"`
}

// Incident is one flood as the detector sees it. It is a value: the detector
// hands out copies, so receivers may keep them.
type Incident struct {
	// ID is stable over the incident's life and unique across restarts, so
	// alert sinks can deduplicate (PagerDuty dedup_key, Alertmanager labels).
	ID       string   `json:"id"`
	Kind     Kind     `json:"kind"`
	Stage    Stage    `json:"stage"`
	Severity Severity `json:"severity"`
	// Addr is the source address, or ip:port of the service ([v6]:port).
	Addr string `json:"addr"`
	// Verdict is what the incident is (single-source, distributed,
	// spoofed, overload); VerdictText says it with the figure behind it.
	Verdict Verdict `json:"verdict"`
	// Source is set for KindSource, Service for KindService and
	// KindOverload.
	Source  netip.Addr     `json:"-"`
	Service netip.AddrPort `json:"-"`

	OpenedAt   time.Time  `json:"opened_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	ResolvedAt *time.Time `json:"resolved_at"`

	// SYN and ACK are the counts seen since the incident opened.
	SYN uint64 `json:"syn"`
	ACK uint64 `json:"ack"`
	// Dropped counts the packets the kernel dropped under this incident's
	// bans (not counted in SYN and ACK: the data plane drops them before
	// counting).
	Dropped uint64 `json:"dropped"`
	// DroppedPerSecond is how fast the kernel dropped packets under this
	// incident's bans over the last snapshot interval: once a source is
	// banned its SYN figures stop moving (dropped packets are not counted
	// per source), and this says whether it is still pushing.
	DroppedPerSecond float64 `json:"dropped_per_second,omitempty"`
	// SYNPerSecond and HalfOpenShare are the figures that fired or last
	// updated the incident: for a service, the higher of the last
	// interval's and the smoothed SYN rate, and the half-open share of the
	// SYNs above its baseline (of all its SYNs while it has none).
	SYNPerSecond  float64 `json:"syn_per_second"`
	HalfOpenShare float64 `json:"half_open_share"`
	// PeakSYNPerSecond is the highest SYNPerSecond seen.
	PeakSYNPerSecond float64 `json:"peak_syn_per_second"`
	// SYNThreshold and HalfOpenThreshold are the bars the figures crossed
	// (for a service: its baseline plus the allowed deviation, at least
	// service_syn_rate; the half-open share then applies to the SYNs above
	// the baseline). BaselineSYNPerSecond is a service's learned normal.
	SYNThreshold         float64 `json:"syn_threshold"`
	HalfOpenThreshold    float64 `json:"half_open_threshold"`
	BaselineSYNPerSecond float64 `json:"baseline_syn_per_second,omitempty"`

	// DistinctSources and TopSources describe a service incident's senders;
	// SingleSYNSources is how many of the distinct ones sent exactly one
	// SYN, and UntrackedSYNShare the share of the flood's SYNs from sources
	// the detector never read individually (the figures behind the
	// verdict spoofed).
	DistinctSources   int            `json:"distinct_sources,omitempty"`
	SingleSYNSources  int            `json:"single_syn_sources,omitempty"`
	UntrackedSYNShare float64        `json:"untracked_syn_share,omitempty"`
	TopSources        []SourceFigure `json:"top_sources,omitempty"`
	// For an overload: CompletionShare is the share of the service's
	// SYNs that completed their handshake, and DistinctSources and
	// NewSources count the sources that sent SYNs in the last interval
	// and how many of them were never seen before.
	CompletionShare float64 `json:"handshake_completion_share,omitempty"`
	NewSources      int     `json:"new_sources,omitempty"`

	Kernel KernelImpact `json:"kernel"`

	// Reason says in words why it fired, with figures and thresholds.
	Reason string `json:"reason"`

	// Bans lists what the detector decided for this incident (empty in
	// observe mode).
	Bans []Ban `json:"bans,omitempty"`

	// Protection is what the daemon's service protection did for a
	// service incident (set by the daemon, never by the detector): nil
	// when the daemon has no protection to offer.
	Protection *Protection `json:"protection,omitempty"`
}

// Protection states of a service.
const (
	// ProtectionOn: the service is under protection.
	ProtectionOn = "on"
	// ProtectionOff: protection ended (or never started).
	ProtectionOff = "off"
	// ProtectionWouldProtect: observe mode, where nothing is dropped;
	// enforce mode would have protected the service.
	ProtectionWouldProtect = "would-protect"
	// ProtectionFailed: switching protection on failed (Reason says why).
	ProtectionFailed = "failed"
	// ProtectionHeldOff: an operator switched protection off by hand
	// during this incident; automatic protection waits for the next one.
	ProtectionHeldOff = "held-off"
)

// Protection is a service's protection during a spoofed flood, as the
// daemon reports it in incidents, status and alerts: SYNs from verified
// sources pass, the others get XDP SYN cookies (Path
// "xdp-cookies+nft-synproxy") or share a per-second budget. The counts are
// since protection started.
type Protection struct {
	State string `json:"state"`
	// Origin is "detector" (automatic, ends with the incident) or
	// "manual" (`synguard protect`, ends with `synguard unprotect`).
	Origin string `json:"origin,omitempty"`
	// Path is how unverified clients are validated; Reason explains it
	// (or why protection failed).
	Path   string `json:"path,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Cookies: XDP answers unverified SYNs with SYN cookies.
	Cookies bool `json:"cookies"`
	// Budget is the unverified SYNs per second passed to the kernel (0:
	// all of them).
	Budget uint32     `json:"budget"`
	Since  *time.Time `json:"since,omitempty"`
	Until  *time.Time `json:"until,omitempty"`
	// Verified counts SYNs from verified sources (passed); Admitted
	// unverified SYNs passed within the budget; Dropped those over it.
	Verified uint64 `json:"verified"`
	Admitted uint64 `json:"admitted"`
	Dropped  uint64 `json:"dropped"`
	// CookiesSent and CookiesValidated count cookie SYN-ACKs sent from
	// XDP and ACKs that returned a valid one (real clients).
	CookiesSent      uint64 `json:"cookies_sent"`
	CookiesValidated uint64 `json:"cookies_validated"`
	// VerifiedSources is how many sources were verified when last read.
	VerifiedSources int `json:"verified_sources"`
}

// VerdictText is the verdict in words with the figure behind it, for alerts
// and the CLI.
func (inc Incident) VerdictText() string {
	switch inc.Verdict {
	case VerdictSingleSource:
		return fmt.Sprintf("single-source: one address, %s, sends %s SYN/s, %s half-open", inc.Addr, num(inc.SYNPerSecond), pct(inc.HalfOpenShare))
	case VerdictSpoofed:
		if inc.UntrackedSYNShare >= untrackedShare {
			return fmt.Sprintf("spoofed: %s of the flood's SYNs came from sources that each sent too few SYNs to be tracked, one SYN per address", pct(inc.UntrackedSYNShare))
		}
		return fmt.Sprintf("spoofed: %s of %s distinct sources sent a single SYN and were never seen again", num(float64(inc.SingleSYNSources)), num(float64(inc.DistinctSources)))
	case VerdictOverload:
		return fmt.Sprintf("overload: %s sources (%s new) complete %s of their handshakes while the kernel drops handshakes: capacity, not an attack",
			num(float64(inc.DistinctSources)), num(float64(inc.NewSources)), pct(inc.CompletionShare))
	case VerdictDistributed:
		return fmt.Sprintf("distributed: %s distinct sources send SYNs that are %s half-open; %s of them sent a single SYN", num(float64(inc.DistinctSources)), pct(inc.HalfOpenShare), num(float64(inc.SingleSYNSources)))
	}
	return string(inc.Verdict)
}
