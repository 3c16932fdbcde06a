package daemon

import "testing"

// The limit covers a full table of the configured size, and follows a live
// heap beyond that budget with headroom instead of pinning the collector.
func TestMemoryLimit(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		maxSources int
		live       uint64
		want       int64
	}{
		{1 << 20, 10 * mib, 32*mib + 88*(1<<20)}, // budget: 120 MiB at the default 1M
		{1 << 20, 90 * mib, 32*mib + 88*(1<<20)}, // a full IPv4 table fits the budget
		{1 << 20, 200 * mib, 250 * mib},          // beyond it: 1.25x live
		{1 << 10, 40 * mib, 56 * mib},            // and at least 16 MiB above it
		{1 << 16, 1 * mib, 32*mib + 88*(1<<16)},  // small tables, small limit
	} {
		if got := memoryLimit(tc.maxSources, tc.live); got != tc.want {
			t.Errorf("memoryLimit(%d, %d MiB) = %.1f MiB, want %.1f MiB", tc.maxSources, tc.live/mib, float64(got)/mib, float64(tc.want)/mib)
		}
	}
}
