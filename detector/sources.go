package detector

import (
	"math"
	"net/netip"
	"slices"
)

const (
	flagFlagged uint8 = 1 << iota
	flagAggCounted
	// flagV6: an IPv6 source, whose k4 indexes sourceTable.v6keys.
	flagV6
	// flagEpochACK: the source sent an ACK (completed a handshake) in the
	// current flood epoch, so it is no slow flooder (banSlowSender).
	flagEpochACK
)

// source is one tracked source. It holds no pointers, so a table of a
// million of them costs the garbage collector nothing to scan. It is 72
// bytes: an IPv4 source (the million-source case) keeps its address in
// k4; the 16-byte address of an IPv6 source lives beside the slab.
type source struct {
	syn, ack uint64 // cumulative counters at seen
	seen     int64  // last snapshot listing the source (unix ns); 0 = none yet
	touched  int64  // last snapshot or suspect event
	lastFlag int64  // last time the flag condition held
	k4       uint32 // IPv4 address, or with flagV6 the index in v6keys
	synRate  float32
	ackRate  float32
	inc      int32 // open incident handle (index+1), 0 = none
	next     int32 // the source after this one in the last snapshot (index+1)
	epoch    uint32
	epochSYN uint32
	flags    uint8
	// epochFrom is when the source first sent half-open SYNs in the
	// epoch: whole seconds after the epoch's start, rounded up, plus 1 (0:
	// not yet); it saturates after 18 h. Two bytes, in the padding after
	// flags, so the record stays 72 bytes.
	epochFrom uint16
}

// slab holds the sources in fixed-size pages. A page never moves: growing
// the table adds a page instead of copying every source into a slice 1.25
// times bigger, which at a million sources left ~100 MB of garbage per
// growth step and up to 25% of unused capacity behind.
type slab struct {
	pages [][]source
	n     int
}

// slabShift: 4096 sources (352 KiB) per page.
const slabShift = 12

func (s *slab) at(i int32) *source {
	return &s.pages[i>>slabShift][i&(1<<slabShift-1)]
}

func (s *slab) len() int { return s.n }

// push adds a zero source and returns its index.
func (s *slab) push() int32 {
	if s.n == len(s.pages)<<slabShift {
		s.pages = append(s.pages, make([]source, 1<<slabShift))
	}
	s.n++
	return int32(s.n - 1)
}

// sourceTable is a slab of sources indexed by address. Its size is bounded:
// when full, the least recently touched unflagged sources are forgotten.
type sourceTable struct {
	// IPv4 sources are keyed by their 4 bytes: a smaller map, fewer cache
	// and TLB misses than 16-byte keys, which dominate the cost of a
	// million-source snapshot.
	v4 v4index
	v6 map[[16]byte]int32
	s  slab
	// v6keys are the addresses of IPv6 sources (see source.k4); v6free
	// lists its unused slots.
	v6keys [][16]byte
	v6free []uint32
	free   []int32
	max    int
	cursor int
	// forget is called for a flagged source forgotten to keep memory
	// bounded, so its aggregation count stays right.
	forget func(*source)
	// head is the first source of the last snapshot (index+1).
	head int32
	// misses counts chain misses in the current snapshot; when most
	// sources missed last time, the next snapshot prefetches.
	misses, lastMisses, lastLen int
	sink                        uint64
}

// prefetching says whether the last snapshot came in a new order.
func (t *sourceTable) prefetching() bool { return t.lastLen > 0 && t.lastMisses*2 > t.lastLen }

// endSnapshot records the chain hit rate of a snapshot of n sources.
func (t *sourceTable) endSnapshot(n int) {
	t.lastMisses, t.lastLen, t.misses = t.misses, n, 0
}

// prefetch resolves the indices of a batch of sources, issuing all their
// cache misses first so that they overlap: first the index slots, then the
// slab entries. Entries not found get -1.
func (t *sourceTable) prefetch(batch []SourceCounters, out []int32) {
	var sink uint64
	for j := range batch {
		if a := batch[j].Addr; a.Is4() {
			b := a.As4()
			sink += t.v4.touch(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))
		}
	}
	for j := range batch {
		i, ok := t.find(batch[j].Addr.As16())
		if !ok {
			out[j] = -1
			continue
		}
		out[j] = i
		sink += t.s.at(i).syn
	}
	t.sink += sink
}

// key returns s's address as the kernel keys it (IPv4-mapped for IPv4).
func (t *sourceTable) key(s *source) [16]byte {
	if s.flags&flagV6 != 0 {
		return t.v6keys[s.k4]
	}
	return [16]byte{10: 0xff, 11: 0xff, 12: byte(s.k4 >> 24), 13: byte(s.k4 >> 16), 14: byte(s.k4 >> 8), 15: byte(s.k4)}
}

// addr returns s's address.
func (t *sourceTable) addr(s *source) netip.Addr { return netip.AddrFrom16(t.key(s)).Unmap() }

// is says whether s holds address k.
func (t *sourceTable) is(s *source, k [16]byte) bool {
	if k4, ok := v4key(k); ok {
		return s.flags&flagV6 == 0 && s.k4 == k4
	}
	return s.flags&flagV6 != 0 && t.v6keys[s.k4] == k
}

func newSourceTable(max int) sourceTable {
	return sourceTable{v4: newV4index(), v6: make(map[[16]byte]int32), max: max}
}

func v4key(k [16]byte) (uint32, bool) {
	if k[10] == 0xff && k[11] == 0xff && [10]byte(k[:10]) == [10]byte{} {
		return uint32(k[12])<<24 | uint32(k[13])<<16 | uint32(k[14])<<8 | uint32(k[15]), true
	}
	return 0, false
}

func (t *sourceTable) find(k [16]byte) (int32, bool) {
	if k4, ok := v4key(k); ok {
		return t.v4.get(k4)
	}
	i, ok := t.v6[k]
	return i, ok
}

func (t *sourceTable) put(k [16]byte, i int32) {
	if k4, ok := v4key(k); ok {
		t.v4.put(k4, i)
	} else {
		t.v6[k] = i
	}
}

func (t *sourceTable) del(k [16]byte) {
	if k4, ok := v4key(k); ok {
		t.v4.del(k4)
	} else {
		delete(t.v6, k)
	}
}

// at returns the index of a, which follows the source at index prev (-1
// for the first) in the snapshot's list, creating the entry if needed.
//
// Full scans of the kernel LRU come in nearly the same order every time,
// so each source remembers which one followed it in the last snapshot, and
// most sources are found without a map lookup (which, with a million
// entries, costs a cache and TLB miss). An insertion or eviction costs one
// miss, then the chain is back in step.
//
// known is the index found by prefetch, or -1. It returns the index and
// the entry.
func (t *sourceTable) at(prev int32, a netip.Addr, now int64, known int32) (int32, *source) {
	var (
		k   [16]byte
		k4  uint32
		is4 = a.Is4()
	)
	if is4 {
		b := a.As4()
		k4 = uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	} else {
		k = a.As16()
		k4, is4 = v4key(k) // an IPv4-mapped address is keyed as IPv4
	}
	valid := func(i int32) *source {
		if i < 0 || int(i) >= t.s.n {
			return nil
		}
		s := t.s.at(i)
		if s.touched == 0 {
			return nil
		}
		if is4 {
			if s.flags&flagV6 != 0 || s.k4 != k4 {
				return nil
			}
		} else if s.flags&flagV6 == 0 || t.v6keys[s.k4] != k {
			return nil
		}
		return s
	}
	var ps *source
	if prev >= 0 {
		ps = t.s.at(prev)
	}
	// A prefetched index is in cache; the chain's guess may not be.
	i := known
	s := valid(i)
	if s == nil {
		guess := t.head
		if ps != nil {
			guess = ps.next
		}
		i = guess - 1
		if s = valid(i); s == nil {
			t.misses++
			i = t.getKey(a.As16(), now)
			s = t.s.at(i)
		}
	} else if ps == nil || ps.next != i+1 {
		t.misses++ // still out of order: keep prefetching
	}
	if ps != nil {
		ps.next = i + 1
	} else {
		t.head = i + 1
	}
	return i, s
}

func (t *sourceTable) len() int { return t.v4.len() + len(t.v6) }

// lookup returns a's index without creating it.
func (t *sourceTable) lookup(a netip.Addr) (int32, bool) { return t.find(a.As16()) }

// get returns a's index, creating a zero entry when absent.
func (t *sourceTable) get(a netip.Addr, now int64) int32 { return t.getKey(a.As16(), now) }

func (t *sourceTable) getKey(k [16]byte, now int64) int32 {
	if i, ok := t.find(k); ok {
		return i
	}
	if t.len() >= t.max {
		t.evict()
	}
	var i int32
	if n := len(t.free); n > 0 {
		i = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		i = t.s.push()
	}
	st := source{touched: now}
	if k4, ok := v4key(k); ok {
		st.k4 = k4
	} else {
		st.flags = flagV6
		if n := len(t.v6free); n > 0 {
			st.k4 = t.v6free[n-1]
			t.v6free = t.v6free[:n-1]
			t.v6keys[st.k4] = k
		} else {
			st.k4 = uint32(len(t.v6keys))
			t.v6keys = append(t.v6keys, k)
		}
	}
	*t.s.at(i) = st
	t.put(k, i)
	return i
}

func (t *sourceTable) remove(i int32) {
	s := t.s.at(i)
	t.del(t.key(s))
	if s.flags&flagV6 != 0 {
		t.v6free = append(t.v6free, s.k4)
	}
	*s = source{}
	t.free = append(t.free, i)
}

// evict forgets about a quarter of the table, the least recently touched
// unflagged sources, so that the O(n) pass is paid once per n/4 inserts.
func (t *sourceTable) evict() {
	var sample []int64
	step := max(1, t.s.len()/1024)
	for i := 0; i < t.s.len(); i += step {
		if s := t.s.at(int32(i)); s.touched != 0 && s.flags&flagFlagged == 0 {
			sample = append(sample, s.touched)
		}
	}
	removed := 0
	if len(sample) > 0 {
		slices.Sort(sample)
		cut := sample[len(sample)/4]
		for i := range t.s.len() {
			if s := t.s.at(int32(i)); s.touched != 0 && s.flags&flagFlagged == 0 && s.touched <= cut {
				t.remove(int32(i))
				removed++
			}
		}
	}
	if removed == 0 {
		// Everything is flagged: forget the oldest entry anyway, memory
		// bound first (its ban, if any, lives on in the ban table). Sources
		// with an open incident stay: there are at most MaxIncidents.
		oldest := -1
		for i := range t.s.len() {
			if s := t.s.at(int32(i)); s.touched != 0 && s.inc == 0 && (oldest < 0 || s.touched < t.s.at(int32(oldest)).touched) {
				oldest = i
			}
		}
		if oldest >= 0 {
			if t.forget != nil {
				t.forget(t.s.at(int32(oldest)))
			}
			t.remove(int32(oldest))
		}
	}
}

// sweep forgets idle unflagged sources, a slice of the table per call, so
// that a snapshot listing few sources does not pay for the whole table.
// A flagged source without an incident (beyond max_incidents) is unflagged
// here once it has been below the bar for resolve.
func (t *sourceTable) sweep(now, idle, resolve int64) {
	n := t.s.len()
	if n == 0 {
		return
	}
	chunk := min(n, n/32+1024)
	for range chunk {
		if t.cursor >= n {
			t.cursor = 0
		}
		s := t.s.at(int32(t.cursor))
		if s.flags&flagFlagged != 0 && s.inc == 0 && now-s.lastFlag >= resolve && t.forget != nil {
			t.forget(s)
		}
		if s.touched != 0 && s.flags&flagFlagged == 0 && now-s.touched > idle {
			t.remove(int32(t.cursor))
		}
		t.cursor++
	}
}

// floodEpoch counts distinct half-open sources and the top senders while at
// least one service incident is open.
type floodEpoch struct {
	active bool
	// inc is an open service incident while active: slow senders banned
	// during the flood are attributed to it (by time, as sources are).
	inc      *incident
	epoch    uint32
	startAt  int64 // unix ns
	distinct int
	// single counts the distinct sources that have sent exactly one
	// half-open SYN in the epoch: the mark of spoofed random sources, each
	// seen once and never again.
	single int
	// syn sums the half-open SYNs of the sources counted in the epoch: the
	// part of a flood the detector could attribute to sources it read.
	syn uint64
	top []topEntry
}

type topEntry struct {
	key [16]byte
	idx int32
	syn uint32
}

func (f *floodEpoch) start(now int64) {
	f.active = true
	f.startAt = now
	f.epoch++
	f.distinct, f.single, f.syn = 0, 0, 0
	f.top = f.top[:0]
}

// count adds dsyn half-open SYNs of source i, sent since from, to the epoch.
func (f *floodEpoch) count(t *sourceTable, i int32, dsyn uint32, k int, from int64) {
	s := t.s.at(i)
	if s.epoch != f.epoch {
		s.epoch, s.epochSYN = f.epoch, 0
		s.epochFrom = uint16(min((max(from-f.startAt, 0)+1e9-1)/1e9, math.MaxUint16-1)) + 1
		s.flags &^= flagEpochACK
		f.distinct++
	}
	switch {
	case s.epochSYN == 0 && dsyn == 1:
		f.single++
	case s.epochSYN == 1:
		f.single--
	}
	s.epochSYN += dsyn
	f.syn += uint64(dsyn)
	minAt := -1
	for j := range f.top {
		if f.top[j].idx == i && t.is(s, f.top[j].key) {
			f.top[j].syn = s.epochSYN
			return
		}
		if minAt < 0 || f.top[j].syn < f.top[minAt].syn {
			minAt = j
		}
	}
	if len(f.top) < k {
		f.top = append(f.top, topEntry{key: t.key(s), idx: i, syn: s.epochSYN})
	} else if minAt >= 0 && s.epochSYN > f.top[minAt].syn {
		f.top[minAt] = topEntry{key: t.key(s), idx: i, syn: s.epochSYN}
	}
}
