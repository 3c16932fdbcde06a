package detector

// v4index maps an IPv4 address to its slab index with open addressing and
// linear probing in one flat array of 8-byte slots (address << 32 |
// index+1; 0 = empty). A lookup costs one cache line, and lookups can be
// started ahead (prefetch), which a Go map does not allow: with a million
// sources in random order the cache misses are the whole cost.
type v4index struct {
	slots []uint64
	mask  uint32
	n     int
}

func newV4index() v4index { return v4index{slots: make([]uint64, 1024), mask: 1023} }

// hash spreads addresses over the table (Fibonacci hashing; addresses of
// one /24 must not cluster).
func (x *v4index) pos(k uint32) uint32 { return uint32((uint64(k)*0x9E3779B97F4A7C15)>>32) & x.mask }

func (x *v4index) get(k uint32) (int32, bool) {
	for p := x.pos(k); ; p = (p + 1) & x.mask {
		s := x.slots[p]
		if s == 0 {
			return 0, false
		}
		if uint32(s>>32) == k {
			return int32(uint32(s)) - 1, true
		}
	}
}

// touch loads the first slot k would probe, so that a later get finds it
// in cache; the result only defeats dead-code elimination.
func (x *v4index) touch(k uint32) uint64 { return x.slots[x.pos(k)] }

func (x *v4index) put(k uint32, i int32) {
	if (x.n+1)*2 > len(x.slots) {
		x.grow()
	}
	for p := x.pos(k); ; p = (p + 1) & x.mask {
		s := x.slots[p]
		if s == 0 {
			x.slots[p] = uint64(k)<<32 | uint64(uint32(i+1))
			x.n++
			return
		}
		if uint32(s>>32) == k {
			x.slots[p] = uint64(k)<<32 | uint64(uint32(i+1))
			return
		}
	}
}

func (x *v4index) grow() {
	old := x.slots
	x.slots = make([]uint64, 2*len(old))
	x.mask = uint32(len(x.slots) - 1)
	x.n = 0
	for _, s := range old {
		if s != 0 {
			x.put(uint32(s>>32), int32(uint32(s))-1)
		}
	}
}

// del removes k with backward-shift deletion, so that probe chains stay
// unbroken without tombstones.
func (x *v4index) del(k uint32) {
	p := x.pos(k)
	for {
		s := x.slots[p]
		if s == 0 {
			return
		}
		if uint32(s>>32) == k {
			break
		}
		p = (p + 1) & x.mask
	}
	x.n--
	for {
		x.slots[p] = 0
		q := p
		for {
			q = (q + 1) & x.mask
			s := x.slots[q]
			if s == 0 {
				return
			}
			home := x.pos(uint32(s >> 32))
			// Move s back to p unless its home lies cyclically in (p, q].
			if (q > p && (home <= p || home > q)) || (q < p && home <= p && home > q) {
				x.slots[p] = s
				p = q
				break
			}
		}
	}
}

func (x *v4index) len() int { return x.n }
