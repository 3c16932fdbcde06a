package bpf

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"
)

// BenchmarkSourcesWalk measures what the daemon pays for a full read of the
// per-source table: Sources() (batch lookups plus conversion to Go values,
// collected into one slice) and the streaming WalkSources (the same
// conversion into a reused batch) against a bare BatchLookup walk of the
// same map in the same run, so that conversion overhead shows as a ratio
// rather than an absolute figure. Allocations are reported for all three.
func BenchmarkSourcesWalk(b *testing.B) {
	const n = 100_000
	d := loadForTest(b, Options{MaxSources: 2 * n})
	stamp := kernelNow()
	for i := 0; i < n; i++ {
		var key [16]byte
		key[10], key[11] = 0xff, 0xff
		binary.BigEndian.PutUint32(key[12:], 0x0ac80000+uint32(i))
		v := synguardSourceStats{Syn: 3, Ack: 2, FirstSeen: stamp - 1e9, LastSeen: stamp}
		if err := d.objs.Sources.Put(key, v); err != nil {
			b.Fatalf("fill sources: %v", err)
		}
	}
	b.Run("Sources", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			got, err := d.Sources()
			if err != nil {
				b.Fatal(err)
			}
			if len(got) != n {
				b.Fatalf("Sources returned %d entries, want %d", len(got), n)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/source")
	})
	b.Run("WalkSources", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			total := 0
			err := d.WalkSources(func(batch []Source) error {
				total += len(batch)
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			if total != n {
				b.Fatalf("WalkSources saw %d entries, want %d", total, n)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/source")
	})
	b.Run("BatchLookupBaseline", func(b *testing.B) {
		b.ReportAllocs()
		keys := make([][16]byte, batchSize)
		vals := make([]synguardSourceStats, batchSize)
		for b.Loop() {
			total := 0
			var cursor ebpf.MapBatchCursor
			for {
				c, err := d.objs.Sources.BatchLookup(&cursor, keys, vals, nil)
				total += c
				if err != nil {
					break
				}
			}
			if total != n {
				b.Fatalf("batch walk saw %d entries, want %d", total, n)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/source")
	})
}
