package alert

import (
	"encoding/json"
	"maps"
	"strings"
	"time"

	"github.com/synguard/synguard/detector"
)

// amAlert is one alert of Alertmanager's POST /api/v2/alerts.
type amAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
}

// alertmanagerFormat posts every firing alert on each message and re-sends
// them every resend interval with endsAt a few intervals ahead, the way
// Prometheus does: if synguard dies, Alertmanager resolves them on its own.
// A resolved incident is posted once with endsAt set to its end.
type alertmanagerFormat struct {
	url      string
	interval time.Duration
	firing   map[string]amAlert // incident ID -> last alert sent
}

func newAlertmanagerFormat(base string, resend time.Duration) *alertmanagerFormat {
	return &alertmanagerFormat{url: strings.TrimSuffix(base, "/") + "/api/v2/alerts", interval: resend, firing: map[string]amAlert{}}
}

func (f *alertmanagerFormat) alert(e Event, now time.Time) amAlert {
	in := e.Incident
	v := describe(e)
	a := amAlert{
		Labels: map[string]string{
			"alertname":   "SYNFlood",
			"instance":    e.Host,
			"incident_id": in.ID,
			"kind":        string(in.Kind),
			"target":      in.Addr,
			"severity":    string(in.Severity),
			"job":         "synguard",
		},
		Annotations: map[string]string{
			"summary":     v.Headline,
			"description": strings.Join(v.lines(), "\n"),
			"target":      v.Target,
			"from":        v.From,
			"rate":        v.Rate,
			"kernel":      v.Kernel,
			"action":      v.Action,
			"command":     v.Command,
		},
		StartsAt: in.OpenedAt.UTC(),
		EndsAt:   now.Add(4 * f.interval).UTC(),
	}
	if a.StartsAt.IsZero() {
		a.StartsAt = e.Time.UTC()
	}
	if e.Test {
		a.Labels["alertname"] = "SYNGuardTest"
		a.StartsAt = now.UTC()
		a.EndsAt = now.Add(time.Minute).UTC()
	}
	if in.Stage == detector.StageResolved && !e.Test {
		a.EndsAt = now.UTC()
		if in.ResolvedAt != nil {
			a.EndsAt = in.ResolvedAt.UTC()
		}
	}
	return a
}

func (f *alertmanagerFormat) build(b batch) ([]request, func()) {
	firing := maps.Clone(f.firing)
	var out []amAlert
	for _, e := range b.events {
		a := f.alert(e, b.now)
		id := e.Incident.ID
		if old, ok := firing[id]; ok && !maps.Equal(old.Labels, a.Labels) {
			// Labels are the alert's identity: when the severity changes,
			// end the old alert so it does not linger.
			old.EndsAt = b.now.UTC()
			out = append(out, old)
		}
		if e.Incident.Stage == detector.StageResolved || e.Test {
			delete(firing, id)
			out = append(out, a)
		} else {
			firing[id] = a
		}
	}
	for _, a := range firing {
		a.EndsAt = b.now.Add(4 * f.interval).UTC()
		out = append(out, a)
	}
	body, _ := json.Marshal(out)
	return []request{{URL: f.url, Body: body}}, func() { f.firing = firing }
}

// resend re-posts all firing alerts with a fresh endsAt.
func (f *alertmanagerFormat) resend(now time.Time) []request {
	if len(f.firing) == 0 {
		return nil
	}
	out := make([]amAlert, 0, len(f.firing))
	for _, a := range f.firing {
		a.EndsAt = now.Add(4 * f.interval).UTC()
		out = append(out, a)
	}
	body, _ := json.Marshal(out)
	return []request{{URL: f.url, Body: body}}
}
