package bpf

import (
	"time"

	"golang.org/x/sys/unix"
)

// kernelNow returns CLOCK_MONOTONIC in nanoseconds: the clock of
// bpf_ktime_get_coarse_ns, which stamps every kernel-side time (the coarse
// kernel clock is the same clock at tick resolution, so it lags by at most
// one tick).
func kernelNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// CLOCK_MONOTONIC exists on every kernel that can load this
		// program; failing here means a broken system.
		panic("clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return uint64(ts.Nano())
}

// kernelToWall converts a kernel timestamp to wall-clock time, as of now.
// Zero stays the zero time.
func kernelToWall(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	now := time.Now().Round(0)
	return now.Add(-time.Duration(int64(kernelNow() - ns)))
}
