package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/synguard/synguard/detector"
)

// ErrUnreachable means nothing answered on the socket: the daemon is not
// running, or the caller may not open the socket. The CLI then falls back
// to reading pinned maps where it can.
var ErrUnreachable = errors.New("daemon not reachable")

// Client talks to the daemon over its Unix socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{
		Socket: path,
		http: &http.Client{
			Timeout: 15 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", path)
				},
			},
		},
	}
}

// StatusError is a non-200 answer from the daemon.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://synguard"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return fmt.Errorf("%w on socket %s: %v", ErrUnreachable, c.Socket, oe.Err)
		}
		return fmt.Errorf("socket %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("socket %s: read answer: %w", c.Socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
			eb.Error = fmt.Sprintf("daemon answered %s", resp.Status)
		}
		return &StatusError{Code: resp.StatusCode, Msg: eb.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("socket %s: decode answer to %s: %w", c.Socket, path, err)
	}
	return nil
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

// Top returns the n busiest sources.
func (c *Client) Top(ctx context.Context, n int) ([]SourceRow, error) {
	var rows []SourceRow
	err := c.do(ctx, http.MethodGet, "/v1/top?n="+strconv.Itoa(n), nil, &rows)
	return rows, err
}

// Bans returns the blocklist.
func (c *Client) Bans(ctx context.Context) ([]Ban, error) {
	var v []Ban
	err := c.do(ctx, http.MethodGet, "/v1/bans", nil, &v)
	return v, err
}

// Allows returns the allowlist.
func (c *Client) Allows(ctx context.Context) ([]Allow, error) {
	var v []Allow
	err := c.do(ctx, http.MethodGet, "/v1/allows", nil, &v)
	return v, err
}

// Incidents returns open and recently resolved incidents.
func (c *Client) Incidents(ctx context.Context) ([]detector.Incident, error) {
	var v []detector.Incident
	err := c.do(ctx, http.MethodGet, "/v1/incidents", nil, &v)
	return v, err
}

// Explain asks why addr is or is not banned.
func (c *Client) Explain(ctx context.Context, addr string) (Explanation, error) {
	var v Explanation
	err := c.do(ctx, http.MethodGet, "/v1/explain?addr="+url.QueryEscape(addr), nil, &v)
	return v, err
}

// Block bans a prefix manually; ttl "" uses the daemon's default.
func (c *Client) Block(ctx context.Context, prefix, ttl, reason string) (Ban, error) {
	var v Ban
	err := c.do(ctx, http.MethodPost, "/v1/block", BlockRequest{Prefix: prefix, TTL: ttl, Reason: reason}, &v)
	return v, err
}

// Unblock lifts a ban.
func (c *Client) Unblock(ctx context.Context, prefix string) error {
	return c.do(ctx, http.MethodPost, "/v1/unblock", PrefixRequest{Prefix: prefix}, nil)
}

// Allow adds a prefix to the allowlist.
func (c *Client) Allow(ctx context.Context, prefix string) (Allow, error) {
	var v Allow
	err := c.do(ctx, http.MethodPost, "/v1/allow", PrefixRequest{Prefix: prefix}, &v)
	return v, err
}

// Disallow removes a prefix from the allowlist.
func (c *Client) Disallow(ctx context.Context, prefix string) error {
	return c.do(ctx, http.MethodPost, "/v1/disallow", PrefixRequest{Prefix: prefix}, nil)
}
