package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/synguard/synguard/detector"
)

// ServiceProtection is one service under protection (or that would be, in
// observe mode), with its figures since protection started.
type ServiceProtection struct {
	Service netip.AddrPort `json:"service"`
	// IncidentID is the service incident that switched it on (Origin
	// detector).
	IncidentID string `json:"incident_id,omitempty"`
	detector.Protection
}

// ProtectionStatus is the protection part of `synguard status`.
type ProtectionStatus struct {
	// Available is false when the daemon cannot protect services (Note
	// says why).
	Available bool   `json:"available"`
	Auto      bool   `json:"auto"`
	Cookies   bool   `json:"cookies"`
	Note      string `json:"note,omitempty"`
	// VerifiedSources is how many sources are currently verified.
	VerifiedSources int                 `json:"verified_sources"`
	Services        []ServiceProtection `json:"services"`
}

// ServiceRequest names a service (ADDR:PORT) for protect and unprotect.
type ServiceRequest struct {
	Service string `json:"service"`
}

// ProtectionBackend is the optional part of a Backend that protects
// services; the server answers 501 for a Backend without it.
type ProtectionBackend interface {
	Protect(ctx context.Context, svc netip.AddrPort) (ServiceProtection, error)
	Unprotect(ctx context.Context, svc netip.AddrPort) (ServiceProtection, error)
	Protections(ctx context.Context) (ProtectionStatus, error)
}

// ParseService parses a protected service: a local IPv4 or IPv6 address
// with a port, "192.0.2.10:443" or "[2001:db8::1]:443".
func ParseService(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
	if err != nil {
		return ap, fmt.Errorf("service %q: want ADDR:PORT, e.g. 192.0.2.10:443 or [2001:db8::1]:443", s)
	}
	a := ap.Addr().Unmap()
	switch {
	case a.Zone() != "":
		return ap, fmt.Errorf("service %q: zones are not allowed", s)
	case ap.Port() == 0:
		return ap, fmt.Errorf("service %q: port 0 is not a service, want 1-65535", s)
	case a.IsUnspecified() || a.IsMulticast():
		return ap, fmt.Errorf("service %q: want the service's local unicast address, not %s", s, a)
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}

// protectionRoutes adds the protection endpoints to mux.
func (s *Server) protectionRoutes(mux *http.ServeMux) {
	backend := func() (ProtectionBackend, error) {
		pb, ok := s.Backend.(ProtectionBackend)
		if !ok {
			return nil, &Error{Code: http.StatusNotImplemented, Err: errors.New("this daemon cannot protect services")}
		}
		return pb, nil
	}
	mux.HandleFunc("GET /v1/protections", s.read(func(r *http.Request) (any, error) {
		pb, err := backend()
		if err != nil {
			return nil, err
		}
		return pb.Protections(r.Context())
	}))
	for _, verb := range []string{"protect", "unprotect"} {
		mux.HandleFunc("POST /v1/"+verb, s.change(func(r *http.Request) (any, error) {
			var req ServiceRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			svc, err := ParseService(req.Service)
			if err != nil {
				return nil, BadRequest(fmt.Errorf("%s %w", verb, err))
			}
			pb, err := backend()
			if err != nil {
				return nil, err
			}
			if verb == "protect" {
				return pb.Protect(r.Context(), svc)
			}
			return pb.Unprotect(r.Context(), svc)
		}))
	}
}

// Protect puts a service under protection by hand.
func (c *Client) Protect(ctx context.Context, svc string) (ServiceProtection, error) {
	var v ServiceProtection
	err := c.do(ctx, http.MethodPost, "/v1/protect", ServiceRequest{Service: svc}, &v)
	return v, err
}

// Unprotect ends a service's protection by hand.
func (c *Client) Unprotect(ctx context.Context, svc string) (ServiceProtection, error) {
	var v ServiceProtection
	err := c.do(ctx, http.MethodPost, "/v1/unprotect", ServiceRequest{Service: svc}, &v)
	return v, err
}

// Protections returns the protection status.
func (c *Client) Protections(ctx context.Context) (ProtectionStatus, error) {
	var v ProtectionStatus
	err := c.do(ctx, http.MethodGet, "/v1/protections", nil, &v)
	return v, err
}
