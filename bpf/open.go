package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Open opens the state pinned under pinDir by the process that loaded the
// program (the daemon), without loading or swapping a program: for the CLI
// and status tools, which must never replace the running program (Load
// would, with this binary's version, and the daemon would stop receiving
// suspect events). A Datapath from Open reads and steers everything (mode,
// lists, counters, sources, services; Attached and Detach work on the pinned
// link) but cannot Attach, and has no suspect events.
func Open(pinDir string) (*Datapath, error) {
	if pinDir == "" {
		return nil, errors.New("open pinned state: empty pin dir")
	}
	if err := checkBPFFS(pinDir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("open pinned state: nothing pinned in %s (is synguard running on this interface?)", pinDir)
		}
		return nil, fmt.Errorf("open pinned state in %s: %w", pinDir, err)
	}
	spec, err := loadSynguard()
	if err != nil {
		return nil, fmt.Errorf("open pinned state: parse embedded object: %w", err)
	}
	d := &Datapath{opts: Options{PinDir: pinDir}}
	ok := false
	defer func() {
		if !ok {
			d.objs.Close()
		}
	}()
	ptrs := map[string]**ebpf.Map{
		mapConfig: &d.objs.Config, mapSources: &d.objs.Sources, mapServices: &d.objs.Services,
		mapBlocklist: &d.objs.Blocklist, mapAllowlist: &d.objs.Allowlist, mapBanExpiry: &d.objs.BanExpiry,
		mapBanCounters: &d.objs.BanCounters, mapCounters: &d.objs.Counters,
		mapProtected: &d.objs.Protected, mapVerified: &d.objs.Verified,
	}
	for _, name := range pinnedMaps {
		path := filepath.Join(pinDir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("open pinned state: %s missing (is synguard running on this interface?)", path)
		}
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		*ptrs[name] = m
		// Sizes are the loader's choice; the layout must be this version's.
		ms := spec.Maps[name]
		if m.Type() != ms.Type || m.KeySize() != ms.KeySize || m.ValueSize() != ms.ValueSize {
			return nil, fmt.Errorf("pinned map %s: %s with key %d/value %d bytes, this version expects %s with %d/%d: "+
				"synguard versions differ; use the binary that is running", path, m.Type(), m.KeySize(), m.ValueSize(),
				ms.Type, ms.KeySize, ms.ValueSize)
		}
	}
	d.opts.MaxSources = d.objs.Sources.MaxEntries()
	d.opts.MaxServices = d.objs.Services.MaxEntries()
	d.opts.MaxBans = d.objs.BanExpiry.MaxEntries()
	d.opts.MaxAllows = d.objs.Allowlist.MaxEntries()

	lp := filepath.Join(pinDir, linkPinName)
	l, err := link.LoadPinnedLink(lp, nil)
	switch {
	case err == nil:
		if err := d.adoptLink(l); err != nil {
			l.Close()
			return nil, err
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("open pinned link %s: %w", lp, err)
	}
	ok = true
	return d, nil
}

// adoptLink records a pinned link's interface and mode without touching
// its program; a link whose interface is gone is left alone (Load cleans it).
func (d *Datapath) adoptLink(l link.Link) error {
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("pinned link: %w", err)
	}
	x := info.XDP()
	if x == nil || x.Ifindex == 0 {
		l.Close()
		return nil
	}
	d.lnk = l
	d.iface = fmt.Sprintf("ifindex %d", x.Ifindex)
	if ifc, err := net.InterfaceByIndex(int(x.Ifindex)); err == nil {
		d.iface = ifc.Name
	}
	var code uint64
	_ = d.objs.Config.Lookup(configAttachMode, &code)
	d.mode = AttachNative
	if code == attachedGeneric {
		d.mode = AttachGeneric
	}
	return nil
}
