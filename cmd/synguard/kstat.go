package main

import (
	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/kstat"
)

// kernelCounters reads the server's TCP counters and listener queues (the
// kernel's own evidence in incidents) in the daemon's network namespace.
func kernelCounters() func() (detector.KernelCounters, error) { return kstat.Host().Read }
