// Package replay runs a packet capture through the reference classifier
// and the detector in capture time, emulating the XDP program's counters,
// bans and early-warning events, so that thresholds can be tried on past
// floods and the result is what the daemon would have decided.
package replay

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/classify"
)

// Options configure a replay. Zero values take the daemon's defaults.
type Options struct {
	Detector detector.Config
	// Observe makes no bans (the daemon's observe mode); by default replay
	// shows the bans enforce mode would have made.
	Observe bool
	// Poll is the daemon's poll interval: a snapshot every Poll of
	// capture time. 0 means 1s.
	Poll time.Duration
	// SuspectInterval limits early-warning events to one per source per
	// interval, as the data plane does. 0 means 1s. The run length is
	// Detector.SuspectSYNs.
	SuspectInterval time.Duration
	// Protected prefixes are never banned.
	Protected []netip.Prefix
	// Host names the machine in incident ids; empty means "replay".
	Host string
}

// Report is what the detector decided over a capture.
type Report struct {
	File    string
	Packets int
	// Kinds counts frames per classification.
	Kinds      [classify.NumKinds]int
	Start, End time.Time
	// Incidents are in opening order, each with its last stage's figures.
	Incidents []detector.Incident
	// Bans are in decision order; a renewal updates Until.
	Bans []detector.Ban
	// Suspects counts the emulated early-warning events.
	Suspects int
}

// File replays the capture at path (pcap or pcapng). On a truncated or
// malformed capture it returns the report of what could be read together
// with an error naming the file and the position.
func File(path string, opt Options) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	defer f.Close()
	return Reader(f, path, opt)
}

// countingReader tracks the byte offset the capture reader has consumed.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type packetReader interface {
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// Reader replays a capture read from r; name is used in errors.
func Reader(r io.Reader, name string, opt Options) (*Report, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("replay %s: byte offset 0: not a capture: %w", name, errOrEOF(err))
	}
	cr := &countingReader{r: br}
	var pr packetReader
	var link layers.LinkType
	if bytes.Equal(magic, []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		ng, err := pcapgo.NewNgReader(cr, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return nil, fmt.Errorf("replay %s: pcapng header at byte offset 0: %w", name, err)
		}
		pr, link = ng, ng.LinkType()
	} else {
		pc, err := pcapgo.NewReader(cr)
		if err != nil {
			return nil, fmt.Errorf("replay %s: pcap header at byte offset 0: %w", name, err)
		}
		pr, link = pc, pc.LinkType()
	}
	if link != layers.LinkTypeEthernet {
		return nil, fmt.Errorf("replay %s: link type %v: only Ethernet captures can be classified like the XDP program sees them", name, link)
	}
	e := newEmulator(opt)
	rep := &Report{File: name}
	for {
		at := cr.n
		data, ci, err := pr.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			e.finish(rep)
			return rep, fmt.Errorf("replay %s: packet %d at byte offset %d: %w (the report covers the %d packets before it)",
				name, rep.Packets+1, at, errOrEOF(err), rep.Packets)
		}
		if rep.Packets == 0 {
			rep.Start = ci.Timestamp
		}
		if ci.Timestamp.Before(rep.End) {
			// Out-of-order timestamps (merged captures): replay in file
			// order but never let capture time go backwards.
			ci.Timestamp = rep.End
		}
		rep.End = ci.Timestamp
		rep.Packets++
		rep.Kinds[e.packet(ci.Timestamp, data)]++
	}
	e.finish(rep)
	return rep, nil
}

func errOrEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// emulator plays the XDP program: cumulative counters per source and per
// service, the blocklist with per-ban drop counters and kernel expiry, and
// the suspect events; and the daemon: a snapshot every poll interval.
type emulator struct {
	opt     Options
	det     *detector.Detector
	started bool
	next    time.Time // next poll

	src   map[netip.Addr]*srcEntry
	svc   map[netip.AddrPort]*detector.ServiceCounters
	moved []netip.Addr
	smov  map[netip.AddrPort]bool
	bans  map[netip.Prefix]*banEntry

	incidents map[string]int // id -> index in incs
	incs      []detector.Incident
	banIdx    map[banKey]int
	bansOut   []detector.Ban
	suspects  int
}

type srcEntry struct {
	c          detector.SourceCounters
	moved      bool
	run        uint32 // SYNs since the last ACK
	lastSuspct time.Time
}

type banEntry struct {
	until   time.Time
	dropped uint64
}

type banKey struct {
	p    netip.Prefix
	from time.Time
}

func newEmulator(opt Options) *emulator {
	if opt.Detector == (detector.Config{}) {
		opt.Detector = detector.DefaultConfig()
	}
	if opt.Poll <= 0 {
		opt.Poll = time.Second
	}
	if opt.SuspectInterval <= 0 {
		opt.SuspectInterval = time.Second
	}
	if opt.Host == "" {
		opt.Host = "replay"
	}
	return &emulator{
		opt:       opt,
		det:       detector.New(opt.Detector, detector.Options{Enforce: !opt.Observe, Protected: opt.Protected, Host: opt.Host}),
		src:       map[netip.Addr]*srcEntry{},
		svc:       map[netip.AddrPort]*detector.ServiceCounters{},
		smov:      map[netip.AddrPort]bool{},
		bans:      map[netip.Prefix]*banEntry{},
		incidents: map[string]int{},
		banIdx:    map[banKey]int{},
	}
}

// packet classifies one frame and counts it as the XDP program would.
func (e *emulator) packet(t time.Time, frame []byte) classify.Kind {
	if !e.started {
		e.started = true
		e.det.Observe(detector.Snapshot{Time: t, Complete: true}) // counters start at zero
		e.next = t.Add(e.opt.Poll)
	}
	for !t.Before(e.next) {
		e.poll(e.next)
		e.next = e.next.Add(e.opt.Poll)
	}
	r := classify.Classify(frame)
	if !r.Src.IsValid() {
		return r.Kind
	}
	if e.dropped(t, r.Src) {
		return r.Kind
	}
	if r.Counted() {
		s := e.src[r.Src]
		if s == nil {
			s = &srcEntry{c: detector.SourceCounters{Addr: r.Src, FirstSeen: t}}
			e.src[r.Src] = s
		}
		if !s.moved {
			s.moved = true
			e.moved = append(e.moved, r.Src)
		}
		switch r.Kind {
		case classify.SYN:
			s.c.SYN++
			s.run++
			if s.run >= e.opt.Detector.SuspectSYNs && (s.lastSuspct.IsZero() || t.Sub(s.lastSuspct) >= e.opt.SuspectInterval) {
				s.lastSuspct = t
				e.suspects++
				e.apply(t, e.det.SuspectSince(t, r.Src, s.run, s.c.FirstSeen))
			}
		case classify.ACK:
			s.c.ACK++
			s.run = 0
		case classify.RST:
			s.c.RST++
		}
	}
	if r.CountsService() {
		c := e.svc[r.Dst]
		if c == nil {
			c = &detector.ServiceCounters{Addr: r.Dst}
			e.svc[r.Dst] = c
		}
		if r.Kind == classify.SYN {
			c.SYN++
		} else {
			c.ACK++
		}
		e.smov[r.Dst] = true
	}
	return r.Kind
}

// dropped applies the emulated blocklist: a banned, unexpired source's
// frames are dropped before counting and counted per ban.
func (e *emulator) dropped(t time.Time, a netip.Addr) bool {
	if len(e.bans) == 0 {
		return false
	}
	for p, b := range e.bans {
		if p.Contains(a) {
			if t.Before(b.until) {
				b.dropped++
				return true
			}
		}
	}
	return false
}

// poll builds the snapshot a daemon would read at t: every source and
// service that moved since the previous poll (a complete snapshot), and the
// per-ban drop counters.
func (e *emulator) poll(t time.Time) {
	snap := detector.Snapshot{Time: t, Complete: true}
	for _, a := range e.moved {
		s := e.src[a]
		s.moved = false
		snap.Sources = append(snap.Sources, s.c)
	}
	e.moved = e.moved[:0]
	for a := range e.smov {
		snap.Services = append(snap.Services, *e.svc[a])
	}
	clear(e.smov)
	slices.SortFunc(snap.Services, func(a, b detector.ServiceCounters) int { return a.Addr.Compare(b.Addr) })
	for p, b := range e.bans {
		if !t.Before(b.until) {
			delete(e.bans, p) // the kernel expires bans by itself
			continue
		}
		snap.Bans = append(snap.Bans, detector.BanCounters{Prefix: p, Dropped: b.dropped})
	}
	slices.SortFunc(snap.Bans, func(a, b detector.BanCounters) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	e.apply(t, e.det.Observe(snap))
}

func (e *emulator) apply(t time.Time, dec detector.Decisions) {
	for _, inc := range dec.Incidents {
		if i, ok := e.incidents[inc.ID]; ok {
			e.incs[i] = inc
		} else {
			e.incidents[inc.ID] = len(e.incs)
			e.incs = append(e.incs, inc)
		}
	}
	for _, b := range dec.Bans {
		if old := e.bans[b.Prefix]; old != nil {
			old.until = b.Until
		} else {
			e.bans[b.Prefix] = &banEntry{until: b.Until}
		}
		k := banKey{b.Prefix, b.From}
		if i, ok := e.banIdx[k]; ok {
			e.bansOut[i] = b
		} else {
			e.banIdx[k] = len(e.bansOut)
			e.bansOut = append(e.bansOut, b)
		}
	}
	for _, p := range dec.Unbans {
		delete(e.bans, p)
		// A ban lifted early (aggregation, protection) ends now.
		for i := range e.bansOut {
			if b := &e.bansOut[i]; b.Prefix == p && b.Until.After(t) {
				b.Until = t
			}
		}
	}
}

// finish takes a last snapshot at the end of the capture (a partial poll
// interval), so the last packets count.
func (e *emulator) finish(rep *Report) {
	if e.started && rep.End.After(e.next.Add(-e.opt.Poll)) {
		e.poll(rep.End.Add(time.Nanosecond))
	}
	// Open incidents: their latest figures, not those of their last stage
	// change.
	for _, inc := range e.det.Open() {
		if i, ok := e.incidents[inc.ID]; ok {
			e.incs[i] = inc
		}
	}
	rep.Incidents = e.incs
	rep.Bans = e.bansOut
	rep.Suspects = e.suspects
}
