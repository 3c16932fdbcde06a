package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// WalkSources calls fn with consecutive batches of the per-source entries,
// converted to Source, until the table is walked or fn returns an error
// (which WalkSources returns unwrapped). It is Sources without the
// million-element slice: the batch and the kernel-side buffers are reused
// from one call of fn to the next, and nothing is allocated per entry, so a
// full scan of a 1M-entry table costs a few hundred kilobytes instead of a
// hundred megabytes. fn must not keep batch (or a sub-slice of it) after it
// returns.
//
// d's lock is held for each kernel read only, not while fn runs: fn may
// take its caller's locks and call any method of d, and a Close during the
// walk ends it with an error at the next batch.
//
// The walk is BPF_MAP_LOOKUP_BATCH over the LRU hash map while the kernel
// keeps inserting and evicting. Its cursor is a bucket index and each call
// copies whole buckets under the bucket lock; a key always hashes to the
// same bucket, so within one walk an address is returned at most once (a
// key evicted and re-inserted meanwhile lands in the same bucket, already
// visited or not). That is why there is no de-duplication here (the old
// per-walk map cost ~40 MB at 1M entries); TestWalkSourcesWhileInserting
// checks it under concurrent inserts. An entry evicted during the walk may
// be missing, one inserted during it may or may not appear.
func (d *Datapath) WalkSources(fn func(batch []Source) error) error {
	var (
		keys   = make([][16]byte, batchSize)
		vals   = make([]synguardSourceStats, batchSize)
		batch  = make([]Source, batchSize)
		clock  = readKernelClock()
		cursor ebpf.MapBatchCursor
	)
	for {
		n, err := d.lookupSources(&cursor, keys, vals)
		if n > 0 {
			for i := 0; i < n; i++ {
				batch[i] = sourceOf(keys[i], vals[i], clock)
			}
			if ferr := fn(batch[:n]); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("walk sources: %w", err)
		}
	}
}

// lookupSources is one batch of WalkSources, under d's read lock.
func (d *Datapath) lookupSources(cursor *ebpf.MapBatchCursor, keys [][16]byte, vals []synguardSourceStats) (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return 0, errors.New("datapath is closed")
	}
	return d.objs.Sources.BatchLookup(cursor, keys, vals, nil)
}
