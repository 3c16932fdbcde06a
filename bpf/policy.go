package bpf

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
)

// SetMode switches between observe and enforce at run time; the program
// reads the mode on every frame, so the change applies to the next frame.
func (d *Datapath) SetMode(m Mode) error {
	if m != ModeObserve && m != ModeEnforce {
		return fmt.Errorf("set mode %d: want observe (0) or enforce (1)", uint32(m))
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	d.listMu.Lock()
	defer d.listMu.Unlock()
	if d.closed {
		return errors.New("set mode: datapath is closed")
	}
	if err := d.objs.Config.Put(configMode, uint64(m)); err != nil {
		return fmt.Errorf("set mode %s: %w", m, err)
	}
	return nil
}

// Mode returns the current mode (from the pinned config, so it reflects
// changes made by other processes).
func (d *Datapath) Mode() (Mode, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return 0, errors.New("read mode: datapath is closed")
	}
	var v uint64
	if err := d.objs.Config.Lookup(configMode, &v); err != nil {
		return 0, fmt.Errorf("read mode: %w", err)
	}
	return Mode(v), nil
}

// bumpGeneration invalidates every verdict cached in the per-source
// entries. It writes a fresh random value rather than an increment, so two
// processes changing lists at once can never write the same value and
// leave a stale cache valid.
func (d *Datapath) bumpGeneration() error {
	var old uint64
	if err := d.objs.Config.Lookup(configListGen, &old); err != nil {
		return fmt.Errorf("read list generation: %w", err)
	}
	var b [4]byte
	next := old
	for next == old || next == 0 {
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("list generation: %w", err)
		}
		next = uint64(binary.LittleEndian.Uint32(b[:]))
	}
	if err := d.objs.Config.Put(configListGen, next); err != nil {
		return fmt.Errorf("write list generation: %w", err)
	}
	return nil
}

// Block bans p (IPv4 or IPv6 CIDR; host bits are masked off) for ttl: TCP
// from covered sources is dropped in enforce mode until the ban expires,
// which the kernel enforces itself, with or without a daemon. Blocking a
// prefix again sets a new expiry and keeps its drop counts. The bpf layer
// accepts any valid prefix, including /0; refusing those is policy.
func (d *Datapath) Block(p netip.Prefix, ttl time.Duration) error {
	np, err := normalizePrefix(p)
	if err != nil {
		return fmt.Errorf("block %s: %w", p, err)
	}
	if ttl <= 0 {
		return fmt.Errorf("block %s: ttl %v: must be positive", np, ttl)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	d.listMu.Lock()
	defer d.listMu.Unlock()
	if d.closed {
		return fmt.Errorf("block %s: datapath is closed", np)
	}
	until := kernelNow() + uint64(ttl)
	key := lpmKeyFor(np)

	ref, found, err := d.lookupBan(key)
	switch {
	case err != nil:
		return fmt.Errorf("block %s: %w", np, err)
	case found:
		if err := d.objs.BanExpiry.Put(ref.Slot, until); err != nil {
			return fmt.Errorf("block %s: set expiry: %w", np, err)
		}
		// An expired ban may have been re-evaluated to pass: re-check.
		if err := d.bumpGeneration(); err != nil {
			return fmt.Errorf("block %s: %w", np, err)
		}
		return nil
	}

	slot, err := d.freeSlot()
	if err != nil {
		return fmt.Errorf("block %s: %w", np, err)
	}
	if err := d.objs.BanCounters.Put(slot, make([]synguardBanHits, numCPU())); err != nil {
		return fmt.Errorf("block %s: reset drop counts: %w", np, err)
	}
	if err := d.objs.BanExpiry.Put(slot, until); err != nil {
		return fmt.Errorf("block %s: set expiry: %w", np, err)
	}
	ref = synguardBanRef{Slot: slot, Prefixlen: key.Prefixlen}
	if err := d.objs.Blocklist.Update(key, ref, ebpf.UpdateNoExist); err != nil {
		_ = d.objs.BanExpiry.Put(slot, uint64(0))
		return fmt.Errorf("block %s: %w", np, err)
	}
	if err := d.bumpGeneration(); err != nil {
		return fmt.Errorf("block %s: %w", np, err)
	}
	return nil
}

// lookupBan finds the ban on exactly key's prefix. A lookup in an LPM trie
// returns the longest prefix covering the key, so a covering shorter ban is
// told apart by the prefix length stored in its value.
func (d *Datapath) lookupBan(key synguardLpmKey) (synguardBanRef, bool, error) {
	var ref synguardBanRef
	err := d.objs.Blocklist.Lookup(key, &ref)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return ref, false, nil
	}
	if err != nil {
		return ref, false, err
	}
	return ref, ref.Prefixlen == key.Prefixlen, nil
}

// freeSlot finds a ban slot with no expiry set; when none is left it prunes
// expired bans and tries again.
func (d *Datapath) freeSlot() (uint32, error) {
	for attempt := 0; attempt < 2; attempt++ {
		slot, ok, err := d.scanFreeSlot()
		if err != nil {
			return 0, err
		}
		if ok {
			return slot, nil
		}
		if attempt == 0 {
			n, err := d.prune()
			if err != nil {
				return 0, err
			}
			if n == 0 {
				break
			}
		}
	}
	return 0, fmt.Errorf("blocklist full: every one of max bans %d is live; unblock some or raise max bans", d.opts.MaxBans)
}

func (d *Datapath) scanFreeSlot() (uint32, bool, error) {
	const chunk = 4096
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]uint32, chunk)
		vals   = make([]uint64, chunk)
	)
	for {
		n, err := d.objs.BanExpiry.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if vals[i] == 0 {
				return keys[i], true, nil
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, fmt.Errorf("scan ban slots: %w", err)
		}
	}
}

// Prune deletes expired bans from the blocklist and frees their slots. The
// kernel already ignores expired bans; pruning keeps the table small and
// their slots reusable. Returns how many were removed.
func (d *Datapath) Prune() (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	d.listMu.Lock()
	defer d.listMu.Unlock()
	if d.closed {
		return 0, errors.New("prune bans: datapath is closed")
	}
	return d.prune()
}

func (d *Datapath) prune() (int, error) {
	now := kernelNow()
	var (
		key   synguardLpmKey
		ref   synguardBanRef
		stale []synguardLpmKey
		slots []uint32
		it    = d.objs.Blocklist.Iterate()
	)
	for it.Next(&key, &ref) {
		var until uint64
		if err := d.objs.BanExpiry.Lookup(ref.Slot, &until); err != nil {
			return 0, fmt.Errorf("prune bans: %w", err)
		}
		if until <= now {
			stale = append(stale, key)
			slots = append(slots, ref.Slot)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("prune bans: %w", err)
	}
	for i, k := range stale {
		if err := d.objs.Blocklist.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return i, fmt.Errorf("prune bans: %w", err)
		}
		if err := d.objs.BanExpiry.Put(slots[i], uint64(0)); err != nil {
			return i, fmt.Errorf("prune bans: %w", err)
		}
	}
	if len(stale) > 0 {
		if err := d.bumpGeneration(); err != nil {
			return len(stale), fmt.Errorf("prune bans: %w", err)
		}
	}
	return len(stale), nil
}

// Unblock lifts the ban on exactly p (as given to Block). It returns an
// error wrapping ErrNotFound when p is not blocked.
func (d *Datapath) Unblock(p netip.Prefix) error {
	np, err := normalizePrefix(p)
	if err != nil {
		return fmt.Errorf("unblock %s: %w", p, err)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	d.listMu.Lock()
	defer d.listMu.Unlock()
	if d.closed {
		return fmt.Errorf("unblock %s: datapath is closed", np)
	}
	key := lpmKeyFor(np)
	ref, found, err := d.lookupBan(key)
	if err != nil {
		return fmt.Errorf("unblock %s: %w", np, err)
	}
	if !found {
		return fmt.Errorf("unblock %s: %w", np, ErrNotFound)
	}
	if err := d.objs.Blocklist.Delete(key); err != nil {
		return fmt.Errorf("unblock %s: %w", np, err)
	}
	if err := d.objs.BanExpiry.Put(ref.Slot, uint64(0)); err != nil {
		return fmt.Errorf("unblock %s: free slot: %w", np, err)
	}
	if err := d.bumpGeneration(); err != nil {
		return fmt.Errorf("unblock %s: %w", np, err)
	}
	return nil
}

// Bans lists the live bans with their drop counts, sorted by prefix.
// Expired bans are omitted (the kernel no longer enforces them).
func (d *Datapath) Bans() ([]Ban, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, errors.New("list bans: datapath is closed")
	}
	now := kernelNow()
	var (
		key   synguardLpmKey
		ref   synguardBanRef
		bans  []Ban
		hits  []synguardBanHits
		it    = d.objs.Blocklist.Iterate()
		clock = readKernelClock()
	)
	for it.Next(&key, &ref) {
		var until uint64
		if err := d.objs.BanExpiry.Lookup(ref.Slot, &until); err != nil {
			return nil, fmt.Errorf("list bans: expiry of slot %d: %w", ref.Slot, err)
		}
		if until <= now {
			continue
		}
		p, err := prefixOf(key)
		if err != nil {
			return nil, fmt.Errorf("list bans: %w", err)
		}
		if err := d.objs.BanCounters.Lookup(ref.Slot, &hits); err != nil {
			return nil, fmt.Errorf("list bans: drop counts of slot %d: %w", ref.Slot, err)
		}
		b := Ban{Prefix: p, Until: clock.toWall(until)}
		for _, h := range hits {
			b.Dropped += h.Dropped
			b.WouldDrop += h.WouldDrop
		}
		bans = append(bans, b)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list bans: %w", err)
	}
	slices.SortFunc(bans, func(a, b Ban) int { return comparePrefix(a.Prefix, b.Prefix) })
	return bans, nil
}

// Allow puts p on the allowlist: covered sources are never dropped, whatever
// the blocklist says. Allowing an allowed prefix is a no-op. The bpf layer
// accepts 0.0.0.0/0 and ::/0 (they disable dropping for that family);
// refusing them is the CLI's policy.
func (d *Datapath) Allow(p netip.Prefix) error {
	np, err := normalizePrefix(p)
	if err != nil {
		return fmt.Errorf("allow %s: %w", p, err)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	d.listMu.Lock()
	defer d.listMu.Unlock()
	if d.closed {
		return fmt.Errorf("allow %s: datapath is closed", np)
	}
	if err := d.objs.Allowlist.Put(lpmKeyFor(np), uint32(1)); err != nil {
		return fmt.Errorf("allow %s: %w", np, err)
	}
	if err := d.bumpGeneration(); err != nil {
		return fmt.Errorf("allow %s: %w", np, err)
	}
	return nil
}

// Disallow removes exactly p from the allowlist; an error wrapping
// ErrNotFound when it is not there.
func (d *Datapath) Disallow(p netip.Prefix) error {
	np, err := normalizePrefix(p)
	if err != nil {
		return fmt.Errorf("disallow %s: %w", p, err)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	d.listMu.Lock()
	defer d.listMu.Unlock()
	if d.closed {
		return fmt.Errorf("disallow %s: datapath is closed", np)
	}
	if err := d.objs.Allowlist.Delete(lpmKeyFor(np)); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("disallow %s: %w", np, ErrNotFound)
		}
		return fmt.Errorf("disallow %s: %w", np, err)
	}
	if err := d.bumpGeneration(); err != nil {
		return fmt.Errorf("disallow %s: %w", np, err)
	}
	return nil
}

// Allows lists the allowlist, sorted.
func (d *Datapath) Allows() ([]netip.Prefix, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, errors.New("list allows: datapath is closed")
	}
	var (
		key synguardLpmKey
		v   uint32
		out []netip.Prefix
		it  = d.objs.Allowlist.Iterate()
	)
	for it.Next(&key, &v) {
		p, err := prefixOf(key)
		if err != nil {
			return nil, fmt.Errorf("list allows: %w", err)
		}
		out = append(out, p)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list allows: %w", err)
	}
	slices.SortFunc(out, comparePrefix)
	return out, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
