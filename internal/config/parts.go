package config

import (
	"fmt"

	"github.com/synguard/synguard/alert"
)

// PartError is an invalid value in a section validated by its owning
// package (detector thresholds, alert sinks); their messages already name
// the key ("detector.window", "alerts[1].url").
type PartError struct{ Err error }

func (e *PartError) Error() string { return e.Err.Error() }
func (e *PartError) Unwrap() error { return e.Err }

// validateParts validates the sections owned by other packages with their
// own Validate functions, and the keys that tie sections together.
func (c *Config) validateParts() error {
	if err := c.Detector.Validate(); err != nil {
		return &PartError{Err: err}
	}
	if uint64(c.Detector.MaxBans) > uint64(c.Datapath.MaxBans) {
		return &Error{Key: "detector.max_bans", Value: fmt.Sprint(c.Detector.MaxBans),
			Allowed: fmt.Sprintf("at most datapath.max_bans (%d), the kernel blocklist size", c.Datapath.MaxBans)}
	}
	if err := alert.Validate(c.Alerts); err != nil {
		return &PartError{Err: err}
	}
	return nil
}

// CheckSecrets reads the alert sinks' secret and URL files (Validate does
// not: the files may only exist on the host that runs the daemon) and
// reports unreadable or malformed ones as a *PartError naming the key and
// the file, never the content. `synguard config check`, `synguard run` and
// a reload call it, so a broken credential is found before an incident
// needs it.
func (c *Config) CheckSecrets() error {
	if err := alert.CheckSecrets(c.Alerts); err != nil {
		return &PartError{Err: err}
	}
	return nil
}
