package alert

import (
	"bytes"
	"context"
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// request is one HTTP POST a sink makes. Webhook requests are signed at
// send time, so every retry carries a fresh timestamp under the same id.
type request struct {
	URL   string `json:"-"`
	Body  []byte `json:"-"`
	MsgID string `json:"-"` // webhook-id; stable across retries
	// Sign is the HMAC key; nil sends the request unsigned.
	Sign []byte `json:"-"`
}

// outcome is what one attempt achieved.
type outcome struct {
	status     int
	retryAfter time.Duration // from a Retry-After header, 0 if none
	permanent  bool          // a 4xx other than 429: retrying cannot help
	err        error         // nil when delivered
}

// newMsgID returns a unique message id ("msg_" + 26 base32 chars).
func newMsgID() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	return "msg_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// signature computes the Standard Webhooks v1 signature of a message.
func signature(key []byte, id string, ts int64, body []byte) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "%s.%d.", id, ts)
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// post makes one attempt. Errors never contain the URL or other secrets:
// net/http's *url.Error quotes the full URL, so it is unwrapped, and the
// remainder is scrubbed.
func post(ctx context.Context, client *http.Client, now time.Time, timeout time.Duration, sec secrets, r request) outcome {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return outcome{permanent: true, err: errors.New(sec.scrub(fmt.Sprintf("build request: %v", unwrapURLError(err))))}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "synguard-alert/1")
	if r.Sign != nil {
		ts := now.Unix()
		req.Header.Set("webhook-id", r.MsgID)
		req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
		req.Header.Set("webhook-signature", signature(r.Sign, r.MsgID, ts, r.Body))
	}
	resp, err := client.Do(req)
	if err != nil {
		err = unwrapURLError(err)
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no response within %s", timeout)
		}
		return outcome{err: safeError{sec.scrub(err.Error()), err}}
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	o := outcome{status: resp.StatusCode}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return o
	}
	o.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
	body := strings.TrimSpace(strings.ToValidUTF8(string(snippet), "?"))
	msg := fmt.Sprintf("HTTP %d", resp.StatusCode)
	if body != "" {
		msg += ": " + body
	}
	o.err = errors.New(sec.scrub(msg))
	retryable := resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500
	o.permanent = !retryable
	return o
}

// safeError carries a scrubbed message while keeping the cause for
// errors.Is (context.Canceled); Error never reveals the cause's text.
type safeError struct {
	msg   string
	cause error
}

func (e safeError) Error() string { return e.msg }
func (e safeError) Unwrap() error { return e.cause }

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// parseRetryAfter reads delay-seconds or an HTTP-date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// RetryPolicy shapes retries of a failed delivery: exponential backoff from
// Base doubling up to Max, with "equal jitter" (a random point in the upper
// half of the interval) so that many synguard hosts do not retry in step.
type RetryPolicy struct {
	Base time.Duration // first delay; default 1s
	Max  time.Duration // longest delay; default 1m
	// MaxRetryAfter caps a server's Retry-After; default 10m.
	MaxRetryAfter time.Duration
	// Attempts bounds attempts for `alert test` (default 6). The Dispatcher
	// never gives up on retryable errors: the message stays in the spool and
	// is retried every Max until the sink comes back.
	Attempts int
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Base <= 0 {
		p.Base = time.Second
	}
	if p.Max <= 0 {
		p.Max = time.Minute
	}
	if p.Max < p.Base {
		p.Max = p.Base
	}
	if p.MaxRetryAfter <= 0 {
		p.MaxRetryAfter = 10 * time.Minute
	}
	if p.Attempts <= 0 {
		p.Attempts = 6
	}
	return p
}

// delay is how long to wait after the n-th failed attempt (n >= 1).
func (p RetryPolicy) delay(n int, o outcome) time.Duration {
	if o.retryAfter > 0 {
		return min(o.retryAfter, p.MaxRetryAfter)
	}
	d := p.Base
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}
