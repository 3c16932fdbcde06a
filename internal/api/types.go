// Package api is synguard's control API: the JSON types spoken over the
// daemon's Unix socket, the HTTP server that enforces who may change state
// (peer credentials), and the client the CLI uses. The daemon implements
// Backend; the CLI only ever sees these types.
package api

import (
	"net/netip"
	"time"

	"github.com/synguard/synguard/detector"
)

// Counters are the data plane's global counters summed over CPUs and
// interfaces. Every frame increments Frames and exactly one kind counter.
type Counters struct {
	Frames      uint64 `json:"frames"`
	NonIP       uint64 `json:"non_ip"`
	NonTCP      uint64 `json:"non_tcp"`
	Fragments   uint64 `json:"fragments"`
	NotParsed   uint64 `json:"not_parsed"`
	TCP         uint64 `json:"tcp"`
	SYN         uint64 `json:"syn"`
	SYNACK      uint64 `json:"synack"`
	ACK         uint64 `json:"ack"`
	RST         uint64 `json:"rst"`
	TCPOther    uint64 `json:"tcp_other"`
	Dropped     uint64 `json:"dropped"`
	WouldDrop   uint64 `json:"would_drop"`
	Allowlisted uint64 `json:"allowlisted"`
}

// Add sums two interfaces' counters.
func (c Counters) Add(o Counters) Counters {
	return Counters{
		Frames: c.Frames + o.Frames, NonIP: c.NonIP + o.NonIP, NonTCP: c.NonTCP + o.NonTCP,
		Fragments: c.Fragments + o.Fragments, NotParsed: c.NotParsed + o.NotParsed, TCP: c.TCP + o.TCP,
		SYN: c.SYN + o.SYN, SYNACK: c.SYNACK + o.SYNACK, ACK: c.ACK + o.ACK, RST: c.RST + o.RST,
		TCPOther: c.TCPOther + o.TCPOther, Dropped: c.Dropped + o.Dropped, WouldDrop: c.WouldDrop + o.WouldDrop,
		Allowlisted: c.Allowlisted + o.Allowlisted,
	}
}

// Source is one source address's kernel counters (cumulative since the
// entry was created; the LRU map may evict idle entries).
type Source struct {
	Addr      netip.Addr `json:"addr"`
	SYN       uint64     `json:"syn"`
	ACK       uint64     `json:"ack"`
	RST       uint64     `json:"rst"`
	FirstSeen time.Time  `json:"first_seen"`
	LastSeen  time.Time  `json:"last_seen"`
}

// Service is one local address:port's kernel counters.
type Service struct {
	Addr netip.AddrPort `json:"addr"`
	SYN  uint64         `json:"syn"`
	ACK  uint64         `json:"ack"`
}

// Ban origins: who put a prefix on the blocklist.
const (
	OriginDetector = "detector"
	OriginManual   = "manual"
	OriginConfig   = "config"
	// OriginUnknown is a kernel entry with no record in the state dir
	// (state dir wiped, or added by another tool).
	OriginUnknown = "unknown"
)

// Ban is one blocklist entry: the kernel's expiry and drop count joined
// with the reason kept in the state dir. The JSON names prefix, until,
// dropped and reason are a stable interface for scripts.
type Ban struct {
	Prefix  netip.Prefix `json:"prefix"`
	Until   time.Time    `json:"until"`
	Dropped uint64       `json:"dropped"`
	Reason  string       `json:"reason"`
	// WouldDrop counts frames the ban matched in observe mode.
	WouldDrop uint64    `json:"would_drop"`
	Origin    string    `json:"origin"`
	From      time.Time `json:"from,omitzero"`
	// Offence is the detector's escalation count for this prefix.
	Offence    int    `json:"offence,omitempty"`
	IncidentID string `json:"incident_id,omitempty"`
}

// Allow is one allowlist entry.
type Allow struct {
	Prefix netip.Prefix `json:"prefix"`
	Origin string       `json:"origin"`
	Added  time.Time    `json:"added,omitzero"`
}

// Interface is one protected interface and how XDP is attached to it.
type Interface struct {
	Name   string `json:"name"`
	Attach string `json:"attach"` // native, generic, or "" when not attached
	Mode   string `json:"mode"`   // observe or enforce, as set in the kernel
}

// SourceRow is one line of `synguard top` and of the status's suspects.
type SourceRow struct {
	Addr netip.Addr `json:"addr"`
	SYN  uint64     `json:"syn"`
	ACK  uint64     `json:"ack"`
	RST  uint64     `json:"rst"`
	// SYNPerSecond is measured between the daemon's last two reads of this
	// source, or averaged over the entry's life when there is no earlier read.
	SYNPerSecond float64 `json:"syn_per_second"`
	// HalfOpenShare is the share of SYNs not followed by a completing ACK.
	HalfOpenShare float64   `json:"half_open_share"`
	State         string    `json:"state"` // banned, allowed, protected, suspect, ok
	LastSeen      time.Time `json:"last_seen"`
}

// Source row states.
const (
	StateBanned    = "banned"
	StateAllowed   = "allowed"
	StateProtected = "protected"
	StateSuspect   = "suspect"
	StateOK        = "ok"
)

// Status is what `synguard status` shows.
type Status struct {
	// Running is false when the CLI read the pinned maps itself because
	// the daemon did not answer.
	Running    bool        `json:"running"`
	Version    string      `json:"version,omitempty"`
	PID        int         `json:"pid,omitempty"`
	Started    time.Time   `json:"started,omitzero"`
	Mode       string      `json:"mode"`
	Interfaces []Interface `json:"interfaces"`
	Counters   Counters    `json:"counters"`
	Bans       int         `json:"bans"`
	Allows     int         `json:"allows"`
	// LastPoll is when the counters were last read; a stale value means the
	// loop is stuck.
	LastPoll    time.Time           `json:"last_poll,omitzero"`
	Incidents   []detector.Incident `json:"incidents"`
	TopSuspects []SourceRow         `json:"top_suspects"`
	// Protection is service protection: settings, protected services and
	// their figures; nil when the daemon does not report it.
	Protection *ProtectionStatus `json:"protection,omitempty"`
	Notes      []string          `json:"notes,omitempty"`
}

// Explanation says why a source is or is not banned, with its figures.
type Explanation struct {
	Addr      netip.Addr `json:"addr"`
	Verdict   string     `json:"verdict"` // banned, allowed, protected, suspect, ok, unknown
	Ban       *Ban       `json:"ban,omitempty"`
	Allow     *Allow     `json:"allow,omitempty"`
	Protected string     `json:"protected,omitempty"`
	Kernel    *Source    `json:"kernel,omitempty"`
	Rate      *SourceRow `json:"rate,omitempty"`
	// Detector is the detector's own account (thresholds, smoothed rates,
	// offences), in words.
	Detector string `json:"detector"`
	// Details is the detector's account as data, when it provides one.
	Details any `json:"details,omitempty"`
}

// BlockRequest asks for a manual ban. TTL is a Go duration string ("10m");
// empty means the daemon's manual_ban_ttl.
type BlockRequest struct {
	Prefix string `json:"prefix"`
	TTL    string `json:"ttl,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// PrefixRequest names a prefix for unblock, allow and disallow.
type PrefixRequest struct {
	Prefix string `json:"prefix"`
}

// ErrorBody is every error response's body.
type ErrorBody struct {
	Error string `json:"error"`
}
