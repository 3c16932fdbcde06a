package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Defaults of a Protection's cookie SYN-ACK. They must equal what the
// nftables SYNPROXY rule for the service advertises (internal/synproxy uses
// the same values), since SYNPROXY completes the connections.
const (
	DefaultCookieMSS4   = 1460
	DefaultCookieMSS6   = 1440
	DefaultCookieWScale = 7
	DefaultCookieTTL    = 64
)

// Protection flags (PROTECT_* in synguard.c).
const (
	protectCookies    = 1
	protectTimestamps = 2
)

// maxProtected is the size of the protected map (synguard.c).
const maxProtected = 1024

// Protection is what a service under protection gets from the XDP program
// during a spoofed flood: SYNs from verified sources (sources that recently
// completed a handshake) always pass; SYNs from unverified sources get a
// SYN cookie from XDP (Cookies) or share a per-second budget. See the
// contract at the top of synguard.c.
type Protection struct {
	// Cookies answers unverified SYNs with SYN-ACKs carrying SYN cookies,
	// built in XDP, so a spoofed flood never reaches the kernel and a real
	// client's valid ACK verifies it. Set it only while nftables SYNPROXY
	// rules for the service are in place (internal/synproxy reports
	// PathSynproxy): without them the kernel resets the client's ACK.
	Cookies bool
	// Timestamps lets cookie SYN-ACKs carry a timestamp, which is where a
	// SYN cookie keeps the client's window scale and SACK permission;
	// without it, connections opened through a cookie have neither. Set
	// it only when the SYNPROXY rule has "timestamp" too
	// (synproxy.Options.Timestamps). Off by default: on Linux 6.18 the
	// listener rejects SYNPROXY's timestamped ACK (TcpExtTSEcrRejected)
	// and every such connection waits a second for a SYN-ACK
	// retransmission.
	Timestamps bool
	// Budget is how many unverified SYNs per second pass to the kernel
	// (without Cookies, or for SYNs that cannot get a cookie); the rest
	// are dropped. Size it from the service's learned baseline. 0 passes
	// them all (protection then only counts).
	Budget uint32
	// MSS advertised in cookie SYN-ACKs; 0 = 1460 (IPv4) or 1440 (IPv6).
	MSS uint16
	// WScale is the window scale advertised in cookie SYN-ACKs: the
	// listener's own (SYNPROXY must use the same); 0 = 7.
	WScale uint8
	// TTL (hop limit) of cookie SYN-ACKs; 0 = 64.
	TTL uint8
}

// ProtectionStatus is one protected service: its settings and what
// protection did since it started (for status, metrics, incidents and
// alerts).
type ProtectionStatus struct {
	Service netip.AddrPort
	Protection
	// Since is when protection started (the first Protect).
	Since time.Time
	// Verified counts SYNs from verified sources (passed).
	Verified uint64
	// Admitted counts unverified SYNs passed within the budget.
	Admitted uint64
	// Dropped counts unverified SYNs dropped over the budget.
	Dropped uint64
	// CookiesSent counts SYN-ACKs with a cookie sent from XDP.
	CookiesSent uint64
	// CookiesValidated counts ACKs whose cookie was valid: clients that
	// proved their address and became verified.
	CookiesValidated uint64
}

func serviceKey(svc netip.AddrPort) (synguardServiceKey, error) {
	a := svc.Addr().Unmap()
	if !a.IsValid() || svc.Port() == 0 {
		return synguardServiceKey{}, fmt.Errorf("service %v: want an address and a non-zero port", svc)
	}
	if a.Zone() != "" {
		return synguardServiceKey{}, fmt.Errorf("service %v: zones are not allowed", svc)
	}
	return synguardServiceKey{Addr: addrKey(a), Port: htons(svc.Port())}, nil
}

func (p Protection) withDefaults(v6 bool) (Protection, error) {
	if p.MSS == 0 {
		p.MSS = DefaultCookieMSS4
		if v6 {
			p.MSS = DefaultCookieMSS6
		}
	}
	if p.MSS < 536 {
		return p, fmt.Errorf("mss %d: want at least 536", p.MSS)
	}
	if p.WScale == 0 {
		p.WScale = DefaultCookieWScale
	}
	if p.WScale > 14 {
		return p, fmt.Errorf("window scale %d: want 0..14", p.WScale)
	}
	if p.TTL == 0 {
		p.TTL = DefaultCookieTTL
	}
	return p, nil
}

// Protect puts svc (local address and port) under protection, or changes
// the settings of a protected service (its counters and Since stay).
func (d *Datapath) Protect(svc netip.AddrPort, p Protection) error {
	key, err := serviceKey(svc)
	if err != nil {
		return fmt.Errorf("protect: %w", err)
	}
	p, err = p.withDefaults(!svc.Addr().Unmap().Is4())
	if err != nil {
		return fmt.Errorf("protect %v: %w", svc, err)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	d.listMu.Lock()
	defer d.listMu.Unlock()
	if d.closed {
		return fmt.Errorf("protect %v: datapath is closed", svc)
	}
	var v synguardProtection
	if err := d.objs.Protected.Lookup(key, &v); err != nil {
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("protect %v: %w", svc, err)
		}
		v = synguardProtection{Since: kernelNow()}
	}
	v.Flags = 0
	if p.Cookies {
		v.Flags |= protectCookies
	}
	if p.Timestamps {
		v.Flags |= protectTimestamps
	}
	v.Budget, v.Mss, v.Wscale, v.Ttl = p.Budget, p.MSS, p.WScale, p.TTL
	if err := d.objs.Protected.Put(key, &v); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("protect %v: at most %d services can be protected: %w", svc, maxProtected, err)
		}
		return fmt.Errorf("protect %v: %w", svc, err)
	}
	return d.syncProtectionCount()
}

// Unprotect ends protection of svc. It returns an error wrapping
// ErrNotFound when svc was not protected.
func (d *Datapath) Unprotect(svc netip.AddrPort) error {
	key, err := serviceKey(svc)
	if err != nil {
		return fmt.Errorf("unprotect: %w", err)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	d.listMu.Lock()
	defer d.listMu.Unlock()
	if d.closed {
		return fmt.Errorf("unprotect %v: datapath is closed", svc)
	}
	if err := d.objs.Protected.Delete(key); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unprotect %v: %w", svc, ErrNotFound)
		}
		return fmt.Errorf("unprotect %v: %w", svc, err)
	}
	return d.syncProtectionCount()
}

// syncProtectionCount stores the number of protected services where the
// program checks it; called with d.listMu held.
func (d *Datapath) syncProtectionCount() error {
	var (
		k synguardServiceKey
		v synguardProtection
		n uint64
	)
	it := d.objs.Protected.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("count protected services: %w", err)
	}
	if err := d.objs.Config.Put(configProtections, n); err != nil {
		return fmt.Errorf("record protected services: %w", err)
	}
	return nil
}

// Protections lists the protected services with their counters.
func (d *Datapath) Protections() ([]ProtectionStatus, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, errors.New("list protections: datapath is closed")
	}
	var (
		k   synguardServiceKey
		v   synguardProtection
		out []ProtectionStatus
	)
	it := d.objs.Protected.Iterate()
	for it.Next(&k, &v) {
		out = append(out, ProtectionStatus{
			Service: netip.AddrPortFrom(addrOf(k.Addr), ntohs(k.Port)),
			Protection: Protection{
				Cookies: v.Flags&protectCookies != 0, Timestamps: v.Flags&protectTimestamps != 0, Budget: v.Budget,
				MSS: v.Mss, WScale: v.Wscale, TTL: v.Ttl,
			},
			Since:            kernelToWall(v.Since),
			Verified:         v.Verified,
			Admitted:         v.Admitted,
			Dropped:          v.Dropped,
			CookiesSent:      v.CookiesSent,
			CookiesValidated: v.CookiesValidated,
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list protections: %w", err)
	}
	return out, nil
}

// verifiedTTL is the TTL the program was loaded with (the default for a
// Datapath from Open, which cannot read it back).
func (d *Datapath) verifiedTTL() uint64 {
	if d.opts.VerifiedTTL > 0 {
		return uint64(d.opts.VerifiedTTL.Nanoseconds())
	}
	return uint64(DefaultVerifiedTTL.Nanoseconds())
}

// VerifiedSources counts the sources currently verified (a handshake
// completed within VerifiedTTL).
func (d *Datapath) VerifiedSources() (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return 0, errors.New("count verified sources: datapath is closed")
	}
	var (
		keys = make([][16]byte, batchSize)
		vals = make([]uint64, batchSize)
		now  = kernelNow()
		ttl  = d.verifiedTTL()
		n    int
	)
	err := walkBatches(d.objs.Verified, keys, vals, func(m int) {
		// A batch walk returns each entry at most once (see WalkSources).
		for i := 0; i < m; i++ {
			// Coarse kernel time may be up to a tick ahead of ours.
			if vals[i] > now || now-vals[i] < ttl {
				n++
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("count verified sources: %w", err)
	}
	return n, nil
}

// Verify marks addresses as verified now, e.g. the peers of established
// connections when protection starts (an admin's session), so their new
// connections pass a protected service.
func (d *Datapath) Verify(addrs ...netip.Addr) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return errors.New("verify sources: datapath is closed")
	}
	now := kernelNow()
	for _, a := range addrs {
		if !a.IsValid() {
			return errors.New("verify source: invalid address")
		}
		if err := d.objs.Verified.Put(addrKey(a), now); err != nil {
			return fmt.Errorf("verify source %v: %w", a, err)
		}
	}
	return nil
}

// IsVerified reports whether a is currently verified.
func (d *Datapath) IsVerified(a netip.Addr) (bool, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return false, fmt.Errorf("verified %v: datapath is closed", a)
	}
	var t uint64
	if err := d.objs.Verified.Lookup(addrKey(a), &t); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("verified %v: %w", a, err)
	}
	now := kernelNow()
	return t > now || now-t < d.verifiedTTL(), nil
}
