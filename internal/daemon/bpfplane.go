package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
)

// BPFPlane is the real data plane: one bpf.Datapath per interface, pinned
// under <bpffs>/<iface>, presented to the loop as one Plane.
type BPFPlane struct {
	ifaces   []*bpfIface
	suspects chan Suspect
	log      *slog.Logger
	wg       sync.WaitGroup
	readers  []*bpf.SuspectReader
	// Lost counts early-warning events dropped because the loop was behind.
	lost atomic.Uint64
}

type bpfIface struct {
	name string
	dp   *bpf.Datapath
}

// InterfaceError is a configured interface that does not exist on this
// host (or in this network namespace); the CLI exits 2 on it.
type InterfaceError struct {
	Name string
	Err  error
}

func (e *InterfaceError) Error() string {
	return fmt.Sprintf("interface %s (config key interfaces / --iface): %v", e.Name, e.Err)
}
func (e *InterfaceError) Unwrap() error { return e.Err }

// CheckInterfaces reports the first configured interface that does not
// exist, before anything is loaded or attached.
func CheckInterfaces(names []string) error {
	for _, n := range names {
		if _, err := net.InterfaceByName(n); err != nil {
			return &InterfaceError{Name: n, Err: err}
		}
	}
	return nil
}

// PinDir is where an interface's maps and link are pinned.
func PinDir(bpffs, iface string) string { return filepath.Join(bpffs, iface) }

// LoadOptions are the bpf.Options that cfg asks for, for iface.
func LoadOptions(cfg *config.Config, iface string) bpf.Options {
	return bpf.Options{
		PinDir:          PinDir(cfg.BPFFS, iface),
		MaxSources:      cfg.Datapath.MaxSources,
		MaxServices:     cfg.Datapath.MaxServices,
		MaxBans:         cfg.Datapath.MaxBans,
		SuspectSYNs:     cfg.Detector.SuspectSYNs,
		SuspectInterval: cfg.Datapath.SuspectInterval,
		VerifiedTTL:     cfg.Protection.VerifiedTTL,
	}
}

// OpenBPF loads (or re-opens from pins) the data plane of every configured
// interface and attaches it. Already attached interfaces keep their pinned
// link: the program is swapped in place, so protection never lapses.
func OpenBPF(cfg *config.Config, log *slog.Logger) (*BPFPlane, error) {
	if err := CheckInterfaces(cfg.Interfaces); err != nil {
		return nil, err
	}
	p := &BPFPlane{suspects: make(chan Suspect, 4096), log: log}
	for _, name := range cfg.Interfaces {
		dp, err := bpf.Load(LoadOptions(cfg, name))
		if err != nil {
			p.Close(false)
			return nil, fmt.Errorf("load data plane for %s: %w", name, err)
		}
		for _, m := range dp.Migrations() {
			log.Warn("pinned state migrated", "iface", name, "what", m)
		}
		used, err := dp.Attach(name, bpf.AttachMode(cfg.Attach))
		if err != nil {
			dp.Close()
			p.Close(false)
			return nil, err
		}
		log.Info("xdp attached", "iface", name, "attach", used, "pins", PinDir(cfg.BPFFS, name))
		p.ifaces = append(p.ifaces, &bpfIface{name: name, dp: dp})
	}
	for _, ifc := range p.ifaces {
		r, err := ifc.dp.Suspects()
		if err != nil {
			p.Close(false)
			return nil, err
		}
		p.readers = append(p.readers, r)
		p.wg.Add(1)
		go p.readSuspects(ifc, r)
	}
	return p, nil
}

// readSuspects forwards one interface's early warnings. Each carries the
// source's first-seen time from its kernel entry, so the detector can rate a
// new source's run over its real duration rather than since the last read.
func (p *BPFPlane) readSuspects(ifc *bpfIface, r *bpf.SuspectReader) {
	defer p.wg.Done()
	name := ifc.name
	for {
		ev, err := r.Read()
		if err != nil {
			if errors.Is(err, bpf.ErrClosed) {
				return
			}
			p.log.Warn("suspect event unreadable", "iface", name, "err", err)
			continue
		}
		// The source as the detector knows it: summed over interfaces
		// (the run itself is this interface's), so its SYN count
		// compares with the detector's own.
		sus := Suspect{Addr: ev.Addr.Unmap(), SYNs: ev.SYNs, Time: ev.Time}
		if src, ok, err := p.Source(ev.Addr); err == nil && ok {
			sus.FirstSeen, sus.SYN = src.FirstSeen, src.SYN
		}
		select {
		case p.suspects <- sus:
		default:
			p.lost.Add(1) // the next poll still sees the source's counters
		}
	}
}

// Close stops the event readers and releases the maps; with detach the
// XDP programs are removed first (bans stop applying until the next start).
func (p *BPFPlane) Close(detach bool) error {
	for _, r := range p.readers {
		r.Close()
	}
	p.wg.Wait()
	var errs []error
	for _, ifc := range p.ifaces {
		if detach {
			if err := ifc.dp.Detach(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := ifc.dp.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	p.ifaces = nil
	return errors.Join(errs...)
}

// Interfaces implements Plane.
func (p *BPFPlane) Interfaces() []api.Interface {
	out := make([]api.Interface, 0, len(p.ifaces))
	for _, ifc := range p.ifaces {
		out = append(out, describe(ifc.name, ifc.dp))
	}
	return out
}

func describe(name string, dp *bpf.Datapath) api.Interface {
	i := api.Interface{Name: name}
	if _, m, ok := dp.Attached(); ok {
		i.Attach = string(m)
	}
	if m, err := dp.Mode(); err == nil {
		i.Mode = m.String()
	}
	return i
}

// Counters implements Plane.
func (p *BPFPlane) Counters() (api.Counters, error) {
	var sum api.Counters
	for _, ifc := range p.ifaces {
		c, err := ifc.dp.Counters()
		if err != nil {
			return sum, fmt.Errorf("%s: %w", ifc.name, err)
		}
		sum = sum.Add(fromBPFCounters(c))
	}
	return sum, nil
}

func fromBPFCounters(c bpf.Counters) api.Counters {
	return api.Counters{Frames: c.Frames, NonIP: c.NonIP, NonTCP: c.NonTCP, Fragments: c.Fragments, NotParsed: c.NotParsed,
		TCP: c.TCP, SYN: c.SYN, SYNACK: c.SYNACK, ACK: c.ACK, RST: c.RST, TCPOther: c.TCPOther, Dropped: c.Dropped,
		WouldDrop: c.WouldDrop, Allowlisted: c.Allowlisted}
}

// Services implements Plane.
func (p *BPFPlane) Services() ([]api.Service, error) {
	if len(p.ifaces) == 1 {
		ss, err := p.ifaces[0].dp.Services()
		out := make([]api.Service, len(ss))
		for i, s := range ss {
			out[i] = api.Service{Addr: s.Addr, SYN: s.SYN, ACK: s.ACK}
		}
		return out, err
	}
	sum := map[netip.AddrPort]api.Service{}
	for _, ifc := range p.ifaces {
		ss, err := ifc.dp.Services()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ifc.name, err)
		}
		for _, s := range ss {
			t := sum[s.Addr]
			t.Addr, t.SYN, t.ACK = s.Addr, t.SYN+s.SYN, t.ACK+s.ACK
			sum[s.Addr] = t
		}
	}
	out := make([]api.Service, 0, len(sum))
	for _, s := range sum {
		out = append(out, s)
	}
	return out, nil
}

func fromBPFSource(s bpf.Source) api.Source {
	return api.Source{Addr: s.Addr.Unmap(), SYN: s.SYN, ACK: s.ACK, RST: s.RST, FirstSeen: s.FirstSeen, LastSeen: s.LastSeen}
}

func mergeSource(t *api.Source, s api.Source) {
	if !t.Addr.IsValid() {
		*t = s
		return
	}
	t.SYN += s.SYN
	t.ACK += s.ACK
	t.RST += s.RST
	if s.FirstSeen.Before(t.FirstSeen) {
		t.FirstSeen = s.FirstSeen
	}
	if s.LastSeen.After(t.LastSeen) {
		t.LastSeen = s.LastSeen
	}
}

// Sources implements Plane.
func (p *BPFPlane) Sources() ([]api.Source, error) {
	if len(p.ifaces) == 1 {
		ss, err := p.ifaces[0].dp.Sources()
		if err != nil {
			return nil, err
		}
		out := make([]api.Source, len(ss))
		for i, s := range ss {
			out[i] = fromBPFSource(s)
		}
		return out, nil
	}
	sum := map[netip.Addr]*api.Source{}
	for _, ifc := range p.ifaces {
		ss, err := ifc.dp.Sources()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ifc.name, err)
		}
		for _, s := range ss {
			a := s.Addr.Unmap()
			t, ok := sum[a]
			if !ok {
				t = &api.Source{}
				sum[a] = t
			}
			mergeSource(t, fromBPFSource(s))
		}
	}
	out := make([]api.Source, 0, len(sum))
	for _, s := range sum {
		out = append(out, *s)
	}
	return out, nil
}

// Source implements Plane.
func (p *BPFPlane) Source(a netip.Addr) (api.Source, bool, error) {
	var t api.Source
	found := false
	for _, ifc := range p.ifaces {
		s, ok, err := ifc.dp.Source(a)
		if err != nil {
			return t, false, fmt.Errorf("%s: %w", ifc.name, err)
		}
		if ok {
			found = true
			mergeSource(&t, fromBPFSource(s))
		}
	}
	return t, found, nil
}

// Bans implements Plane: the union over interfaces (they are kept equal).
func (p *BPFPlane) Bans() ([]api.Ban, error) {
	return unionBans(p.datapaths())
}

func (p *BPFPlane) datapaths() []*bpf.Datapath {
	out := make([]*bpf.Datapath, len(p.ifaces))
	for i, ifc := range p.ifaces {
		out[i] = ifc.dp
	}
	return out
}

func unionBans(dps []*bpf.Datapath) ([]api.Ban, error) {
	sum := map[netip.Prefix]*api.Ban{}
	for _, dp := range dps {
		bans, err := dp.Bans()
		if err != nil {
			return nil, err
		}
		for _, b := range bans {
			t, ok := sum[b.Prefix]
			if !ok {
				t = &api.Ban{Prefix: b.Prefix, Until: b.Until}
				sum[b.Prefix] = t
			}
			t.Dropped += b.Dropped
			t.WouldDrop += b.WouldDrop
			if b.Until.After(t.Until) {
				t.Until = b.Until
			}
		}
	}
	out := make([]api.Ban, 0, len(sum))
	for _, b := range sum {
		out = append(out, *b)
	}
	sort.Slice(out, func(i, j int) bool { return comparePrefix(out[i].Prefix, out[j].Prefix) < 0 })
	return out, nil
}

func unionAllows(dps []*bpf.Datapath) ([]netip.Prefix, error) {
	set := map[netip.Prefix]bool{}
	for _, dp := range dps {
		ps, err := dp.Allows()
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			set[p] = true
		}
	}
	out := make([]netip.Prefix, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return comparePrefix(out[i], out[j]) < 0 })
	return out, nil
}

// Block implements Plane on every interface.
func (p *BPFPlane) Block(pfx netip.Prefix, ttl time.Duration) error {
	return p.each(func(dp *bpf.Datapath) error { return dp.Block(pfx, ttl) })
}

// Unblock implements Plane; an interface without the entry is fine.
func (p *BPFPlane) Unblock(pfx netip.Prefix) error {
	return p.each(func(dp *bpf.Datapath) error {
		if err := dp.Unblock(pfx); err != nil && !errors.Is(err, bpf.ErrNotFound) {
			return err
		}
		return nil
	})
}

// Allows implements Plane.
func (p *BPFPlane) Allows() ([]netip.Prefix, error) { return unionAllows(p.datapaths()) }

// Allow implements Plane.
func (p *BPFPlane) Allow(pfx netip.Prefix) error {
	return p.each(func(dp *bpf.Datapath) error { return dp.Allow(pfx) })
}

// Disallow implements Plane.
func (p *BPFPlane) Disallow(pfx netip.Prefix) error {
	return p.each(func(dp *bpf.Datapath) error {
		if err := dp.Disallow(pfx); err != nil && !errors.Is(err, bpf.ErrNotFound) {
			return err
		}
		return nil
	})
}

// SetMode implements Plane.
func (p *BPFPlane) SetMode(enforce bool) error {
	m := bpf.ModeObserve
	if enforce {
		m = bpf.ModeEnforce
	}
	return p.each(func(dp *bpf.Datapath) error { return dp.SetMode(m) })
}

// Suspects implements Plane.
func (p *BPFPlane) Suspects() <-chan Suspect { return p.suspects }

func (p *BPFPlane) each(f func(*bpf.Datapath) error) error {
	var errs []error
	for _, ifc := range p.ifaces {
		if err := f(ifc.dp); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ifc.name, err))
		}
	}
	return errors.Join(errs...)
}

// Pinned is the data plane state read straight from the pins when the
// daemon is down: for `synguard status` and `synguard list`.
type Pinned struct {
	Interfaces []api.Interface
	Counters   api.Counters
	Bans       []api.Ban
	Allows     []netip.Prefix
}

// ReadPinned opens every interface directory under cfg.BPFFS read-only
// (bpf.Open: no program is loaded or swapped into the pinned link, the
// suspect ring buffer is not touched, map sizes are whatever the daemon
// pinned), reads it and releases it again. It is safe while a daemon runs,
// hung or not.
func ReadPinned(cfg *config.Config) (*Pinned, error) {
	entries, err := filepath.Glob(filepath.Join(cfg.BPFFS, "*", "config"))
	if err != nil {
		return nil, err
	}
	out := &Pinned{}
	var dps []*bpf.Datapath
	defer func() {
		for _, dp := range dps {
			dp.Close()
		}
	}()
	for _, e := range entries {
		name := filepath.Base(filepath.Dir(e))
		dp, err := bpf.Open(PinDir(cfg.BPFFS, name))
		if err != nil {
			return nil, fmt.Errorf("open pins of %s: %w", name, err)
		}
		dps = append(dps, dp)
		ifc := describe(name, dp)
		out.Interfaces = append(out.Interfaces, ifc)
		c, err := dp.Counters()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out.Counters = out.Counters.Add(fromBPFCounters(c))
	}
	if out.Bans, err = unionBans(dps); err != nil {
		return nil, err
	}
	if out.Allows, err = unionAllows(dps); err != nil {
		return nil, err
	}
	return out, nil
}
