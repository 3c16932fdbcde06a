package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/config"
)

// Backend is what the server exposes; the daemon implements it. Inputs are
// already parsed and validated when a method is called.
type Backend interface {
	Status(ctx context.Context) (Status, error)
	Top(ctx context.Context, n int) ([]SourceRow, error)
	Bans(ctx context.Context) ([]Ban, error)
	Allows(ctx context.Context) ([]Allow, error)
	Incidents(ctx context.Context) ([]detector.Incident, error)
	Explain(ctx context.Context, addr netip.Addr) (Explanation, error)
	Block(ctx context.Context, p netip.Prefix, ttl time.Duration, reason string) (Ban, error)
	Unblock(ctx context.Context, p netip.Prefix) error
	Allow(ctx context.Context, p netip.Prefix) (Allow, error)
	Disallow(ctx context.Context, p netip.Prefix) error
}

// Error carries an HTTP status through a Backend error, so that "not
// banned" is a 404 and bad input a 400, not a 500.
type Error struct {
	Code int
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// BadRequest marks err as the caller's mistake (HTTP 400).
func BadRequest(err error) error { return &Error{Code: http.StatusBadRequest, Err: err} }

// NotFound marks err as naming something that does not exist (HTTP 404).
func NotFound(err error) error { return &Error{Code: http.StatusNotFound, Err: err} }

// Conflict marks err as clashing with existing state (HTTP 409).
func Conflict(err error) error { return &Error{Code: http.StatusConflict, Err: err} }

// MaxTTL bounds manual bans: a ban longer than a year is a typo.
const MaxTTL = 365 * 24 * time.Hour

// ParseTTL parses a ban length; zero, negative and absurd TTLs are refused.
func ParseTTL(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("ttl %q: not a duration (use e.g. 90s, 10m, 2h)", s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("ttl %s: must be positive", s)
	}
	if d > MaxTTL {
		return 0, fmt.Errorf("ttl %s: at most %s", s, MaxTTL)
	}
	return d, nil
}

// Server serves a Backend over HTTP on a Unix socket. Reads are open to
// anyone who can connect (the socket's mode already limits that to root
// and the group); changes need uid 0 or membership of the group, checked
// with SO_PEERCRED.
type Server struct {
	Backend Backend
	// GID is the group allowed to change state besides root; -1 for none.
	GID int
	Log *slog.Logger
	// DefaultTTL is the ban length when a block request has none.
	DefaultTTL time.Duration
	// DefaultTTLFunc, when set, overrides DefaultTTL at each request, so
	// that a reloaded manual_ban_ttl applies without a restart.
	DefaultTTLFunc func() time.Duration

	http *http.Server
	ln   net.Listener
}

type ctxKey struct{}

// Peer is the credentials of the process on the other end of the socket.
type Peer struct {
	PID, UID, GID int
	ok            bool
}

// Listen creates the socket at path (mode 0660, group group when it
// exists), refusing to steal the socket of a daemon that still answers. The
// returned gid is -1 when the group does not exist or could not be set:
// then only root may use the socket.
func Listen(path, group string) (net.Listener, int, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, -1, fmt.Errorf("socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, -1, fmt.Errorf("socket %s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, -1, fmt.Errorf("socket %s: another synguard daemon is answering on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, -1, fmt.Errorf("socket %s: remove stale socket: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, -1, fmt.Errorf("socket %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	gid := -1
	if group != "" {
		if g, err := user.LookupGroup(group); err == nil {
			if n, err := strconv.Atoi(g.Gid); err == nil {
				gid = n
			}
		}
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			// Without the group only root can use the socket: safe, and
			// better than a daemon that does not start. The caller logs it.
			gid = -1
		}
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, -1, fmt.Errorf("socket %s: chmod: %w", path, err)
	}
	return ln, gid, nil
}

// Serve answers requests on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if s.Log == nil {
		s.Log = slog.Default()
	}
	s.ln = ln
	s.http = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, ctxKey{}, peerOf(c))
		},
	}
	err := s.http.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits for requests in flight.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.http == nil {
		return nil
	}
	return s.http.Shutdown(ctx)
}

func peerOf(c net.Conn) Peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return Peer{}
	}
	return Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid), ok: true}
}

// mayChange reports whether the peer may change state: root, or a member
// (primary or supplementary) of the socket's group.
func (s *Server) mayChange(p Peer) bool {
	if !p.ok {
		return false
	}
	if p.UID == 0 {
		return true
	}
	if s.GID < 0 {
		return false
	}
	if p.GID == s.GID {
		return true
	}
	for _, g := range supplementaryGroups(p.PID) {
		if g == s.GID {
			return true
		}
	}
	return false
}

// supplementaryGroups reads the peer's groups from /proc; SO_PEERCRED only
// carries the primary group.
func supplementaryGroups(pid int) []int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Groups:"); ok {
			var out []int
			for _, f := range strings.Fields(rest) {
				if n, err := strconv.Atoi(f); err == nil {
					out = append(out, n)
				}
			}
			return out
		}
	}
	return nil
}

// Handler routes the API; exported so tests can also mount it elsewhere.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.read(func(r *http.Request) (any, error) { return s.Backend.Status(r.Context()) }))
	mux.HandleFunc("GET /v1/top", s.read(func(r *http.Request) (any, error) {
		n := 20
		if v := r.URL.Query().Get("n"); v != "" {
			var err error
			if n, err = strconv.Atoi(v); err != nil || n < 1 || n > 10000 {
				return nil, BadRequest(fmt.Errorf("n %q: want an integer from 1 to 10000", v))
			}
		}
		return s.Backend.Top(r.Context(), n)
	}))
	mux.HandleFunc("GET /v1/bans", s.read(func(r *http.Request) (any, error) { return s.Backend.Bans(r.Context()) }))
	mux.HandleFunc("GET /v1/allows", s.read(func(r *http.Request) (any, error) { return s.Backend.Allows(r.Context()) }))
	mux.HandleFunc("GET /v1/incidents", s.read(func(r *http.Request) (any, error) { return s.Backend.Incidents(r.Context()) }))
	mux.HandleFunc("GET /v1/explain", s.read(func(r *http.Request) (any, error) {
		v := r.URL.Query().Get("addr")
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, BadRequest(fmt.Errorf("explain %q: not an IP address", v))
		}
		return s.Backend.Explain(r.Context(), a.Unmap())
	}))
	mux.HandleFunc("POST /v1/block", s.change(func(r *http.Request) (any, error) {
		var req BlockRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		p, err := config.ParsePrefix(req.Prefix)
		if err != nil {
			return nil, BadRequest(fmt.Errorf("block %w", err))
		}
		ttl := s.DefaultTTL
		if s.DefaultTTLFunc != nil {
			ttl = s.DefaultTTLFunc()
		}
		if req.TTL != "" {
			if ttl, err = ParseTTL(req.TTL); err != nil {
				return nil, BadRequest(fmt.Errorf("block %s: %w", p, err))
			}
		}
		if ttl <= 0 {
			ttl = time.Hour
		}
		reason := strings.TrimSpace(req.Reason)
		if len(reason) > 500 {
			return nil, BadRequest(fmt.Errorf("block %s: reason longer than 500 bytes", p))
		}
		return s.Backend.Block(r.Context(), p, ttl, reason)
	}))
	mux.HandleFunc("POST /v1/unblock", s.change(s.prefixOp("unblock", config.ParsePrefix, func(r *http.Request, p netip.Prefix) (any, error) {
		return map[string]string{"unblocked": p.String()}, s.Backend.Unblock(r.Context(), p)
	})))
	mux.HandleFunc("POST /v1/allow", s.change(s.prefixOp("allow", config.ParseAllowPrefix, func(r *http.Request, p netip.Prefix) (any, error) {
		return s.Backend.Allow(r.Context(), p)
	})))
	mux.HandleFunc("POST /v1/disallow", s.change(s.prefixOp("disallow", config.ParsePrefix, func(r *http.Request, p netip.Prefix) (any, error) {
		return map[string]string{"disallowed": p.String()}, s.Backend.Disallow(r.Context(), p)
	})))
	s.protectionRoutes(mux)
	return mux
}

func (s *Server) prefixOp(verb string, parse func(string) (netip.Prefix, error), do func(*http.Request, netip.Prefix) (any, error)) func(*http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		var req PrefixRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		p, err := parse(req.Prefix)
		if err != nil {
			return nil, BadRequest(fmt.Errorf("%s %w", verb, err))
		}
		return do(r, p)
	}
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return BadRequest(fmt.Errorf("request body: %w", err))
	}
	return nil
}

func (s *Server) read(h func(*http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { s.respond(w, r, h) }
}

func (s *Server) change(h func(*http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, _ := r.Context().Value(ctxKey{}).(Peer)
		if !s.mayChange(p) {
			s.Log.Warn("refused state change", "path", r.URL.Path, "uid", p.UID, "pid", p.PID)
			writeJSON(w, http.StatusForbidden, ErrorBody{Error: fmt.Sprintf("permission denied: uid %d is neither root nor in the socket's group", p.UID)})
			return
		}
		s.Log.Info("api change", "path", r.URL.Path, "uid", p.UID, "pid", p.PID)
		s.respond(w, r, h)
	}
}

func (s *Server) respond(w http.ResponseWriter, r *http.Request, h func(*http.Request) (any, error)) {
	v, err := h(r)
	if err != nil {
		code := http.StatusInternalServerError
		var ae *Error
		if errors.As(err, &ae) {
			code = ae.Code
		}
		if code >= 500 {
			s.Log.Error("api request failed", "path", r.URL.Path, "err", err)
		}
		writeJSON(w, code, ErrorBody{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
