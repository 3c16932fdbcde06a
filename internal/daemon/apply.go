package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
)

// applyLocked turns decisions into kernel bans, alerts and API state.
// Bans go first, then unbans: when a prefix ban replaces host bans, the
// hosts stay blocked throughout. A host ban whose replacement could not be
// applied (blocklist full, kernel error) is kept, so a failed /24 never
// lifts the /32s it was meant to replace.
func (d *Daemon) applyLocked(now time.Time, dec detector.Decisions) {
	m := d.deps.Metrics
	var failed []netip.Prefix
	for _, b := range dec.Bans {
		if old, ok := d.st.Bans[b.Prefix]; ok && old.Origin == api.OriginManual && !b.Until.After(old.Until) {
			continue // a longer manual ban stands
		}
		ttl := b.Until.Sub(now)
		if ttl <= 0 {
			continue
		}
		if err := d.deps.Plane.Block(b.Prefix, ttl); err != nil {
			d.log.Error("ban not applied", "prefix", b.Prefix, "err", err)
			failed = append(failed, b.Prefix)
			if m != nil {
				m.banErrors.Inc()
			}
			continue
		}
		meta := BanMeta{Origin: api.OriginDetector, Reason: b.Reason, From: b.From, Until: b.Until, Offence: b.Offence, IncidentID: b.IncidentID}
		if old, ok := d.st.Bans[b.Prefix]; ok && old.Origin == api.OriginManual {
			meta.Origin, meta.Reason = api.OriginManual, old.Reason+" (extended by the detector: "+b.Reason+")"
		}
		_, renewed := d.st.Bans[b.Prefix]
		d.banSeq++
		meta.seq = d.banSeq
		d.st.Bans[b.Prefix] = meta
		d.dirty = true
		if !renewed {
			d.log.Warn("banned", "prefix", b.Prefix, "until", b.Until.Format(time.RFC3339), "offence", b.Offence, "incident", b.IncidentID, "reason", b.Reason)
			if m != nil {
				m.bansApplied.WithLabelValues(api.OriginDetector).Inc()
			}
		}
	}
	for _, p := range dec.Unbans {
		old, ok := d.st.Bans[p]
		if !ok {
			continue // already gone from the kernel (expired while down)
		}
		if old.Origin == api.OriginManual || old.Origin == api.OriginUnknown {
			continue // the detector never lifts bans it did not make
		}
		if slices.ContainsFunc(failed, func(f netip.Prefix) bool { return f.Overlaps(p) }) {
			d.log.Warn("ban kept: the ban meant to replace it was not applied", "prefix", p)
			continue
		}
		if err := d.deps.Plane.Unblock(p); err != nil {
			d.log.Error("ban not lifted", "prefix", p, "err", err)
			continue
		}
		delete(d.st.Bans, p)
		d.dirty = true
		d.log.Info("ban lifted by detector", "prefix", p)
		if m != nil {
			m.bansLifted.Inc()
		}
	}
	for _, in := range dec.Incidents {
		d.trackIncidentLocked(in)
	}
	// Live drop figures change no stage: update the served copy only.
	for _, x := range dec.Drops {
		if in, ok := d.open[x.ID]; ok {
			in.Dropped, in.DroppedPerSecond = x.Dropped, x.PerSecond
			d.open[x.ID] = in
		}
	}
}

// trackIncidentLocked records an incident stage change and alerts it once:
// a restart that restores the detector never repeats opened or resolved.
func (d *Daemon) trackIncidentLocked(in detector.Incident) {
	in = d.protectIncidentLocked(d.clock(), in)
	d.dirty = true
	prev, seen := d.st.Alerted[in.ID]
	if in.Stage == detector.StageResolved {
		delete(d.open, in.ID)
		d.resolved = append(d.resolved, in)
		if len(d.resolved) > recentResolved {
			d.resolved = d.resolved[len(d.resolved)-recentResolved:]
		}
	} else {
		d.open[in.ID] = in
	}
	dup := seen && (prev == in.Stage && in.Stage != detector.StageUpdated || prev == detector.StageResolved ||
		in.Stage == detector.StageOpened)
	if dup {
		d.log.Debug("incident stage already alerted", "id", in.ID, "stage", in.Stage)
		return
	}
	d.st.Alerted[in.ID] = in.Stage
	lvl := slog.LevelWarn
	if in.Stage == detector.StageResolved {
		lvl = slog.LevelInfo
	}
	d.log.Log(context.Background(), lvl, "incident "+string(in.Stage), "id", in.ID, "kind", in.Kind, "addr", in.Addr,
		"severity", in.Severity, "syn_per_second", in.SYNPerSecond, "half_open_share", in.HalfOpenShare, "reason", in.Reason)
	if m := d.deps.Metrics; m != nil && in.Stage == detector.StageOpened {
		m.incidents.WithLabelValues(string(in.Kind)).Inc()
	}
	if d.deps.Alerts != nil {
		d.deps.Alerts.Send(in)
	}
}

// saveLocked persists the state when something changed, at most once a
// second unless forced (shutdown, API changes).
func (d *Daemon) saveLocked(now time.Time, force bool) {
	if d.deps.Store == nil || !d.dirty {
		return
	}
	if !force && now.Sub(d.lastSave) < time.Second {
		return
	}
	if d.engine != nil {
		ds := d.engine.State()
		d.st.Detector = &ds
	}
	d.st.SavedAt = now
	d.st.Incidents = d.st.Incidents[:0]
	for _, in := range d.open {
		d.st.Incidents = append(d.st.Incidents, in)
	}
	d.st.Incidents = append(d.st.Incidents, d.resolved...)
	// Forget alert records of incidents that are neither open nor recent.
	keep := map[string]bool{}
	for _, in := range d.st.Incidents {
		keep[in.ID] = true
	}
	for id := range d.st.Alerted {
		if !keep[id] {
			delete(d.st.Alerted, id)
		}
	}
	if err := d.deps.Store.Save(d.st); err != nil {
		d.log.Error("state not saved", "err", err)
		return
	}
	d.dirty = false
	d.lastSave = now
}
