package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
)

var _ ProtectionPlane = (*BPFPlane)(nil)

// Protect implements ProtectionPlane on every interface.
func (p *BPFPlane) Protect(svc netip.AddrPort, pr bpf.Protection) error {
	return p.each(func(dp *bpf.Datapath) error { return dp.Protect(svc, pr) })
}

// Unprotect implements ProtectionPlane; an interface without the entry is
// fine.
func (p *BPFPlane) Unprotect(svc netip.AddrPort) error {
	return p.each(func(dp *bpf.Datapath) error {
		if err := dp.Unprotect(svc); err != nil && !errors.Is(err, bpf.ErrNotFound) {
			return err
		}
		return nil
	})
}

// Protections implements ProtectionPlane: the counters of a service are
// summed over interfaces; settings and Since come from the first.
func (p *BPFPlane) Protections() ([]bpf.ProtectionStatus, error) {
	var out []bpf.ProtectionStatus
	idx := map[netip.AddrPort]int{}
	for _, ifc := range p.ifaces {
		ps, err := ifc.dp.Protections()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ifc.name, err)
		}
		for _, s := range ps {
			i, ok := idx[s.Service]
			if !ok {
				idx[s.Service] = len(out)
				out = append(out, s)
				continue
			}
			t := &out[i]
			t.Verified += s.Verified
			t.Admitted += s.Admitted
			t.Dropped += s.Dropped
			t.CookiesSent += s.CookiesSent
			t.CookiesValidated += s.CookiesValidated
			if s.Since.Before(t.Since) {
				t.Since = s.Since
			}
		}
	}
	return out, nil
}

// VerifiedSources implements ProtectionPlane: summed over interfaces (a
// source verified on two interfaces counts twice).
func (p *BPFPlane) VerifiedSources() (int, error) {
	n := 0
	for _, ifc := range p.ifaces {
		v, err := ifc.dp.VerifiedSources()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", ifc.name, err)
		}
		n += v
	}
	return n, nil
}

// Verify implements ProtectionPlane on every interface.
func (p *BPFPlane) Verify(addrs ...netip.Addr) error {
	return p.each(func(dp *bpf.Datapath) error { return dp.Verify(addrs...) })
}

// ReadPinnedProtections reads the protected services from the pins under
// cfg.BPFFS (read-only, like ReadPinned) for `synguard status` when the
// daemon is down: a daemon that was killed leaves its protections in
// place, and the operator must see them.
func ReadPinnedProtections(cfg *config.Config) (*api.ProtectionStatus, error) {
	entries, err := filepath.Glob(filepath.Join(cfg.BPFFS, "*", "config"))
	if err != nil {
		return nil, err
	}
	st := &api.ProtectionStatus{Available: true, Auto: cfg.Protection.Auto, Cookies: cfg.Protection.Cookies, Services: []api.ServiceProtection{}}
	idx := map[netip.AddrPort]int{}
	for _, e := range entries {
		name := filepath.Base(filepath.Dir(e))
		dp, err := bpf.Open(PinDir(cfg.BPFFS, name))
		if err != nil {
			return nil, fmt.Errorf("open pins of %s: %w", name, err)
		}
		ps, err := dp.Protections()
		if err == nil {
			var n int
			if n, err = dp.VerifiedSources(); err == nil {
				st.VerifiedSources += n
			}
		}
		dp.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		for _, p := range ps {
			i, ok := idx[p.Service]
			if !ok {
				since := p.Since
				idx[p.Service] = len(st.Services)
				st.Services = append(st.Services, api.ServiceProtection{Service: p.Service, Protection: detector.Protection{
					State: detector.ProtectionOn, Cookies: p.Cookies, Budget: p.Budget, Since: &since}})
				i = idx[p.Service]
			}
			s := &st.Services[i]
			s.Verified += p.Verified
			s.Admitted += p.Admitted
			s.Dropped += p.Dropped
			s.CookiesSent += p.CookiesSent
			s.CookiesValidated += p.CookiesValidated
		}
	}
	if len(st.Services) > 0 {
		st.Note = "read from the pinned maps: these services stay protected with nobody to end it (the daemon switches protection off when it stops normally); " +
			"start the daemon to reconcile them, or run `synguard cleanup`"
	}
	return st, nil
}
