package alert

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/synguard/synguard/detector"
)

// TestResult is the outcome of SendTest, for `synguard alert test`.
type TestResult struct {
	Sink     string
	Type     string
	Requests int // HTTP requests the test message needed
	Attempts int // attempts made, retries included
	Status   int // last HTTP status, 0 if none
	Elapsed  time.Duration
}

// ErrNoSuchSink is returned by SendTest for an unknown sink name.
var ErrNoSuchSink = errors.New("no such alert sink")

// ConfigError is a sink that cannot be used as configured (invalid keys,
// unreadable or malformed secret files), as opposed to one that could not
// be reached; the CLI maps it to exit code 2.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// TestEvent is the synthetic incident a test message carries: obviously a
// test, with documentation addresses, so nobody acts on it.
func TestEvent(host string, now time.Time) Event {
	now = now.UTC()
	return Event{
		Host: host, Mode: ModeObserve, Time: now, Test: true,
		Command: "synguard status",
		Incident: detector.Incident{
			ID:   fmt.Sprintf("synguard-test-%d", now.UnixNano()),
			Kind: detector.KindSource, Stage: detector.StageOpened, Severity: detector.SeverityInfo,
			Addr: "192.0.2.1", Source: netip.MustParseAddr("192.0.2.1"),
			OpenedAt: now, UpdatedAt: now,
			SYN: 1000, SYNPerSecond: 100, PeakSYNPerSecond: 100, HalfOpenShare: 1,
			Reason: "test message sent by `synguard alert test`; no flood is happening",
		},
	}
}

// SendTest sends a test message through the sink called name, retrying as
// the Dispatcher would (up to opts.Retry.Attempts per request), and reports
// the outcome. It returns an error when the message was not delivered;
// errors never contain the sink's secrets. Nothing is spooled.
func SendTest(ctx context.Context, cfgs []SinkConfig, name string, opts Options) (TestResult, error) {
	i := slices.IndexFunc(cfgs, func(c SinkConfig) bool { return c.Name == name })
	if i < 0 {
		var names []string
		for _, c := range cfgs {
			names = append(names, c.Name)
		}
		return TestResult{}, fmt.Errorf("%w %q (configured: %v)", ErrNoSuchSink, name, names)
	}
	opts = opts.withDefaults()
	s, err := newSink(fmt.Sprintf("alerts[%d]", i), cfgs[i])
	if err != nil {
		return TestResult{}, &ConfigError{Err: err}
	}
	host, _ := os.Hostname()
	start := opts.Clock.Now()
	res := TestResult{Sink: name, Type: s.cfg.Type}
	reqs, _ := s.f.build(batch{events: []Event{TestEvent(host, start)}, now: start})
	res.Requests = len(reqs)
	for _, r := range reqs {
		for n := 1; ; n++ {
			res.Attempts++
			o := post(ctx, opts.Client, opts.Clock.Now(), s.cfg.Timeout, s.sec, r)
			res.Status = o.status
			if o.err == nil {
				break
			}
			if ctx.Err() != nil {
				res.Elapsed = opts.Clock.Now().Sub(start)
				return res, fmt.Errorf("alert sink %s: %w", name, ctx.Err())
			}
			if o.permanent || n >= opts.Retry.Attempts {
				res.Elapsed = opts.Clock.Now().Sub(start)
				why := "rejected"
				if !o.permanent {
					why = fmt.Sprintf("gave up after %d attempts", n)
				}
				return res, fmt.Errorf("alert sink %s (%s) %s: %w", name, s.cfg.Type, why, o.err)
			}
			d := opts.Retry.delay(n, o)
			opts.Logger.Warn("alert test delivery failed, will retry", "sink", name, "attempt", n, "retry_in", d.Round(time.Millisecond), "err", o.err)
			select {
			case <-ctx.Done():
				res.Elapsed = opts.Clock.Now().Sub(start)
				return res, fmt.Errorf("alert sink %s: %w", name, ctx.Err())
			case <-opts.Clock.After(d):
			}
		}
	}
	res.Elapsed = opts.Clock.Now().Sub(start)
	return res, nil
}
