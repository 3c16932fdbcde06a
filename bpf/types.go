package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Defaults applied by Load for zero Options fields (the sizes the issue
// asks for; DefaultMaxSources preallocates 151 MB of kernel memory).
const (
	DefaultMaxSources      = 1 << 20
	DefaultMaxServices     = 65536
	DefaultMaxBans         = 65536
	DefaultMaxAllows       = 65536
	DefaultSuspectSYNs     = 100
	DefaultSuspectInterval = time.Second
	DefaultMaxVerified     = 1 << 18
	DefaultVerifiedTTL     = time.Hour
)

// maxBanSlots is the largest MaxBans the verdict cache can encode (30 bits).
const maxBanSlots = 1 << 30

// Options configure Load. Zero fields take the defaults above.
type Options struct {
	// PinDir is the bpffs directory for this interface's maps and link;
	// "" means nothing is pinned and Close detaches.
	PinDir string
	// MaxSources sizes the per-source LRU (144 bytes of kernel memory
	// per entry, preallocated: 151 MB for 1<<20); 0 = 1<<20.
	MaxSources uint32
	// MaxServices sizes the per-service LRU; 0 = 65536.
	MaxServices uint32
	// MaxBans bounds the blocklist (and the per-CPU drop counters: 16
	// bytes per ban per CPU); 0 = 65536.
	MaxBans uint32
	// MaxAllows bounds the allowlist; 0 = 65536.
	MaxAllows uint32
	// SuspectSYNs: a source that sends more than this many SYNs with no
	// ACK in between raises a suspect event; 0 = 100.
	SuspectSYNs uint32
	// SuspectInterval: at most one suspect event per source per interval;
	// 0 = 1s.
	SuspectInterval time.Duration
	// MaxVerified sizes the LRU of verified sources (sources that
	// completed a handshake; 40 bytes each); 0 = 1<<18.
	MaxVerified uint32
	// VerifiedTTL is how long a completed handshake keeps a source
	// verified (its SYNs pass a protected service); 0 = 1h.
	VerifiedTTL time.Duration
}

func (o Options) withDefaults() (Options, error) {
	if o.MaxSources == 0 {
		o.MaxSources = DefaultMaxSources
	}
	if o.MaxServices == 0 {
		o.MaxServices = DefaultMaxServices
	}
	if o.MaxBans == 0 {
		o.MaxBans = DefaultMaxBans
	}
	if o.MaxAllows == 0 {
		o.MaxAllows = DefaultMaxAllows
	}
	if o.SuspectSYNs == 0 {
		o.SuspectSYNs = DefaultSuspectSYNs
	}
	if o.SuspectInterval == 0 {
		o.SuspectInterval = DefaultSuspectInterval
	}
	if o.MaxVerified == 0 {
		o.MaxVerified = DefaultMaxVerified
	}
	if o.VerifiedTTL == 0 {
		o.VerifiedTTL = DefaultVerifiedTTL
	}
	if o.VerifiedTTL < 0 {
		return o, fmt.Errorf("verified ttl %v: must be positive", o.VerifiedTTL)
	}
	if o.MaxBans >= maxBanSlots {
		return o, fmt.Errorf("max bans %d: must be below %d", o.MaxBans, maxBanSlots)
	}
	if o.SuspectInterval < 0 {
		return o, fmt.Errorf("suspect interval %v: must be positive", o.SuspectInterval)
	}
	return o, nil
}

// Mode says what the program does with a blocklist hit. It lives in a pinned
// map, so it survives restarts and switches without reloading.
type Mode uint32

const (
	// ModeObserve counts blocklist hits as would-drop and passes them:
	// the safe default while a deployment is being tuned.
	ModeObserve Mode = 0
	// ModeEnforce drops blocklist hits.
	ModeEnforce Mode = 1
)

// String returns "observe" or "enforce".
func (m Mode) String() string {
	switch m {
	case ModeObserve:
		return "observe"
	case ModeEnforce:
		return "enforce"
	}
	return fmt.Sprintf("mode(%d)", uint32(m))
}

// ParseMode parses "observe" or "enforce" (case-insensitive), for config
// files and flags.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "observe":
		return ModeObserve, nil
	case "enforce":
		return ModeEnforce, nil
	}
	return 0, fmt.Errorf("mode %q: want observe or enforce", s)
}

// AttachMode selects how XDP is attached: in the driver (native, fastest),
// in the generic skb path (works everywhere), or native with a generic
// fallback (auto).
type AttachMode string

const (
	// AttachAuto tries native and falls back to generic; Attach returns
	// which one it got.
	AttachAuto AttachMode = "auto"
	// AttachNative runs in the driver, before any skb exists: the
	// cheapest place to drop a flood, when the driver supports it.
	AttachNative AttachMode = "native"
	// AttachGeneric runs after the skb is built: slower, works on any
	// interface.
	AttachGeneric AttachMode = "generic"
)

// ParseAttachMode parses "auto", "native" or "generic"; "" means auto.
func ParseAttachMode(s string) (AttachMode, error) {
	switch m := AttachMode(strings.ToLower(strings.TrimSpace(s))); m {
	case "", AttachAuto:
		return AttachAuto, nil
	case AttachNative, AttachGeneric:
		return m, nil
	}
	return "", fmt.Errorf("attach mode %q: want auto, native or generic", s)
}

// ErrNotFound is returned (wrapped) by Unblock and Disallow for a prefix
// that is not on the list, so callers reconciling state can ignore it.
var ErrNotFound = errors.New("not on the list")

// Ban is one blocklist entry.
type Ban struct {
	Prefix netip.Prefix
	// Until is when the kernel stops enforcing the ban.
	Until time.Time
	// Dropped counts frames the ban dropped in enforce mode.
	Dropped uint64
	// WouldDrop counts frames it matched in observe mode (passed).
	WouldDrop uint64
}

// Source is one per-source entry: what a remote address sent.
type Source struct {
	Addr netip.Addr
	// SYN, ACK and RST count frames not dropped by a ban (SYN = SYN
	// without ACK, ACK = ACK without SYN). SYNs that protection drops or
	// answers with a cookie count too once the source has an entry, but
	// never create one.
	SYN, ACK, RST uint64
	// FirstSeen is the first frame, LastSeen the last counted one.
	FirstSeen, LastSeen time.Time
}

// Service is one local service (destination address and port) and the SYN
// and ACK frames it received that no ban dropped (SYNs that protection
// dropped or answered count: the detector must see the flood).
type Service struct {
	Addr     netip.AddrPort
	SYN, ACK uint64
}

// Counters are the program's global counters, summed over CPUs. Every frame
// increments Frames and exactly one of NonIP, NonTCP, Fragments, NotParsed,
// SYN, SYNACK, ACK, RST, TCPOther (the frame's kind), so counter deltas tell
// how the kernel classified a frame.
type Counters struct {
	Frames    uint64
	NonIP     uint64 // EtherType other than IPv4/IPv6
	NonTCP    uint64 // IP but not TCP
	Fragments uint64 // non-first IP fragments
	NotParsed uint64 // malformed or truncated headers (passed)
	// TCP is SYN+SYNACK+ACK+RST+TCPOther (computed here, not a kind).
	TCP      uint64
	SYN      uint64 // SYN without ACK
	SYNACK   uint64
	ACK      uint64 // ACK without SYN or RST
	RST      uint64
	TCPOther uint64 // none of the above (e.g. FIN alone, no flags)
	// Dropped counts frames dropped by a ban in enforce mode.
	Dropped uint64
	// WouldDrop counts ban hits passed because of observe mode.
	WouldDrop uint64
	// Allowlisted counts frames a live ban matched that the allowlist
	// passed.
	Allowlisted uint64
	// SuspectsLost counts suspect events lost to a full ring buffer.
	SuspectsLost uint64
	// BanCacheDrops counts the Dropped frames that the per-CPU ban cache
	// answered without a per-source lookup ("Ban cache" in synguard.c). It
	// shows that the cheap path carries a banned flood, and it is the one
	// figure that only that path moves, so tests can prove it ran.
	BanCacheDrops uint64
}

// Suspect is an early warning: a source sent SYNs SYNs since its last ACK.
type Suspect struct {
	Addr netip.Addr
	SYNs uint32
	Time time.Time
}
