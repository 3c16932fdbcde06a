package detector

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"unsafe"
)

// The open-addressing index behaves like a map under random puts and
// deletes (backward-shift deletion must keep every probe chain intact),
// including addresses that collide on their home slot.
func TestV4IndexMatchesMap(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 99))
		x := newV4index()
		ref := map[uint32]int32{}
		keys := make([]uint32, 0, 5000)
		for range 3000 {
			k := r.Uint32()
			if r.IntN(4) == 0 {
				k &= 0xff // a dense range: many collisions after masking
			}
			keys = append(keys, k)
		}
		for step := range 20000 {
			k := keys[r.IntN(len(keys))]
			switch r.IntN(3) {
			case 0, 1:
				v := int32(r.IntN(1 << 20))
				x.put(k, v)
				ref[k] = v
			case 2:
				x.del(k)
				delete(ref, k)
			}
			if step%997 == 0 || step == 19999 {
				if x.len() != len(ref) {
					t.Fatalf("seed %d step %d: len %d, want %d", seed, step, x.len(), len(ref))
				}
				for _, k := range keys {
					got, ok := x.get(k)
					want, wok := ref[k]
					if ok != wok || got != want {
						t.Fatalf("seed %d step %d: get(%#x) = %d,%v, want %d,%v", seed, step, k, got, ok, want, wok)
					}
				}
			}
		}
	}
}

// The per-source record is what a million tracked sources cost (the
// daemon's 150 MiB budget): keep it at 72 bytes, without pointers.
func TestSourceRecordSize(t *testing.T) {
	if n := unsafe.Sizeof(source{}); n != 72 {
		t.Errorf("source is %d bytes, want 72", n)
	}
}

// IPv6 sources keep their address beside the slab; slots are reused when
// they are forgotten, and addresses survive the reuse.
func TestSourceTableIPv6Keys(t *testing.T) {
	tb := newSourceTable(1 << 10)
	a := netip.MustParseAddr("2001:db8::1")
	b := netip.MustParseAddr("2001:db8::2")
	c := netip.MustParseAddr("192.0.2.7")
	ia, ib, ic := tb.get(a, 1), tb.get(b, 1), tb.get(c, 1)
	for _, x := range []struct {
		i    int32
		addr netip.Addr
	}{{ia, a}, {ib, b}, {ic, c}} {
		if got := tb.addr(tb.s.at(x.i)); got != x.addr {
			t.Errorf("source %d: address %v, want %v", x.i, got, x.addr)
		}
		if i, ok := tb.lookup(x.addr); !ok || i != x.i {
			t.Errorf("lookup %v = %d, %v; want %d", x.addr, i, ok, x.i)
		}
	}
	tb.remove(ia)
	if _, ok := tb.lookup(a); ok {
		t.Error("removed IPv6 source still found")
	}
	d := netip.MustParseAddr("2001:db8::3")
	id := tb.get(d, 2)
	if got := tb.addr(tb.s.at(id)); got != d || len(tb.v6keys) != 2 {
		t.Errorf("new IPv6 source: address %v, %d key slots; want %v in 2 (slot reused)", got, len(tb.v6keys), d)
	}
	if got := tb.addr(tb.s.at(ib)); got != b {
		t.Errorf("untouched IPv6 source now %v, want %v", got, b)
	}
}
