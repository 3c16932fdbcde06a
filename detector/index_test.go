package detector

import (
	"math/rand/v2"
	"testing"
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
