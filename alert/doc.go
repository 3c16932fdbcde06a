// Package alert tells on-call about incidents: it turns detector incidents
// into messages for webhook, Slack, PagerDuty and Alertmanager sinks, and
// delivers them without ever blocking detection or enforcement.
//
// Send only records an event in memory; one goroutine per sink persists
// events to a spool directory (so they survive restarts), coalesces them per
// incident (latest state wins, many incidents become one digest message),
// rate limits, and delivers with exponential backoff and jitter. Secrets
// (webhook URLs, routing keys, HMAC keys) are read from files or systemd
// credentials and are scrubbed from every log line and error.
//
// The webhook payload is versioned and documented in SCHEMA.md.
package alert
