package alert

import (
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/synguard/synguard/detector"
)

// pdStormThreshold is how many new incidents one message may trigger
// individually; beyond it they are folded into one "storm" alert per host,
// so ten thousand incidents do not become ten thousand pages.
const pdStormThreshold = 5

// pdEvent is a PagerDuty Events API v2 event.
type pdEvent struct {
	RoutingKey  string     `json:"routing_key"`
	EventAction string     `json:"event_action"` // trigger, resolve
	DedupKey    string     `json:"dedup_key"`
	Payload     *pdPayload `json:"payload,omitempty"`
	Client      string     `json:"client,omitempty"`
}

type pdPayload struct {
	Summary       string         `json:"summary"`
	Source        string         `json:"source"`
	Severity      string         `json:"severity"` // critical, error, warning, info
	Timestamp     time.Time      `json:"timestamp"`
	Component     string         `json:"component,omitempty"`
	Group         string         `json:"group,omitempty"`
	Class         string         `json:"class,omitempty"`
	CustomDetails map[string]any `json:"custom_details,omitempty"`
}

// pdSeverity maps synguard severities onto PagerDuty's scale.
func pdSeverity(s detector.Severity) string {
	switch s {
	case detector.SeverityCritical:
		return "critical"
	case detector.SeverityWarning:
		return "warning"
	case detector.SeverityInfo:
		return "info"
	}
	return "error"
}

// pagerDutyFormat triggers on open and update, resolves on close, with the
// incident ID as dedup_key. Its state (which incidents were paged alone and
// which are folded into the storm alert) lives in memory: after a restart a
// resolve is sent as trigger+resolve, which leaves PagerDuty in the right
// state either way.
type pagerDutyFormat struct {
	url, key   string
	individual map[string]bool // paged on their own dedup_key
	storm      map[string]bool // open incidents folded into the storm alert
}

func newPagerDutyFormat(url, key string) *pagerDutyFormat {
	return &pagerDutyFormat{url: url, key: key, individual: map[string]bool{}, storm: map[string]bool{}}
}

func stormKey(host string) string { return "synguard-storm-" + host }

func (f *pagerDutyFormat) event(action string, e Event) pdEvent {
	ev := pdEvent{RoutingKey: f.key, EventAction: action, DedupKey: e.Incident.ID, Client: "synguard"}
	if action == "resolve" {
		return ev
	}
	v := describe(e)
	ev.Payload = &pdPayload{
		Summary:   truncate(v.Headline, 1024),
		Source:    e.Host,
		Severity:  pdSeverity(e.Incident.Severity),
		Timestamp: e.Time.UTC(),
		Component: e.Incident.Addr,
		Group:     "synguard",
		Class:     "syn-flood/" + string(e.Incident.Kind),
		CustomDetails: map[string]any{
			"target": v.Target, "from": v.From, "rate": v.Rate, "kernel": v.Kernel,
			"action": v.Action, "look_closer": v.Command, "reason": e.Incident.Reason,
			"stage": string(e.Incident.Stage), "mode": e.Mode,
		},
	}
	return ev
}

func (f *pagerDutyFormat) build(b batch) ([]request, func()) {
	individual := maps.Clone(f.individual)
	storm := maps.Clone(f.storm)
	var evs []pdEvent
	stormBefore := len(storm) > 0

	newOpen := 0
	for _, e := range b.events {
		id := e.Incident.ID
		if !individual[id] && !storm[id] && e.Incident.Stage != detector.StageResolved && !e.Test {
			newOpen++
		}
	}
	toStorm := stormBefore || newOpen > pdStormThreshold
	stormChanged := false
	var stormEvents []Event
	for _, e := range b.events {
		id := e.Incident.ID
		resolved := e.Incident.Stage == detector.StageResolved
		switch {
		case e.Test:
			// A test pages and clears at once, so nobody is left with an
			// open test incident.
			evs = append(evs, f.event("trigger", e), f.event("resolve", e))
		case individual[id]:
			if resolved {
				evs = append(evs, f.event("resolve", e))
				delete(individual, id)
			} else {
				evs = append(evs, f.event("trigger", e))
			}
		case storm[id]:
			stormChanged = true
			stormEvents = append(stormEvents, e)
			if resolved {
				delete(storm, id)
			}
		case toStorm:
			stormChanged = true
			stormEvents = append(stormEvents, e)
			if !resolved {
				storm[id] = true
			}
		case resolved:
			// Opened and closed before PagerDuty heard of it (coalesced,
			// or the sink was down): record it, then clear it.
			evs = append(evs, f.event("trigger", e), f.event("resolve", e))
		default:
			evs = append(evs, f.event("trigger", e))
			individual[id] = true
		}
	}
	if stormChanged {
		host := hostOf(b.events)
		se := pdEvent{RoutingKey: f.key, DedupKey: stormKey(host), Client: "synguard"}
		if len(storm) == 0 {
			se.EventAction = "resolve"
		} else {
			se.EventAction = "trigger"
			top := stormEvents[0]
			var list []string
			for _, e := range stormEvents[:min(10, len(stormEvents))] {
				list = append(list, describe(e).Headline)
			}
			se.Payload = &pdPayload{
				Summary:   truncate(fmt.Sprintf("SYN-flood storm on %s: %s incidents open; this update: %s", host, group(uint64(len(storm))), digestHeadline(stormEvents)), 1024),
				Source:    host,
				Severity:  pdSeverity(top.Incident.Severity),
				Timestamp: b.now.UTC(),
				Group:     "synguard",
				Class:     "syn-flood/storm",
				CustomDetails: map[string]any{
					"open_incidents": len(storm), "incidents_in_update": len(stormEvents),
					"stages": stageCounts(stormEvents), "top": list, "look_closer": "synguard list incidents",
				},
			}
		}
		evs = append(evs, se)
	}
	reqs := make([]request, 0, len(evs))
	for _, ev := range evs {
		body, _ := json.Marshal(ev)
		reqs = append(reqs, request{URL: f.url, Body: body})
	}
	return reqs, func() { f.individual, f.storm = individual, storm }
}

func (f *pagerDutyFormat) resend(time.Time) []request { return nil }
