package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Map names (see the contract at the top of synguard.c).
const (
	mapConfig      = synguardMapConfig
	mapSources     = synguardMapSources
	mapServices    = synguardMapServices
	mapBlocklist   = synguardMapBlocklist
	mapAllowlist   = synguardMapAllowlist
	mapBanExpiry   = synguardMapBanExpiry
	mapBanCounters = synguardMapBanCounters
	mapCounters    = synguardMapCounters
	mapProtected   = synguardMapProtected
	mapVerified    = synguardMapVerified
	linkPinName    = "link"
)

// Indexes into the config map.
const (
	configMode       uint32 = 0
	configListGen    uint32 = 1
	configAttachMode uint32 = 2
	// configProtections counts the protected map's entries; 0 lets the
	// program skip the protection stage.
	configProtections uint32 = 3
)

// Values of config[configAttachMode].
const (
	attachedNative  uint64 = 1
	attachedGeneric uint64 = 2
)

// pinnedMaps are pinned under PinDir by name. The suspect ring buffer is
// not: events only matter to the process reading them.
var pinnedMaps = []string{
	mapConfig, mapSources, mapServices, mapBlocklist, mapAllowlist,
	mapBanExpiry, mapBanCounters, mapCounters, mapProtected, mapVerified,
}

// banMaps are renumbered together when any of them changes size.
var banMaps = []string{mapBlocklist, mapBanExpiry, mapBanCounters}

// statsMaps only hold counters: recreated empty when they no longer fit.
// protected is here too: when its layout changes, the daemon re-enters
// protection on its next detection.
var statsMaps = map[string]bool{mapSources: true, mapServices: true, mapCounters: true,
	mapProtected: true, mapVerified: true}

// Datapath is the loaded XDP program and its maps for one interface.
type Datapath struct {
	// mu guards the lifetime of the objects: readers and list changes hold
	// it shared, Attach/Detach/Close exclusively. Map reads and writes are
	// safe in the kernel, so a long Sources walk must not hold up a Block.
	mu sync.RWMutex
	// listMu serialises list and mode changes (slot allocation, generation).
	listMu     sync.Mutex
	opts       Options
	objs       synguardObjects
	lnk        link.Link
	iface      string
	mode       AttachMode
	migrations []string
	closed     bool
}

// LoadError carries a verifier rejection; its message includes the full
// verifier log, because the last line alone rarely says what is wrong.
type LoadError struct {
	Err *ebpf.VerifierError
}

// Error returns the message with the full verifier log.
func (e *LoadError) Error() string {
	return fmt.Sprintf("load synguard xdp program: %+v", e.Err)
}

// Unwrap gives errors.As access to the *ebpf.VerifierError.
func (e *LoadError) Unwrap() error { return e.Err }

// Load loads the XDP program and its maps. With opts.PinDir it re-opens
// the maps pinned there (migrating them when their size changed, see the
// package doc) and, when a pinned link exists, swaps the new program into
// it, so the interface stays protected across restarts and upgrades. Only
// the daemon should Load a PinDir; other processes use Open.
func Load(opts Options) (*Datapath, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	if opts.PinDir != "" {
		if err := preparePinDir(opts.PinDir); err != nil {
			return nil, err
		}
	}

	spec, err := loadSynguard()
	if err != nil {
		return nil, fmt.Errorf("load: parse embedded object: %w", err)
	}
	spec.Maps[mapSources].MaxEntries = opts.MaxSources
	spec.Maps[mapServices].MaxEntries = opts.MaxServices
	spec.Maps[mapBlocklist].MaxEntries = opts.MaxBans
	spec.Maps[mapBanExpiry].MaxEntries = opts.MaxBans
	spec.Maps[mapBanCounters].MaxEntries = opts.MaxBans
	spec.Maps[mapAllowlist].MaxEntries = opts.MaxAllows
	spec.Maps[mapVerified].MaxEntries = opts.MaxVerified
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone // pinning is managed here, see pinAll
	}
	if err := spec.Variables["suspect_syns"].Set(opts.SuspectSYNs); err != nil {
		return nil, fmt.Errorf("load: set suspect_syns: %w", err)
	}
	if err := spec.Variables["suspect_interval_ns"].Set(uint64(opts.SuspectInterval.Nanoseconds())); err != nil {
		return nil, fmt.Errorf("load: set suspect_interval_ns: %w", err)
	}
	if err := spec.Variables["verified_ttl_ns"].Set(uint64(opts.VerifiedTTL.Nanoseconds())); err != nil {
		return nil, fmt.Errorf("load: set verified_ttl_ns: %w", err)
	}

	pins, err := openPins(spec, opts.PinDir)
	if err != nil {
		return nil, err
	}
	defer pins.close()

	d := &Datapath{opts: opts}
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{MapReplacements: pins.reuse})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, &LoadError{Err: ve}
		}
		return nil, fmt.Errorf("load synguard xdp program: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			d.objs.Close()
		}
	}()

	if err := d.migrate(pins); err != nil {
		return nil, err
	}
	// The protection stage runs only while config says services are
	// protected: make that match the (possibly re-used) protected map.
	if err := d.syncProtectionCount(); err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	if opts.PinDir != "" {
		if err := d.reopenLink(); err != nil {
			return nil, err
		}
		if err := d.pinAll(pins); err != nil {
			if d.lnk != nil {
				d.lnk.Close()
			}
			return nil, err
		}
	}
	ok = true
	return d, nil
}

// Migrations describes what Load changed in the pinned state (maps migrated
// or recreated because Options changed), for the daemon to log.
func (d *Datapath) Migrations() []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return append([]string(nil), d.migrations...)
}

// Close releases the Datapath's file descriptors. Pinned maps and a pinned
// link (and so the attachment) stay; without PinDir, Close detaches.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	if d.lnk != nil {
		errs = append(errs, d.lnk.Close())
		d.lnk = nil
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// preparePinDir creates dir (and parents) and checks it is on bpffs.
func preparePinDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("pin dir %q: must be an absolute path on bpffs (e.g. /sys/fs/bpf/synguard/eth0)", dir)
	}
	// Check the nearest existing ancestor before creating anything, so a
	// typo never leaves directories on a regular filesystem.
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	if err := checkBPFFS(existing); err != nil {
		return fmt.Errorf("pin dir %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pin dir %s: %w", dir, err)
	}
	return nil
}

func checkBPFFS(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if uint32(st.Type) != uint32(unix.BPF_FS_MAGIC) {
		return fmt.Errorf("%s is not on a bpf filesystem (mount one with: mount -t bpf bpf /sys/fs/bpf)", path)
	}
	return nil
}

// pinSet is what openPins found under PinDir.
type pinSet struct {
	dir string
	// reuse are compatible pinned maps, handed to the loader.
	reuse map[string]*ebpf.Map
	// old are pinned maps that no longer match the spec.
	old map[string]*ebpf.Map
}

func (p *pinSet) close() {
	for _, m := range p.reuse {
		m.Close()
	}
	for _, m := range p.old {
		m.Close()
	}
}

func openPins(spec *ebpf.CollectionSpec, dir string) (*pinSet, error) {
	ps := &pinSet{dir: dir, reuse: map[string]*ebpf.Map{}, old: map[string]*ebpf.Map{}}
	if dir == "" {
		return ps, nil
	}
	for _, name := range pinnedMaps {
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			ps.close()
			return nil, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		if spec.Maps[name].Compatible(m) == nil {
			ps.reuse[name] = m
		} else {
			ps.old[name] = m
		}
	}
	// Ban slots index three maps: renumber all of them or none.
	for _, name := range banMaps {
		if ps.old[name] == nil {
			continue
		}
		for _, other := range banMaps {
			if m := ps.reuse[other]; m != nil {
				ps.old[other] = m
				delete(ps.reuse, other)
			}
		}
		break
	}
	return ps, nil
}

// pinAll pins every map that was not re-used, replacing stale pins.
func (d *Datapath) pinAll(ps *pinSet) error {
	maps := d.mapsByName()
	for _, name := range pinnedMaps {
		if ps.reuse[name] != nil {
			continue
		}
		path := filepath.Join(ps.dir, name)
		if ps.old[name] != nil {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("replace pin %s: %w", path, err)
			}
		}
		if err := maps[name].Pin(path); err != nil {
			return fmt.Errorf("pin map %s: %w", path, err)
		}
	}
	return nil
}

func (d *Datapath) mapsByName() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		mapConfig:      d.objs.Config,
		mapSources:     d.objs.Sources,
		mapServices:    d.objs.Services,
		mapBlocklist:   d.objs.Blocklist,
		mapAllowlist:   d.objs.Allowlist,
		mapBanExpiry:   d.objs.BanExpiry,
		mapBanCounters: d.objs.BanCounters,
		mapCounters:    d.objs.Counters,
		mapProtected:   d.objs.Protected,
		mapVerified:    d.objs.Verified,
	}
}

// migrate copies state out of pinned maps that no longer match the spec.
func (d *Datapath) migrate(ps *pinSet) error {
	if len(ps.old) == 0 {
		return nil
	}
	for _, name := range pinnedMaps {
		old := ps.old[name]
		if old == nil || !statsMaps[name] {
			continue
		}
		d.migrations = append(d.migrations, fmt.Sprintf(
			"%s: pinned map (%d entries) does not match this configuration (%d entries): recreated empty",
			name, old.MaxEntries(), d.mapsByName()[name].MaxEntries()))
	}
	if old := ps.old[mapConfig]; old != nil {
		if old.ValueSize() != d.objs.Config.ValueSize() || old.KeySize() != d.objs.Config.KeySize() {
			return incompatiblePin(ps.dir, mapConfig, old, d.objs.Config)
		}
		// The mode and how the pinned link is attached carry over; the
		// generation is fresh and the protected map starts empty.
		var mode uint64
		for _, i := range []uint32{configMode, configAttachMode} {
			var v uint64
			if err := old.Lookup(i, &v); err != nil {
				return fmt.Errorf("migrate %s: read index %d: %w", mapConfig, i, err)
			}
			if err := d.objs.Config.Put(i, v); err != nil {
				return fmt.Errorf("migrate %s: write index %d: %w", mapConfig, i, err)
			}
			if i == configMode {
				mode = v
			}
		}
		d.migrations = append(d.migrations, "config: migrated mode "+Mode(mode).String())
	}
	if old := ps.old[mapAllowlist]; old != nil {
		if err := d.migrateAllows(ps.dir, old); err != nil {
			return err
		}
	}
	if ps.old[mapBlocklist] != nil || ps.old[mapBanExpiry] != nil || ps.old[mapBanCounters] != nil {
		if err := d.migrateBans(ps); err != nil {
			return err
		}
	}
	// Cached verdicts in a re-used sources map may name old ban slots.
	return d.bumpGeneration()
}

func incompatiblePin(dir, name string, old, cur *ebpf.Map) error {
	return fmt.Errorf("pinned map %s: layout key %d/value %d bytes, this version needs %d/%d: "+
		"it cannot be migrated; remove %s (this drops its bans and allowlist) and load again",
		filepath.Join(dir, name), old.KeySize(), old.ValueSize(), cur.KeySize(), cur.ValueSize(), dir)
}

func (d *Datapath) migrateAllows(dir string, old *ebpf.Map) error {
	if old.KeySize() != d.objs.Allowlist.KeySize() {
		return incompatiblePin(dir, mapAllowlist, old, d.objs.Allowlist)
	}
	var (
		k     synguardLpmKey
		v     uint32
		n     int
		keys  []synguardLpmKey
		entry = old.Iterate()
	)
	for entry.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := entry.Err(); err != nil {
		return fmt.Errorf("migrate allowlist: %w", err)
	}
	if uint32(len(keys)) > d.opts.MaxAllows {
		return fmt.Errorf("pinned allowlist in %s has %d entries, more than max allows %d: "+
			"raise max allows, or remove entries with the previous setting first", dir, len(keys), d.opts.MaxAllows)
	}
	for _, k := range keys {
		if err := d.objs.Allowlist.Put(k, uint32(1)); err != nil {
			return fmt.Errorf("migrate allowlist: %w", err)
		}
		n++
	}
	d.migrations = append(d.migrations, fmt.Sprintf("allowlist: migrated %d entries to max allows %d", n, d.opts.MaxAllows))
	return nil
}

// migrateBans copies live bans (expiry and drop counts) into the new maps,
// numbering slots from 0. Expired bans are dropped.
func (d *Datapath) migrateBans(ps *pinSet) error {
	oldList, oldExpiry, oldHits := ps.old[mapBlocklist], ps.old[mapBanExpiry], ps.old[mapBanCounters]
	if oldList == nil {
		oldList = ps.reuse[mapBlocklist]
	}
	if oldExpiry == nil || oldHits == nil || oldList == nil {
		// A partial set (a crash mid-migration): nothing consistent to copy.
		d.migrations = append(d.migrations, "blocklist: incomplete pinned ban maps: bans dropped")
		return nil
	}
	for name, m := range map[string]*ebpf.Map{mapBlocklist: oldList, mapBanExpiry: oldExpiry, mapBanCounters: oldHits} {
		cur := d.mapsByName()[name]
		if m.KeySize() != cur.KeySize() || m.ValueSize() != cur.ValueSize() {
			return incompatiblePin(ps.dir, name, m, cur)
		}
	}
	type oldBan struct {
		key   synguardLpmKey
		until uint64
		hits  synguardBanHits
	}
	var (
		bans []oldBan
		k    synguardLpmKey
		ref  synguardBanRef
		now  = kernelNow()
		it   = oldList.Iterate()
	)
	for it.Next(&k, &ref) {
		var until uint64
		if err := oldExpiry.Lookup(ref.Slot, &until); err != nil || until <= now {
			continue
		}
		var perCPU []synguardBanHits
		if err := oldHits.Lookup(ref.Slot, &perCPU); err != nil {
			return fmt.Errorf("migrate blocklist: read drop counts: %w", err)
		}
		b := oldBan{key: k, until: until}
		for _, h := range perCPU {
			b.hits.Dropped += h.Dropped
			b.hits.WouldDrop += h.WouldDrop
		}
		bans = append(bans, b)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("migrate blocklist: %w", err)
	}
	if uint32(len(bans)) > d.opts.MaxBans {
		return fmt.Errorf("pinned blocklist in %s has %d live bans, more than max bans %d: "+
			"raise max bans, or wait for bans to expire", ps.dir, len(bans), d.opts.MaxBans)
	}
	for i, b := range bans {
		slot := uint32(i)
		hits := make([]synguardBanHits, numCPU())
		hits[0] = b.hits
		if err := d.objs.BanCounters.Put(slot, hits); err != nil {
			return fmt.Errorf("migrate blocklist: write drop counts: %w", err)
		}
		if err := d.objs.BanExpiry.Put(slot, b.until); err != nil {
			return fmt.Errorf("migrate blocklist: write expiry: %w", err)
		}
		if err := d.objs.Blocklist.Put(b.key, synguardBanRef{Slot: slot, Prefixlen: b.key.Prefixlen}); err != nil {
			return fmt.Errorf("migrate blocklist: %w", err)
		}
	}
	d.migrations = append(d.migrations, fmt.Sprintf("blocklist: migrated %d live bans to max bans %d", len(bans), d.opts.MaxBans))
	return nil
}

func numCPU() int {
	n, err := ebpf.PossibleCPU()
	if err != nil || n < 1 {
		return 1
	}
	return n
}
