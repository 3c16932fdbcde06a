package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// batchSize is how many entries one BPF_MAP_LOOKUP_BATCH call returns.
const batchSize = 4096

// Sources returns every per-source entry: WalkSources collected into one
// slice, for callers that need them all at once (the daemon's full scan
// streams instead). The slice grows once per batch by the batch size, and
// no address is returned twice (see WalkSources).
func (d *Datapath) Sources() ([]Source, error) {
	var out []Source
	err := d.WalkSources(func(batch []Source) error {
		out = append(out, batch...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Source returns the entry of one address; ok is false when it has none.
func (d *Datapath) Source(a netip.Addr) (Source, bool, error) {
	if !a.IsValid() {
		return Source{}, false, fmt.Errorf("source lookup: invalid address")
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return Source{}, false, fmt.Errorf("source %s: datapath is closed", a)
	}
	key := addrKey(a)
	var v synguardSourceStats
	if err := d.objs.Sources.Lookup(key, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Source{}, false, nil
		}
		return Source{}, false, fmt.Errorf("source %s: %w", a, err)
	}
	return sourceOf(key, v, readKernelClock()), true, nil
}

func sourceOf(k [16]byte, v synguardSourceStats, clock kernelClock) Source {
	return Source{
		Addr:      addrOf(k),
		SYN:       v.Syn,
		ACK:       v.Ack,
		RST:       v.Rst,
		FirstSeen: clock.toWall(v.FirstSeen),
		LastSeen:  clock.toWall(v.LastSeen),
	}
}

// Services returns every per-service entry (a batch walk: each entry at
// most once, see WalkSources).
func (d *Datapath) Services() ([]Service, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, errors.New("list services: datapath is closed")
	}
	var (
		keys = make([]synguardServiceKey, batchSize)
		vals = make([]synguardServiceStats, batchSize)
		out  []Service
	)
	err := walkBatches(d.objs.Services, keys, vals, func(n int) {
		for i := 0; i < n; i++ {
			k := keys[i]
			out = append(out, Service{
				Addr: netip.AddrPortFrom(addrOf(k.Addr), ntohs(k.Port)),
				SYN:  vals[i].Syn,
				ACK:  vals[i].Ack,
			})
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return out, nil
}

// walkBatches runs BatchLookup over m until the end, calling fn with the
// number of entries filled into keys/vals each time.
func walkBatches(m *ebpf.Map, keys, vals any, fn func(n int)) error {
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		fn(n)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Counters returns the global counters summed over CPUs.
func (d *Datapath) Counters() (Counters, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return Counters{}, errors.New("read counters: datapath is closed")
	}
	var perCPU []synguardGlobalCounters
	if err := d.objs.Counters.Lookup(uint32(0), &perCPU); err != nil {
		return Counters{}, fmt.Errorf("read counters: %w", err)
	}
	var c Counters
	for _, p := range perCPU {
		c.Frames += p.Frames
		c.NonIP += p.Kind[kindNonIP]
		c.NonTCP += p.Kind[kindNonTCP]
		c.Fragments += p.Kind[kindFragment]
		c.NotParsed += p.Kind[kindMalformed]
		c.SYN += p.Kind[kindSYN]
		c.SYNACK += p.Kind[kindSYNACK]
		c.ACK += p.Kind[kindACK]
		c.RST += p.Kind[kindRST]
		c.TCPOther += p.Kind[kindTCPOther]
		c.Dropped += p.Dropped
		c.WouldDrop += p.WouldDrop
		c.Allowlisted += p.Allowlisted
		c.SuspectsLost += p.SuspectsLost
		c.BanCacheDrops += p.BanCacheDrops
	}
	c.TCP = c.SYN + c.SYNACK + c.ACK + c.RST + c.TCPOther
	return c, nil
}

// Indexes of global_counters.kind (enum kind in synguard.c).
const (
	kindNonIP = iota
	kindNonTCP
	kindFragment
	kindMalformed
	kindSYN
	kindSYNACK
	kindACK
	kindRST
	kindTCPOther
	kindCount
)

// The generated struct must have one slot per kind.
var _ = [1]struct{}{}[len(synguardGlobalCounters{}.Kind)-kindCount]
