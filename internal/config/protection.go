package config

import (
	"fmt"
	"time"
)

// Protection configures service protection: what the daemon does for a
// service the detector finds under a distributed (usually spoofed) SYN
// flood, where bans are useless. SYNs from verified sources (that recently
// completed a handshake) always pass; the others get SYN cookies from XDP,
// completed by nftables SYNPROXY, or share a per-second budget.
type Protection struct {
	// Auto switches protection on when a service incident opens and off
	// when it resolves (enforce mode only: observe mode reports that it
	// would have). `synguard protect` / `unprotect` work either way.
	Auto bool `yaml:"auto"`
	// Cookies answers unverified SYNs with XDP SYN cookies completed by
	// nftables SYNPROXY (in enforce mode, conntrack then runs in the
	// namespace from the daemon's start).
	// false: kernel SYN cookies forced on and the budget only.
	Cookies bool `yaml:"cookies"`
	// BudgetFactor sizes the budget of unverified SYNs per second passed
	// to the kernel: this many times the service's learned baseline SYN
	// rate, at least BudgetMin.
	BudgetFactor float64 `yaml:"budget_factor"`
	// BudgetMin is the smallest budget (SYN/s).
	BudgetMin uint32 `yaml:"budget_min"`
	// VerifiedTTL is how long a completed handshake keeps a source
	// verified (restart: the data plane is loaded with it).
	VerifiedTTL time.Duration `yaml:"verified_ttl"`
}

// DefaultProtection is Default().Protection.
func DefaultProtection() Protection {
	return Protection{Auto: true, Cookies: true, BudgetFactor: 2, BudgetMin: 100, VerifiedTTL: time.Hour}
}

// Budget is the per-second budget of unverified SYNs for a service whose
// learned baseline is baseline SYN/s.
func (p Protection) Budget(baseline float64) uint32 {
	b := p.BudgetFactor * baseline
	if b < float64(p.BudgetMin) {
		return p.BudgetMin
	}
	if b > 1e9 {
		return 1e9
	}
	return uint32(b + 0.5)
}

func (p Protection) validate() error {
	if p.BudgetFactor < 0 || p.BudgetFactor > 1000 {
		return &Error{Key: "protection.budget_factor", Value: fmt.Sprint(p.BudgetFactor), Allowed: "a number from 0 to 1000 (times the service's baseline SYN/s)"}
	}
	if p.BudgetMin < 1 || p.BudgetMin > 10_000_000 {
		return &Error{Key: "protection.budget_min", Value: fmt.Sprint(p.BudgetMin), Allowed: "an integer from 1 to 10000000 (SYN/s)"}
	}
	return durationIn("protection.verified_ttl", p.VerifiedTTL, 10*time.Second, 7*24*time.Hour)
}
