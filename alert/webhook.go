package alert

import (
	"encoding/json"
	"time"

	"github.com/synguard/synguard/detector"
)

// WebhookSchemaVersion is the version of the webhook payload described in
// SCHEMA.md. Fields may be added within a version; receivers must ignore
// fields they do not know. Removing or changing a field bumps the version.
const WebhookSchemaVersion = 1

// webhookMaxListed bounds the incidents listed in one webhook message; the
// rest are counted in "omitted", so a storm stays one message.
const webhookMaxListed = 100

// WebhookPayload is the JSON body of a webhook message (schema version 1).
type WebhookPayload struct {
	Version   int         `json:"version"`
	ID        string      `json:"id"`
	Type      string      `json:"type"`
	Timestamp time.Time   `json:"timestamp"`
	Data      WebhookData `json:"data"`
}

// WebhookData is the message content: the host and the incidents.
type WebhookData struct {
	Host       string            `json:"host"`
	Interfaces []string          `json:"interfaces"`
	Mode       string            `json:"mode"`
	Summary    string            `json:"summary"`
	Total      int               `json:"total"`
	Omitted    int               `json:"omitted"`
	Counts     map[string]int    `json:"counts"`
	Incidents  []WebhookIncident `json:"incidents"`
}

// WebhookIncident is one incident in words and in figures.
type WebhookIncident struct {
	Headline  string            `json:"headline"`
	Target    string            `json:"target"`
	From      string            `json:"from"`
	Rate      string            `json:"rate"`
	Kernel    string            `json:"kernel"`
	Action    string            `json:"action"`
	Command   string            `json:"command"`
	EventTime time.Time         `json:"event_time"`
	Incident  detector.Incident `json:"incident"`
}

// Payload types.
const (
	WebhookTypeIncidents = "synguard.incidents"
	WebhookTypeTest      = "synguard.test"
)

type webhookFormat struct {
	url string
	key []byte
}

func (f *webhookFormat) build(b batch) ([]request, func()) {
	id := newMsgID()
	p := WebhookPayload{Version: WebhookSchemaVersion, ID: id, Type: WebhookTypeIncidents, Timestamp: b.now.UTC()}
	if len(b.events) > 0 && b.events[0].Test {
		p.Type = WebhookTypeTest
	}
	last := b.events[0]
	for _, e := range b.events {
		if e.Time.After(last.Time) {
			last = e
		}
	}
	p.Data = WebhookData{
		Host:       last.Host,
		Interfaces: last.Interfaces,
		Mode:       last.Mode,
		Summary:    digestHeadline(b.events),
		Total:      len(b.events),
		Counts:     stageCounts(b.events),
		Incidents:  []WebhookIncident{},
	}
	if p.Data.Interfaces == nil {
		p.Data.Interfaces = []string{}
	}
	for i, e := range b.events {
		if i == webhookMaxListed {
			p.Data.Omitted = len(b.events) - i
			break
		}
		v := describe(e)
		p.Data.Incidents = append(p.Data.Incidents, WebhookIncident{
			Headline: v.Headline, Target: v.Target, From: v.From, Rate: v.Rate,
			Kernel: v.Kernel, Action: v.Action, Command: v.Command,
			EventTime: e.Time.UTC(), Incident: e.Incident,
		})
	}
	body, _ := json.Marshal(p)
	return []request{{URL: f.url, Body: body, MsgID: id, Sign: f.key}}, nil
}

func (f *webhookFormat) resend(time.Time) []request { return nil }
