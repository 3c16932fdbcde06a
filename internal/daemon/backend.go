package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
)

var _ api.Backend = (*Daemon)(nil)

// Status implements api.Backend.
func (d *Daemon) Status(ctx context.Context) (api.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := api.Status{
		Running:    true,
		Version:    d.deps.Version,
		PID:        os.Getpid(),
		Started:    d.started,
		Mode:       d.cfg.Mode,
		Interfaces: d.deps.Plane.Interfaces(),
		Counters:   d.counters,
		Bans:       len(d.st.Bans),
		Allows:     len(d.st.Allows),
		LastPoll:   d.lastPoll,
		Incidents:  d.openIncidentsLocked(),
	}
	s.TopSuspects = d.watchRowsLocked(10)
	s.Protection = d.protectionStatusLocked()
	if !d.lastPoll.IsZero() && d.clock().Sub(d.lastPoll) > 5*d.cfg.PollInterval {
		s.Notes = append(s.Notes, fmt.Sprintf("last poll %s ago: the poll loop is stalled or a full scan is slow (see the \"slow poll\" log lines)",
			d.clock().Sub(d.lastPoll).Round(time.Second)))
	}
	if s.Mode == "observe" {
		s.Notes = append(s.Notes, "observe mode: nothing is dropped; bans only count would-drops (set mode: enforce to drop)")
	}
	return s, nil
}

func (d *Daemon) openIncidentsLocked() []detector.Incident {
	out := make([]detector.Incident, 0, len(d.open))
	for _, in := range d.open {
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].OpenedAt.Before(out[j].OpenedAt) })
	return out
}

func (d *Daemon) stateOfLocked(a netip.Addr) string {
	for p := range d.st.Bans {
		if p.Contains(a) {
			return api.StateBanned
		}
	}
	for p := range d.st.Allows {
		if p.Contains(a) {
			return api.StateAllowed
		}
	}
	for _, p := range d.protected {
		if p.Contains(a) {
			return api.StateProtected
		}
	}
	if w, ok := d.watch[a]; ok && w.suspect {
		return api.StateSuspect
	}
	return api.StateOK
}

func (d *Daemon) watchRowsLocked(n int) []api.SourceRow {
	rows := make([]api.SourceRow, 0, len(d.watch))
	for a, w := range d.watch {
		rows = append(rows, api.SourceRow{Addr: a, SYN: w.syn, ACK: w.ack, RST: w.rst, SYNPerSecond: w.rate,
			HalfOpenShare: halfOpen(w.syn, w.ack), LastSeen: w.lastSeen})
	}
	sortRows(rows) // by rate, SYNs and address: the state does not count
	if len(rows) > n {
		rows = rows[:n]
	}
	// stateOfLocked walks the bans, allows and protected prefixes: only
	// for the rows shown.
	for i := range rows {
		rows[i].State = d.stateOfLocked(rows[i].Addr)
	}
	return rows
}

func sortRows(rows []api.SourceRow) {
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].SYNPerSecond != rows[j].SYNPerSecond {
			return rows[i].SYNPerSecond > rows[j].SYNPerSecond
		}
		if rows[i].SYN != rows[j].SYN {
			return rows[i].SYN > rows[j].SYN
		}
		return rows[i].Addr.Less(rows[j].Addr)
	})
}

func halfOpen(syn, ack uint64) float64 {
	if syn == 0 || ack >= syn {
		return 0
	}
	return 1 - float64(ack)/float64(syn)
}

// Top implements api.Backend: a full scan on demand (at most once a
// second, whoever asks), ranked by SYN rate.
func (d *Daemon) Top(ctx context.Context, n int) ([]api.SourceRow, error) {
	d.topMu.Lock()
	defer d.topMu.Unlock()
	d.mu.Lock()
	now := d.clock()
	// Several `top` users share one scan; a big table is scanned less often.
	fresh := max(time.Second, 10*d.scanCost)
	if d.topCache != nil && now.Sub(d.topAt) < fresh && n <= d.topK {
		rows := d.topCache[:min(n, len(d.topCache))]
		d.mu.Unlock()
		return rows, nil
	}
	d.mu.Unlock()
	k := max(n, 100)
	rows, err := d.topScan(k)
	if err != nil {
		return nil, fmt.Errorf("read sources: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range rows {
		rows[i].State = d.stateOfLocked(rows[i].Addr)
	}
	// The scan found the top k (fewer when fewer sources sent): any n up to
	// k is its prefix.
	d.topCache, d.topAt, d.topK = rows, now, k
	return rows[:min(n, len(rows))], nil
}

// Bans implements api.Backend: the kernel blocklist joined with reasons.
func (d *Daemon) Bans(ctx context.Context) ([]api.Ban, error) {
	bans, err := d.deps.Plane.Bans()
	if err != nil {
		return nil, fmt.Errorf("read kernel blocklist: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return JoinBans(bans, d.st.Bans), nil
}

// JoinBans adds the state dir's reasons to kernel blocklist entries; the
// CLI uses it too when the daemon is down.
func JoinBans(kernel []api.Ban, meta map[netip.Prefix]BanMeta) []api.Ban {
	out := make([]api.Ban, 0, len(kernel))
	for _, b := range kernel {
		if m, ok := meta[b.Prefix]; ok {
			b.Reason, b.Origin, b.From, b.Offence, b.IncidentID = m.Reason, m.Origin, m.From, m.Offence, m.IncidentID
		} else {
			b.Origin, b.Reason = api.OriginUnknown, "no record in the state dir"
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return comparePrefix(out[i].Prefix, out[j].Prefix) < 0 })
	return out
}

// JoinAllows adds origins to kernel allowlist entries.
func JoinAllows(kernel []netip.Prefix, meta map[netip.Prefix]AllowMeta) []api.Allow {
	out := make([]api.Allow, 0, len(kernel))
	for _, p := range kernel {
		a := api.Allow{Prefix: p, Origin: api.OriginUnknown}
		if m, ok := meta[p]; ok {
			a.Origin, a.Added = m.Origin, m.Added
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return comparePrefix(out[i].Prefix, out[j].Prefix) < 0 })
	return out
}

// Allows implements api.Backend.
func (d *Daemon) Allows(ctx context.Context) ([]api.Allow, error) {
	ps, err := d.deps.Plane.Allows()
	if err != nil {
		return nil, fmt.Errorf("read kernel allowlist: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return JoinAllows(ps, d.st.Allows), nil
}

// Incidents implements api.Backend: open incidents, then recently
// resolved ones, oldest first.
func (d *Daemon) Incidents(ctx context.Context) ([]detector.Incident, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.openIncidentsLocked()
	return append(out, d.resolved...), nil
}

// Explain implements api.Backend.
func (d *Daemon) Explain(ctx context.Context, a netip.Addr) (api.Explanation, error) {
	a = a.Unmap()
	bans, err := d.deps.Plane.Bans()
	if err != nil {
		return api.Explanation{}, fmt.Errorf("read kernel blocklist: %w", err)
	}
	src, found, err := d.deps.Plane.Source(a)
	if err != nil {
		return api.Explanation{}, fmt.Errorf("read source %s: %w", a, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e := api.Explanation{Addr: a, Verdict: api.StateOK}
	if found {
		e.Kernel = &src
	}
	for _, b := range JoinBans(bans, d.st.Bans) {
		if b.Prefix.Contains(a) && (e.Ban == nil || b.Prefix.Bits() > e.Ban.Prefix.Bits()) {
			b := b
			e.Ban = &b
		}
	}
	for p, m := range d.st.Allows {
		if p.Contains(a) {
			e.Allow = &api.Allow{Prefix: p, Origin: m.Origin, Added: m.Added}
		}
	}
	for _, p := range d.protected {
		if p.Contains(a) {
			e.Protected = p.String()
		}
	}
	if w, ok := d.watch[a]; ok {
		e.Rate = &api.SourceRow{Addr: a, SYN: w.syn, ACK: w.ack, RST: w.rst, SYNPerSecond: w.rate, HalfOpenShare: halfOpen(w.syn, w.ack), LastSeen: w.lastSeen}
	}
	ex := d.engine.Explain(a)
	e.Detector, e.Details = ex.Text, ex
	switch {
	case e.Allow != nil:
		e.Verdict = api.StateAllowed
	case e.Ban != nil:
		e.Verdict = api.StateBanned
	case e.Protected != "":
		e.Verdict = api.StateProtected
	case ex.Flagged:
		e.Verdict = api.StateSuspect
	case !found && !ex.Tracked:
		e.Verdict = "unknown"
	}
	return e, nil
}

// Block implements api.Backend: a manual ban, never lifted by the detector.
func (d *Daemon) Block(ctx context.Context, p netip.Prefix, ttl time.Duration, reason string) (api.Ban, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	for a := range d.st.Allows {
		if a.Overlaps(p) {
			return api.Ban{}, api.Conflict(fmt.Errorf("block %s: overlaps allowlisted %s, which the kernel never drops; run `synguard disallow %s` first", p, a, a))
		}
	}
	if err := d.deps.Plane.Block(p, ttl); err != nil {
		return api.Ban{}, fmt.Errorf("block %s: %w", p, err)
	}
	if reason == "" {
		reason = "manual block"
	}
	until := now.Add(ttl)
	// The manual ban now owns the kernel entry: the detector forgets its
	// own ban on p (keeping the offence), or it would go on believing in
	// a ban the kernel may have expired, and renew it.
	if d.engine != nil {
		d.engine.Lift(p)
	}
	d.banSeq++
	d.st.Bans[p] = BanMeta{Origin: api.OriginManual, Reason: reason, From: now, Until: until, seq: d.banSeq}
	d.dirty = true
	d.saveLocked(now, true)
	if m := d.deps.Metrics; m != nil {
		m.bansApplied.WithLabelValues(api.OriginManual).Inc()
	}
	d.log.Warn("banned manually", "prefix", p, "until", until.Format(time.RFC3339), "reason", reason)
	return api.Ban{Prefix: p, Until: until, Reason: reason, Origin: api.OriginManual, From: now}, nil
}

// Unblock implements api.Backend.
func (d *Daemon) Unblock(ctx context.Context, p netip.Prefix) error {
	bans, err := d.deps.Plane.Bans()
	if err != nil {
		return fmt.Errorf("read kernel blocklist: %w", err)
	}
	if !slices.ContainsFunc(bans, func(b api.Ban) bool { return b.Prefix == p }) {
		return api.NotFound(fmt.Errorf("unblock %s: not banned (see `synguard list bans`)", p))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.deps.Plane.Unblock(p); err != nil {
		return fmt.Errorf("unblock %s: %w", p, err)
	}
	delete(d.st.Bans, p)
	if d.engine != nil {
		d.engine.Lift(p)
	}
	d.dirty = true
	d.saveLocked(d.clock(), true)
	d.log.Warn("ban lifted manually", "prefix", p)
	return nil
}

// Allow implements api.Backend.
func (d *Daemon) Allow(ctx context.Context, p netip.Prefix) (api.Allow, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	if m, ok := d.st.Allows[p]; ok {
		return api.Allow{Prefix: p, Origin: m.Origin, Added: m.Added}, nil
	}
	if err := d.deps.Plane.Allow(p); err != nil {
		return api.Allow{}, fmt.Errorf("allow %s: %w", p, err)
	}
	d.st.Allows[p] = AllowMeta{Origin: api.OriginManual, Added: now}
	d.dirty = true
	d.refreshProtectedLocked(now, true)
	d.saveLocked(now, true)
	d.log.Warn("allowlisted", "prefix", p)
	return api.Allow{Prefix: p, Origin: api.OriginManual, Added: now}, nil
}

// Disallow implements api.Backend.
func (d *Daemon) Disallow(ctx context.Context, p netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock()
	m, ok := d.st.Allows[p]
	if !ok {
		return api.NotFound(fmt.Errorf("disallow %s: not allowlisted (see `synguard list allows`)", p))
	}
	if m.Origin == api.OriginConfig {
		return api.Conflict(fmt.Errorf("disallow %s: comes from config key allow; remove it there and reload (SIGHUP)", p))
	}
	if err := d.deps.Plane.Disallow(p); err != nil {
		return fmt.Errorf("disallow %s: %w", p, err)
	}
	delete(d.st.Allows, p)
	d.dirty = true
	d.refreshProtectedLocked(now, true)
	d.saveLocked(now, true)
	d.log.Warn("removed from allowlist", "prefix", p)
	return nil
}
