package alert

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/synguard/synguard/detector"
)

// Sink types accepted in `alerts[].type`.
const (
	TypeWebhook      = "webhook"
	TypeSlack        = "slack"
	TypePagerDuty    = "pagerduty"
	TypeAlertmanager = "alertmanager"
)

// DefaultPagerDutyURL is the Events API v2 enqueue endpoint used when a
// pagerduty sink sets no url.
const DefaultPagerDutyURL = "https://events.pagerduty.com/v2/enqueue"

// Defaults applied to a SinkConfig's zero fields.
const (
	DefaultTimeout        = 10 * time.Second
	DefaultGroupWait      = time.Second
	DefaultResendInterval = time.Minute
	DefaultRateMessages   = 5
	DefaultRatePer        = time.Minute
)

var sinkTypes = []string{TypeWebhook, TypeSlack, TypePagerDuty, TypeAlertmanager}

var sinkName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// SinkConfig is one entry of the `alerts:` list in the config file. The
// daemon's config embeds []SinkConfig and calls Validate; secrets are only
// read when a Dispatcher (or SendTest) is built, so that `config check` can
// run where the credentials are not present.
//
// String, GoString, LogValue, MarshalYAML and MarshalJSON all redact the
// inline url, so printing or logging a config never leaks it.
type SinkConfig struct {
	// Name identifies the sink in logs, metrics, the spool directory and
	// `synguard alert test NAME`.
	Name string `yaml:"name" json:"name"`
	// Type is one of webhook, slack, pagerduty, alertmanager.
	Type string `yaml:"type" json:"type"`
	// URL is the endpoint. For webhook and slack the URL itself is a secret,
	// so prefer URLFile; for pagerduty it defaults to DefaultPagerDutyURL;
	// for alertmanager it is the base URL (…/api/v2/alerts is appended).
	URL string `yaml:"url,omitempty" json:"url,omitempty"`
	// URLFile names a file holding the URL. A value without "/" is a
	// systemd credential name, read from $CREDENTIALS_DIRECTORY/<value>.
	URLFile string `yaml:"url_file,omitempty" json:"url_file,omitempty"`
	// SecretFile holds the webhook signing secret, "whsec_<base64>"
	// (Standard Webhooks). Credential names work as for URLFile.
	SecretFile string `yaml:"secret_file,omitempty" json:"secret_file,omitempty"`
	// RoutingKeyFile holds the PagerDuty integration (routing) key.
	RoutingKeyFile string `yaml:"routing_key_file,omitempty" json:"routing_key_file,omitempty"`
	// MinSeverity drops incidents below it: info (default), warning, critical.
	MinSeverity string `yaml:"min_severity,omitempty" json:"min_severity,omitempty"`
	// Kinds restricts the sink to these incident kinds (source, service, overload);
	// empty means all.
	Kinds []string `yaml:"kinds,omitempty" json:"kinds,omitempty"`
	// Timeout bounds one HTTP attempt (default 10s).
	Timeout time.Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	// RateLimit bounds messages per sink; incidents arriving faster are
	// coalesced into digest messages.
	RateLimit RateLimit `yaml:"rate_limit,omitempty" json:"rate_limit,omitzero"`
	// GroupWait is how long the first event of a burst waits for company
	// before it is sent (default 1s), so a burst becomes one message.
	GroupWait time.Duration `yaml:"group_wait,omitempty" json:"group_wait,omitempty"`
	// ResendInterval is how often firing alerts are re-sent to Alertmanager
	// (default 1m); Alertmanager resolves alerts that stop being re-sent.
	ResendInterval time.Duration `yaml:"resend_interval,omitempty" json:"resend_interval,omitempty"`
}

// RateLimit is a token bucket: up to Messages messages at once, refilled at
// Messages per Per. Defaults: 5 per minute.
type RateLimit struct {
	Messages int           `yaml:"messages,omitempty" json:"messages,omitempty"`
	Per      time.Duration `yaml:"per,omitempty" json:"per,omitempty"`
}

// Validate checks every sink without reading secret files, and reports all
// problems at once, each naming its key path (`alerts[2].type: ...`).
func Validate(sinks []SinkConfig) error {
	var errs []error
	seen := map[string]int{}
	for i, s := range sinks {
		key := fmt.Sprintf("alerts[%d]", i)
		errs = append(errs, s.validate(key)...)
		if s.Name == "" {
			continue
		}
		if j, dup := seen[s.Name]; dup {
			errs = append(errs, fmt.Errorf("%s.name: %q is already used by alerts[%d]", key, s.Name, j))
		} else {
			seen[s.Name] = i
		}
	}
	return errors.Join(errs...)
}

func (c SinkConfig) validate(key string) []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: "+format, append([]any{key, field}, args...)...))
	}
	switch {
	case c.Name == "":
		bad("name", "is required")
	case !sinkName.MatchString(c.Name):
		bad("name", "%q must be 1-64 of letters, digits, '.', '_', '-', starting with a letter or digit", c.Name)
	}
	if !slices.Contains(sinkTypes, c.Type) {
		if c.Type == "" {
			bad("type", "is required, one of %s", strings.Join(sinkTypes, ", "))
		} else {
			bad("type", "%q is not one of %s", c.Type, strings.Join(sinkTypes, ", "))
		}
	}
	if c.URL != "" && c.URLFile != "" {
		bad("url", "set either url or url_file, not both")
	}
	if c.URL != "" {
		if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			// The value is not printed: for webhook and slack it is a secret.
			bad("url", "must be an absolute http:// or https:// URL")
		}
	}
	needURL := c.Type == TypeWebhook || c.Type == TypeSlack || c.Type == TypeAlertmanager
	if needURL && c.URL == "" && c.URLFile == "" {
		bad("url", "is required for type %s (or url_file, which may name a systemd credential)", c.Type)
	}
	if c.Type == TypeWebhook && c.SecretFile == "" {
		bad("secret_file", "is required for type webhook (a file holding whsec_<base64>)")
	}
	if c.Type != TypeWebhook && c.SecretFile != "" && c.Type != "" && slices.Contains(sinkTypes, c.Type) {
		bad("secret_file", "is only used by type webhook, not %s", c.Type)
	}
	if c.Type == TypePagerDuty && c.RoutingKeyFile == "" {
		bad("routing_key_file", "is required for type pagerduty")
	}
	if c.Type != TypePagerDuty && c.RoutingKeyFile != "" && slices.Contains(sinkTypes, c.Type) {
		bad("routing_key_file", "is only used by type pagerduty, not %s", c.Type)
	}
	if c.MinSeverity != "" && severityRank(detector.Severity(c.MinSeverity)) < 0 {
		bad("min_severity", "%q is not one of info, warning, critical", c.MinSeverity)
	}
	for i, k := range c.Kinds {
		if !slices.Contains(detector.Kinds, detector.Kind(k)) {
			bad(fmt.Sprintf("kinds[%d]", i), "%q is not one of source, service, overload", k)
		}
	}
	if c.Timeout < 0 {
		bad("timeout", "must not be negative")
	}
	if c.GroupWait < 0 {
		bad("group_wait", "must not be negative")
	}
	if c.ResendInterval < 0 {
		bad("resend_interval", "must not be negative")
	}
	if c.RateLimit.Messages < 0 {
		bad("rate_limit.messages", "must not be negative")
	}
	if c.RateLimit.Per < 0 {
		bad("rate_limit.per", "must not be negative")
	}
	return errs
}

// withDefaults fills zero fields with the documented defaults.
func (c SinkConfig) withDefaults() SinkConfig {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.GroupWait == 0 {
		c.GroupWait = DefaultGroupWait
	}
	if c.ResendInterval == 0 {
		c.ResendInterval = DefaultResendInterval
	}
	if c.RateLimit.Messages == 0 {
		c.RateLimit.Messages = DefaultRateMessages
	}
	if c.RateLimit.Per == 0 {
		c.RateLimit.Per = DefaultRatePer
	}
	if c.MinSeverity == "" {
		c.MinSeverity = string(detector.SeverityInfo)
	}
	if c.Type == TypePagerDuty && c.URL == "" && c.URLFile == "" {
		c.URL = DefaultPagerDutyURL
	}
	return c
}

const redacted = "[redacted]"

// Redacted returns a copy safe to print: an inline url is replaced for
// webhook and slack (where the URL is the credential) and stripped of
// userinfo, query and fragment for the others. File names are kept; they
// are not secrets.
func (c SinkConfig) Redacted() SinkConfig {
	c.URL = redactURL(c.Type, c.URL)
	c.Kinds = slices.Clone(c.Kinds)
	return c
}

func redactURL(typ, raw string) string {
	if raw == "" {
		return ""
	}
	if typ == TypeWebhook || typ == TypeSlack {
		return redacted
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return redacted
	}
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	return r.String()
}

// String describes the sink with secrets redacted.
func (c SinkConfig) String() string {
	r := c.Redacted()
	var b strings.Builder
	fmt.Fprintf(&b, "%s sink %q", r.Type, r.Name)
	if r.URL != "" {
		fmt.Fprintf(&b, " url=%s", r.URL)
	}
	for _, f := range [][2]string{{"url_file", r.URLFile}, {"secret_file", r.SecretFile}, {"routing_key_file", r.RoutingKeyFile}, {"min_severity", r.MinSeverity}} {
		if f[1] != "" {
			fmt.Fprintf(&b, " %s=%s", f[0], f[1])
		}
	}
	if len(r.Kinds) > 0 {
		fmt.Fprintf(&b, " kinds=%s", strings.Join(r.Kinds, ","))
	}
	return b.String()
}

// GoString keeps %#v from printing the inline url.
func (c SinkConfig) GoString() string { return "alert.SinkConfig{" + c.String() + "}" }

// LogValue keeps slog from printing the inline url.
func (c SinkConfig) LogValue() slog.Value { return slog.StringValue(c.String()) }

// redactedConfig has SinkConfig's fields without its methods, so the
// marshalers below do not recurse.
type redactedConfig SinkConfig

// MarshalYAML emits the redacted config, so `config check` output and
// config dumps never contain the inline url.
func (c SinkConfig) MarshalYAML() (any, error) { return redactedConfig(c.Redacted()), nil }

// MarshalJSON emits the redacted config, for the same reason.
func (c SinkConfig) MarshalJSON() ([]byte, error) { return json.Marshal(redactedConfig(c.Redacted())) }

// severityRank orders severities for min_severity; -1 for unknown.
func severityRank(s detector.Severity) int {
	switch s {
	case detector.SeverityInfo:
		return 0
	case detector.SeverityWarning:
		return 1
	case detector.SeverityCritical:
		return 2
	}
	return -1
}

// matches reports whether the sink's filter lets the incident through.
func (c SinkConfig) matches(in detector.Incident) bool {
	if len(c.Kinds) > 0 && !slices.Contains(c.Kinds, string(in.Kind)) {
		return false
	}
	rank := severityRank(in.Severity)
	if rank < 0 {
		return true // an unknown (newer) severity is never silently dropped
	}
	return rank >= max(severityRank(detector.Severity(c.MinSeverity)), 0)
}
