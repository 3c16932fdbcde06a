package alert

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// credentialsDirEnv is set by systemd for units with LoadCredential=.
const credentialsDirEnv = "CREDENTIALS_DIRECTORY"

// readSecret reads a secret from a file. A value without "/" is a systemd
// credential name looked up in $CREDENTIALS_DIRECTORY, so that
// `LoadCredential=slack-url:/etc/synguard/slack.url` pairs with
// `url_file: slack-url`. Errors name the key and the file, never the content.
func readSecret(key, value string) (string, error) {
	path := value
	if !strings.Contains(value, "/") {
		dir := os.Getenv(credentialsDirEnv)
		if dir == "" {
			return "", fmt.Errorf("%s: %q is a credential name but $%s is not set (use an absolute path, or LoadCredential=%s:PATH in the unit)", key, value, credentialsDirEnv, value)
		}
		path = filepath.Join(dir, value)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s: %s is empty", key, path)
	}
	return s, nil
}

// parseWebhookSecret decodes a Standard Webhooks secret "whsec_<base64>".
func parseWebhookSecret(key, path, s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(s, "whsec_")
	if !ok {
		return nil, fmt.Errorf("%s: %s must hold a Standard Webhooks secret whsec_<base64>", key, path)
	}
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: secret after whsec_ is not standard base64: %w", key, path, err)
	}
	if len(k) < 16 {
		return nil, fmt.Errorf("%s: %s: secret is %d bytes, want at least 16 (24-64 recommended)", key, path, len(k))
	}
	return k, nil
}

// secrets is the resolved credentials of one sink, plus the strings that
// must never appear in logs or errors.
type secrets struct {
	url        string
	hmacKey    []byte
	routingKey string
	scrubList  []string
}

// loadSecrets resolves the sink's url and credential files. key is the
// config path of the sink, e.g. "alerts[0]".
func loadSecrets(key string, c SinkConfig) (secrets, error) {
	var s secrets
	switch {
	case c.URLFile != "":
		u, err := readSecret(key+".url_file", c.URLFile)
		if err != nil {
			return s, err
		}
		pu, perr := url.Parse(u)
		if perr != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return s, fmt.Errorf("%s.url_file: %s does not hold an absolute http:// or https:// URL", key, c.URLFile)
		}
		s.url = u
	default:
		s.url = c.URL
	}
	if c.SecretFile != "" {
		raw, err := readSecret(key+".secret_file", c.SecretFile)
		if err != nil {
			return s, err
		}
		k, err := parseWebhookSecret(key+".secret_file", c.SecretFile, raw)
		if err != nil {
			return s, err
		}
		s.hmacKey = k
		s.scrubList = append(s.scrubList, raw, strings.TrimPrefix(raw, "whsec_"))
	}
	if c.RoutingKeyFile != "" {
		rk, err := readSecret(key+".routing_key_file", c.RoutingKeyFile)
		if err != nil {
			return s, err
		}
		s.routingKey = rk
		s.scrubList = append(s.scrubList, rk)
	}
	if s.url != "" {
		s.scrubList = append(s.scrubList, s.url)
		if u, err := url.Parse(s.url); err == nil {
			// The token of a Slack or webhook URL lives in its path or
			// query; an error may quote either without the host.
			if c.Type == TypeWebhook || c.Type == TypeSlack {
				if len(u.EscapedPath()) > 1 {
					s.scrubList = append(s.scrubList, u.EscapedPath(), u.Path)
				}
			}
			if u.RawQuery != "" {
				s.scrubList = append(s.scrubList, u.RawQuery)
			}
			if p, ok := u.User.Password(); ok {
				s.scrubList = append(s.scrubList, p)
			}
		}
	}
	return s, nil
}

// scrub replaces every secret in msg. Very short strings are skipped: they
// cannot be secrets worth the name and replacing them would mangle text.
func (s secrets) scrub(msg string) string {
	for _, x := range s.scrubList {
		if len(x) >= 6 {
			msg = strings.ReplaceAll(msg, x, redacted)
		}
	}
	return msg
}

// CheckSecrets reads every sink's secret files and URL files, as the
// daemon's `config check` should, and reports unreadable or malformed ones
// by key path. It never returns secret content.
func CheckSecrets(sinks []SinkConfig) error {
	var errs []error
	for i, c := range sinks {
		if _, err := loadSecrets(fmt.Sprintf("alerts[%d]", i), c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
