package daemon

import (
	"fmt"
	"time"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
)

// SourceWalker is a Plane that streams its per-source entries: fn gets
// consecutive batches, which it must not keep (the buffer is reused). The
// full scan uses it so that a million kernel entries are never held at
// once; a Plane without it is read with Sources and cut into batches.
type SourceWalker interface {
	WalkSources(fn func(batch []api.Source) error) error
}

// feedEngine is an Engine that takes a snapshot's sources in chunks
// (*detector.Detector does); with another Engine the full scan collects
// the sources and calls Observe.
type feedEngine interface {
	ObserveFeed(detector.Snapshot, detector.SourceFeed) (detector.Decisions, error)
}

// scanBatch is how many sources a Plane without SourceWalker hands the
// full scan at a time, and how often the scan lets go of the daemon's lock.
const scanBatch = 4096

// walkSources streams p's sources into fn, batch by batch.
func walkSources(p Plane, fn func([]api.Source) error) error {
	if w, ok := p.(SourceWalker); ok {
		return w.WalkSources(fn)
	}
	all, err := p.Sources()
	if err != nil {
		return err
	}
	for len(all) > 0 {
		n := min(len(all), scanBatch)
		if err := fn(all[:n]); err != nil {
			return err
		}
		all = all[n:]
	}
	return nil
}

// WalkSources implements SourceWalker. With one interface the kernel
// table is streamed (bpf.Datapath.WalkSources) into one reused batch; with
// several, an address's entries must be summed over interfaces first, so
// they are read whole (Sources) and handed out in batches.
func (p *BPFPlane) WalkSources(fn func([]api.Source) error) error {
	if len(p.ifaces) != 1 {
		return walkSources(sourcesOnly{p}, fn)
	}
	out := make([]api.Source, 0, scanBatch)
	return p.ifaces[0].dp.WalkSources(func(batch []bpf.Source) error {
		out = out[:0]
		for _, s := range batch {
			out = append(out, fromBPFSource(s))
		}
		return fn(out)
	})
}

// sourcesOnly hides BPFPlane's WalkSources, so that walkSources falls back
// to Sources.
type sourcesOnly struct{ Plane }

// fullScanLocked reads every per-source entry and feeds the detector the
// ones a full scan passes (changedSince), batch by batch, without ever
// holding them all: in the daemon a kernel batch becomes a detector chunk,
// and only the watch candidates are kept for updateWatchLocked.
//
// The kernel is read without d.mu, as the other reads of a poll are: the
// lock is taken for each batch's detector work only, so early-warning
// events and the API are served during a long scan; they see the detector
// with the snapshot half applied, which the detector allows (ObserveFeed).
// A reload that replaces the engine meanwhile voids the scan: its decisions
// are dropped and the next poll scans again.
//
// All entries carry the snapshot time now, taken before the walk; an entry
// read late in a long walk is rated slightly high, and its next reading
// correspondingly low (before, when the snapshot was timed at the end of
// the reads, it was the other way round).
//
// It returns the detector's decisions, how many sources it passed on, the
// time spent reading the kernel (with the filtering) and in the detector;
// err is a failed walk, after which the snapshot counts as incomplete and
// the next poll scans again. Called and returns with d.mu held.
func (d *Daemon) fullScanLocked(now time.Time, snap detector.Snapshot) (dec detector.Decisions, listed int, read, detect time.Duration, err error) {
	t0 := time.Now()
	d.tuneMemoryLocked()
	defer d.tuneMemoryLocked()
	eng := d.engine
	lastFull := d.lastFull
	var feedTook, observeTook time.Duration
	var cands []api.Source // watched sources and new watch candidates
	newCands, batches := 0, 0
	chunk := make([]detector.SourceCounters, 0, scanBatch)
	// feed runs with d.mu held and releases it around each kernel read.
	feed := func(observe func([]detector.SourceCounters)) error {
		f0 := time.Now()
		d.mu.Unlock()
		defer func() {
			d.mu.Lock()
			feedTook = time.Since(f0)
		}()
		return walkSources(d.deps.Plane, func(batch []api.Source) error {
			d.mu.Lock()
			defer d.mu.Unlock()
			room := d.cfg.WatchMax - len(d.watch)
			chunk = chunk[:0]
			for _, s := range batch {
				_, watched := d.watch[s.Addr]
				if !d.changedSince(s, watched, lastFull) {
					continue
				}
				chunk = append(chunk, sourceCounters(s))
				if watched {
					cands = append(cands, s)
				} else if newCands < room && d.watchWorthy(now, s) {
					cands = append(cands, s)
					newCands++
				}
			}
			listed += len(chunk)
			if batches++; batches%64 == 0 {
				// The detector grows during a first scan of a big table:
				// let the memory limit follow a live heap beyond its
				// budget (IPv6 sources) instead of collecting back to back.
				d.tuneMemoryLocked()
			}
			if d.engine == eng {
				o0 := time.Now()
				observe(chunk)
				observeTook += time.Since(o0)
			}
			return nil
		})
	}
	if fe, ok := eng.(feedEngine); ok {
		dec, err = fe.ObserveFeed(snap, feed)
	} else {
		var all []detector.SourceCounters
		if err = feed(func(c []detector.SourceCounters) { all = append(all, c...) }); err == nil {
			snap.Sources = all
			dec = eng.Observe(snap)
		}
	}
	read = feedTook - observeTook
	detect = time.Since(t0) - read
	if d.engine != eng {
		d.fullNext = true
		return detector.Decisions{}, listed, read, detect, fmt.Errorf("detector replaced by a reload during the scan")
	}
	d.updateWatchLocked(now, cands, true)
	if err == nil {
		d.lastFull, d.fullNext = now, false
	}
	return dec, listed, read, detect, err
}

// watchWorthy says whether a full scan starts watching s (reading it every
// poll): active since the last scan, with mostly unanswered SYNs.
func (d *Daemon) watchWorthy(now time.Time, s api.Source) bool {
	return s.SYN >= 5 && s.SYN >= 2*s.ACK && now.Sub(s.LastSeen) <= d.cfg.FullScanInterval
}

// topScan reads every source (streamed, like the full scan) and returns
// the k highest ranked (sortRows), with a source's SYN rate from the watch
// set when it is watched. Only 2k rows are held at a time, not a row per
// kernel entry. When the table holds more than topCrowded entries, sources
// with fewer than minScanSYN SYNs and ACKs are left out: in a
// random-source flood, ranking a million one-SYN rows helps nobody. The
// lock is taken per batch, as in fullScanLocked; called without d.mu.
func (d *Daemon) topScan(k int) ([]api.SourceRow, error) {
	// all ranks every source, busy only those above the bar; which one is
	// returned depends on the total, known at the end.
	var all, busy []api.SourceRow
	total := 0
	keep := func(rows []api.SourceRow) []api.SourceRow {
		if len(rows) >= 2*k {
			sortRows(rows)
			rows = rows[:k]
		}
		return rows
	}
	err := walkSources(d.deps.Plane, func(batch []api.Source) error {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, s := range batch {
			total++
			r := api.SourceRow{Addr: s.Addr, SYN: s.SYN, ACK: s.ACK, RST: s.RST, HalfOpenShare: halfOpen(s.SYN, s.ACK), LastSeen: s.LastSeen}
			if w, ok := d.watch[s.Addr]; ok && !w.at.IsZero() {
				r.SYNPerSecond = w.rate
			} else {
				r.SYNPerSecond = lifeRate(s)
			}
			all = keep(append(all, r))
			if s.SYN >= minScanSYN || s.ACK >= minScanSYN {
				busy = keep(append(busy, r))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	rows := all
	if total > topCrowded {
		rows = busy
	}
	sortRows(rows)
	return rows[:min(k, len(rows))], nil
}

// topCrowded: beyond this many kernel entries, top leaves out sources
// below minScanSYN.
const topCrowded = 65536
