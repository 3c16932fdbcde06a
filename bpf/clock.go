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

// kernelClock pairs one reading of the wall clock with one of the kernel
// clock, so that converting many timestamps (a walk of a million sources)
// costs no system call each, and two stamps of one entry keep their order.
type kernelClock struct {
	wall time.Time
	mono uint64
}

// readKernelClock takes the pair of readings.
func readKernelClock() kernelClock {
	return kernelClock{wall: time.Now().Round(0), mono: kernelNow()}
}

// toWall converts a kernel timestamp to wall-clock time. Zero stays the
// zero time.
func (c kernelClock) toWall(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return c.wall.Add(-time.Duration(int64(c.mono - ns)))
}

// kernelToWall converts one kernel timestamp to wall-clock time, as of now.
func kernelToWall(ns uint64) time.Time { return readKernelClock().toWall(ns) }
