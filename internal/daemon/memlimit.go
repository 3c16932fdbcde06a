package daemon

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
)

// The daemon's Go memory limit (debug.SetMemoryLimit), set around every
// full scan unless GOMEMLIMIT is set in the environment (then the operator
// decides).
//
// Why: the detector's tables are most of the heap (72 bytes a source in a
// pointer-free slab plus 16 in its IPv4 index: ~90 MiB at a million) and
// the daemon allocates little (a full scan ~3 MiB). With GOGC alone the
// heap may grow to twice the live heap before a collection, and what the
// tables' growth freed stays mapped; measured with bench/resources.sh,
// that kept the daemon at ~350 MiB resident after a 1M-source scan with a
// ~90 MiB live heap. A soft limit makes the collector run and the
// scavenger return memory before that happens. GOGC is left as it is: with
// a small table the limit is far above its goal and changes nothing.
//
// The limit is the larger of
//   - memBase + memPerSource per detector.max_sources: what a full table of
//     IPv4 sources needs (the 150 MiB resident target at 1M sources, less
//     the binary's resident text), so growing to it causes no GC storm;
//   - memHeadroom times the live heap, and at least 16 MiB above it: when
//     the live heap is above the budget (IPv6 sources cost more) the limit
//     follows it, so the collector never runs back to back against a limit
//     it cannot meet.
//
// debug.FreeOSMemory is not used: it forces a full collection and a
// scavenge of everything, which a scan every 10 s would pay each time.
const (
	memBase      = 32 << 20
	memPerSource = 88
	memHeadroom  = 1.25
)

// memoryLimit is the limit for a detector bounded to maxSources with a live
// heap of live bytes.
func memoryLimit(maxSources int, live uint64) int64 {
	follow := max(int64(float64(live)*memHeadroom), int64(live)+16<<20)
	return max(int64(memBase)+int64(maxSources)*memPerSource, follow)
}

// envMemLimit: GOMEMLIMIT is set, the runtime took it and it is not ours
// to change.
var envMemLimit = os.Getenv("GOMEMLIMIT") != ""

// tuneMemoryLocked sets the memory limit for the current configuration and
// live heap. It costs one runtime/metrics read.
func (d *Daemon) tuneMemoryLocked() {
	if envMemLimit {
		return
	}
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	var live uint64
	if s[0].Value.Kind() == metrics.KindUint64 {
		live = s[0].Value.Uint64()
	}
	debug.SetMemoryLimit(memoryLimit(d.cfg.Detector.MaxSources, live))
}
